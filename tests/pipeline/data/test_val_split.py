"""Carving the val split from the official training lists: UCF101 by whole groups on the real split files, HMDB51
per class on the real split files, Charades and folders by hashed id; deterministic under a seed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.data.datasets import VideoRecord, hmdb51, ucf101
from pipeline.data.datasets.records import DatasetIndex
from pipeline.data.val_split import carve_val, choose_groups, ucf101_group, unit_hash

SHARED_ANNOTATIONS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "annotations"
UCF_LISTS = SHARED_ANNOTATIONS / "ucf101" / "ucfTrainTestlist"
HMDB_SPLITS = SHARED_ANNOTATIONS / "hmdb51" / "testTrainMulti_7030_splits"


def _ucf_index(split: int = 1) -> DatasetIndex:
    if not UCF_LISTS.is_dir():
        pytest.skip(f"{UCF_LISTS} not found")
    return ucf101.load(str(UCF_LISTS), split)


def _val_ids(index: DatasetIndex) -> set[str]:
    return {r.video_id for r in index.of_split("val")}


@pytest.mark.shared_data
@pytest.mark.parametrize("split", [1, 2, 3])
def test_real_ucf101_val_is_whole_groups_of_every_class(split: int) -> None:
    index = _ucf_index(split)
    carved, info = carve_val(index, 0.1, seed=0)
    train, val, test = (carved.of_split(name) for name in ("train", "val", "test"))
    # Nothing is lost or invented; test is untouched.
    assert len(train) + len(val) == len(index.of_split("train")) and test == index.of_split("test")
    assert info.method == "groups" and info.num_val == len(val) and info.classes_without_val == ()
    # No (class, group) on both sides: a group's clips share actors and scenes.
    train_groups = {(r.label, ucf101_group(r.video_id)) for r in train}
    val_groups = {(r.label, ucf101_group(r.video_id)) for r in val}
    assert train_groups.isdisjoint(val_groups) and len(val_groups) == info.num_groups
    assert {r.label for r in val} == set(range(101))  # every class present in val
    # Per-class balance. A class has 18 groups of 4-7 clips (72-121 training clips), so one group is 3.3-9.7% of
    # its class: the greedy fill lands within half of the largest group share of the target, 0.1 +- 0.05.
    per_class_train = Counter(r.label for r in index.of_split("train"))
    per_class_val = Counter(r.label for r in val)
    fractions = [per_class_val[c] / per_class_train[c] for c in range(101)]
    assert min(fractions) >= 0.05 and max(fractions) <= 0.15, (min(fractions), max(fractions))
    # Over all classes the greedy fill overshoots a little (splits 1-3: 0.110, 0.107, 0.110).
    assert len(val) / len(index.of_split("train")) == pytest.approx(0.1, abs=0.015)


@pytest.mark.shared_data
def test_real_ucf101_carve_is_deterministic_and_seeded() -> None:
    index = _ucf_index(1)
    first, _ = carve_val(index, 0.1, seed=0)
    again, _ = carve_val(ucf101.load(str(UCF_LISTS), 1), 0.1, seed=0)
    other, _ = carve_val(index, 0.1, seed=1)
    assert _val_ids(first) == _val_ids(again)
    assert _val_ids(first) != _val_ids(other)
    assert [r.video_id for r in first.records] == [r.video_id for r in index.records]  # order kept
    # fraction 0: no val, the index is the parsed one
    same, info = carve_val(index, 0.0)
    assert same is index and info.method == "none" and info.num_val == 0


@pytest.mark.shared_data
@pytest.mark.parametrize("split", [1, 2, 3])
def test_real_hmdb51_val_is_chosen_per_class(split: int) -> None:
    if not HMDB_SPLITS.is_dir():
        pytest.skip(f"{HMDB_SPLITS} not found")
    index = hmdb51.load(str(HMDB_SPLITS), split)
    carved, info = carve_val(index, 0.1, seed=0)
    assert info.method == "per_class_hash"
    # 70 training videos per class: exactly round(0.1 * 70) = 7 to val, 63 stay.
    assert set(Counter(r.label for r in carved.of_split("val")).values()) == {7}
    assert set(Counter(r.label for r in carved.of_split("train")).values()) == {63}
    assert carved.of_split("test") == index.of_split("test")
    assert _val_ids(carved) == _val_ids(carve_val(index, 0.1, seed=0)[0])
    assert _val_ids(carved) != _val_ids(carve_val(index, 0.1, seed=7)[0])


def _records(dataset: str, num: int) -> DatasetIndex:
    multi = dataset == "charades"
    records = [
        VideoRecord(
            video_id=f"c{i % 3}/video{i:04d}" if dataset == "folder" else f"ID{i:04d}",
            path=f"{i}.mp4",
            split="test" if i % 5 == 0 else "train",
            label=None if multi else i % 3,
            labels=(i % 3,) if multi else (),
        )
        for i in range(num)
    ]
    return DatasetIndex(dataset, ("a", "b", "c"), multi, None, tuple(records))


@pytest.mark.parametrize("dataset", ["charades", "folder"])
def test_hash_carving_of_charades_and_folders(dataset: str) -> None:
    index = _records(dataset, 2000)
    carved, info = carve_val(index, 0.1, seed=0)
    train = index.of_split("train")
    val = carved.of_split("val")
    assert info.method == "hash" and info.num_train_listed == len(train) == 1600
    # Each video independently with probability 0.1: 160 expected, binomial sd 12; 4 sd either way.
    assert 112 <= len(val) <= 208
    assert {r.video_id for r in val} == {r.video_id for r in train if unit_hash(0, r.video_id) < 0.1}
    assert carved.of_split("test") == index.of_split("test")
    assert _val_ids(carved) == _val_ids(carve_val(index, 0.1, seed=0)[0])
    assert _val_ids(carved) != _val_ids(carve_val(index, 0.1, seed=1)[0])
    # A video keeps its side when others are removed (the choice depends on its id alone).
    smaller = DatasetIndex(dataset, index.class_names, index.multi_label, None, index.records[:1000])
    assert _val_ids(carve_val(smaller, 0.1)[0]) == {r for r in _val_ids(carved) if int(r[-4:]) < 1000}


def test_choose_groups_keeps_one_group_each_side() -> None:
    assert choose_groups({"g01": 5}, 0.5, 0, "A") == set()  # one group: cannot give val and keep train
    sizes = {f"g{i:02d}": 5 for i in range(10)}
    assert len(choose_groups(sizes, 0.3, 0, "A")) == 3
    assert len(choose_groups(sizes, 0.01, 0, "A")) == 1  # at least one group
    assert len(choose_groups(sizes, 0.99, 0, "A")) == 9  # at most all but one
    by_seed = {frozenset(choose_groups(sizes, 0.3, seed, "A")) for seed in range(5)}
    assert len(by_seed) > 1


def test_bad_fraction_is_refused() -> None:
    index = _records("folder", 10)
    for fraction in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val fraction must be in"):
            carve_val(index, fraction)
