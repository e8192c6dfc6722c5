"""The ``stpa`` command line: ``stpa prepare``, ``transcode``, ``synth``, ``inspect``, ``config``, ``models``,
``predict``.

Each subcommand parses its flags here and calls one function of the pipeline; heavy imports (Ray, decord, torch)
happen inside the handlers so ``stpa --help`` is instant. A problem the user fixes (``pipeline.errors.UserError``:
a tracking server that does not answer, a bad ``--set``) prints ``error: <message>`` and exits with status 2
(``--debug`` shows the traceback). Commands that only read (``inspect``, ``config``, ``models``, ``predict``) create
no file: a SQLite tracking URI whose database does not exist reads as an empty registry.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from pipeline.errors import EXIT_USER_ERROR, UserError
from pipeline.flags import HelpFormatter, add_experiment_flags

DATASETS = ("ucf101", "hmdb51", "charades", "folder")
LAYOUTS = ("ucf101", "hmdb51", "charades")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pipeline.data.prepare import dataset_root_paths, prepare_manifest

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
        args.dataset,
        videos,
        annotations or "",
        args.out,
        split=args.split,
        num_workers=args.probe_workers,
        val_fraction=args.val_fraction,
        val_seed=args.val_seed,
    )
    print(report.summary())
    return 0


def _cmd_transcode(args: argparse.Namespace) -> int:
    from pipeline.data.transcode import transcode_manifests
    from pipeline.video.transcode import TranscodeSettings

    try:
        settings = TranscodeSettings(
            short_side=args.short_side,
            keyframe_interval=args.keyframe_interval,
            crf=args.crf,
            preset=args.preset,
        )
    except ValueError as error:
        raise SystemExit(f"stpa transcode: {error}") from None
    report = transcode_manifests(args.manifest, args.out, settings, num_workers=args.num_workers)
    print(report.summary())
    if report.failures:
        print(
            f"stpa transcode: {len(report.failures)} video(s) could not be transcoded and are left out of the new "
            f"manifests; see {report.report_uri}",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.data.synth import synthesize

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
    from pipeline.clips.preview import inspect_video
    from pipeline.video.decode import VideoDecodeError

    try:
        info = inspect_video(
            args.video,
            num_segments=args.num_segments,
            frames_per_segment=args.frames_per_segment,
            size=args.size,
            out=args.out,
            contact_sheet=args.contact_sheet,
        )
    except VideoDecodeError as error:
        print(f"stpa inspect: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    indices = info["frame_indices"]
    print(f"{info['video']}")
    print(
        f"  {info['num_frames']} frames, {info['fps']:.3f} fps, {info['duration']:.2f} s, "
        f"{info['width']}x{info['height']}, read by {info['decode_method']}"
        + (f", rotation {info['rotation']}" if info.get("rotation") else "")
    )
    if info.get("decode_note"):
        print(f"  note: {info['decode_note']}")
    print(
        f"  clip: {len(indices)} segments x {len(indices[0]) if indices else 0} frames, shape {info['shape']} {info['dtype']}"
    )
    for k, frames in enumerate(indices):
        times = ", ".join(f"{i} ({t:.2f} s)" for i, t in zip(frames, info["frame_times"][k], strict=True))
        print(f"  segment {k}: frames {times}")
    for key, label in (("out", "clip"), ("contact_sheet", "contact sheet")):
        if info.get(key):
            print(f"  {label}: {info[key]}")
    return 0


def _cmd_config_list(args: argparse.Namespace) -> int:
    from pipeline.presets import NUM_CLASSES, PRESETS, preset

    print(
        f"{'preset':<9} {'backbone':<13} {'K':>2} {'input':>5} {'epochs':>6}  workers x batch  {'device':<6} precision"
    )
    for name in PRESETS:
        dataset = (
            name if name in NUM_CLASSES else "folder"
        )  # a preset for its own dataset (Charades: 20 epochs)
        exp = preset(name, dataset, NUM_CLASSES.get(dataset, 2))
        train = exp.train
        device = "GPU" if train.use_gpu else "CPU"
        print(
            f"{name:<9} {exp.model.backbone:<13} {exp.train_clips.num_segments:>2} {exp.model.input_size:>5} "
            f"{train.epochs:>6}  {train.num_workers:>7} x {train.batch_size:<5}  {device:<6} {train.precision}"
        )
    print("GPU presets train on one GPU per worker; add --cpu (or --no-use-gpu) to run one on CPUs.")
    print("stpa config show --preset NAME [--set SECTION.FIELD=VALUE ...] prints every field.")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.flags import build_experiment
    from pipeline.presets import NUM_CLASSES

    dataset = args.dataset or (args.preset if args.preset in NUM_CLASSES else "folder")
    num_classes = args.num_classes or NUM_CLASSES.get(dataset, 2)
    exp, overrides, _ = build_experiment(args, dataset, num_classes)
    print(json.dumps({"overrides": overrides, **dataclasses.asdict(exp)}, indent=2, default=list))
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    """The command's tracking URI, checked: a server must answer within a few seconds (``UserError``)."""
    from pipeline.tracking.runs import check_tracking_server, tracking_uri

    uri = args.tracking_uri or tracking_uri()
    check_tracking_server(uri)
    return uri


def _no_store(uri: str) -> bool:
    """True when ``uri`` is a SQLite file that does not exist: nothing is registered there, and opening it would
    create it."""
    from pipeline.tracking.runs import tracking_store_exists

    return not tracking_store_exists(uri)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _cmd_models_list(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.tracking.registry import list_models

    uri = _tracking_uri(args)
    models = [] if _no_store(uri) else list_models(uri)
    if args.json:
        print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
        return 0
    if not models:
        print(f"no registered stpa models at {uri}; a training or sweep workflow registers one")
        return 0
    for m in models:
        champion = f"champion v{m.champion_version}" if m.champion_version else "no champion"
        metric = f"{m.primary_metric} {_fmt(m.champion_value)}" if m.champion_version else ""
        print(f"{m.name:<20} {m.num_versions:>3} version(s)  {champion:<14} {metric}".rstrip())
    return 0


def _cmd_models_show(args: argparse.Namespace) -> int:
    from pipeline.tracking.registry import ModelNotFoundError, describe, not_found_message

    uri = _tracking_uri(args)
    try:
        if _no_store(uri):
            raise ModelNotFoundError(not_found_message(uri, args.dataset))
        info = describe(uri, args.dataset)
    except ModelNotFoundError as error:
        raise SystemExit(f"stpa models show: {error}") from None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} (primary metric: {info['primary_metric']})")
    champion = info["champion"]
    if champion is None:
        print("  no champion alias")
    else:
        print(
            f"  champion: version {champion['version']}  {info['primary_metric']} {_fmt(champion['value'])}"
        )
        print(f"  run: {champion['run_link'] or champion['run_id']}")
        print(f"  git commit: {champion['git_commit']}")
        for key, value in sorted(champion["manifests"].items()):
            print(f"  {key}: {value}")
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(champion["metrics"].items()))
        print(f"  metrics: {metrics}")
        config = champion["config"] or {}
        model = config.get("model", {})
        test = config.get("test_clips", {})
        print(
            f"  config: backbone {model.get('backbone')}  attention {model.get('attention')}  "
            f"pyramid {model.get('pyramid_layers')}  input {model.get('input_size')}  "
            f"test views {test.get('num_test_clips')}x{test.get('test_crops')}  "
            f"view reduce {config.get('train', {}).get('view_reduce')}"
        )
    print("  versions:")
    for v in info["versions"]:
        mark = "  <- champion" if v["champion"] else ""
        print(
            f"    v{v['version']:<4} {info['primary_metric']} {_fmt(v['value'])}  run {v['run_id']}  {v['created']}{mark}"
        )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.registry import CHAMPION, not_found_message, registered_model_name
    from pipeline.tracking.serving import ERROR_COLUMN, VIDEO_COLUMN

    uri = _tracking_uri(args)
    name = registered_model_name(args.dataset)
    if _no_store(uri):
        raise SystemExit(f"stpa predict: {not_found_message(uri, args.dataset)}")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise SystemExit(f"stpa predict: {not_found_message(uri, args.dataset)}") from None
    if args.version is not None:
        model_uri = f"models:/{name}/{args.version}"
        version = str(args.version)
        try:
            client.get_model_version(name, version)
        except MlflowException:
            raise SystemExit(
                f"stpa predict: {name} has no version {args.version} (see stpa models show {args.dataset})"
            ) from None
    else:
        alias = args.alias or CHAMPION
        model_uri = f"models:/{name}@{alias}"
        try:
            version = client.get_model_version_by_alias(name, alias).version  # what the alias points at now
        except MlflowException:
            raise SystemExit(
                f"stpa predict: {name} has no {alias!r} alias (see stpa models show {args.dataset}; or give "
                "--version N)"
            ) from None
    from pipeline.tracking.runs import process_uris

    with process_uris(uri):
        model = mlflow.pyfunc.load_model(model_uri)
    multi_label = model.unwrap_python_model().exp.model.multi_label
    score_kind = (
        "per-class sigmoid scores (multi-label: each class on its own, they need not sum to 1)"
        if multi_label
        else "softmax probabilities"
    )
    table = model.predict(list(args.videos), params={"on_error": "nan"})
    class_names = [c for c in table.columns if c not in (VIDEO_COLUMN, ERROR_COLUMN)]
    results = []
    for _, row in table.iterrows():
        scores = row[class_names].to_numpy(dtype=np.float64)
        if row[ERROR_COLUMN]:
            results.append({"video": row[VIDEO_COLUMN], "error": row[ERROR_COLUMN], "top": []})
            continue
        order = np.argsort(-scores, kind="stable")[: args.top_k]
        top = [{"class": class_names[i], "probability": float(scores[i])} for i in order]
        results.append({"video": row[VIDEO_COLUMN], "error": None, "top": top})
    if args.json:
        print(
            json.dumps(
                {
                    "model": model_uri,
                    "version": str(version),
                    "scores": "sigmoid" if multi_label else "softmax",
                    "predictions": results,
                },
                indent=2,
            )
        )
    else:
        print(f"model {model_uri} (version {version}); {score_kind}")
        for result in results:
            print(result["video"])
            if result["error"]:
                print(f"  error: {result['error']}")
            for rank, entry in enumerate(result["top"], start=1):
                print(f"  {rank}. {entry['class']}  {entry['probability']:.4f}")
    failed = [r["video"] for r in results if r["error"]]
    if failed:
        print(
            f"stpa predict: {len(failed)} video(s) could not be decoded: {', '.join(failed)}", file=sys.stderr
        )
        return 1
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    """``stpa prepare``."""
    p = sub.add_parser(
        "prepare",
        help="official annotation files -> Parquet manifests (train/val/test.parquet, report.json)",
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
    p.add_argument(
        "--probe-workers",
        type=int,
        default=None,
        help="videos probed at once (threads, or Ray tasks from 64 videos on; default: the machine's CPUs, at most 8)",
    )
    p.add_argument("--num-workers", action=_Renamed, new="--probe-workers", help=argparse.SUPPRESS)
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the official training videos carved into val.parquet (UCF101 by whole groups, HMDB51 "
        "per class, Charades/folder by hashed id); it chooses epochs and trials. 0: none, the last epoch is kept",
    )
    p.add_argument("--val-seed", type=int, default=0, help="seed of the val carving's hash")
    p.set_defaults(handler=_cmd_prepare)


def _add_transcode(sub: argparse._SubParsersAction) -> None:
    """``stpa transcode``."""
    p = sub.add_parser(
        "transcode",
        help="seek-friendly H.264 copies of a manifest's videos, and a manifest pointing at them",
        description="Re-encode every video of the manifest(s) with Ray tasks into H.264 MP4 at a short side and a "
        "fixed keyframe interval (frame i of a copy is frame i of its source, timestamps kept, rotation applied), "
        "check each copy against its source, and write <out>/<manifest name> pointing at the copies. Originals are "
        "untouched; a re-run reuses finished copies whose settings and source match; a video that fails is "
        "reported and left out (exit status 1), the others go on.",
    )
    p.add_argument(
        "--manifest", action="append", required=True, help="manifest URI (repeat for train, val and test)"
    )
    p.add_argument("--out", required=True, help="output folder (URI): copies, new manifests, report")
    p.add_argument("--short-side", type=int, default=256, help="shorter side of the copies (never upscaled)")
    p.add_argument("--keyframe-interval", type=int, default=16, help="frames between keyframes (IDR)")
    p.add_argument(
        "--crf", type=int, default=20, help="x264 constant rate factor (quality; 23 is x264's default)"
    )
    p.add_argument("--preset", default="veryfast", help="x264 speed preset")
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="CPUs of the local Ray started when none runs (default: all)",
    )
    p.set_defaults(handler=_cmd_transcode)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    """``stpa synth``."""
    p = sub.add_parser(
        "synth",
        help="generate a small dataset in an official layout",
        description="Write a small synthetic dataset (videos + byte-compatible annotation files). In mode 'set' a "
        "class is decided by evidence spread over the clip; in mode 'order' classes differ only in the direction "
        "of motion (no order-blind model beats 50%).",
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


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    """``stpa inspect``."""
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
    p.add_argument(
        "--contact-sheet",
        default=None,
        help="where to save a PNG contact sheet: a grid of the clip's frames labelled with segment, frame index "
        "and time",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_cmd_inspect)


def _add_config(sub: argparse._SubParsersAction) -> None:
    """``stpa config list | show``."""
    p = sub.add_parser(
        "config",
        help="the presets and the resolved configuration: stpa config list | show --preset P",
        description="The named presets (pipeline/presets.py) and the configuration a workflow would run with the "
        "same flags (--preset, --set, --epochs, --cpu, ...).",
        formatter_class=HelpFormatter,
    )
    config = p.add_subparsers(dest="config_command", required=True)
    q = config.add_parser("list", help="the presets: model, clips, epochs, workers, GPU or CPU")
    q.set_defaults(handler=_cmd_config_list)
    q = config.add_parser(
        "show",
        help="every field of a preset with --set and the flags applied, as JSON",
        formatter_class=HelpFormatter,
    )
    add_experiment_flags(q)
    q.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="the dataset the preset is applied to (default: the preset's own, else folder)",
    )
    q.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes (default: the dataset's; folder: from the data, 2 here)",
    )
    q.set_defaults(handler=_cmd_config_show)


def _tracking_parent() -> argparse.ArgumentParser:
    """The ``--tracking-uri`` option shared by the commands that read MLflow."""
    tracking = argparse.ArgumentParser(add_help=False)
    tracking.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db); a server must "
        "answer within 5 s",
    )
    return tracking


def _add_models(sub: argparse._SubParsersAction, tracking: argparse.ArgumentParser) -> None:
    """``stpa models list | show``."""
    p = sub.add_parser(
        "models",
        help="the registered models: stpa models list | show DATASET",
        description="Read the MLflow Model Registry: one registered model per dataset (stpa-<dataset>) whose alias "
        "'champion' points at the best version by the dataset's primary metric.",
    )
    models = p.add_subparsers(dest="models_command", required=True)
    q = models.add_parser("list", parents=[tracking], help="registered models, their versions and champions")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=_cmd_models_list)
    q = models.add_parser(
        "show", parents=[tracking], help="a dataset's champion: metrics, run link, config, and every version"
    )
    q.add_argument("dataset", help="dataset name (ucf101, hmdb51, charades, or a folder dataset's --name)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=_cmd_models_show)


def _add_predict(sub: argparse._SubParsersAction, tracking: argparse.ArgumentParser) -> None:
    """``stpa predict``."""
    p = sub.add_parser(
        "predict",
        parents=[tracking],
        help="top-k classes of videos with a registered model",
        description="Load a registered model (default: models:/stpa-<dataset>@champion) and print the top-k "
        "classes of each video, decoded and sampled as evaluation does (multi-view test, views combined).",
    )
    p.add_argument("dataset", help="dataset name (ucf101, hmdb51, charades, or a folder dataset's --name)")
    p.add_argument("videos", nargs="+", help="video paths or fsspec URIs")
    p.add_argument("--top-k", type=int, default=5)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--alias", default=None, help="registry alias (default: champion)")
    which.add_argument("--version", type=int, default=None, help="model version number")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stpa",
        description="Video action classification with Interaction-aware Spatio-temporal Pyramid Attention.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_transcode(sub)
    _add_synth(sub)
    _add_inspect(sub)
    _add_config(sub)
    tracking = _tracking_parent()
    _add_models(sub, tracking)
    _add_predict(sub, tracking)
    return parser


class _Renamed(argparse.Action):
    """A flag that was renamed: using it is an error naming the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(
            f"{option_string} is now {self.new} ({option_string} means Ray Train workers in every command)"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
