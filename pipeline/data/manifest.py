"""Reading manifests: the one place that opens a manifest Parquet file (written by ``pipeline.data.prepare``).

- ``read_manifest(uri)``: the table checked against ``pipeline.schema`` (columns, types, values), and its class
  names; what training, evaluation and the workflow steps use.
- ``manifest_table(manifest)``: a URI or an Arrow table with the columns decoding needs (clip datasets, caches).
- ``manifest_class_names(uri)``: class names from the Parquet schema alone (nothing else is read).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema, storage

_SEGMENT_FIELDS = tuple(schema.SEGMENT_TYPE.field(i).name for i in range(schema.SEGMENT_TYPE.num_fields))


def read_manifest(uri: str) -> tuple[pa.Table, list[str]]:
    """A manifest written by ``prepare_manifest``, checked against ``pipeline.schema``, and its class names.

    Raises:
        ValueError: Not an stpa manifest, a column missing or of the wrong type, a label out of range, an unknown
            split or decode method, or a duplicate video id (the message names the file and column).
    """
    table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    try:
        class_names = schema.class_names_of(table.schema)
    except ValueError as error:
        raise ValueError(f"{uri}: {error}") from None
    metadata = table.schema.metadata
    _check_version(uri, metadata)
    dataset = metadata.get(schema.META_DATASET, b"").decode()
    split_text = metadata.get(schema.META_SPLIT, b"").decode()
    multi_label = schema.is_multi_label(table.schema)
    expected = schema.manifest_schema(
        dataset, class_names, multi_label, int(split_text) if split_text else None
    )
    for expected_field in expected:
        if expected_field.name not in table.column_names:
            raise ValueError(f"{uri}: column {expected_field.name!r} is missing")
        actual = table.schema.field(expected_field.name).type
        if actual != expected_field.type:
            raise ValueError(
                f"{uri}: column {expected_field.name!r} has type {actual}, expected {expected_field.type}"
            )
    columns = table.to_pydict()
    _check_values(uri, columns[schema.SPLIT], set(schema.SPLITS), schema.SPLIT)
    _check_values(uri, columns[schema.DECODE_METHOD], set(schema.DECODE_METHODS), schema.DECODE_METHOD)
    ids = columns[schema.VIDEO_ID]
    if len(set(ids)) != len(ids):
        duplicate = next(video_id for video_id, count in Counter(ids).items() if count > 1)
        raise ValueError(f"{uri}: video id {duplicate!r} appears more than once")
    if multi_label:
        labels = [label for row in columns[schema.LABELS] for label in row]
        labels += [segment[_SEGMENT_FIELDS[0]] for row in columns[schema.SEGMENTS] for segment in row]
    else:
        labels = columns[schema.LABEL]
    bad = [label for label in labels if not 0 <= label < len(class_names)]
    if bad:
        raise ValueError(f"{uri}: label {bad[0]} out of range for {len(class_names)} classes")
    return table, class_names


def _check_version(where: str, metadata: dict[bytes, bytes]) -> None:
    found = metadata.get(schema.META_MANIFEST_VERSION, b"1").decode()
    if found != str(schema.MANIFEST_VERSION):
        raise ValueError(
            f"{where}: manifest version {found}, this version of stpa reads version {schema.MANIFEST_VERSION} "
            "(frame indices made by demuxing, exact seeking): prepare it again with `stpa prepare`"
        )


# --- helpers ------------------------------------------------------------------------------------------------------


def manifest_table(manifest: str | pa.Table, *, labelled: bool = True) -> pa.Table:
    """A manifest as an Arrow table (read through fsspec when given a URI), with its columns checked.

    ``labelled=False`` for a list of videos to predict (``pipeline.data.video_list``): no label column needed.
    """
    if isinstance(manifest, pa.Table):
        table, where = manifest, "manifest table"
    else:
        fs, path = storage.filesystem(manifest)
        table, where = pq.read_table(path, filesystem=fs), storage.normalize_uri(manifest)
    if table.schema.metadata and schema.META_CLASS_NAMES in table.schema.metadata:
        _check_version(where, table.schema.metadata)
    required = [
        schema.VIDEO_ID,
        schema.VIDEO_URI,
        schema.NUM_FRAMES,
        schema.DECODE_METHOD,
        schema.FRAME_INDEX,
    ]
    missing = [c for c in required if c not in table.column_names]
    if labelled and schema.LABEL not in table.column_names and schema.LABELS not in table.column_names:
        missing.append(f"{schema.LABEL} or {schema.LABELS}")
    if missing:
        raise ValueError(f"{where}: missing manifest column(s) {missing}")
    return table


def manifest_class_names(manifest_uri: str) -> list[str]:
    """Class names from a manifest's Parquet schema metadata (the schema only is read, through fsspec)."""
    fs, path = storage.filesystem(manifest_uri)
    with fs.open(path, "rb") as f:
        try:
            return schema.class_names_of(pq.read_schema(f))
        except ValueError as error:
            raise ValueError(f"{manifest_uri}: {error}") from None


def _check_values(uri: str, values: list, allowed: set[str], column: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{uri}: column {column!r} holds {unknown[0]!r}, expected one of {sorted(allowed)}")
