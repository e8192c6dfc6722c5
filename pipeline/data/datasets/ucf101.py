"""UCF101's official split files (``ucfTrainTestlist/``), read exactly as published.

Formats (CRLF line endings in the official download; LF is accepted too):

    classInd.txt        ``1 ApplyEyeMakeup``                                   index 1..101 in order
    trainlist0N.txt     ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``        path + 1-based label
    testlist0N.txt      ``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi``          path only

Labels are 0-based in classInd order. A test video's label comes from its folder name through classInd,
case-insensitively: the official files name the class ``HandstandPushups`` and its videos
``v_HandStandPushups_*``, and some re-packaged copies name the folder after the videos.

The same list format serves the generic ``folder`` dataset (``pipeline.data.datasets.folder``), where the label column
is optional in both lists.
"""

from __future__ import annotations

import posixpath

from pipeline import storage
from pipeline.data.datasets.records import (
    AnnotationError,
    DatasetIndex,
    VideoRecord,
    check_splits_not_empty,
    check_unique_ids,
)

CLASS_INDEX_FILE = "classInd.txt"


def train_list_name(split: int) -> str:
    """``trainlist01.txt`` for split 1."""
    return f"trainlist{split:02d}.txt"


def test_list_name(split: int) -> str:
    """``testlist01.txt`` for split 1."""
    return f"testlist{split:02d}.txt"


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line without its CR/LF ending) for every line that is not blank."""
    lines = text.split("\n")
    return [(i, line.rstrip("\r")) for i, line in enumerate(lines, start=1) if line.strip()]


def parse_class_index(text: str, path: str) -> list[str]:
    """Class names in label order from a ``classInd.txt`` (``<index> <name>`` per line, index 1..N in order).

    Args:
        text: The file's text.
        path: The file's URI, for error messages.

    Raises:
        AnnotationError: A malformed line, an index out of order, a duplicate name, or no classes.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for line_number, line in numbered_lines(text):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise AnnotationError(path, line_number, f"expected '<index> <ClassName>', got {line!r}")
        index, name = int(fields[0]), fields[1]
        if index != len(names) + 1:
            raise AnnotationError(
                path, line_number, f"class index {index} out of order (expected {len(names) + 1})"
            )
        if name.lower() in seen:
            raise AnnotationError(
                path, line_number, f"class {name!r} listed twice (first at line {seen[name.lower()]})"
            )
        seen[name.lower()] = line_number
        names.append(name)
    if not names:
        raise AnnotationError(path, None, "no classes listed")
    return names


def parse_split_list(
    text: str,
    path: str,
    class_names: list[str],
    split: str,
    *,
    require_label: bool,
    id_with_class: bool = False,
) -> list[VideoRecord]:
    """Records of a ``trainlist0N.txt`` / ``testlist0N.txt``: ``<Class>/<video file> [<1-based label>]``.

    The label is taken from the folder name through ``class_names`` (case-insensitively); a label column, where
    present, must agree with it.

    Args:
        text: The file's text.
        path: The file's URI, for error messages.
        class_names: Class names in label order (``parse_class_index``).
        split: ``"train"`` or ``"test"``: the split these records belong to.
        require_label: Whether every line must carry the label column (official train lists).
        id_with_class: Video id ``<Class>/<file stem>`` instead of ``<file stem>`` (the ``folder`` dataset).

    Raises:
        AnnotationError: A malformed line, an unknown class, or a label that disagrees with the folder.
    """
    class_of = {name.lower(): index for index, name in enumerate(class_names)}
    records = []
    for line_number, line in numbered_lines(text):
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("-").isdigit():
            video_path, given_label = fields[0], int(fields[1])
        elif len(fields) == 1 and not require_label:
            video_path, given_label = fields[0], None
        else:
            expected = "'<Class>/<video> <label>'" if require_label else "'<Class>/<video> [<label>]'"
            raise AnnotationError(path, line_number, f"expected {expected}, got {line!r}")
        folder, _, file_name = video_path.partition("/")
        if not folder or not file_name or "/" in file_name:
            raise AnnotationError(
                path, line_number, f"expected a path '<Class>/<video file>', got {video_path!r}"
            )
        label = class_of.get(folder.lower())
        if label is None:
            raise AnnotationError(path, line_number, f"unknown class {folder!r} (not in the class list)")
        if given_label is not None and given_label != label + 1:
            raise AnnotationError(
                path,
                line_number,
                f"label {given_label} disagrees with folder {folder!r}, which is class {label + 1} "
                f"({class_names[label]})",
            )
        records.append(
            VideoRecord(
                video_id=posixpath.splitext(video_path if id_with_class else file_name)[0],
                path=video_path,
                split=split,
                label=label,
                source_path=path,
                source_line=line_number,
            )
        )
    return records


def index_from_lists(
    dataset: str,
    class_names: list[str],
    train_uri: str,
    test_uri: str,
    split: int,
    *,
    require_train_label: bool,
    id_with_class: bool = False,
) -> DatasetIndex:
    """A ``DatasetIndex`` from a train list and a test list in UCF101's format (read through fsspec)."""
    records = parse_split_list(
        _read(train_uri),
        train_uri,
        class_names,
        "train",
        require_label=require_train_label,
        id_with_class=id_with_class,
    ) + parse_split_list(
        _read(test_uri), test_uri, class_names, "test", require_label=False, id_with_class=id_with_class
    )
    check_splits_not_empty(records, {"train": train_uri, "test": test_uri})
    check_unique_ids(records)
    return DatasetIndex(dataset, tuple(class_names), False, split, tuple(records))


def load(annotations_uri: str, split: int = 1) -> DatasetIndex:
    """Parse ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt`` under ``annotations_uri``.

    Args:
        annotations_uri: The ``ucfTrainTestlist`` folder (any fsspec URI).
        split: Official split, 1-3.

    Raises:
        FileNotFoundError: A split file is missing.
        AnnotationError: A file breaks the format (see ``parse_class_index``, ``parse_split_list``), a video is
            listed twice, or a split lists no videos.
    """
    class_index_uri = storage.join(annotations_uri, CLASS_INDEX_FILE)
    class_names = parse_class_index(_read(class_index_uri), class_index_uri)
    return index_from_lists(
        "ucf101",
        class_names,
        storage.join(annotations_uri, train_list_name(split)),
        storage.join(annotations_uri, test_list_name(split)),
        split,
        require_train_label=True,
    )


def _read(uri: str) -> str:
    if not storage.exists(uri):
        raise FileNotFoundError(f"annotation file not found: {uri}")
    return storage.read_text(uri)
