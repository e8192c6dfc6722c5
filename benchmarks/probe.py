"""Probe benchmark: indexing a video by demuxing (``pipeline.video.decode.index_video``) vs the probe it replaced
(``benchmarks/legacy_probe.py``, the former ``pipeline/video.py``: a full sequential PyAV decode, then decord checked at a few positions).

    python benchmarks/probe.py [--num-ucf101 3] [--num-charades 2] [--rounds 3]

Files, written by this script into a temporary folder with PyAV (moving gradient, a moving square and mild noise,
so the encoders make ordinary P/B-frame decisions):
    ucf101:   320x240, 25 fps, 175 frames, MPEG-4 Part 2 (xvid-style, encoder defaults: GOP 12) in AVI
    charades: 640x480, 30 fps, 30 s (900 frames), H.264 (libx264 defaults: long GOP up to 250, B-frames) in MP4
Both probes get the file's bytes (no disk read in the timing). Each round probes every file with both, in
alternating order; per file the median over rounds is kept. CPU is ``time.process_time`` (all threads of this
process, decord's included), steadier than wall time on a shared machine; wall is reported too.

Last line: ``RESULT probe speedup=<old CPU / new CPU, all files> ucf101_speedup=.. charades_speedup=.. ...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.legacy_probe import probe_video  # noqa: E402  (the baseline)
from pipeline.video.decode import index_video  # noqa: E402

# kind: (width, height, fps, num_frames, container, codec, encoder options)
KINDS: dict[str, tuple[int, int, int, int, str, str, dict[str, str]]] = {
    "ucf101": (320, 240, 25, 175, "avi", "mpeg4", {}),
    "charades": (640, 480, 30, 900, "mp4", "libx264", {}),
}


def synthetic_frame(i: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (height, width, 3): a drifting gradient, a square moving across it, and noise of +-4 levels."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = (xs + 2 * ys + 3 * i) % 256
    image = np.stack([base, (base * 3 // 2 + 40) % 256, (255 - base)], axis=-1).astype(np.int16)  # (H, W, 3)
    side = height // 4
    x0, y0 = (7 * i) % (width - side), (3 * i) % (height - side)
    image[y0 : y0 + side, x0 : x0 + side] = (200, 60, 30)
    image += rng.integers(-4, 5, size=image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_video(
    path: Path,
    width: int,
    height: int,
    fps: int,
    num_frames: int,
    container_format: str,
    codec: str,
    options: dict[str, str],
    seed: int = 0,
) -> Path:
    """Encode ``num_frames`` synthetic frames with PyAV; returns ``path``."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, width, height, rng), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def timed(probe: Callable[..., object], uri: str, data: bytes) -> tuple[float, float]:
    """``(cpu_s, wall_s)`` of one ``probe(uri, data=data)``."""
    cpu, wall = time.process_time(), time.perf_counter()
    probe(uri, data=data)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-ucf101", type=int, default=3)
    parser.add_argument("--num-charades", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts = {"ucf101": args.num_ucf101, "charades": args.num_charades}

    with tempfile.TemporaryDirectory() as folder:
        files: list[tuple[str, str, bytes]] = []  # (kind, uri, bytes)
        start = time.perf_counter()
        for kind, (width, height, fps, num_frames, container_format, codec, options) in KINDS.items():
            for n in range(counts[kind]):
                path = Path(folder) / f"{kind}_{n}.{container_format}"
                write_synthetic_video(
                    path, width, height, fps, num_frames, container_format, codec, options, n
                )
                files.append((kind, str(path), path.read_bytes()))
        print(f"wrote {len(files)} files in {time.perf_counter() - start:.1f} s")

        times: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (uri, probe) -> [(cpu, wall)]
        for uri_kind, uri, data in files:  # one untimed warm-up of each (imports, first-call costs)
            index_video(uri, data=data)
            probe_video(uri, data=data)
            print(f"{uri_kind}: {os.path.basename(uri)} {len(data) / 1e6:.2f} MB")
        for round_ in range(args.rounds):
            for _, uri, data in files:
                probes = [("new", index_video), ("old", probe_video)]
                for name, probe in probes if round_ % 2 == 0 else probes[::-1]:
                    times.setdefault((uri, name), []).append(timed(probe, uri, data))

    print(
        f"{'file':<16} {'new cpu ms':>10} {'old cpu ms':>10} {'new wall ms':>11} {'old wall ms':>11} "
        f"{'speedup':>8}"
    )
    per_kind: dict[str, list[tuple[float, float]]] = {}
    for kind, uri, _ in files:
        new_cpu, new_wall = (statistics.median(t[i] for t in times[(uri, "new")]) for i in (0, 1))
        old_cpu, old_wall = (statistics.median(t[i] for t in times[(uri, "old")]) for i in (0, 1))
        per_kind.setdefault(kind, []).append((new_cpu, old_cpu))
        print(
            f"{os.path.basename(uri):<16} {new_cpu * 1e3:>10.1f} {old_cpu * 1e3:>10.1f} {new_wall * 1e3:>11.1f} "
            f"{old_wall * 1e3:>11.1f} {old_cpu / new_cpu:>8.1f}"
        )
    figures = []
    for kind, pairs in per_kind.items():
        new, old = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        figures.append(
            f"{kind}_speedup={old / new:.1f} {kind}_new_cpu_ms={new / len(pairs) * 1e3:.1f} "
            f"{kind}_old_cpu_ms={old / len(pairs) * 1e3:.1f}"
        )
    total_new = sum(p[0] for pairs in per_kind.values() for p in pairs)
    total_old = sum(p[1] for pairs in per_kind.values() for p in pairs)
    print(f"RESULT probe speedup={total_old / total_new:.1f} " + " ".join(figures) + f" rounds={args.rounds}")


if __name__ == "__main__":
    main()
