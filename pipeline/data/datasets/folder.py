"""A user's own collection laid out as ``<root>/<class>/<video>``.

Classes are the sub-folders of the root, sorted by name (label = index), unless a ``classInd.txt`` gives the order.
Every file with a video extension (``VIDEO_EXTENSIONS``) directly inside a class folder is a video; other files and
deeper folders are ignored. The video id is ``<class>/<file stem>``, unique even where two classes hold files of the
same name.

The split comes from one of:
- split lists in UCF101's format in an annotations folder (``trainlist0N.txt``, ``testlist0N.txt``, optional
  ``classInd.txt``; the label column is optional in both lists and checked against the folder when present), or
- with no annotations folder, a hash of the video's relative path: a video is in the test split when the first
  8 bytes of SHA-256(``<class>/<file>``), read as a big-endian integer and divided by 2**64, fall below
  ``TEST_FRACTION`` (0.2). The assignment of a video never changes when videos are added or removed.
"""

from __future__ import annotations

import hashlib
import posixpath

from pipeline import storage
from pipeline.data.datasets import ucf101
from pipeline.data.datasets.records import (
    AnnotationError,
    DatasetIndex,
    VideoRecord,
    check_splits_not_empty,
    check_unique_ids,
)

TEST_FRACTION = 0.2
VIDEO_EXTENSIONS = (
    ".avi",
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
    ".ogv",
    ".ts",  # MPEG transport streams: camcorders (.mts, .m2ts), broadcast recordings, joined clips
    ".mts",
    ".m2ts",
)


def is_test_video(path: str) -> bool:
    """Whether the video at ``path`` (``<class>/<file>``) falls in the hashed test split (see module doc)."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


def video_paths(relative_paths: list[str]) -> list[str]:
    """The ``<class>/<video file>`` paths among ``relative_paths`` (files found under the root), sorted."""
    return sorted(
        path
        for path in relative_paths
        if path.count("/") == 1 and posixpath.splitext(path)[1].lower() in VIDEO_EXTENSIONS
    )


def index_from_paths(paths: list[str], class_names: list[str], root: str) -> DatasetIndex:
    """A ``DatasetIndex`` of ``paths`` (``<class>/<video file>``), split by ``is_test_video``.

    Raises:
        AnnotationError: A video in a folder that is not a class, or a split with no videos.
    """
    label_of = {name: index for index, name in enumerate(class_names)}
    records = []
    for path in paths:
        folder = path.partition("/")[0]
        if folder not in label_of:
            raise AnnotationError(root, None, f"video {path!r} is in a folder that is not a listed class")
        records.append(
            VideoRecord(
                video_id=posixpath.splitext(path)[0],
                path=path,
                split="test" if is_test_video(path) else "train",
                label=label_of[folder],
                source_path=root,
            )
        )
    check_splits_not_empty(records, {"train": root, "test": root})
    check_unique_ids(records)
    return DatasetIndex("folder", tuple(class_names), False, None, tuple(records))


def load(videos_uri: str, annotations_uri: str = "", split: int = 1) -> DatasetIndex:
    """Index the videos under ``videos_uri``; split by the lists in ``annotations_uri``, or by hash when ``""``.

    Raises:
        FileNotFoundError: ``videos_uri`` or a split list does not exist.
        AnnotationError: No class folders or videos, or a list that breaks UCF101's format.
    """
    if not storage.exists(videos_uri):
        raise FileNotFoundError(f"videos folder not found: {videos_uri}")
    folders = [posixpath.basename(uri.rstrip("/")) for uri in storage.list_dirs(videos_uri)]
    class_index_uri = storage.join(annotations_uri, ucf101.CLASS_INDEX_FILE) if annotations_uri else ""
    if class_index_uri and storage.exists(class_index_uri):
        class_names = ucf101.parse_class_index(storage.read_text(class_index_uri), class_index_uri)
    else:
        class_names = sorted(folders)
    if not class_names:
        raise AnnotationError(videos_uri, None, "no class folders ('<root>/<class>/<video>')")
    if not annotations_uri:
        fs, root_path = storage.filesystem(videos_uri)
        found = [posixpath.relpath(path, root_path.rstrip("/")) for path in fs.find(root_path)]
        paths = video_paths(found)
        if not paths:
            raise AnnotationError(
                videos_uri, None, f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in class folders"
            )
        return index_from_paths(paths, class_names, videos_uri)
    return ucf101.index_from_lists(
        "folder",
        class_names,
        storage.join(annotations_uri, ucf101.train_list_name(split)),
        storage.join(annotations_uri, ucf101.test_list_name(split)),
        split,
        require_train_label=False,
        id_with_class=True,
    )
