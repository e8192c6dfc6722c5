"""The model card: the description of every registered version of ``stpa-<dataset>``, written by ``register``.

A few lines (Markdown, as the MLflow UI renders descriptions) saying what a user of the registry needs before
calling the model: the dataset and split it was trained and tested on, its primary test metric and the split that
chose its weights, the model in words, the input it expects and the views it decodes, its labels, the training
manifest's SHA-256, and how to call it from Python, the command line and REST. ``model_card(facts)`` is a pure
function of ``CardFacts``; ``pipeline.tracking.registry`` gathers the facts from the run and the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ExperimentConfig

MAX_DESCRIPTION_CHARS = 5000  # MLflow's SQL store keeps at most 5000 characters of a version's description
MAX_LABEL_CHARS = 1500  # longer label lists are cut; the model's artifacts/class_names.json lists them all
SELECTION_WORDS = {
    "val": "the epoch with the best val {metric} (val: carved from the official training list)",
    "last_epoch": "the last epoch (no val split: nothing was chosen)",
}


@dataclass(frozen=True)
class CardFacts:
    """What a model card states.

    Attributes:
        name: The registered model (``stpa-ucf101``).
        version: Its version.
        dataset: ``ucf101``, ``hmdb51``, ``charades`` or ``folder``.
        official_split: The official split number (``"1"``), ``""`` when the manifest does not record one.
        val_split: How val was carved (the manifest's ``stpa.val_split`` JSON as a dict), None without val.
        primary_metric: ``top1`` or ``map``.
        test_value: The primary metric on the test split.
        selection_split: The run's ``selection.split``: ``"val"`` or ``"last_epoch"`` (``""``: not recorded).
        exp: The model's ``ExperimentConfig``.
        class_names: Its labels in class-index order.
        train_manifest_sha256: SHA-256 of the training manifest (``""``: not recorded).
    """

    name: str
    version: int
    dataset: str
    official_split: str
    val_split: dict | None
    primary_metric: str
    test_value: float
    selection_split: str
    exp: ExperimentConfig
    class_names: list[str]
    train_manifest_sha256: str


def describe_model(exp: ExperimentConfig) -> str:
    """The model configuration in words: backbone, K, attention type, pyramid, frame-order options."""
    m, clips = exp.model, exp.test_clips
    frames = f"K = {clips.num_segments} segments" + (
        f" x {clips.frames_per_segment} frames" if clips.frames_per_segment > 1 else ""
    )
    if m.attention == "none":
        head = "no attention: TSN average consensus of the frames' pooled features"
    else:
        kind = (
            "interaction-aware pyramid attention (interaction and diversity losses)"
            if m.attention == "interaction"
            else "plain pyramid attention (no auxiliary losses)"
        )
        scope = "spatio-temporal (all K frames jointly)" if m.spatio_temporal else "per frame, then averaged"
        head = (
            f"{kind}, {scope}, over the pyramid {', '.join(m.pyramid_layers)} (attended layer "
            f"{m.attended_layer}, d = {m.num_attention_maps} maps, {m.resample} resampling, {m.fusion} fusion)"
        )
    order = [
        name
        for name, on in (
            ("temporal shift (TSM)", m.temporal_shift),
            ("temporal position embedding", m.temporal_position_embedding),
        )
        if on
    ]
    return (
        f"STPANet, {m.backbone} backbone, {frames}, {m.input_size} px input; {head}"
        + (f"; frame order from {' and '.join(order)}" if order else "")
        + "."
    )


def describe_input(exp: ExperimentConfig) -> str:
    """What the model takes and the test views it decodes from each video."""
    clips = exp.test_clips
    sampling = (
        f"TSN sampling of {clips.num_segments} segments x {clips.frames_per_segment} frame(s) over the whole video"
        if clips.sampling == "tsn"
        else f"dense clips of {clips.num_segments * clips.frames_per_segment} frames at stride {clips.stride}"
    )
    crop = f"{clips.crop_size} px " + (
        "centre crop" if clips.test_crops == 1 else "crops (3 along the long side)"
    )
    resize = f"short side resized to {clips.short_side} px, " if clips.short_side else ""
    return (
        "video files (local paths or fsspec URIs such as s3://...; any container and codec FFmpeg reads), each "
        f"indexed by demuxing and decoded at exact frames: {clips.num_views} views ({clips.num_test_clips} "
        f"temporal clip(s) x {clips.test_crops} crop(s)), {sampling}, {resize}{crop}; view scores combined by "
        f"{exp.train.view_reduce}."
    )


def describe_labels(exp: ExperimentConfig, class_names: list[str]) -> str:
    kind = "multi-label, per-class sigmoid" if exp.model.multi_label else "single-label, softmax"
    shown: list[str] = []
    for name in class_names:
        if sum(len(n) + 2 for n in shown) + len(name) > MAX_LABEL_CHARS:
            break
        shown.append(name)
    more = (
        f", ... ({len(class_names) - len(shown)} more in the model's artifacts/class_names.json)"
        if len(shown) < len(class_names)
        else ""
    )
    return f"{len(class_names)} classes ({kind}): {', '.join(shown)}{more}."


def describe_data(facts: CardFacts) -> str:
    split = f"official split {facts.official_split}" if facts.official_split else "the official split"
    val = ""
    carved = facts.val_split or {}
    if carved.get("method", "none") != "none":
        val = (
            f" less the val split ({carved.get('num_val', '?')} of its {carved.get('num_train_listed', '?')} "
            f"videos, {carved['method']}, fraction {carved.get('fraction', '?')}, seed {carved.get('seed', '?')})"
        )
    return (
        f"{facts.dataset}, {split}: trained on the official training list{val}, tested once on the official "
        "test list."
    )


def usage(name: str, version: int, dataset: str) -> list[str]:
    uri = f"models:/{name}/{version}"
    return [
        f'- Python: `mlflow.pyfunc.load_model("{uri}").predict(["/path/video.mp4"])` (a DataFrame: video, one '
        "probability column per class, error)",
        f"- CLI: `stpa predict {dataset} /path/video.mp4 --version {version}`; many videos on a Ray cluster: "
        f"`python workflows/predict.py --model {uri} --videos s3://bucket/videos/ --out s3://bucket/predictions/`",
        f"- REST: `mlflow models serve -m {uri} --env-manager local -h 127.0.0.1 -p 5001`, then "
        "`curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' "
        """-d '{"dataframe_records": [{"video": "/path/video.mp4"}]}'`""",
    ]


def model_card(facts: CardFacts) -> str:
    """The version's description (Markdown), at most ``MAX_DESCRIPTION_CHARS`` characters.

    Raises:
        ValueError: the facts are incomplete (no class names, a class count that is not the model's).
    """
    if len(facts.class_names) != facts.exp.model.num_classes:
        raise ValueError(
            f"{len(facts.class_names)} class names for a model with {facts.exp.model.num_classes} classes"
        )
    selection = SELECTION_WORDS.get(facts.selection_split, "not recorded").format(metric=facts.primary_metric)
    lines = [
        f"STPA video action classifier for {facts.dataset} ({facts.name} version {facts.version}).",
        "",
        f"- Data: {describe_data(facts)}",
        f"- Test {facts.primary_metric}: {facts.test_value:.4f} (the primary metric, multi-view test); weights "
        f"chosen by {selection}.",
        f"- Model: {describe_model(facts.exp)}",
        f"- Input: {describe_input(facts.exp)}",
        f"- Labels: {describe_labels(facts.exp, facts.class_names)}",
        f"- Training manifest SHA-256: {facts.train_manifest_sha256 or 'not recorded'}.",
        "",
        "How to call it:",
        *usage(facts.name, facts.version, facts.dataset),
    ]
    text = "\n".join(lines)
    if (
        len(text) > MAX_DESCRIPTION_CHARS
    ):  # the labels are cut to MAX_LABEL_CHARS: only a very long name could
        raise ValueError(f"model card of {len(text)} characters, MLflow keeps {MAX_DESCRIPTION_CHARS}")
    return text
