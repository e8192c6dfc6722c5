"""The videos a batch prediction scores: a folder or bucket prefix, a list file, or a manifest, as one table.

``list_videos(source)`` reads what ``workflows/predict.py --videos`` names:

- a folder or bucket prefix (``/data/clips``, ``s3://bucket/clips/``): every file below it, recursively, whose
  extension is a video extension (``VIDEO_EXTENSIONS``, case-insensitive), sorted by URI;
- a manifest (``*.parquet`` written by ``stpa prepare``): its rows in order, with their frame indices, so the videos
  are not indexed again;
- any other file: a list file, one video path or URI per line, in order; blank lines and lines starting with ``#``
  are skipped, relative paths are taken relative to the list file's folder.

The table has the manifest columns decoding needs (``pipeline.schema``): ``video_id`` (the video's URI: one row
per video, so a video listed twice is an error naming both lines), ``video_uri``, and ``num_frames``,
``decode_method``, ``frame_index``, null for videos not indexed yet (the decode task indexes them,
``pipeline.clips.dataset``). Errors are ``ValueError`` naming the source, and the line for a list file, raised
before anything is decoded.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa

from pipeline import schema, storage
from pipeline.data.datasets.folder import VIDEO_EXTENSIONS
from pipeline.data.manifest import read_manifest

FOLDER, LIST_FILE, MANIFEST = "folder", "list", "manifest"
VIDEO_LIST_SCHEMA = pa.schema(
    [
        (schema.VIDEO_ID, pa.string()),
        (schema.VIDEO_URI, pa.string()),
        (schema.NUM_FRAMES, pa.int64()),
        (schema.DECODE_METHOD, pa.string()),
        (schema.FRAME_INDEX, pa.binary()),
    ]
)


@dataclass(frozen=True)
class VideoList:
    """Videos to predict, in order.

    Attributes:
        source: The ``--videos`` URI, normalised.
        kind: ``"folder"``, ``"list"`` or ``"manifest"``.
        table: ``VIDEO_LIST_SCHEMA`` rows, one per video.
    """

    source: str
    kind: str
    table: pa.Table

    @property
    def uris(self) -> list[str]:
        return self.table.column(schema.VIDEO_URI).to_pylist()

    def fingerprint(self) -> str:
        """SHA-256 of the videos' URIs in order: what a resumed prediction checks it is scoring the same list by."""
        return hashlib.sha256("\n".join(self.uris).encode()).hexdigest()

    def slice(self, start: int, stop: int) -> pa.Table:
        return self.table.slice(start, stop - start)


def list_videos(source: str) -> VideoList:
    """The videos a folder, bucket prefix, manifest or list file names (see the module docstring).

    Raises:
        ValueError: ``source`` does not exist, names no video, a list file line is listed twice, or a manifest is
            not an stpa manifest (the message names the file, and the line of a list file).
    """
    source = storage.normalize_uri(source)
    fs, path = storage.filesystem(source)
    if not fs.exists(path):
        raise ValueError(f"--videos {source}: no such file, folder or bucket prefix")
    if fs.isdir(path):
        uris = [
            uri
            for uri in storage.list_files(source, recursive=True)
            if posixpath.splitext(uri)[1].lower() in VIDEO_EXTENSIONS
        ]
        if not uris:
            raise ValueError(f"--videos {source}: no video files ({', '.join(VIDEO_EXTENSIONS)}) below it")
        return VideoList(source, FOLDER, _unindexed(uris))
    if source.lower().endswith(".parquet"):
        return VideoList(source, MANIFEST, _from_manifest(source))
    return VideoList(source, LIST_FILE, _unindexed(_read_list_file(source)))


def _unindexed(uris: list[str]) -> pa.Table:
    nulls = pa.nulls(len(uris))
    return pa.Table.from_arrays(
        [pa.array(uris, pa.string()), pa.array(uris, pa.string()), nulls, nulls, nulls],
        schema=VIDEO_LIST_SCHEMA,
    )


def _read_list_file(source: str) -> list[str]:
    folder = posixpath.dirname(source) if "://" in source else os.path.dirname(source)
    first_line: dict[str, int] = {}
    uris = []
    for number, line in enumerate(storage.read_text(source).splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        absolute = "://" in entry or os.path.isabs(entry)
        uri = storage.normalize_uri(entry if absolute else storage.join(folder, entry))
        if uri in first_line:
            raise ValueError(f"{source}:{number}: {entry} is listed twice (first on line {first_line[uri]})")
        first_line[uri] = number
        uris.append(uri)
    if not uris:
        raise ValueError(f"{source}: the list file names no video (one path or URI per line)")
    return uris


def _from_manifest(source: str) -> pa.Table:
    table, _ = read_manifest(source)  # checked against pipeline.schema; raises naming the file
    if table.num_rows == 0:
        raise ValueError(f"{source}: the manifest has no rows")
    uris = [storage.normalize_uri(uri) for uri in table.column(schema.VIDEO_URI).to_pylist()]
    if len(set(uris)) != len(uris):
        seen: set[str] = set()
        duplicate = next(uri for uri in uris if uri in seen or seen.add(uri))
        raise ValueError(f"{source}: video {duplicate} appears in more than one row")
    return pa.Table.from_arrays(
        [
            pa.array(uris, pa.string()),
            pa.array(uris, pa.string()),
            table.column(schema.NUM_FRAMES).combine_chunks(),
            table.column(schema.DECODE_METHOD).combine_chunks(),
            table.column(schema.FRAME_INDEX).combine_chunks(),
        ],
        schema=VIDEO_LIST_SCHEMA,
    )
