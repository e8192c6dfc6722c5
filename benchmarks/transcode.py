"""Transcode benchmark: K=8 TSN training clips per CPU second from Charades-like videos before and after
``pipeline.video.transcode`` (the copies ``stpa transcode`` makes), in the same run.

    python benchmarks/transcode.py [--num-videos 4] [--clips-per-video 6] [--rounds 3] [--data-dir DIR]

Sources, written once by this script with PyAV and kept under ``--data-dir`` (Charades as downloaded is 480p
H.264): 640x480, 24 fps, 30 s (720 frames), libx264 at its defaults (preset medium: a keyframe at most every 250
frames, B-frames, CABAC) in MP4; frames are ``benchmarks/probe.py``'s drifting gradient, moving square and noise.

Copies, made in this run by ``transcode_video`` (CPU time reported per video):
    copy    the default settings: short side 256 (342x256), an IDR frame every 16 frames, no B-frames (CRF 20,
            preset veryfast)
    gop16   the same at full size (short side 480): what the keyframe interval alone gives

Clips: ``pipeline.clips.dataset.decode_views`` (the function behind every row of the Ray Data pipeline) with the
training config K=8 segments x T=1 frame, short side 256, multi-scale crop to 224, flip; the sampling generator of
(video, round) is the same for the three files of a video, so they decode the same frame indices. Bytes are read
into memory first (no storage in the timing), one thread (torch and the decoder). Each round decodes
``--clips-per-video`` clips of every video from the original, the gop16 copy and the copy, alternating, and
counts this process's CPU time (``time.process_time``: steady on a shared machine) and wall time.

Last line: ``RESULT transcode speedup=<copy clips per CPU s / original's> gop16_speedup=... clips_per_cpu_s=<original>
clips_per_cpu_s_copy=... wall_speedup=... transcode_cpu_s=<per video> break_even_clips=<clips per video after which
the transcode has paid for itself>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.probe import write_synthetic_video  # noqa: E402
from pipeline.clips.dataset import ClipConfig, decode_views  # noqa: E402
from pipeline.video import sampling  # noqa: E402
from pipeline.video.decode import VideoIndex, index_video  # noqa: E402
from pipeline.video.transcode import TranscodeSettings, transcode_video  # noqa: E402

WIDTH, HEIGHT, FPS, NUM_FRAMES = 640, 480, 24, 720
CONFIG = ClipConfig(num_segments=8, frames_per_segment=1, train=True, short_side=256, crop_size=224)
VARIANTS = {"copy": TranscodeSettings(), "gop16": TranscodeSettings(short_side=min(WIDTH, HEIGHT))}


def make_sources(data_dir: Path, num_videos: int) -> list[Path]:
    """The Charades-like originals (written once, then reused)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_videos):
        path = data_dir / f"charades_like_{i}.mp4"
        if not path.exists():
            started = time.perf_counter()
            partial = path.with_suffix(".part.mp4")
            write_synthetic_video(partial, WIDTH, HEIGHT, FPS, NUM_FRAMES, "mp4", "libx264", {}, seed=i)
            partial.rename(path)
            print(f"wrote {path} in {time.perf_counter() - started:.1f}s")
        paths.append(path)
    return paths


def decode_clips(uri: str, index: VideoIndex, data: bytes, video: int, round_: int, num_clips: int) -> float:
    """CPU seconds to decode ``num_clips`` training clips of one file (the same samplings for every variant)."""
    started = time.process_time()
    for clip in range(num_clips):
        rng = sampling.clip_rng(CONFIG.seed, round_ * num_clips + clip, f"video{video}")
        views, _ = decode_views(uri, index, CONFIG, rng, data=data)
        assert views.shape == (1, 8, 1, 224, 224, 3)
    return time.process_time() - started


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-videos", type=int, default=4)
    parser.add_argument("--clips-per-video", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--data-dir", default=os.path.join(tempfile.gettempdir(), "stpa-bench", "transcode-v1")
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

    data_dir = Path(args.data_dir)
    sources = make_sources(data_dir, args.num_videos)
    files: dict[str, list[tuple[str, VideoIndex, bytes]]] = {"original": []}
    transcode_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as copies:
        for name in VARIANTS:
            files[name] = []
        for i, source in enumerate(sources):
            data = source.read_bytes()
            index = index_video(str(source), data=data)
            files["original"].append((str(source), index, data))
            for name, settings in VARIANTS.items():
                result = transcode_video(
                    str(source), f"{copies}/{name}_{i}.mp4", settings, index=index, data=data
                )
                if name == "copy":
                    transcode_cpu.append(result.cpu_seconds)
                files[name].append((result.uri, result.index, Path(result.uri).read_bytes()))
                print(
                    f"video {i}: {name:5s} {result.index.width}x{result.index.height}, "
                    f"{len(result.index.keyframe_pts)} keyframes, {result.num_bytes / 1e6:.2f} MB (source "
                    f"{len(data) / 1e6:.2f} MB, {len(index.keyframe_pts)} keyframes), transcoded in "
                    f"{result.cpu_seconds:.2f} CPU s"
                )

        cpu: dict[str, float] = {name: 0.0 for name in files}
        wall: dict[str, float] = {name: 0.0 for name in files}
        num_clips = 0
        per_round: dict[str, list[float]] = {name: [] for name in files}
        for round_ in range(args.rounds):
            round_cpu = {name: 0.0 for name in files}
            for video in range(len(sources)):
                order = list(files) if (round_ + video) % 2 == 0 else list(reversed(files))
                for name in order:
                    uri, index, data = files[name][video]
                    started = time.perf_counter()
                    seconds = decode_clips(uri, index, data, video, round_, args.clips_per_video)
                    wall[name] += time.perf_counter() - started
                    cpu[name] += seconds
                    round_cpu[name] += seconds
            num_clips += len(sources) * args.clips_per_video
            clips = len(sources) * args.clips_per_video
            for name in files:
                per_round[name].append(clips / round_cpu[name])
            print(
                f"round {round_}: clips per CPU s "
                + ", ".join(f"{name} {clips / round_cpu[name]:.2f}" for name in files)
            )

    rate = {name: num_clips / cpu[name] for name in files}  # clips per CPU second
    speedup = rate["copy"] / rate["original"]
    gop16 = rate["gop16"] / rate["original"]
    wall_speedup = wall["original"] / wall["copy"]
    per_video = statistics.mean(transcode_cpu)
    saved_per_clip = 1 / rate["original"] - 1 / rate["copy"]
    break_even = per_video / saved_per_clip
    for name in files:
        print(
            f"{name:8s}: {rate[name]:6.2f} clips per CPU s ({1000 / rate[name]:6.1f} ms per clip; per round "
            + ", ".join(f"{r:.2f}" for r in per_round[name])
            + ")"
        )
    print(f"transcode: {per_video:.2f} CPU s per 30 s video (short side 256, GOP 16)")
    line = (
        f"RESULT transcode speedup={speedup:.2f} gop16_speedup={gop16:.2f} clips_per_cpu_s={rate['original']:.2f} "
        f"clips_per_cpu_s_copy={rate['copy']:.2f} wall_speedup={wall_speedup:.2f} transcode_cpu_s={per_video:.2f} "
        f"break_even_clips={break_even:.0f}"
    )
    print(line)
    return line


if __name__ == "__main__":
    main()
