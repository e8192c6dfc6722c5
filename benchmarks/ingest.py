"""Ingest benchmark: Ray Data clip pipeline vs a plain single-process decord loop, plus the decode-once cache.

    python benchmarks/ingest.py [--num-videos 48] [--num-frames 150] [--repeat 4] [--rounds 3] [--rss-videos 2000]

Dataset: UCF101-like videos written by ``pipeline.data.synth.synthesize("ucf101", ...)``: 320x240, 25 fps, MPEG-4
Part 2 (xvid-style) in AVI, the generator's codec for the UCF101 layout (the real UCF101 is xvid AVI), encoder
default GOP (12); the manifest comes from ``pipeline.data.prepare.prepare_manifest`` (train and test splits together).
The dataset is cached under ``--data-dir`` and reused by later runs with the same parameters.

Each pass (an "epoch") decodes every video ``--repeat`` times (the manifest rows repeated under distinct ids), so
a pass lasts seconds, as real epochs do, rather than a fraction of one, where Ray Data's fixed start-up cost per
execution (about 0.1-0.2 s here) would dominate; ``--repeat 1`` shows that cost.

Clips: TSN test sampling, K=8 segments x T=1 frame, shorter side resized to 256, centre crop 224
(uint8 (8, 1, 224, 224, 3) per clip, 1.2 MB).

Measured in one process, alternating, ``--rounds`` rounds after one untimed warm-up pass of each path:
    (a) baseline: a plain loop in this process (one CPU, torch and decord single-threaded): the same
        ``pipeline.video.sampling`` and ``pipeline.video.transforms`` functions and ``decord.VideoReader.get_batch`` directly on
        the files;
    (b) pipeline: ``build_clip_dataset`` + ``iter_batches`` on a local Ray with all CPUs, timed from building the
        dataset to the last row (the decode workers are warm, as on a long-running cluster);
    (c) cache: ``cached_clip_dataset`` (a hit: the entry is written before the rounds) + ``iter_batches``.
Medians are reported. ``ratio_per_cpu = (pipeline clips/s / cpus) / baseline clips/s``. On a shared machine the
wall-clock ratio also measures the neighbours, so the CPU seconds of this process and all its descendants (the
Ray processes) are counted too: ``cpu_efficiency = baseline CPU s per clip / pipeline CPU s per clip`` is the
share of the pipeline's CPU time that goes into the work the baseline does (Ray's overhead is the rest). Then a
Ray task decodes
``--rss-videos`` clips in a row through the pipeline's decode path and reports its RSS over time (decord is
known to leak).

Last line: ``RESULT ingest ratio_per_cpu=... clips_per_s=... cpus=... cache_speedup=...``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import schema, storage
from pipeline.clips.dataset import ClipConfig
from pipeline.video import sampling, transforms

CONFIG = ClipConfig(num_segments=8, frames_per_segment=1, train=False, short_side=256, crop_size=224)


def prepare_data(data_dir: str, num_videos: int, num_frames: int) -> str:
    """Synthesize the videos and prepare the manifest unless ``data_dir`` already holds them; the manifest URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.manifest import read_manifest
    from pipeline.data.prepare import prepare_manifest
    from pipeline.data.synth import synthesize

    manifest_uri = storage.join(data_dir, "all.parquet")
    if storage.exists(manifest_uri):
        return manifest_uri
    videos_per_class = 4
    num_classes = max(3, num_videos // videos_per_class)
    started = time.perf_counter()
    summary = synthesize(
        "ucf101",
        storage.join(data_dir, "root"),
        num_classes=num_classes,
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
    tables = [read_manifest(uri)[0] for uri in report.manifest_uris.values()]
    table = pa.concat_tables(tables)
    pq.write_table(table, manifest_uri)
    print(f"dataset: {table.num_rows} videos written and probed in {time.perf_counter() - started:.1f}s")
    return manifest_uri


def repeat_rows(table, repeat: int):
    """The manifest's rows ``repeat`` times, ids made distinct (``<id>#<r>``)."""
    import pyarrow as pa

    if repeat == 1:
        return table
    parts = []
    for r in range(repeat):
        ids = pa.array([f"{v}#{r}" for v in table.column(schema.VIDEO_ID).to_pylist()], pa.string())
        parts.append(table.set_column(table.schema.get_field_index(schema.VIDEO_ID), schema.VIDEO_ID, ids))
    return pa.concat_tables(parts)


def baseline_epoch(rows: list[dict]) -> int:
    """The plain loop: sample, decode with decord (one thread), resize, crop; returns clips made."""
    import decord

    num_clips = 0
    for row in rows:
        indices = sampling.tsn_test_indices(
            row[schema.NUM_FRAMES], CONFIG.num_segments, CONFIG.frames_per_segment
        )
        unique, inverse = sampling.unique_frames(indices)
        reader = decord.VideoReader(row[schema.VIDEO_URI], ctx=decord.cpu(0), num_threads=1)
        frames = reader.get_batch(unique.tolist()).asnumpy()  # (U, H, W, 3)
        del reader
        frames = transforms.resize_short_side(frames, CONFIG.short_side)
        clip = transforms.spatial_crop(frames[inverse], CONFIG.crop_size, 0, 1)  # (K, T, 224, 224, 3)
        num_clips += int(clip.shape[0] > 0)
    return num_clips


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (Ray's raylet, GCS and workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def consume(dataset) -> int:
    """Iterate a clip dataset the way a training loop does; returns rows seen."""
    num_rows = 0
    for batch in dataset.iter_batches(batch_size=16, batch_format="numpy", prefetch_batches=2):
        num_rows += len(batch[schema.VIDEO_ID])
    return num_rows


def rss_probe(rows: list[dict], num_videos: int) -> dict:
    """Ray task body: decode ``num_videos`` clips in a row through the pipeline's decode path; RSS samples."""
    from pipeline.clips.dataset import decode_views
    from pipeline.video.decode import index_from_bytes

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    samples = [(0, rss_mb())]
    started = time.perf_counter()
    for i in range(num_videos):
        row = rows[i % len(rows)]  # cycles through the files
        uri = row[schema.VIDEO_URI]
        decode_views(uri, index_from_bytes(uri, row[schema.FRAME_INDEX]), CONFIG, None)
        if (i + 1) % max(1, num_videos // 10) == 0:
            samples.append((i + 1, rss_mb()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"samples": samples, "peak_mb": peak, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-videos", type=int, default=48)
    parser.add_argument("--num-frames", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=4, help="times each video is decoded per pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: all)")
    parser.add_argument("--rss-videos", type=int, default=2000, help="0 skips the memory check")
    parser.add_argument("--data-dir", default=None, help="where the generated dataset is kept and reused")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pyarrow.parquet as pq
    import ray
    import torch

    torch.set_num_threads(1)  # the baseline is one process on one CPU; Ray workers get 1 thread per CPU too
    data_dir = args.data_dir or os.path.join(
        tempfile.gettempdir(),
        "stpa-bench",
        f"ucf101-320x240-{args.num_videos}v-{args.num_frames}f-m{schema.MANIFEST_VERSION}",
    )
    if args.repeat < 1 or args.rounds < 1:
        raise SystemExit("--repeat and --rounds must be >= 1")
    manifest_uri = prepare_data(data_dir, args.num_videos, args.num_frames)
    table = repeat_rows(pq.read_table(manifest_uri), args.repeat)
    rows = table.select(
        [schema.VIDEO_URI, schema.NUM_FRAMES, schema.DECODE_METHOD, schema.FRAME_INDEX]
    ).to_pylist()
    methods = {m: sum(r[schema.DECODE_METHOD] == m for r in rows) for m in schema.DECODE_METHODS}
    print(
        f"videos: {len(rows) // args.repeat} x {args.num_frames} frames, 320x240 MPEG-4 AVI, each decoded "
        f"{args.repeat}x per pass ({len(rows)} clips); decode methods {methods}"
    )

    from pipeline.clips.cache import cached_clip_dataset
    from pipeline.clips.dataset import build_clip_dataset

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.verbose_stats_logs = False
    context.enable_auto_log_stats = False
    context.execution_options.preserve_order = False
    cpus = int(ray.cluster_resources()["CPU"])
    cache_root = os.path.join(data_dir, "clip_cache")

    def run_pipeline() -> int:
        return consume(build_clip_dataset(table, CONFIG))

    def run_cache() -> int:
        dataset, entry = cached_clip_dataset(table, CONFIG, cache_root)
        assert entry.hit
        return consume(dataset)

    started = time.perf_counter()
    assert run_pipeline() == len(rows)
    print(f"warm-up: pipeline pass with worker start-up {time.perf_counter() - started:.2f}s")
    started = time.perf_counter()
    _, entry = cached_clip_dataset(table, CONFIG, cache_root)
    print(
        f"cache entry {entry.key} ({'hit' if entry.hit else 'written'}) in {time.perf_counter() - started:.2f}s"
    )
    assert run_cache() == len(rows)
    baseline_epoch(rows[:4])

    results: dict[str, list[float]] = {"baseline": [], "pipeline": [], "cache": []}
    cpu_per_clip: dict[str, list[float]] = {"baseline": [], "pipeline": [], "cache": []}
    for r in range(args.rounds):
        for name, run in (
            ("baseline", lambda: baseline_epoch(rows)),
            ("pipeline", run_pipeline),
            ("cache", run_cache),
        ):
            cpu_started, started = tree_cpu_seconds(), time.perf_counter()
            num_clips = run()
            seconds, cpu = time.perf_counter() - started, tree_cpu_seconds() - cpu_started
            assert num_clips == len(rows), (name, num_clips)
            results[name].append(num_clips / seconds)
            cpu_per_clip[name].append(cpu / num_clips)
            print(
                f"round {r}: {name:8s} {num_clips} clips in {seconds:6.2f}s = {num_clips / seconds:7.1f} clips/s, "
                f"{cpu:5.2f} CPU s ({1000 * cpu / num_clips:5.1f} ms per clip)"
            )
    baseline = statistics.median(results["baseline"])
    pipeline = statistics.median(results["pipeline"])
    cache = statistics.median(results["cache"])
    cpu_efficiency = statistics.median(cpu_per_clip["baseline"]) / statistics.median(cpu_per_clip["pipeline"])
    print(f"baseline (1 process, 1 CPU): {baseline:.1f} clips/s")
    print(f"pipeline ({cpus} CPUs): {pipeline:.1f} clips/s = {pipeline / cpus:.1f} clips/s per CPU")
    print(f"cache ({cpus} CPUs): {cache:.1f} clips/s")
    print(
        f"cpu_efficiency (baseline CPU per clip / pipeline CPU per clip, Ray processes included): {cpu_efficiency:.3f}"
    )

    if args.rss_videos:
        probe = ray.remote(num_cpus=1)(rss_probe)
        memory = ray.get(probe.remote(rows, args.rss_videos))
        samples = memory["samples"]
        print(
            f"memory: one Ray worker decoded {args.rss_videos} clips in {memory['seconds']:.1f}s; RSS (MB) after n "
            "clips: "
            + ", ".join(f"{n}: {mb:.0f}" for n, mb in samples)
            + f"; peak {memory['peak_mb']:.0f} MB"
        )
        growth = samples[-1][1] - samples[1][1] if len(samples) > 2 else float("nan")
        print(f"memory: RSS growth from the first tenth to the end: {growth:+.0f} MB")
    ray.shutdown()
    ratio = (pipeline / cpus) / baseline
    print(
        f"RESULT ingest ratio_per_cpu={ratio:.3f} clips_per_s={pipeline:.1f} cpus={cpus} "
        f"cache_speedup={cache / pipeline:.1f}"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
