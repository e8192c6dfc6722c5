"""What a manifest row and a clip batch are: column names, dtypes, layouts and value ranges.

This is the one place that defines them; every other module imports these names.

Manifest (Parquet, one row per video, one file per split: ``<out>/train.parquet``, ``<out>/val.parquet`` (absent
when no val split was carved), ``<out>/test.parquet``):

    video_id        string      unique within the dataset (file stem, e.g. ``v_ApplyEyeMakeup_g01_c01``)
    video_uri       string      absolute fsspec URI or absolute local path of the video file
    split           string      one of SPLITS: ``"train"``, ``"val"`` (carved from the official training list by
                                ``pipeline.data.val_split``) or ``"test"`` (the official test list)
    label           int64       0-based class index (single-label datasets: UCF101, HMDB51, folder)
    labels          list<int32> 0-based class indices (multi-label datasets: Charades); may be empty
    segments        list<struct<label: int32, start: float32, end: float32>>  Charades actions, seconds
    duration        float64     seconds (Charades ``length``; probed duration elsewhere)
    num_frames      int64       frames of the main video stream (``pipeline.video.decode``'s "frame i")
    fps             float64     average frame rate
    width, height   int32       frame size in pixels, display orientation (what the reader returns)
    decode_method   string      how the reader gets frame i exactly: one of DECODE_METHODS
    frame_index     binary      the video's frame index (``pipeline.video.decode.index_to_bytes``): timestamps and
                                keyframes, what the reader needs to seek exactly without indexing the file again

Schema metadata (bytes keys): ``stpa.dataset`` (e.g. ``ucf101``), ``stpa.class_names`` (JSON list, index = label),
``stpa.multi_label`` (``"true"``/``"false"``), ``stpa.split`` (official split number as a string),
``stpa.manifest_version`` (``MANIFEST_VERSION``; a manifest of another version must be prepared again),
``stpa.val_split`` (JSON: how val was carved, ``pipeline.data.val_split.ValSplit``; ``""`` when not recorded),
``stpa.transcode`` (JSON, only in manifests of seek-friendly copies written by ``pipeline.data.transcode``: the
source manifest, the copies' folder and the encoder settings).

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
FRAME_INDEX: Final = "frame_index"

# "val" is carved from the official training list; it chooses epochs and trials, "test" is only scored.
SPLITS: Final = ("train", "val", "test")

# "seek": PyAV seeks to the keyframe before the wanted frame's timestamp and decodes forward to it (exact by
# construction); "decord": decord's sparse reads, only where a structural rule shows them exact; "sequential": a
# decode from the start, for files whose timestamps cannot index frames (pipeline.video.decode).
DECODE_METHODS: Final = ("seek", "decord", "sequential")
# 2: decode methods of pipeline.video.decode and the frame_index column (1: decord/decord_sequential/pyav).
MANIFEST_VERSION: Final = 2

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
        (FRAME_INDEX, pa.binary()),
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
META_MANIFEST_VERSION: Final = b"stpa.manifest_version"
META_VAL_SPLIT: Final = b"stpa.val_split"
META_TRANSCODE: Final = b"stpa.transcode"


def manifest_schema(
    dataset: str, class_names: list[str], multi_label: bool, split: int | None, val_split: dict | None = None
) -> pa.Schema:
    """The Arrow schema of a manifest file, with the class names, dataset and val carving in its metadata."""
    fields = list(MANIFEST_SCHEMA_COMMON) + (MULTI_LABEL_FIELDS if multi_label else SINGLE_LABEL_FIELDS)
    metadata = {
        META_DATASET: dataset.encode(),
        META_CLASS_NAMES: json.dumps(class_names).encode(),
        META_MULTI_LABEL: b"true" if multi_label else b"false",
        META_SPLIT: str(split or "").encode(),
        META_MANIFEST_VERSION: str(MANIFEST_VERSION).encode(),
        META_VAL_SPLIT: json.dumps(val_split, sort_keys=True).encode() if val_split else b"",
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
