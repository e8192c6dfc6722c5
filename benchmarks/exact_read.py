"""Exact-read benchmark: K=8 TSN training clips per second, the exact PyAV reader (``pipeline.video.decode``, method
"seek") vs decord's sparse ``get_batch``, on files where both give the right frames (``decord_verdict`` passes).

    python benchmarks/exact_read.py [--clips 16] [--rounds 3]

Files, written with PyAV into a temporary folder (``benchmarks/probe.py``'s synthetic content), H.264 in MP4
without B-frames (closed GOP), the files on which the decord rule lets decord be used:
    320x240_g16   320x240, 25 fps, 175 frames, GOP 16 (the re-encoding the peers recommend)
    640x480_g16   640x480, 30 fps, 300 frames, GOP 16
    640x480_g250  640x480, 30 fps, 300 frames, libx264's default GOP (keyint 250: two keyframes)
A clip is one TSN training draw: 8 equal segments, one random frame in each (one clip per video read). Both
readers start from the file's bytes in memory and open a fresh decoder per clip (as ``pipeline.video`` does, to
bound decord's memory), single-threaded; both return uint8 (8, H, W, 3) RGB. Each round reads ``--clips`` clips of
every file with each reader, alternating clip by clip (which goes first flips every round); the same random clips
for both. CPU time
(``time.process_time``: every thread of this process, decord's read-ahead thread included) is the primary
clock on this shared machine; wall time is reported too.

Last line: ``RESULT exact_read ratio=<exact clips/s / decord clips/s, CPU> wall_ratio=<same, wall-clock sums>
median_wall_ratio=<same, per-clip median wall times> ...`` (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import decord
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.probe import write_synthetic_video  # noqa: E402
from pipeline.video.decode import DECORD, SEEK, ReadStats, decord_verdict, index_video, read_frames  # noqa: E402

NUM_SEGMENTS = 8
# name: (width, height, fps, num_frames, encoder options)
FILES: dict[str, tuple[int, int, int, int, dict[str, str]]] = {
    "320x240_g16": (320, 240, 25, 175, {"bf": "0", "g": "16"}),
    "640x480_g16": (640, 480, 30, 300, {"bf": "0", "g": "16"}),
    "640x480_g250": (640, 480, 30, 300, {"bf": "0"}),
}


def tsn_train_indices(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """int64 (8,): one random frame in each of 8 equal segments (TSN training sampling)."""
    bounds = np.linspace(0, num_frames, NUM_SEGMENTS + 1)
    starts, stops = np.floor(bounds[:-1]).astype(np.int64), np.floor(bounds[1:]).astype(np.int64)
    return starts + (rng.random(NUM_SEGMENTS) * (stops - starts)).astype(np.int64)


def read_decord(data: bytes, indices: np.ndarray) -> np.ndarray:
    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    frames = reader.get_batch(indices.tolist()).asnumpy()  # (8, H, W, 3)
    del reader
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=16, help="clips per file, reader and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    # reader -> per clip (cpu s, wall s), all files
    samples: dict[str, list[tuple[float, float]]] = {"exact": [], "decord": []}
    num_files = 0
    with tempfile.TemporaryDirectory() as folder:
        for n, (name, (width, height, fps, num_frames, options)) in enumerate(FILES.items()):
            path = Path(folder) / f"{name}.mp4"
            write_synthetic_video(path, width, height, fps, num_frames, "mp4", "libx264", options, seed=n)
            uri, data = str(path), path.read_bytes()
            index = index_video(uri, data=data, allow_decord=True)
            if index.method != DECORD:
                print(f"{name}: skipped, decord not allowed ({decord_verdict(index)})")
                continue
            num_files += 1
            rng = np.random.default_rng(n)
            clips = [tsn_train_indices(index.num_frames, rng) for _ in range(args.clips * args.rounds)]
            # Both readers agree on every frame of the first clips (the rule says they must).
            for clip in clips[:4]:
                exact = read_frames(uri, clip, index=index, data=data, method=SEEK)
                np.testing.assert_array_equal(exact, read_decord(data, clip))
            per_file: dict[str, list[tuple[float, float]]] = {"exact": [], "decord": []}
            stats = ReadStats()
            for round_ in range(args.rounds):
                # Alternating clip by clip (the order flipped every round), so that a busy neighbour on this
                # shared machine slows both readers alike.
                for clip in clips[round_ * args.clips : (round_ + 1) * args.clips]:
                    for reader in ("exact", "decord") if round_ % 2 == 0 else ("decord", "exact"):
                        cpu, wall = time.process_time(), time.perf_counter()
                        if reader == "exact":
                            read_frames(uri, clip, index=index, data=data, method=SEEK, stats=stats)
                        else:
                            read_decord(data, clip)
                        per_file[reader].append((time.process_time() - cpu, time.perf_counter() - wall))
            for reader, times in per_file.items():
                samples[reader].extend(times)
            cpu_ms = {r: 1e3 * sum(t[0] for t in per_file[r]) / len(per_file[r]) for r in per_file}
            wall_ms = {r: 1e3 * statistics.median(t[1] for t in per_file[r]) for r in per_file}
            num_clips = len(per_file["exact"])
            print(
                f"{name:<13} exact {1e3 / cpu_ms['exact']:5.1f} clips/s CPU ({cpu_ms['exact']:5.1f} ms, "
                "median wall "
                f"{wall_ms['exact']:5.1f} ms)  decord {1e3 / cpu_ms['decord']:5.1f} clips/s CPU "
                f"({cpu_ms['decord']:5.1f} ms, median wall {wall_ms['decord']:5.1f} ms)  "
                f"ratio {cpu_ms['decord'] / cpu_ms['exact']:.2f}  exact decoded "
                f"{stats.num_decoded / num_clips:.1f} frames/clip, {stats.num_seeks / num_clips:.1f} seeks/clip"
            )
    # The same clips with both readers: the ratio of clips/s is the inverse ratio of time.
    ratio = sum(t[0] for t in samples["decord"]) / sum(t[0] for t in samples["exact"])
    wall_ratio = sum(t[1] for t in samples["decord"]) / sum(t[1] for t in samples["exact"])
    # Per-clip medians: less sensitive to preemption by neighbours than sums.
    median_wall_ratio = statistics.median(t[1] for t in samples["decord"]) / statistics.median(
        t[1] for t in samples["exact"]
    )
    print(
        f"RESULT exact_read ratio={ratio:.2f} wall_ratio={wall_ratio:.2f} "
        f"median_wall_ratio={median_wall_ratio:.2f} "
        f"files={num_files} clips_per_file={args.clips * args.rounds} segments={NUM_SEGMENTS}"
    )


if __name__ == "__main__":
    main()
