"""Batch prediction throughput vs the offline evaluate step, on the same videos, in the same run.

    python benchmarks/predict.py [--num-videos 64] [--num-frames 100] [--rounds 5] [--num-cpus N]

Dataset: UCF101-like videos written by ``pipeline.data.synth.synthesize("ucf101", ...)`` (320x240, 25 fps, MPEG-4
Part 2 in AVI) and prepared by ``pipeline.data.prepare.prepare_manifest`` (train and test manifests together), kept
under ``--data-dir`` for later runs. Model: the ``--preset``'s config (default ``smoke``: the debug ResNet at 64 px,
2 test views; decoding dominates) with random weights; what is compared is the pipeline, not the model.

Measured in one process on one local Ray, alternating, ``--rounds`` rounds after one untimed warm-up of each:
    (a) evaluate: ``pipeline.evaluation.evaluate.evaluate_weights`` on the manifest, what the workflows' evaluate
        step runs (decode tasks + one ``ClipScorer`` replica, views gathered, metrics computed);
    (b) predict: ``pipeline.evaluation.predict.predict_to_shards`` on the same manifest given as ``--videos`` (its
        frame indices used), one replica, shards of 8 videos written to a fresh temporary folder;
    (c) predict_index: the same on the videos' folder: each video is indexed by its decode task first (what
        predicting unprepared videos costs).
clips/s = views scored / wall seconds from the call to its return (each call starts its own scoring actor, as a
workflow step does); CPU seconds of this process and every descendant (Ray's processes, also those that exited:
``TreeCpu``) are counted too. Medians. Last line:
``RESULT predict ratio=<b/a> ratio_with_index=<c/a> cpu_ratio=<a CPU per clip / b CPU per clip>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import schema, storage


def prepare_data(data_dir: str, num_videos: int, num_frames: int) -> tuple[str, str]:
    """Synthesize and prepare unless ``data_dir`` holds them: (manifest URI, videos folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.manifest import read_manifest
    from pipeline.data.prepare import prepare_manifest
    from pipeline.data.synth import synthesize

    manifest_uri = storage.join(data_dir, "all.parquet")
    videos = storage.join(data_dir, "root", "UCF-101")
    if storage.exists(manifest_uri):
        return manifest_uri, videos
    videos_per_class = 4
    summary = synthesize(
        "ucf101",
        storage.join(data_dir, "root"),
        num_classes=max(3, num_videos // videos_per_class),
        videos_per_class=videos_per_class,
        width=320,
        height=240,
        num_frames=num_frames,
        fps=25.0,
    )
    report = prepare_manifest(
        "ucf101",
        summary.videos_uri,
        summary.annotations_uri,
        storage.join(data_dir, "manifest"),
        use_ray=False,
    )
    table = pa.concat_tables([read_manifest(uri)[0] for uri in report.manifest_uris.values()])
    pq.write_table(table, manifest_uri)
    return manifest_uri, videos


class TreeCpu:
    """CPU seconds (user + system) of this process and all its descendants (Ray's raylet, GCS and workers).

    Sampled every ``interval_s`` in a thread and kept per process, so a process that exits between two readings
    (each pass's scoring actor does) still counts, up to its last sample; a process's exit does not make the sum
    go down, as a sum over the live processes would.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        import psutil

        self._me = psutil.Process()
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> latest CPU seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        for process in [self._me, *self._me.children(recursive=True)]:
            try:
                with process.oneshot():
                    key, times = (process.pid, process.create_time()), process.cpu_times()
            except psutil.Error:
                continue
            with self._lock:
                self._cpu[key] = times.user + times.system

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._sample()

    def seconds(self) -> float:
        self._sample()
        with self._lock:
            return sum(self._cpu.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-videos", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: all)")
    parser.add_argument("--data-dir", default=None, help="where the generated dataset is kept and reused")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pyarrow.parquet as pq
    import ray
    import torch

    from pipeline.data.video_list import list_videos
    from pipeline.evaluation.evaluate import evaluate_weights
    from pipeline.evaluation.predict import ModelRef, predict_to_shards
    from pipeline.presets import preset
    from stpa_model import STPANet

    torch.set_num_threads(1)
    data_dir = args.data_dir or os.path.join(
        tempfile.gettempdir(),
        "stpa-bench",
        f"predict-320x240-{args.num_videos}v-{args.num_frames}f-m{schema.MANIFEST_VERSION}",
    )
    manifest_uri, videos_folder = prepare_data(data_dir, args.num_videos, args.num_frames)
    table = pq.read_table(manifest_uri)
    class_names = schema.class_names_of(table.schema)
    exp = preset(args.preset, "ucf101", len(class_names))
    work = tempfile.mkdtemp(prefix="stpa-bench-predict-")
    weights = os.path.join(work, "weights.pt")
    torch.manual_seed(0)
    torch.save(STPANet(exp.model).state_dict(), weights)
    # The manifest as a video list: one file with every row (train and test), its frame indices kept.
    pq.write_table(table, os.path.join(work, "videos.parquet"))
    from_manifest = list_videos(os.path.join(work, "videos.parquet"))
    from_folder = list_videos(videos_folder)
    assert from_folder.table.num_rows == from_manifest.table.num_rows == table.num_rows
    num_clips = table.num_rows * exp.test_clips.num_views
    print(
        f"videos: {table.num_rows} x {args.num_frames} frames, 320x240 MPEG-4 AVI; preset {args.preset}: "
        f"{exp.test_clips.num_views} views a video, {num_clips} clips a pass"
    )

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.enable_auto_log_stats = False
    cpus = int(ray.cluster_resources()["CPU"])
    model = ModelRef("bench", "bench", "0")

    def run_evaluate() -> int:
        scalars, _, _ = evaluate_weights(exp, weights, table)
        return int(scalars["num_videos_scored"]) * exp.test_clips.num_views

    def run_predict(videos) -> int:
        out = tempfile.mkdtemp(dir=work)
        summary = predict_to_shards(
            exp, weights, class_names, videos, out, model=model, shard_size=8, log=lambda _: None
        )
        shutil.rmtree(out)
        return summary.num_clips

    runs = {
        "evaluate": run_evaluate,
        "predict": lambda: run_predict(from_manifest),
        "predict_index": lambda: run_predict(from_folder),
    }
    for name, run in runs.items():  # warm-up: worker start-up and imports
        assert run() == num_clips, name
    tree_cpu = TreeCpu()
    speed: dict[str, list[float]] = {name: [] for name in runs}
    cpu_per_clip: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            cpu_started, started = tree_cpu.seconds(), time.perf_counter()
            clips = run()
            seconds, cpu = time.perf_counter() - started, tree_cpu.seconds() - cpu_started
            assert clips == num_clips, (name, clips)
            speed[name].append(clips / seconds)
            cpu_per_clip[name].append(cpu / clips)
            print(
                f"round {r}: {name:13s} {clips} clips in {seconds:6.2f}s = {clips / seconds:6.1f} clips/s, "
                f"{cpu:5.2f} CPU s ({1000 * cpu / clips:5.1f} ms per clip)"
            )
    tree_cpu.close()
    ray.shutdown()
    shutil.rmtree(work)
    median = {name: statistics.median(values) for name, values in speed.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_per_clip.items()}
    for name in runs:
        print(
            f"{name:13s} {median[name]:6.1f} clips/s, {1000 * cpu[name]:5.1f} CPU ms per clip ({cpus} Ray CPUs)"
        )
    print(
        f"RESULT predict ratio={median['predict'] / median['evaluate']:.3f} "
        f"ratio_with_index={median['predict_index'] / median['evaluate']:.3f} "
        f"cpu_ratio={cpu['evaluate'] / cpu['predict']:.3f} evaluate_clips_per_s={median['evaluate']:.1f} "
        f"predict_clips_per_s={median['predict']:.1f}"
    )


if __name__ == "__main__":
    main()
