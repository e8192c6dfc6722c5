"""Ingest benchmark: the Ray Data clip pipeline against the peers' loader (a torch DataLoader), and the cache.

    python benchmarks/ingest.py [--num-videos 48] [--num-frames 150] [--repeat 4] [--rounds 3] [--batch-size 16]
    python benchmarks/ingest.py --layout charades --repeat 1      # 640x480 H.264, 30 s: a realistic decode cost

Dataset: UCF101-like videos written by ``pipeline.data.synth.synthesize("ucf101", ...)``: 320x240, 25 fps, MPEG-4
Part 2 (xvid-style) in AVI, the generator's codec for the UCF101 layout (the real UCF101 is xvid AVI), encoder
default GOP (12); ``--layout charades``: Charades-like videos, 640x480, 24 fps, 720 frames (30 s), H.264 MP4 with
x264's default GOP (250), as the generator writes its Charades layout. The manifest comes from
``pipeline.data.prepare.prepare_manifest`` (train and test splits together). The dataset is kept under
``--data-dir`` and reused by later runs with the same parameters. Each pass (an "epoch") reads every video
``--repeat`` times (rows repeated under distinct ids), so a pass lasts seconds.

Clips: training clips as ``train_clips`` makes them: TSN sampling K=8 segments x T=1 frame, a random frame per
segment, shorter side resized to 256, TSN's multi-scale crop to 224 and a random flip (uint8 (8, 1, 224, 224, 3),
1.2 MB per clip), a new draw per epoch (``sampling.clip_rng``).

Three loaders, alternating within each of ``--rounds`` rounds (the order of the first two flips every round)
after one untimed warm-up pass of each; medians over rounds:
    (a) dataloader, the peers' loader (PySlowFast and MMAction2 feed their GPUs this way): a
        ``torch.utils.data.DataLoader`` over a map-style dataset whose item is one video's training clip made by
        ``pipeline.clips.dataset.decode_views`` (the function behind every row of the Ray pipeline), shuffled per
        epoch, ``num_workers`` = the pipeline's CPUs, persistent workers (forked before Ray starts), the same
        batch size and videos;
    (b) pipeline: ``build_clip_dataset`` + ``iter_batches`` on a local Ray with those CPUs, timed from building
        the dataset to the last row (decode workers warm, as on a long-running cluster);
    (c) cache: ``cached_clip_dataset`` (a hit: the entry, ``cache_samplings`` samplings per video, is written
        before the rounds), round r reads epoch r: a stored sampling with its own crop and flip.

CPU time per clip is counted per process group from ``/proc`` (user + system): the consuming process (this one:
the DataLoader's main process, or Ray Data's driver), the DataLoader's workers, Ray's workers and Ray's own
services (raylet, GCS, agents, the ledger). Each loader's figure is its own groups during its own pass; Ray's
services and idle workers also run during the DataLoader's pass (reported apart, not charged to it). Peak memory
is the highest sum of PSS (proportional set size: shared pages split between the processes that map them, read
from ``/proc/<pid>/smaps_rollup`` about once a second by a separate, niced process, whose CPU is in no group:
reading the smaps of Ray's processes costs the reader a few ms each, and sampling four times a second slowed the
cache's passes by half) of each loader's processes during its passes.

``ratio_vs_dataloader`` = pipeline clips/s / DataLoader clips/s (wall clock: on a shared machine it also measures
the neighbours); ``cpu_ratio_vs_dataloader`` = DataLoader CPU per clip / pipeline CPU per clip (above 1: the
pipeline is cheaper); ``cache_speedup`` = cache clips/s / pipeline clips/s; ``cache_cpu_speedup`` the same in CPU.
``--rss-videos N`` adds a memory check: one Ray task decodes N clips in a row and reports its RSS over time.

Last line: ``RESULT ingest ratio_vs_dataloader=... cache_speedup=... cpu_ratio_vs_dataloader=... ...``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import schema, storage
from pipeline.clips.dataset import ClipConfig

CONFIG = ClipConfig(num_segments=8, frames_per_segment=1, train=True, short_side=256, crop_size=224)
GROUPS = ("consumer", "dataloader_workers", "ray_workers", "ray_services")


# Generated datasets: (synth layout, width, height, fps, codec as the generator writes it).
LAYOUTS = {
    "ucf101": ("ucf101", 320, 240, 25.0, "MPEG-4 Part 2 AVI"),
    "charades": ("charades", 640, 480, 24.0, "H.264 MP4, x264 default GOP (250)"),
}


def prepare_data(data_dir: str, num_videos: int, num_frames: int, layout: str = "ucf101") -> str:
    """Synthesize the videos and prepare the manifest unless ``data_dir`` already holds them; the manifest URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.manifest import read_manifest
    from pipeline.data.prepare import prepare_manifest
    from pipeline.data.synth import synthesize

    manifest_uri = storage.join(data_dir, "all.parquet")
    if storage.exists(manifest_uri):
        return manifest_uri
    synth_layout, width, height, fps, _ = LAYOUTS[layout]
    videos_per_class = 4
    num_classes = max(3, num_videos // videos_per_class)
    started = time.perf_counter()
    summary = synthesize(
        synth_layout,
        storage.join(data_dir, "root"),
        num_classes=num_classes,
        videos_per_class=videos_per_class,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
    )
    report = prepare_manifest(
        synth_layout,
        summary.videos_uri,
        summary.annotations_uri,
        storage.join(data_dir, "manifest"),
        use_ray=False,
        val_fraction=0,
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


def consume(dataset, batch_size: int = 16) -> int:
    """Iterate a clip dataset the way a training loop does; returns rows seen."""
    num_rows = 0
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
        num_rows += len(batch[schema.VIDEO_ID])
    return num_rows


# --- the peers' loader -------------------------------------------------------------------------------------------
class TrainingClips:
    """Map-style dataset (``torch.utils.data.Dataset`` protocol): item ``(i, epoch)`` is video i's training clip of
    that epoch, made by ``decode_views`` as a row of the Ray pipeline is (same manifest row, same generator)."""

    def __init__(self, rows: list[dict], config: ClipConfig) -> None:
        self.rows = rows
        self.config = config

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]):
        import torch

        from pipeline.clips.dataset import decode_views, video_index_of
        from pipeline.video import sampling

        i, epoch = key
        row = self.rows[i]
        index = video_index_of(row)
        rng = sampling.clip_rng(self.config.seed, epoch, row.video_id)
        views, _ = decode_views(row.uri, index, self.config, rng)
        return torch.from_numpy(views[0]), i  # uint8 (K, T, S, S, 3); the index stands in for the labels

    @staticmethod
    def rows_of(table) -> list:
        from pipeline.clips.dataset import video_rows

        multi_label = schema.LABELS in table.column_names
        return video_rows(table, len(schema.class_names_of(table.schema)) if multi_label else None)


class EpochSampler:
    """Yields ``(index, epoch)`` in a new random order each epoch (set ``epoch`` before iterating)."""

    def __init__(self, num_items: int, seed: int = 0) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        return iter([(int(i), self.epoch) for i in order])


def dataloader_epoch(loader, sampler: EpochSampler, epoch: int) -> int:
    sampler.epoch = epoch
    num_clips = 0
    for frames, _ in loader:
        num_clips += len(frames)
    return num_clips


# --- process accounting ------------------------------------------------------------------------------------------
def process_groups(root: int | None = None, exclude: tuple[int, ...] = ()) -> dict[str, list[int]]:
    """Process ``root`` (default: this one) and its descendants by role. DataLoader workers are forks of it (same
    command line); Ray's workers name themselves ``ray::...``; every other descendant not in ``exclude`` is one of
    Ray's services."""
    import psutil

    me = psutil.Process(root)
    my_cmdline = me.cmdline()
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    groups["consumer"].append(me.pid)
    for child in me.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if child.pid in exclude:
            continue
        if cmdline == my_cmdline:
            groups["dataloader_workers"].append(child.pid)
        elif cmdline and cmdline[0].startswith("ray::"):
            groups["ray_workers"].append(child.pid)
        else:
            groups["ray_services"].append(child.pid)
    return groups


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


def pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def sample_memory(root: int, interval: float) -> None:
    """``--memory-sampler`` process body: every ``interval`` s, one line ``<time> <group>=<PSS MB> ...`` for the
    processes of ``root`` (its own CPU and memory are left out of every group)."""
    os.nice(10)  # after the loaders measured
    while True:
        groups = process_groups(root, exclude=(os.getpid(),))
        sums = {g: sum(pss_mb(pid) for pid in pids) for g, pids in groups.items()}
        print(f"{time.time():.3f} " + " ".join(f"{g}={mb:.1f}" for g, mb in sums.items()), flush=True)
        time.sleep(interval)


class PeakMemory:
    """PSS sums per process group, sampled by a separate process (``--memory-sampler``): reading
    ``smaps_rollup`` of Ray's many processes costs CPU that would otherwise be charged to this one."""

    def __init__(self, interval: float = 1.0) -> None:
        import subprocess

        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--memory-sampler", str(os.getpid()), str(interval)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            stamp, *fields = line.split()
            self.samples.append((float(stamp), {k: float(v) for k, v in (f.split("=") for f in fields)}))

    def peak(self, groups: tuple[str, ...], start: float, end: float) -> float:
        """The highest PSS sum of ``groups`` sampled between ``start`` and ``end`` (``time.time()``)."""
        inside = [sums for stamp, sums in list(self.samples) if start <= stamp <= end]
        return max((sum(sums[g] for g in groups) for sums in inside), default=float("nan"))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def measure(run, groups_of_loader: tuple[str, ...], memory: PeakMemory) -> dict:
    """Run one pass; wall time, clips, CPU seconds per process group, peak PSS of the loader's processes."""
    exclude = (memory.process.pid,)
    before = {g: cpu_seconds(p) for g, p in process_groups(exclude=exclude).items()}
    wall_start, started = time.time(), time.perf_counter()
    num_clips = run()
    seconds, wall_end = time.perf_counter() - started, time.time()
    cpu = {}
    for g, pids in process_groups(exclude=exclude).items():
        now = cpu_seconds(pids)
        cpu[g] = sum(t - before[g].get(pid, 0.0) for pid, t in now.items())
    time.sleep(memory.interval + 0.2)  # a sample just after the pass too (a short pass may fall between two)
    peak = memory.peak(groups_of_loader, wall_start, wall_end + memory.interval)
    return {"clips": num_clips, "seconds": seconds, "cpu": cpu, "peak_mb": peak, "groups": groups_of_loader}


def rss_probe(rows: list, num_videos: int) -> dict:
    """Ray task body: decode ``num_videos`` clips in a row through the pipeline's decode path; RSS samples."""
    from pipeline.clips.dataset import decode_views, video_index_of
    from pipeline.video import sampling

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
        rng = sampling.clip_rng(CONFIG.seed, i // len(rows), row.video_id)
        decode_views(row.uri, video_index_of(row), CONFIG, rng)
        if (i + 1) % max(1, num_videos // 10) == 0:
            samples.append((i + 1, rss_mb()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"samples": samples, "peak_mb": peak, "seconds": time.perf_counter() - started}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="ucf101", help="generated videos")
    parser.add_argument("--num-videos", type=int, default=48)
    parser.add_argument("--num-frames", type=int, default=None, help="default: 150 (ucf101), 720 (charades)")
    parser.add_argument("--repeat", type=int, default=4, help="times each video is read per pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="Ray CPUs and DataLoader workers (default: all)"
    )
    parser.add_argument(
        "--rss-videos", type=int, default=0, help="clips one Ray task decodes for the memory check"
    )
    parser.add_argument("--data-dir", default=None, help="where the generated dataset is kept and reused")
    parser.add_argument("--memory-sampler", nargs=2, metavar=("PID", "INTERVAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_sampler:
        sample_memory(int(args.memory_sampler[0]), float(args.memory_sampler[1]))
        return
    if args.repeat < 1 or args.rounds < 1 or args.batch_size < 1:
        raise SystemExit("--repeat, --rounds and --batch-size must be >= 1")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pyarrow.parquet as pq
    import ray
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(
        1
    )  # the consumer only batches; decoders get one thread per CPU (Ray and DataLoader)
    cpus = args.num_cpus or os.cpu_count() or 1
    num_frames = args.num_frames or (720 if args.layout == "charades" else 150)
    _, width, height, fps, codec = LAYOUTS[args.layout]
    data_dir = args.data_dir or os.path.join(
        tempfile.gettempdir(),
        "stpa-bench",
        f"{args.layout}-{width}x{height}-{args.num_videos}v-{num_frames}f-m{schema.MANIFEST_VERSION}",
    )
    manifest_uri = prepare_data(data_dir, args.num_videos, num_frames, args.layout)
    table = repeat_rows(pq.read_table(manifest_uri), args.repeat)
    rows = TrainingClips.rows_of(table)
    print(
        f"videos: {len(rows) // args.repeat} x {num_frames} frames, {width}x{height} at {fps:g} fps, {codec}, each "
        f"read {args.repeat}x per pass ({len(rows)} clips, batch {args.batch_size}); {cpus} CPUs; "
        f"load average {load_average()}"
    )

    # The peers' loader first: its workers fork from this process before Ray starts any thread.
    sampler = EpochSampler(len(rows))
    loader = DataLoader(
        TrainingClips(rows, CONFIG),
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=cpus,
        persistent_workers=True,
        prefetch_factor=2,
    )
    started = time.perf_counter()
    assert dataloader_epoch(loader, sampler, 0) == len(rows)
    print(f"warm-up: DataLoader pass with worker start-up {time.perf_counter() - started:.2f}s")

    from pipeline.clips.cache import cached_clip_dataset
    from pipeline.clips.dataset import build_clip_dataset

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.verbose_stats_logs = False
    context.enable_auto_log_stats = False
    cache_root = os.path.join(data_dir, "clip_cache")

    def run_pipeline() -> int:
        return consume(build_clip_dataset(table, CONFIG), args.batch_size)

    def run_cache(epoch: int) -> int:
        dataset, entry = cached_clip_dataset(table, CONFIG, cache_root, epoch=epoch)
        assert entry.hit
        return consume(dataset, args.batch_size)

    started = time.perf_counter()
    assert run_pipeline() == len(rows)
    print(f"warm-up: pipeline pass with worker start-up {time.perf_counter() - started:.2f}s")
    started = time.perf_counter()
    _, entry = cached_clip_dataset(table, CONFIG, cache_root)
    print(
        f"cache entry {entry.key} ({'hit' if entry.hit else 'written'}, {entry.num_samplings} samplings per video) "
        f"in {time.perf_counter() - started:.2f}s"
    )
    assert run_cache(0) == len(rows)

    memory = PeakMemory()
    loaders = {
        "dataloader": ("consumer", "dataloader_workers"),
        "pipeline": ("consumer", "ray_workers", "ray_services"),
        "cache": ("consumer", "ray_workers", "ray_services"),
    }
    results: dict[str, list[dict]] = {name: [] for name in loaders}
    for r in range(args.rounds):
        runs = {
            "dataloader": lambda epoch=r + 1: dataloader_epoch(loader, sampler, epoch),
            "pipeline": run_pipeline,
            "cache": lambda epoch=r + 1: run_cache(epoch),
        }
        order = ("dataloader", "pipeline", "cache") if r % 2 == 0 else ("pipeline", "dataloader", "cache")
        for name in order:
            m = measure(runs[name], loaders[name], memory)
            assert m["clips"] == len(rows), (name, m["clips"])
            results[name].append(m)
            own = sum(m["cpu"][g] for g in m["groups"])
            split = ", ".join(f"{g} {1000 * m['cpu'][g] / m['clips']:.1f}" for g in GROUPS if m["cpu"][g] > 0)
            print(
                f"round {r}: {name:10s} {m['clips']} clips in {m['seconds']:6.2f}s = "
                f"{m['clips'] / m['seconds']:7.1f} clips/s; CPU {1000 * own / m['clips']:5.1f} ms per clip "
                f"(ms per clip by group: {split}); peak PSS {m['peak_mb']:.0f} MB; load {load_average()}"
            )
    memory.stop()

    def median(name: str, key: str) -> float:
        if key == "clips_per_s":
            return statistics.median(m["clips"] / m["seconds"] for m in results[name])
        if key == "cpu_ms":
            return statistics.median(
                1000 * sum(m["cpu"][g] for g in m["groups"]) / m["clips"] for m in results[name]
            )
        if key == "peak_mb":
            return max(m["peak_mb"] for m in results[name])
        return statistics.median(1000 * m["cpu"][key] / m["clips"] for m in results[name])

    for name in loaders:
        groups = ", ".join(f"{g} {median(name, g):.1f}" for g in GROUPS)
        print(
            f"{name}: {median(name, 'clips_per_s'):.1f} clips/s, {median(name, 'cpu_ms'):.1f} CPU ms per clip "
            f"(medians; by group, all processes: {groups}); peak PSS {median(name, 'peak_mb'):.0f} MB"
        )

    if args.rss_videos:
        probe = ray.remote(num_cpus=1)(rss_probe)
        memory_check = ray.get(probe.remote(rows, args.rss_videos))
        samples = memory_check["samples"]
        print(
            f"memory: one Ray worker decoded {args.rss_videos} clips in {memory_check['seconds']:.1f}s; RSS (MB) "
            "after n clips: "
            + ", ".join(f"{n}: {mb:.0f}" for n, mb in samples)
            + f"; peak {memory_check['peak_mb']:.0f} MB"
        )
    ray.shutdown()
    pipeline, dataloader, cache = (median(n, "clips_per_s") for n in ("pipeline", "dataloader", "cache"))
    pipeline_cpu, dataloader_cpu, cache_cpu = (
        median(n, "cpu_ms") for n in ("pipeline", "dataloader", "cache")
    )
    print(f"load average at the end {load_average()}")
    print(
        f"RESULT ingest ratio_vs_dataloader={pipeline / dataloader:.3f} cache_speedup={cache / pipeline:.1f} "
        f"cpu_ratio_vs_dataloader={dataloader_cpu / pipeline_cpu:.3f} cache_cpu_speedup={pipeline_cpu / cache_cpu:.1f} "
        f"pipeline_clips_per_s={pipeline:.1f} dataloader_clips_per_s={dataloader:.1f} cache_clips_per_s={cache:.1f} "
        f"pipeline_peak_mb={median('pipeline', 'peak_mb'):.0f} dataloader_peak_mb={median('dataloader', 'peak_mb'):.0f} "
        f"cpus={cpus} batch={args.batch_size}"
    )


if __name__ == "__main__":
    main()
