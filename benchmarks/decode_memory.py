"""Memory of one process decoding many videos in a row (issue 2: a worker decoding 2,000 videos must not grow
without bound; decord is known to leak).

Videos are generated once into a temporary folder (tiny H.264 MP4s by default, each different; ``--num-distinct``
cycles over fewer files for larger sizes, whose encoding is slow), then each variant runs in its own fresh Python
process and reads 8 sparse frames from every video. The parent imports nothing heavy and generates in a child too:
Linux carries ``ru_maxrss`` over fork and exec, so a heavy parent would set every child's peak.

    read_frames   the project's code path: ``pipeline.video.decode.read_frames(path, indices, index=...)`` with
                  each file's index (made once, as ``stpa prepare`` does), bytes through fsspec, the read method
                  the index chose (exact seeking with PyAV, or a fresh decord reader dropped before returning)
    held_readers  the "before": plain decord readers on the same files, the last ``--num-held`` of them kept
                  alive (what an open-decoder cache, or the first version of ``VideoDecoder`` that kept its
                  reader open across reads, does). decord keeps decoding the rest of a video in a background
                  thread while its reader lives, so memory grows with the decoded size of the held videos.

Current RSS is sampled every ``--sample-every`` videos so growth is visible; the growth rate is the least-squares
slope of the samples after the first ``--warmup`` videos. The last line is
``RESULT decode_memory peak_rss_mb=<..> growth_mb_per_1000=<..> videos=<..>`` for the ``read_frames`` variant.

    python benchmarks/decode_memory.py                                    # 2000 tiny videos (64x48, 32 frames)
    python benchmarks/decode_memory.py --width 320 --height 240 --num-frames 150 --num-videos 1000 --num-distinct 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("read_frames", "held_readers")
NUM_INDICES = 8


def current_rss_mb() -> float:
    """Resident set size now (Linux ``/proc``; elsewhere the peak, which is all ``getrusage`` offers)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def sparse_indices(num_frames: int) -> list[int]:
    """NUM_INDICES frames spread over the video (the centres of equal segments, like TSN at test time)."""
    return [int((k + 0.5) * num_frames / NUM_INDICES) for k in range(NUM_INDICES)]


def generate(folder: Path, num_videos: int, width: int, height: int, num_frames: int) -> list[str]:
    """Write ``num_videos`` different H.264 MP4s (GOP 16) and return their paths."""
    from pipeline.video.encode import index_frames, write_video

    paths = []
    for i in range(num_videos):
        frames = index_frames(num_frames, width, height, seed=i)
        paths.append(
            write_video(str(folder / f"v{i:05d}.mp4"), frames, 25, container_format="mp4", gop_size=16)
        )
    return paths


def run_variant(
    variant: str, paths: list[str], num_videos: int, num_frames: int, sample_every: int, num_held: int
) -> dict:
    """Decode ``num_videos`` videos (cycling over ``paths``) with ``variant``.

    Returns:
        ``{"variant", "seconds", "samples": [(videos done, current RSS MB, peak RSS MB), ...]}``; both variants
        import the same modules before the first sample.
    """
    import decord

    from pipeline.video.decode import index_video, read_frames

    indices = sparse_indices(num_frames)
    indexes = {path: index_video(path) for path in paths} if variant == "read_frames" else {}
    held: list[decord.VideoReader] = []
    samples = [(0, current_rss_mb(), peak_rss_mb())]
    start = time.perf_counter()
    for done in range(1, num_videos + 1):
        path = paths[(done - 1) % len(paths)]
        if variant == "read_frames":
            frames = read_frames(path, indices, index=indexes[path])
        else:
            reader = decord.VideoReader(path, num_threads=1)
            frames = reader.get_batch(indices).asnumpy()
            held.append(reader)
            if len(held) > num_held:
                held.pop(0)
        assert frames.shape[0] == NUM_INDICES
        if done % sample_every == 0 or done == num_videos:
            samples.append((done, current_rss_mb(), peak_rss_mb()))
    return {"variant": variant, "samples": samples, "seconds": time.perf_counter() - start}


def growth_per_1000(samples: list[tuple[int, float, float]], warmup: int) -> float:
    """Least-squares slope of current RSS against videos done, after ``warmup`` videos, in MB per 1000."""
    points = [(n, rss) for n, rss, _ in samples if n >= warmup]
    if len(points) < 2:
        return float("nan")
    mean_n = sum(n for n, _ in points) / len(points)
    mean_rss = sum(r for _, r in points) / len(points)
    covariance = sum((n - mean_n) * (r - mean_rss) for n, r in points)
    variance = sum((n - mean_n) ** 2 for n, _ in points)
    return covariance / variance * 1000


def child_env() -> dict[str, str]:
    """The environment of the child processes: the repository importable without installing it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-videos", type=int, default=2000, help="videos decoded by each variant")
    parser.add_argument("--num-distinct", type=int, default=0, help="files generated (0: --num-videos)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200, help="videos before the growth fit starts")
    parser.add_argument("--num-held", type=int, default=8, help="readers kept alive by held_readers")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--run-variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    num_distinct = args.num_distinct or args.num_videos

    if args.generate:
        generate(Path(args.folder), num_distinct, args.width, args.height, args.num_frames)
        return
    if args.run_variant:
        paths = sorted(str(p) for p in Path(args.folder).glob("*.mp4"))
        result = run_variant(
            args.run_variant, paths, args.num_videos, args.num_frames, args.sample_every, args.num_held
        )
        print(json.dumps(result))
        return

    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose from {VARIANTS}")
    with tempfile.TemporaryDirectory(prefix="decode_memory_") as folder:
        common = [sys.executable, __file__, "--folder", folder, "--num-videos", str(args.num_videos)]
        common += [
            "--num-distinct",
            str(num_distinct),
            "--width",
            str(args.width),
            "--height",
            str(args.height),
        ]
        common += ["--num-frames", str(args.num_frames), "--sample-every", str(args.sample_every)]
        common += ["--num-held", str(args.num_held)]
        start = time.perf_counter()
        subprocess.run([*common, "--generate"], check=True, env=child_env())
        print(
            f"generated {num_distinct} videos ({args.width}x{args.height}, {args.num_frames} frames, H.264 MP4) in "
            f"{time.perf_counter() - start:.1f} s; each variant decodes {args.num_videos}, {NUM_INDICES} sparse "
            "frames from each"
        )
        results = {}
        for variant in variants:
            completed = subprocess.run(
                [*common, "--run-variant", variant],
                check=True,
                capture_output=True,
                text=True,
                env=child_env(),
            )
            results[variant] = json.loads(completed.stdout.strip().splitlines()[-1])

    for variant, result in results.items():
        print(f"\n{variant}: {len(result['samples']) - 1} samples, {result['seconds']:.1f} s")
        print("  videos  rss_mb  peak_mb")
        for done, rss, peak in result["samples"]:
            print(f"  {done:6d}  {rss:6.1f}  {peak:7.1f}")
        growth = growth_per_1000(result["samples"], args.warmup)
        peak = max(max(r, p) for _, r, p in result["samples"])
        print(f"  peak_rss_mb={peak:.1f} growth_mb_per_1000={growth:.2f}")
    if "read_frames" in results:
        samples = results["read_frames"]["samples"]
        peak = max(max(r, p) for _, r, p in samples)
        growth = growth_per_1000(samples, args.warmup)
        print(
            f"RESULT decode_memory peak_rss_mb={peak:.1f} growth_mb_per_1000={growth:.2f} "
            f"videos={samples[-1][0]}"
        )


if __name__ == "__main__":
    main()
