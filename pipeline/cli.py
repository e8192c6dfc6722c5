"""The ``stpa`` command line: ``stpa prepare``, ``stpa synth``, ``stpa inspect``.

Each subcommand parses its flags here and calls one function of the pipeline; heavy imports (Ray, decord, torch)
happen inside the handlers so ``stpa --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys

DATASETS = ("ucf101", "hmdb51", "charades", "folder")
LAYOUTS = ("ucf101", "hmdb51", "charades")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pipeline.prepare import dataset_root_paths, prepare_manifest

    videos, annotations = args.videos, args.annotations
    if args.data_root:
        if videos or annotations:
            raise SystemExit("stpa prepare: give either --data-root or --videos/--annotations, not both")
        videos, annotations = dataset_root_paths(args.dataset, args.data_root)
    if not videos:
        raise SystemExit("stpa prepare: --videos (or --data-root) is required")
    if annotations is None and args.dataset != "folder":
        raise SystemExit(f"stpa prepare: --annotations is required for {args.dataset}")
    report = prepare_manifest(
        args.dataset, videos, annotations or "", args.out, split=args.split, num_workers=args.num_workers
    )
    print(report.summary())
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synth import synthesize

    summary = synthesize(
        args.layout,
        args.out,
        num_classes=args.num_classes,
        videos_per_class=args.videos_per_class,
        seed=args.seed,
        mode=args.mode,
        width=args.width,
        height=args.height,
        num_frames=args.num_frames,
        fps=args.fps,
        gop=args.gop,
    )
    print(summary)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import inspect_video

    info = inspect_video(
        args.video,
        num_segments=args.num_segments,
        frames_per_segment=args.frames_per_segment,
        size=args.size,
        out=args.out,
        contact_sheet=args.contact_sheet,
    )
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stpa",
        description="Video action classification with Interaction-aware Spatio-temporal Pyramid Attention.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prepare",
        help="official annotation files -> Parquet manifests (train.parquet, test.parquet, report.json)",
        description="Parse a dataset's official annotation files, check and probe every listed video, and write "
        "one Parquet manifest per split. URIs may be local paths, file://, memory:// or s3:// (s3fs).",
    )
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--data-root", help="dataset root laid out as the official download extracts")
    p.add_argument(
        "--videos", help="folder of videos (UCF-101/, hmdb51_org/, Charades_v1_480/, or <root>/<class>/)"
    )
    p.add_argument("--annotations", help="folder of the official annotation files")
    p.add_argument("--split", type=int, default=1, help="official split number (UCF101, HMDB51: 1-3)")
    p.add_argument("--out", required=True, help="output folder (URI) for the manifests and report")
    p.add_argument("--num-workers", type=int, default=None, help="probe parallelism (default: automatic)")
    p.set_defaults(handler=_cmd_prepare)

    p = sub.add_parser(
        "synth",
        help="generate a small dataset in an official layout",
        description="Write a small synthetic dataset (videos + byte-compatible annotation files). In mode 'set' a "
        "class is decided by evidence spread over the clip; in mode 'order' classes differ only in the direction "
        "of motion (no order-blind model beats 50%%).",
    )
    p.add_argument("layout", choices=LAYOUTS)
    p.add_argument("--out", required=True)
    p.add_argument("--num-classes", type=int, default=5)
    p.add_argument("--videos-per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("set", "order"), default="set")
    p.add_argument("--width", type=int, default=112)
    p.add_argument("--height", type=int, default=112)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--gop", type=int, default=None, help="keyframe interval (default: the encoder's)")
    p.set_defaults(handler=_cmd_synth)

    p = sub.add_parser(
        "inspect",
        help="decode one clip the way the model sees it",
        description="Probe a video as prepare does, decode one clip with the test-time sampling through the "
        "pipeline's own code path, save it as a uint8 .npy and print frame count, fps and the indices taken.",
    )
    p.add_argument("video", help="video path or URI")
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--frames-per-segment", type=int, default=1)
    p.add_argument(
        "--size", type=int, default=None, help="shorter side then centre crop (default: decoded size)"
    )
    p.add_argument("--out", default=None, help="where to save the clip (.npy)")
    p.add_argument("--contact-sheet", default=None, help="where to save a PNG contact sheet")
    p.set_defaults(handler=_cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
