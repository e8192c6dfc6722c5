"""Batch prediction with a registered model on a Ray cluster: `python workflows/predict.py --help`.

    python workflows/predict.py --model models:/stpa-charades@champion --videos s3://bucket/videos/ \\
        --out s3://bucket/predictions/charades/ [--num-replicas 4 --use-gpu] [--shard-size 256] [--top-k 5]

``--model`` is ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``runs:/<run id>/model``; an alias is
pinned to its version before Ray starts, so every replica scores with the same weights however the alias moves.
``--videos`` is a folder or bucket prefix (every video file below it, by extension), a list file (one path or URI
per line) or a manifest (``stpa prepare``'s Parquet, whose frame indices are used). The workflow
(``pipeline.workflow``) has two steps::

    model ─▶ predict

``model`` copies the weights, config and class names from MLflow to storage every node reads; ``predict`` decodes
the model's test views on Ray Data CPU tasks across the cluster and scores them with ``--num-replicas`` model
replicas through the evaluation's own code (``pipeline.evaluation.predict``), writing one Parquet file per
``--shard-size`` videos under ``--out`` (columns: video, error, top_classes, top_scores, scores, model_name,
model_version). Running the same command again skips the shards already written; another model, video list or
setting into the same ``--out`` is refused before anything runs. Without ``RAY_ADDRESS`` a local Ray is started;
inside ``ray job submit`` the script joins the cluster, like the training workflows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import storage  # noqa: E402

VIDEO_LIST_FILE = "_videos.parquet"  # the listed videos, in shard order, beside the shards
WORKFLOW_FOLDER = "_workflow"  # the workflow's step folders, beside the shards


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Score many videos with a registered STPA model on a Ray cluster; Parquet shards out. "
        "Re-running the same command resumes (written shards are skipped).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="models:/stpa-<dataset>@champion, models:/stpa-<dataset>/<version> or runs:/<run id>/model",
    )
    parser.add_argument(
        "--videos",
        required=True,
        help="a folder or bucket prefix (videos found recursively by extension), a list file (one path or URI "
        "per line) or a manifest (.parquet from stpa prepare)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (path or fsspec URI) for the Parquet shards"
    )
    parser.add_argument("--num-replicas", type=int, default=1, help="model replicas scoring clips")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per model replica")
    parser.add_argument(
        "--shard-size", type=int, default=256, help="videos per Parquet file (the unit of resume)"
    )
    parser.add_argument(
        "--top-k", type=int, default=5, help="classes in top_classes (at most the class count)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="views per scoring batch (default: the run's)"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the DAG and each step's status, run nothing"
    )
    return parser


def build_workflow(args: argparse.Namespace, tracking_uri: str, *, claim: bool = True):
    """Resolve the model, list the videos and check ``--out`` (all before Ray starts); the DAG's final step, the
    workflow id, its root and the shard count.

    Raises:
        ValueError: a bad argument, an unknown model, no videos, or an ``--out`` holding other predictions.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.video_list import list_videos
    from pipeline.evaluation.predict import claim_output, num_shards
    from pipeline.tracking.registry import resolve_model
    from pipeline.workflow import Step, config_id
    from workflows import steps

    for flag in ("num_replicas", "shard_size", "top_k", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    model = resolve_model(tracking_uri, args.model)
    videos = list_videos(args.videos)
    out = storage.normalize_uri(args.out)
    identity = {
        "model_uri": model.uri,
        "videos": videos.source,
        "videos_kind": videos.kind,
        "videos_sha256": videos.fingerprint(),
        "num_videos": videos.table.num_rows,
        "shard_size": args.shard_size,
        "top_k": args.top_k,
    }
    claim_output(out, identity, write=claim)
    video_list_uri = storage.join(out, VIDEO_LIST_FILE)
    if claim and not storage.exists(video_list_uri):
        sink = pa.BufferOutputStream()
        pq.write_table(videos.table, sink)
        storage.write_bytes(video_list_uri, sink.getvalue().to_pybytes())
    settings = {
        "tracking_uri": tracking_uri,
        "num_replicas": args.num_replicas,
        "use_gpu": args.use_gpu,
        "batch_size": args.batch_size,
    }
    fetch = Step("model", steps.fetch_model, config={"model_uri": model.uri}, settings=settings, num_cpus=0.1)
    predict = Step(
        "predict",
        steps.predict,
        config={
            **identity,
            "out": out,
            "video_list_uri": video_list_uri,
            # A run's model has no registry name and version: the rows name its URI and run id instead.
            "model_name": model.name or model.uri,
            "model_version": model.version or model.run_id,
        },
        inputs={"model": fetch},
        settings=settings,
    )
    workflow_id = config_id("predict", identity)
    return (
        predict,
        workflow_id,
        storage.join(out, WORKFLOW_FOLDER),
        num_shards(videos.table.num_rows, args.shard_size),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.evaluation.predict import shard_uri
    from pipeline.runtime import init_ray
    from pipeline.tracking.runs import tracking_uri
    from pipeline.workflow import WorkflowError, format_plan, plan, run_workflow

    uri = args.tracking_uri or tracking_uri()
    try:
        final, workflow_id, root, total = build_workflow(args, uri, claim=not args.dry_run)
    except ValueError as error:
        print(f"predict.py: {error}", file=sys.stderr, flush=True)
        return 2
    statuses = plan([final], root, workflow_id)
    print(format_plan(statuses, workflow_id), flush=True)
    if args.dry_run:
        return 0
    out = final.config["out"]
    predict_done = next(s.done for s in statuses if s.name == "predict")
    missing = [s for s in range(total) if not storage.exists(shard_uri(out, s))]
    # A committed predict step whose shards were deleted since runs again (and writes only those shards).
    rerun = ["predict"] if missing and predict_done else []
    ran = bool(rerun) or not predict_done
    if ran:
        init_ray()
    try:
        outputs = run_workflow([final], root, workflow_id, rerun=rerun)
    except WorkflowError as error:
        print(str(error), flush=True)
        return 1
    result = outputs["predict"]
    this_run = result["this_run"]
    print(
        f"predictions of {final.config['model_uri']} in {out}: {result['num_videos']} videos, "
        f"{result['num_scored']} scored, {result['num_failed']} failed",
        flush=True,
    )
    if ran:
        print(
            f"this run: {this_run['num_videos']} videos in {this_run['shards_written']} shards "
            f"({this_run['shards_skipped']} already written), {this_run['num_clips']} clips in "
            f"{this_run['seconds']:.1f} s: {this_run['clips_per_s']:.2f} clips/s",
            flush=True,
        )
    summary = {"workflow_id": workflow_id, "model_uri": final.config["model_uri"], "ran": ran, **result}
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
