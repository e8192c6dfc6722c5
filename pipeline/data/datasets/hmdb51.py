"""HMDB51's official split files (``testTrainMulti_7030_splits/``), read exactly as published.

153 files ``<class>_test_split<N>.txt`` (51 classes x 3 splits), one line per video of the class:
``<video>.avi <flag> `` with a trailing space, LF endings; flag 1 = train, 2 = test, 0 = not used by this split.
Videos live at ``hmdb51_org/<class>/<video>.avi``. Labels are 0-based indices into the sorted class names.
"""

from __future__ import annotations

import posixpath
import re

from pipeline import storage
from pipeline.data.datasets.records import (
    AnnotationError,
    DatasetIndex,
    VideoRecord,
    check_splits_not_empty,
    check_unique_ids,
)
from pipeline.data.datasets.ucf101 import numbered_lines

SPLIT_FILE_PATTERN = re.compile(r"^(?P<name>.+)_test_split(?P<split>\d+)\.txt$")
FLAG_UNUSED, FLAG_TRAIN, FLAG_TEST = 0, 1, 2


def split_file_name(class_name: str, split: int) -> str:
    """``brush_hair_test_split1.txt`` for class ``brush_hair``, split 1."""
    return f"{class_name}_test_split{split}.txt"


def parse_split_file(text: str, path: str) -> list[tuple[int, str, int]]:
    """(line number, video file name, flag) for each line ``<video> <0|1|2>`` of a split file.

    Raises:
        AnnotationError: A malformed line or a flag other than 0, 1, 2.
    """
    entries = []
    for line_number, line in numbered_lines(text):
        fields = line.split()
        if len(fields) != 2:
            raise AnnotationError(path, line_number, f"expected '<video>.avi <0|1|2>', got {line!r}")
        if fields[1] not in ("0", "1", "2"):
            raise AnnotationError(
                path, line_number, f"flag must be 0 (unused), 1 (train) or 2 (test), got {fields[1]!r}"
            )
        entries.append((line_number, fields[0], int(fields[1])))
    return entries


def class_names_of_files(file_names: list[str], split: int, folder: str) -> list[str]:
    """Sorted class names of the split files named in ``file_names`` (other splits' files must match).

    Raises:
        AnnotationError: No file for ``split``, or a class that has files for other splits but not this one.
    """
    by_split: dict[int, set[str]] = {}
    for name in file_names:
        match = SPLIT_FILE_PATTERN.match(name)
        if match:
            by_split.setdefault(int(match["split"]), set()).add(match["name"])
    if split not in by_split:
        raise AnnotationError(folder, None, f"no '<class>_test_split{split}.txt' files")
    every_class = set().union(*by_split.values())
    lacking = sorted(every_class - by_split[split])
    if lacking:
        raise AnnotationError(
            folder, None, f"classes {lacking} have split files for other splits but not split {split}"
        )
    return sorted(by_split[split])


def records_of_class(
    entries: list[tuple[int, str, int]], path: str, class_name: str, label: int
) -> tuple[list[VideoRecord], int]:
    """The train and test records of one class's split file, and how many of its videos are unused."""
    records = []
    num_unused = 0
    for line_number, file_name, flag in entries:
        if flag == FLAG_UNUSED:
            num_unused += 1
            continue
        records.append(
            VideoRecord(
                video_id=posixpath.splitext(file_name)[0],
                path=f"{class_name}/{file_name}",
                split="train" if flag == FLAG_TRAIN else "test",
                label=label,
                source_path=path,
                source_line=line_number,
            )
        )
    return records, num_unused


def load(annotations_uri: str, split: int = 1) -> DatasetIndex:
    """Parse every ``<class>_test_split<split>.txt`` under ``annotations_uri``.

    Args:
        annotations_uri: The ``testTrainMulti_7030_splits`` folder (any fsspec URI).
        split: Official split, 1-3.

    Raises:
        FileNotFoundError: The folder does not exist.
        AnnotationError: A malformed line, a class file missing for this split, a video listed twice, a class
            file that lists no videos, or a split (train/test) with no videos.
    """
    if not storage.exists(annotations_uri):
        raise FileNotFoundError(f"annotation folder not found: {annotations_uri}")
    file_names = [posixpath.basename(uri) for uri in storage.list_files(annotations_uri)]
    class_names = class_names_of_files(file_names, split, annotations_uri)
    records: list[VideoRecord] = []
    num_unused = 0
    for label, class_name in enumerate(class_names):
        uri = storage.join(annotations_uri, split_file_name(class_name, split))
        entries = parse_split_file(storage.read_text(uri), uri)
        if not entries:
            raise AnnotationError(uri, None, "lists no videos")
        class_records, class_unused = records_of_class(entries, uri, class_name, label)
        records += class_records
        num_unused += class_unused
    check_splits_not_empty(
        records, {s: f"{annotations_uri}/*_test_split{split}.txt" for s in ("train", "test")}
    )
    check_unique_ids(records)
    return DatasetIndex("hmdb51", tuple(class_names), False, split, tuple(records), num_unused=num_unused)
