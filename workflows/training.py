"""The command line shared by ``workflows/train_<dataset>.py``: flags, data, manifests, then ``pipeline.train.fit``.

Without ``--data-root`` a small dataset is generated in the official layout, so the command runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import time

from pipeline import storage

SYNTH_LAYOUT = {"ucf101": "ucf101", "hmdb51": "hmdb51", "charades": "charades"}


def build_parser(dataset: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"train_{dataset}.py",
        description=f"Train and evaluate STPA on {dataset} with Ray Train, tracked in MLflow. Without --data-root "
        "a small dataset is generated in the official layout first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="smoke", help="smoke | ucf101 | hmdb51 | charades (pipeline/presets.py)"
    )
    parser.add_argument("--data-root", default=None, help="dataset root in the official layout (path or URI)")
    parser.add_argument("--split", type=int, default=1, help="official split (UCF101/HMDB51: 1-3)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (one per GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per worker per step")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="train on GPUs (NCCL)")
    parser.add_argument(
        "--storage", default="runs", help="checkpoints, manifests, generated data (path or URI)"
    )
    parser.add_argument("--pretrained", default=None, help="ImageNet ResNet state dict for the backbone")
    parser.add_argument("--run-name", default=None, help="Ray Train + MLflow run name; same name = resume")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=JSON",
        help="config override, e.g. --set model.beta=0.01 --set train_clips.num_segments=4",
    )
    parser.add_argument(
        "--synth-videos-per-class", type=int, default=12, help="generated data: videos per class"
    )
    parser.add_argument("--synth-classes", type=int, default=5, help="generated data: number of classes")
    return parser


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare string such as --set model.fusion=concat
    return overrides


def ensure_data(dataset: str, args: argparse.Namespace, storage_root: str) -> str:
    """The dataset root: ``--data-root``, or a generated dataset under the storage root (made once)."""
    if args.data_root:
        return args.data_root
    from pipeline.synth import synthesize

    root = storage.join(
        storage_root, "data", f"synth-{dataset}-{args.synth_classes}x{args.synth_videos_per_class}"
    )
    marker = storage.join(root, "_SUCCESS")
    if not storage.exists(marker):
        print(f"generating a small {dataset} dataset in {root}", flush=True)
        synthesize(
            SYNTH_LAYOUT[dataset],
            root,
            num_classes=args.synth_classes,
            videos_per_class=args.synth_videos_per_class,
            width=96,
            height=72,
            num_frames=24,
        )
        storage.write_text(marker, "")
    return root


def ensure_manifests(dataset: str, data_root: str, split: int, storage_root: str) -> tuple[str, str]:
    from pipeline.prepare import dataset_root_paths, prepare_manifest

    out = storage.join(storage_root, "manifests", f"{dataset}-split{split}-{_slug(data_root)}")
    train, test = storage.join(out, "train.parquet"), storage.join(out, "test.parquet")
    if not (storage.exists(train) and storage.exists(test)):
        videos, annotations = dataset_root_paths(dataset, data_root)
        report = prepare_manifest(dataset, videos, annotations, out, split=split)
        print(report.summary(), flush=True)
    return train, test


def _slug(uri: str) -> str:
    import hashlib

    return hashlib.sha256(storage.normalize_uri(uri).encode()).hexdigest()[:10]


def main(dataset: str, argv: list[str] | None = None) -> int:
    args = build_parser(dataset).parse_args(argv)
    from pipeline.prepare import read_manifest
    from pipeline.presets import NUM_CLASSES, apply_overrides, preset
    from pipeline.runtime import init_ray
    from pipeline.train import fit

    storage_root = storage.normalize_uri(args.storage)
    flat = parse_overrides(args.set)
    for flag, key in (
        ("epochs", "train.epochs"),
        ("num_workers", "train.num_workers"),
        ("batch_size", "train.batch_size"),
        ("use_gpu", "train.use_gpu"),
        ("pretrained", "train.pretrained"),
    ):
        if getattr(args, flag) is not None:
            flat[key] = getattr(args, flag)
    num_workers = flat.get("train.num_workers", 2 if args.preset == "smoke" else 1)
    init_ray(num_train_workers=0 if flat.get("train.use_gpu") else int(num_workers))

    data_root = ensure_data(dataset, args, storage_root)
    train_manifest, test_manifest = ensure_manifests(dataset, data_root, args.split, storage_root)
    _, class_names = read_manifest(train_manifest)
    exp = apply_overrides(preset(args.preset, dataset, len(class_names)), flat)
    if len(class_names) != NUM_CLASSES[dataset] and args.data_root:
        print(f"note: {train_manifest} has {len(class_names)} classes ({dataset} has {NUM_CLASSES[dataset]})")
    run_name = args.run_name or f"{dataset}-{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = fit(
        exp,
        train_manifest,
        test_manifest,
        storage_path=storage.join(storage_root, "ray"),
        run_name=run_name,
    )
    print(
        json.dumps(
            {"run_name": run_name, "mlflow_run_id": result.mlflow_run_id, **result.metrics}, default=str
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit("run workflows/train_<dataset>.py")
