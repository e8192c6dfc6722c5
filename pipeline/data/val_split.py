"""A validation split carved from the official training list, so that no choice is ever made on the test split.

Epoch selection, early stopping and sweep ranking use ``val``; the official ``test`` split is scored once, on the
chosen weights. ``carve_val`` moves a deterministic part of an index's ``train`` records to ``val``:

- ``ucf101``, by whole groups (``groups``): ``v_<Class>_gXX_cYY`` clips of one group XX share actors and scenes,
  so a group is never split between train and val. Per class, the groups are ordered by
  ``unit_hash(seed, "<class>/gXX")`` and taken in that order whenever a group brings the class's val count
  closer to ``fraction`` of its training videos; the first group is always taken (every class has val videos)
  and at least one group stays in train. Official split 1: 18 groups of 4-7 clips per class (72-121 training
  clips), so the per-class val fraction cannot be exact (one group is 4-10% of a class).
- ``hmdb51``, per class (``per_class_hash``): the class's training videos ordered by
  ``unit_hash(seed, video_id)``, the first ``round(fraction * n)`` to val (at least 1, at most n - 1).
- ``charades`` and ``folder``, per video (``hash``): a video is in val when ``unit_hash(seed, video_id) <
  fraction``; a video keeps its side when others are added or removed.

``fraction`` 0 carves nothing (``ValSplit.method`` is ``"none"``); training then keeps its last epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass

from pipeline.data.datasets.records import DatasetIndex, VideoRecord

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_VAL_SEED = 0
METHODS = {"ucf101": "groups", "hmdb51": "per_class_hash", "charades": "hash", "folder": "hash"}
_UCF101_GROUP = re.compile(r"_g(\d+)_c\d+$")


@dataclass(frozen=True)
class ValSplit:
    """How the val split was carved (in ``report.json`` and the manifests' ``stpa.val_split`` metadata).

    Attributes:
        method: ``groups``, ``per_class_hash``, ``hash``, or ``none`` (fraction 0).
        fraction: The requested fraction of the training videos, in [0, 1).
        seed: The hash seed.
        num_train_listed: Training videos the official list gives (before carving).
        num_val: Of them, moved to val.
        num_groups: Groups moved to val (``groups`` only; else 0).
        classes_without_val: Classes (single-label) left without a val video: a class with a single group
            (UCF101) or a single training video (HMDB51) cannot give one and keep one for training.
    """

    method: str
    fraction: float
    seed: int
    num_train_listed: int
    num_val: int
    num_groups: int = 0
    classes_without_val: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field (``classes_without_val`` as a list)."""
        return {**dataclasses.asdict(self), "classes_without_val": list(self.classes_without_val)}


def unit_hash(seed: int, key: str) -> float:
    """A number in [0, 1): the first 8 bytes of SHA-256(``"<seed>/<key>"``) as a big-endian integer / 2**64."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def ucf101_group(video_id: str) -> str:
    """The group ``gXX`` of a UCF101 video id ``v_<Class>_gXX_cYY`` (its own id when it has none)."""
    match = _UCF101_GROUP.search(video_id)
    return f"g{match[1]}" if match else video_id


def choose_groups(sizes: dict[str, int], fraction: float, seed: int, scope: str) -> set[str]:
    """The groups of one class that go to val (see the module docstring).

    Args:
        sizes: Group name -> videos in it.
        fraction: Target share of the class's videos, in (0, 1).
        seed: Hash seed.
        scope: Prefix of the hash key (the class name), so classes are drawn independently.

    Returns:
        The chosen group names: empty for fewer than two groups, else between one and all but one group.
    """
    if len(sizes) < 2:
        return set()
    order = sorted(sizes, key=lambda group: (unit_hash(seed, f"{scope}/{group}"), group))
    target = fraction * sum(sizes.values())
    chosen, count = {order[0]}, sizes[order[0]]
    for group in order[
        1 : len(order) - 1
    ]:  # the last group in the order is never needed to keep one in train
        if abs(count + sizes[group] - target) < abs(count - target):
            chosen.add(group)
            count += sizes[group]
    return chosen


def carve_val(
    index: DatasetIndex, fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_VAL_SEED
) -> tuple[DatasetIndex, ValSplit]:
    """Move part of ``index``'s training records to the ``val`` split, by the dataset's method.

    Args:
        index: A parsed official split (records in ``train`` and ``test`` only).
        fraction: Share of the training videos to move, in [0, 1); 0 moves none.
        seed: Hash seed: the same (index, fraction, seed) always gives the same carve.

    Returns:
        The index with the carved records' split set to ``"val"`` (order kept), and how it was carved.

    Raises:
        ValueError: ``fraction`` outside [0, 1), or an index that already has ``val`` records.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"val fraction must be in [0, 1), got {fraction}")
    if index.of_split("val"):
        raise ValueError(f"{index.dataset}: the index already has a val split")
    train = index.of_split("train")
    if fraction == 0:
        return index, ValSplit("none", 0.0, seed, len(train), 0)
    method = METHODS[index.dataset]
    val_ids, num_groups = _val_ids(index, train, method, fraction, seed)
    records = tuple(
        dataclasses.replace(record, split="val")
        if record.split == "train" and record.video_id in val_ids
        else record
        for record in index.records
    )
    without = ()
    if not index.multi_label:
        with_val = {record.label for record in train if record.video_id in val_ids}
        without = tuple(name for label, name in enumerate(index.class_names) if label not in with_val)
    carved = dataclasses.replace(index, records=records)
    return carved, ValSplit(method, fraction, seed, len(train), len(val_ids), num_groups, without)


def _val_ids(
    index: DatasetIndex, train: tuple[VideoRecord, ...], method: str, fraction: float, seed: int
) -> tuple[set[str], int]:
    """(video ids moved to val, groups moved) for one method."""
    if method == "hash":
        return {r.video_id for r in train if unit_hash(seed, r.video_id) < fraction}, 0
    by_class: dict[int, list[VideoRecord]] = defaultdict(list)
    for record in train:
        by_class[record.label].append(record)
    val_ids: set[str] = set()
    num_groups = 0
    for label, records in by_class.items():
        scope = index.class_names[label]
        if method == "groups":
            groups: dict[str, list[str]] = defaultdict(list)
            for record in records:
                groups[ucf101_group(record.video_id)].append(record.video_id)
            chosen = choose_groups({g: len(ids) for g, ids in groups.items()}, fraction, seed, scope)
            val_ids.update(video_id for group in chosen for video_id in groups[group])
            num_groups += len(chosen)
        else:  # per_class_hash
            if len(records) < 2:
                continue
            order = sorted(records, key=lambda r: (unit_hash(seed, r.video_id), r.video_id))
            num_val = min(len(records) - 1, max(1, round(fraction * len(records))))
            val_ids.update(r.video_id for r in order[:num_val])
    return val_ids, num_groups
