"""What a manifest row and a clip batch are: column names, dtypes, layouts and value ranges.

This is the one place that defines them; every other module imports these names.

Manifest (Parquet, one row per video, one file per split: ``<out>/train.parquet``, ``<out>/test.parquet``):

    video_id        string      unique within the dataset (file stem, e.g. ``v_ApplyEyeMakeup_g01_c01``)
    video_uri       string      absolute fsspec URI or absolute local path of the video file
    split           string      ``"train"`` or ``"test"``
    label           int64       0-based class index (single-label datasets: UCF101, HMDB51, folder)
    labels          list<int32> 0-based class indices (multi-label datasets: Charades); may be empty
    segments        list<struct<label: int32, start: float32, end: float32>>  Charades actions, seconds
    duration        float64     seconds (Charades ``length``; probed duration elsewhere)
    num_frames      int64       frames of a sequential decode from the start (what PyAV yields)
    fps             float64     average frame rate
    width, height   int32       decoded frame size in pixels
    decode_method   string      how to decode this file so that frame i is the i-th frame of a sequential
                                decode: one of DECODE_METHODS (decided when the manifest is prepared)

Schema metadata (bytes keys): ``stpa.dataset`` (e.g. ``ucf101``), ``stpa.class_names`` (JSON list, index = label),
``stpa.multi_label`` (``"true"``/``"false"``), ``stpa.split`` (official split number as a string).

Clip batch (numpy dict, as yielded by Ray Data ``iter_batches(batch_format="numpy")``):

    frames      uint8   (B, K, T, H, W, 3) in [0, 255], RGB; K segments (views) x T frames each
    label       int64   (B,) class index                       (single-label)
    labels      float32 (B, num_classes) multi-hot in {0, 1}   (multi-label)
    video_id    object  (B,) str
    view        int32   (B,) index of the test view (temporal clip x spatial crop) this row holds; 0 in training
"""

from __future__ import annotations

import json
from typing import Final

import pyarrow as pa

# --- manifest columns -------------------------------------------------------------------------------------------
VIDEO_ID: Final = "video_id"
VIDEO_URI: Final = "video_uri"
SPLIT: Final = "split"
LABEL: Final = "label"
LABELS: Final = "labels"
SEGMENTS: Final = "segments"
DURATION: Final = "duration"
NUM_FRAMES: Final = "num_frames"
FPS: Final = "fps"
WIDTH: Final = "width"
HEIGHT: Final = "height"
DECODE_METHOD: Final = "decode_method"

SPLITS: Final = ("train", "test")

# decord with sparse random access is right for most files; "decord_sequential" reads every frame from the
# start with decord (H.264-in-AVI with B-frames gives wrong frames on sparse access); "pyav" decodes
# sequentially with PyAV (files where decord's frame indices are offset, e.g. MPEG-PS starting late, or
# files decord cannot open).
DECODE_METHODS: Final = ("decord", "decord_sequential", "pyav")

SEGMENT_TYPE: Final = pa.struct([("label", pa.int32()), ("start", pa.float32()), ("end", pa.float32())])

MANIFEST_SCHEMA_COMMON: Final = pa.schema(
    [
        (VIDEO_ID, pa.string()),
        (VIDEO_URI, pa.string()),
        (SPLIT, pa.string()),
        (DURATION, pa.float64()),
        (NUM_FRAMES, pa.int64()),
        (FPS, pa.float64()),
        (WIDTH, pa.int32()),
        (HEIGHT, pa.int32()),
        (DECODE_METHOD, pa.string()),
    ]
)
SINGLE_LABEL_FIELDS: Final = [pa.field(LABEL, pa.int64())]
MULTI_LABEL_FIELDS: Final = [
    pa.field(LABELS, pa.list_(pa.int32())),
    pa.field(SEGMENTS, pa.list_(SEGMENT_TYPE)),
]

META_DATASET: Final = b"stpa.dataset"
META_CLASS_NAMES: Final = b"stpa.class_names"
META_MULTI_LABEL: Final = b"stpa.multi_label"
META_SPLIT: Final = b"stpa.split"


def manifest_schema(dataset: str, class_names: list[str], multi_label: bool, split: int | None) -> pa.Schema:
    """The Arrow schema of a manifest file, with the class names and dataset in its metadata."""
    fields = list(MANIFEST_SCHEMA_COMMON) + (MULTI_LABEL_FIELDS if multi_label else SINGLE_LABEL_FIELDS)
    metadata = {
        META_DATASET: dataset.encode(),
        META_CLASS_NAMES: json.dumps(class_names).encode(),
        META_MULTI_LABEL: b"true" if multi_label else b"false",
        META_SPLIT: str(split or "").encode(),
    }
    return pa.schema(fields, metadata=metadata)


def class_names_of(schema: pa.Schema) -> list[str]:
    """Class names stored in a manifest's schema metadata (index = label)."""
    if not schema.metadata or META_CLASS_NAMES not in schema.metadata:
        raise ValueError(f"not an stpa manifest: schema metadata has no {META_CLASS_NAMES.decode()!r}")
    return json.loads(schema.metadata[META_CLASS_NAMES])


def is_multi_label(schema: pa.Schema) -> bool:
    """Whether a manifest holds multi-label rows (``labels``) rather than single-label rows (``label``)."""
    return bool(schema.metadata) and schema.metadata.get(META_MULTI_LABEL) == b"true"


# --- clip batch columns -----------------------------------------------------------------------------------------
FRAMES: Final = "frames"  # uint8 (B, K, T, H, W, 3) in [0, 255], RGB
VIEW: Final = "view"  # int32 (B,)
