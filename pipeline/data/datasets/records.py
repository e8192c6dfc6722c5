"""What the dataset parsers return: typed records of the official annotation files, and their errors.

A parser turns annotation text into a ``DatasetIndex``: the class names in label order and one ``VideoRecord`` per
video of the requested official split, with the video's path relative to the videos folder. Nothing here touches
the videos themselves; ``pipeline.data.prepare`` checks and probes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.schema import SPLITS


class AnnotationError(ValueError):
    """An annotation file that does not follow its official format.

    Attributes:
        path: The file (URI or path) at fault.
        line_number: 1-based line of the fault, or None when the fault is the file as a whole.
        reason: What is wrong, without the location.
    """

    def __init__(self, path: str, line_number: int | None, reason: str) -> None:
        self.path = path
        self.line_number = line_number
        self.reason = reason
        location = f"{path}:{line_number}" if line_number is not None else path
        super().__init__(f"{location}: {reason}")


@dataclass(frozen=True)
class Segment:
    """One temporal action annotation (Charades): class ``label`` during [``start``, ``end``] seconds."""

    label: int
    start: float
    end: float


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split, as the annotation files describe it.

    Attributes:
        video_id: Unique within the dataset (e.g. ``v_ApplyEyeMakeup_g08_c01``, Charades ``46GP8``).
        path: Path of the video file relative to the videos folder, ``/``-separated.
        split: ``"train"`` or ``"test"`` as parsed; ``"val"`` once ``pipeline.data.val_split`` carved it.
        label: 0-based class index (single-label datasets), else None.
        labels: Sorted distinct 0-based class indices (multi-label datasets); may be empty.
        segments: Temporal actions in file order (Charades).
        duration: Length in seconds when the annotations give it (Charades ``length``), else None.
        source_path: The annotation file that listed the video.
        source_line: Its 1-based line there (for a CSV row, the row's first line).
    """

    video_id: str
    path: str
    split: str
    label: int | None = None
    labels: tuple[int, ...] = ()
    segments: tuple[Segment, ...] = ()
    duration: float | None = None
    source_path: str = ""
    source_line: int | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


@dataclass(frozen=True)
class DatasetIndex:
    """The parsed annotations of one official split of a dataset.

    Attributes:
        dataset: ``ucf101``, ``hmdb51``, ``charades`` or ``folder``.
        class_names: Class names, index = label.
        multi_label: Whether records carry ``labels``/``segments`` (Charades) rather than ``label``.
        split: Official split number (UCF101, HMDB51: 1-3), or None where the dataset has one split.
        records: Every train and test video of the split, in annotation-file order.
        num_unused: Videos listed but not used by this split (HMDB51 flag 0).
    """

    dataset: str
    class_names: tuple[str, ...]
    multi_label: bool
    split: int | None
    records: tuple[VideoRecord, ...]
    num_unused: int = 0
    _by_split: dict[str, tuple[VideoRecord, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_split = {name: tuple(r for r in self.records if r.split == name) for name in SPLITS}
        object.__setattr__(self, "_by_split", by_split)

    def of_split(self, split: str) -> tuple[VideoRecord, ...]:
        """The records of ``split`` (one of ``SPLITS``), in annotation-file order."""
        return self._by_split[split]


def check_unique_ids(records: Iterable[VideoRecord]) -> None:
    """Raise an ``AnnotationError`` at the second listing of any video id (or video path)."""
    seen_ids: dict[str, VideoRecord] = {}
    seen_paths: dict[str, VideoRecord] = {}
    for record in records:
        for key, seen, what in ((record.video_id, seen_ids, "video id"), (record.path, seen_paths, "video")):
            if key in seen:
                first = seen[key]
                raise AnnotationError(
                    record.source_path,
                    record.source_line,
                    f"duplicate {what} {key!r} (first listed at {first.source_path}:{first.source_line})",
                )
            seen[key] = record


def check_splits_not_empty(records: Iterable[VideoRecord], sources: dict[str, str]) -> None:
    """Raise an ``AnnotationError`` naming the source file of a split (train or test) that lists no video.

    Args:
        records: Every record of the index.
        sources: Split name -> the file (or files) that list it, for the message (the official splits only:
            val is carved later).
    """
    present = {record.split for record in records}
    for split in sources:
        if split not in present:
            raise AnnotationError(sources[split], None, f"the {split} split lists no videos")
