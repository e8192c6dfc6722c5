"""Charades' official annotation files, read exactly as published.

    Charades_v1_classes.txt   ``c000 Holding some clothes``: ids c000..c156 in order; label = the id's number
    Charades_v1_train.csv     header ``id,subject,scene,quality,relevance,verified,script,objects,descriptions,
    Charades_v1_test.csv      actions,length``; CSV-quoted fields (scripts contain commas); ``actions`` is a
                              ``;``-separated list of ``cNNN start end`` (seconds), possibly empty; ``length`` in
                              seconds

Videos are ``<id>.mp4`` in ``Charades_v1_480/`` (or ``Charades_v1/``). Multi-label: a video's ``labels`` are the
distinct classes of its actions (none for a video without actions), its ``segments`` the actions themselves.
"""

from __future__ import annotations

import csv
import io
import math
import re

from pipeline import storage
from pipeline.data.datasets.records import (
    AnnotationError,
    DatasetIndex,
    Segment,
    VideoRecord,
    check_splits_not_empty,
    check_unique_ids,
)
from pipeline.data.datasets.ucf101 import numbered_lines

CLASSES_FILE = "Charades_v1_classes.txt"
TRAIN_FILE = "Charades_v1_train.csv"
TEST_FILE = "Charades_v1_test.csv"
HEADER = (
    "id",
    "subject",
    "scene",
    "quality",
    "relevance",
    "verified",
    "script",
    "objects",
    "descriptions",
    "actions",
    "length",
)
REQUIRED_COLUMNS = ("id", "actions", "length")
VIDEO_EXTENSION = ".mp4"
_CLASS_ID = re.compile(r"^c(\d{3,})$")


def class_id(label: int) -> str:
    """``c000`` for label 0."""
    return f"c{label:03d}"


def parse_classes(text: str, path: str) -> list[str]:
    """Class names in label order from ``Charades_v1_classes.txt`` (``cNNN <name>``, ids c000.. in order).

    Raises:
        AnnotationError: A malformed line or an id out of order.
    """
    names: list[str] = []
    for line_number, line in numbered_lines(text):
        identifier, _, name = line.partition(" ")
        match = _CLASS_ID.match(identifier)
        if not match or not name.strip():
            raise AnnotationError(path, line_number, f"expected 'cNNN <class name>', got {line!r}")
        if int(match[1]) != len(names):
            raise AnnotationError(
                path, line_number, f"class id {identifier} out of order (expected {class_id(len(names))})"
            )
        names.append(name.strip())
    if not names:
        raise AnnotationError(path, None, "no classes listed")
    return names


def parse_actions(field: str, num_classes: int, path: str, line_number: int) -> tuple[Segment, ...]:
    """The segments of an ``actions`` field: ``cNNN start end`` triples separated by ``;`` (may be empty).

    Raises:
        AnnotationError: A triple that is not ``cNNN start end``, an unknown class, a time that is not a finite
            non-negative number, or ``end < start``.
    """
    if not field.strip():
        return ()
    segments = []
    for triple in field.split(";"):
        parts = triple.split()
        match = _CLASS_ID.match(parts[0]) if len(parts) == 3 else None
        if match is None:
            raise AnnotationError(path, line_number, f"action {triple!r} is not 'cNNN start end'")
        label = int(match[1])
        if label >= num_classes:
            raise AnnotationError(
                path, line_number, f"unknown class {parts[0]} (classes are c000..{class_id(num_classes - 1)})"
            )
        start, end = (_seconds(text, path, line_number, f"action {triple!r}") for text in parts[1:])
        if start < 0:
            raise AnnotationError(path, line_number, f"action {triple!r} starts before 0")
        if end < start:
            raise AnnotationError(path, line_number, f"action {triple!r} ends before it starts")
        segments.append(Segment(label, start, end))
    return tuple(segments)


def parse_csv(text: str, path: str, num_classes: int, split: str) -> list[VideoRecord]:
    """Records of ``Charades_v1_train.csv`` or ``Charades_v1_test.csv``.

    Args:
        text: The file's text.
        path: The file's URI, for error messages.
        num_classes: Number of classes (``parse_classes``), to check action ids.
        split: ``"train"`` or ``"test"``.

    Raises:
        AnnotationError: A header without ``id``, ``actions`` or ``length``, a row with the wrong number of fields,
            an empty id, a bad ``length`` or a bad action (``parse_actions``). Line numbers are the physical
            line where the row starts (quoted fields may span lines).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise AnnotationError(path, None, "empty file (no header)") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise AnnotationError(path, 1, f"header lacks {missing}; the official header is {','.join(HEADER)}")
    column = {name: header.index(name) for name in REQUIRED_COLUMNS}
    records = []
    line_number = reader.line_num + 1
    for row in reader:
        row_line, line_number = line_number, reader.line_num + 1
        if not row:
            continue
        if len(row) != len(header):
            raise AnnotationError(path, row_line, f"{len(row)} fields, the header has {len(header)}")
        video_id = row[column["id"]].strip()
        if not video_id:
            raise AnnotationError(path, row_line, "empty id")
        length = _seconds(row[column["length"]], path, row_line, "length")
        if length <= 0:
            raise AnnotationError(path, row_line, f"length must be positive, got {length}")
        segments = parse_actions(row[column["actions"]], num_classes, path, row_line)
        records.append(
            VideoRecord(
                video_id=video_id,
                path=video_id + VIDEO_EXTENSION,
                split=split,
                labels=tuple(sorted({segment.label for segment in segments})),
                segments=segments,
                duration=length,
                source_path=path,
                source_line=row_line,
            )
        )
    return records


def load(annotations_uri: str) -> DatasetIndex:
    """Parse the classes file and both CSVs under ``annotations_uri`` (the Charades root folder).

    Raises:
        FileNotFoundError: A file is missing.
        AnnotationError: A file breaks the format, a video is listed twice, or a split lists no videos.
    """
    classes_uri = storage.join(annotations_uri, CLASSES_FILE)
    class_names = parse_classes(_read(classes_uri), classes_uri)
    records: list[VideoRecord] = []
    sources = {}
    for split, file_name in (("train", TRAIN_FILE), ("test", TEST_FILE)):
        uri = storage.join(annotations_uri, file_name)
        sources[split] = uri
        records += parse_csv(_read(uri), uri, len(class_names), split)
    check_splits_not_empty(records, sources)
    check_unique_ids(records)
    return DatasetIndex("charades", tuple(class_names), True, None, tuple(records))


def _seconds(text: str, path: str, line_number: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(path, line_number, f"{what}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise AnnotationError(path, line_number, f"{what}: {text!r} is not a finite number")
    return value


def _read(uri: str) -> str:
    if not storage.exists(uri):
        raise FileNotFoundError(f"annotation file not found: {uri}")
    return storage.read_text(uri)
