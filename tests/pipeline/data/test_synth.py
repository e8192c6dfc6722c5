"""The dataset generator: official layouts that our parsers read back, balanced labels, classes that need more than
one frame (mode "set") or the order of frames (mode "order"), and determinism under a seed."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import storage
from pipeline.data import synth
from pipeline.data.datasets import charades, hmdb51, ucf101
from pipeline.video.decode import index_video

SMALL = {"width": 64, "height": 48, "num_frames": 16, "fps": 8.0}


def _decode(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ucf101_layout_parses_back_balanced_in_every_split(tmp_path: Path) -> None:
    summary = synth.synthesize("ucf101", str(tmp_path), num_classes=4, videos_per_class=5, seed=3, **SMALL)
    assert summary.num_videos == 20
    assert summary.videos_uri == str(tmp_path / "UCF-101")
    assert summary.annotations_uri == str(tmp_path / "ucfTrainTestlist")
    lists = tmp_path / "ucfTrainTestlist"
    for name in ("classInd.txt", "trainlist01.txt", "testlist03.txt"):
        data = (lists / name).read_bytes()
        assert data.count(b"\r\n") == data.count(b"\n") > 0  # CRLF everywhere, as published
    assert (
        (lists / "classInd.txt")
        .read_bytes()
        .startswith(b"1 RedSquareAndGreenDisk\r\n2 GreenDiskAndBlueTriangle")
    )
    truth = {v.video_id: v for v in summary.videos}
    for split in (1, 2, 3):
        index = ucf101.load(summary.annotations_uri, split)
        assert index.class_names == summary.class_names
        assert len(index.records) == 20
        for name in ("train", "test"):
            counts = Counter(r.label for r in index.of_split(name))
            assert sorted(counts) == [0, 1, 2, 3] and len(set(counts.values())) == 1  # balanced
        for record in index.records:
            assert record.label == truth[record.video_id].label
            assert (tmp_path / "UCF-101" / record.path).is_file()
        num_test = 4 * sum(1 for k in range(5) if k % 4 == split - 1)  # one video in four per class, rotating
        assert Counter(r.split for r in index.records) == {"train": 20 - num_test, "test": num_test}
    assert {r.video_id: r.split for r in ucf101.load(summary.annotations_uri, 1).records} == {
        v.video_id: v.split for v in summary.videos
    }


def test_hmdb51_layout_parses_back_with_trailing_space_and_unused(tmp_path: Path) -> None:
    summary = synth.synthesize("hmdb51", str(tmp_path), num_classes=3, videos_per_class=6, seed=1, **SMALL)
    split_files = sorted((tmp_path / "testTrainMulti_7030_splits").iterdir())
    assert len(split_files) == 3 * 3
    for path in split_files:
        for line in path.read_bytes().split(b"\n")[:-1]:
            assert line.endswith((b" 0 ", b" 1 ", b" 2 "))  # the official trailing space
    assert list(summary.class_names) == sorted(summary.class_names)
    truth = {v.video_id: v for v in summary.videos}
    for split in (1, 2, 3):
        index = hmdb51.load(summary.annotations_uri, split)
        assert index.class_names == summary.class_names
        assert index.num_unused == 3  # one per class
        for name in ("train", "test"):
            counts = Counter(r.label for r in index.of_split(name))
            assert sorted(counts) == [0, 1, 2] and len(set(counts.values())) == 1
        for record in index.records:
            assert record.label == truth[record.video_id].label
            assert (tmp_path / "hmdb51_org" / record.path).is_file()
            # the class name describes the pair of objects of the class
            objects = summary.class_objects[record.label]
            assert all("_".join(synth.object_name(t)) in summary.class_names[record.label] for t in objects)


def test_charades_layout_multilabel_segments_and_frames_agree(tmp_path: Path) -> None:
    summary = synth.synthesize("charades", str(tmp_path), num_classes=6, videos_per_class=5, seed=2, **SMALL)
    header = (tmp_path / "Charades_v1_train.csv").read_text().split("\n")[0]
    assert header == "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"
    assert (tmp_path / "Charades_v1_classes.txt").read_text().startswith("c000 red square\nc001 green disk\n")
    raw = (tmp_path / "Charades_v1_train.csv").read_text()
    assert '"A person looks around, and sees' in raw  # quoted fields with commas
    index = charades.load(summary.annotations_uri)
    assert len(index.class_names) == 6
    assert len(index.records) == 30
    assert index.of_split("test") and index.of_split("train")
    truth = {v.video_id: v for v in summary.videos}
    num_frames, fps = SMALL["num_frames"], SMALL["fps"]
    for record in index.records:
        video = truth[record.video_id]
        assert (tmp_path / "Charades_v1_480" / record.path).is_file()
        assert record.labels == video.labels and record.split == video.split
        assert record.duration == pytest.approx(num_frames / fps)
        assert [(s.label, s.start, s.end) for s in record.segments] == [
            (s.label, pytest.approx(s.start), pytest.approx(s.end)) for s in video.segments
        ]
        # each action's object is drawn exactly in the frames its [start, end] covers
        for label in range(6):
            drawn = [label in objects for objects in video.frame_objects]
            expected = [False] * num_frames
            for segment in record.segments:
                if segment.label == label:
                    first, end = synth.visible_frames(segment.start, segment.end, fps, num_frames)
                    expected[first:end] = [True] * (end - first)
            assert drawn == expected
    assert sum(1 for r in index.records if not r.labels) == 6  # one video in five has no action
    occurrences = Counter(s.label for r in index.records for s in r.segments)
    assert (
        sorted(occurrences) == list(range(6)) and max(occurrences.values()) - min(occurrences.values()) <= 1
    )


def test_set_mode_no_single_frame_decides_but_the_clip_does() -> None:
    for num_classes in (3, 5, 12, 40):
        objects = synth.class_objects("set", num_classes)
        assert len({frozenset(pair) for pair in objects}) == num_classes  # classes are distinct sets
        classes_with = Counter(t for pair in objects for t in set(pair))
        assert min(classes_with.values()) >= 2  # every object type is in two classes or more
    summary = synth.synthesize(
        "ucf101", "memory://stpa-test-synth/set", num_classes=5, videos_per_class=4, **SMALL
    )
    pairs = [frozenset(p) for p in summary.class_objects]
    orders = set()
    for video in summary.videos:
        for objects in video.frame_objects:
            assert len(objects) == 1
            consistent = [c for c, pair in enumerate(pairs) if objects[0] in pair]
            assert len(consistent) >= 2 and video.label in consistent  # a frame is ambiguous
        seen = frozenset(t for objects in video.frame_objects for t in objects)
        assert [c for c, pair in enumerate(pairs) if pair == seen] == [video.label]  # the clip is not
        half = len(video.frame_objects) // 2
        orders.add((video.label, video.frame_objects[0], video.frame_objects[half]))
    assert len(orders) > len(pairs)  # both orders occur: order carries no information


def test_order_mode_classes_are_exact_time_reverses() -> None:
    keys = [(0, 0, 8), (1, 8, 16)]
    forward = synth.plan_clip(
        np.random.default_rng(11), keys, width=64, height=48, num_frames=16, key_radius=(0.2, 0.3)
    )
    backward = synth.plan_clip(
        np.random.default_rng(11),
        keys,
        width=64,
        height=48,
        num_frames=16,
        key_radius=(0.2, 0.3),
        reverse=True,
    )
    frames_forward, frames_backward = synth.render_clip(forward), synth.render_clip(backward)
    assert np.array_equal(frames_forward[::-1], frames_backward)
    assert synth.frame_objects(forward)[::-1] == synth.frame_objects(backward)
    assert not np.array_equal(frames_forward, frames_backward)  # the order does differ

    summary = synth.synthesize(
        "hmdb51", "memory://stpa-test-synth/order", num_classes=4, videos_per_class=3, mode="order", **SMALL
    )
    names = summary.class_names
    assert "red_square_then_green_disk" in names and "green_disk_then_red_square" in names
    for label, pair in enumerate(summary.class_objects):
        reversed_label = summary.class_objects.index(pair[::-1])
        assert reversed_label != label
        for video in (v for v in summary.videos if v.label == label):
            assert video.frame_objects[0] == (pair[0],) and video.frame_objects[-1] == (pair[1],)
            # same set of objects as the reversed class: only the order tells them apart
            other = next(v for v in summary.videos if v.label == reversed_label)
            assert Counter(video.frame_objects) == Counter(other.frame_objects)
            assert video.frame_objects == other.frame_objects[::-1]


def test_same_seed_same_bytes_other_seed_other_frames(tmp_path: Path) -> None:
    kwargs = {"num_classes": 3, "videos_per_class": 2, **SMALL}
    first = synth.synthesize("charades", str(tmp_path / "a"), seed=5, **kwargs)
    second = synth.synthesize("charades", str(tmp_path / "b"), seed=5, **kwargs)
    third = synth.synthesize("charades", str(tmp_path / "c"), seed=6, **kwargs)
    assert _all_bytes(tmp_path / "a") == _all_bytes(tmp_path / "b")
    assert first.videos == second.videos
    assert first.videos != third.videos
    for kind in ("ucf101", "hmdb51"):
        one = synth.synthesize(kind, str(tmp_path / f"{kind}1"), seed=5, **kwargs)
        two = synth.synthesize(kind, str(tmp_path / f"{kind}2"), seed=5, **kwargs)
        assert _all_bytes(tmp_path / f"{kind}1") == _all_bytes(tmp_path / f"{kind}2")
        assert one.videos == two.videos


def test_videos_decode_right_with_the_fast_path_and_show_the_objects(tmp_path: Path) -> None:
    summary = synth.synthesize(
        "ucf101", str(tmp_path / "u"), num_classes=3, videos_per_class=2, gop=4, **SMALL
    )
    video = summary.videos[0]
    path = str(tmp_path / "u" / "UCF-101" / video.path)
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "mpeg4"  # MPEG-4 Part 2 in AVI, not H.264 in AVI
        keyframes = [packet.is_keyframe for packet in container.demux(stream) if packet.size]
    assert keyframes[:9] == [True, False, False, False, True, False, False, False, True]  # gop=4
    frames = _decode(path)
    assert frames.shape == (16, 48, 64, 3)
    index = index_video(path)
    assert (index.num_frames, index.width, index.height) == (16, 64, 48)
    # The key object's saturated colour covers a good part of the frame where it is shown.
    for i in (0, 15):
        colour = np.array(synth.COLOURS[synth.object_name(video.frame_objects[i][0])[0]])
        close = np.abs(frames[i].astype(int) - colour).max(axis=-1) < 45
        assert close.mean() > 0.05
    charades_summary = synth.synthesize(
        "charades", str(tmp_path / "c"), num_classes=2, videos_per_class=2, **SMALL
    )
    mp4 = str(tmp_path / "c" / "Charades_v1_480" / charades_summary.videos[0].path)
    with av.open(mp4) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert index_video(mp4).num_frames == SMALL["num_frames"]


def test_generation_is_fast() -> None:
    started = time.perf_counter()
    summary = synth.synthesize("ucf101", "memory://stpa-test-synth/speed", num_classes=5, videos_per_class=4)
    seconds = time.perf_counter() - started
    assert summary.num_videos == 20
    assert storage.exists(f"{summary.videos_uri}/{summary.videos[0].path}")
    assert seconds < 15, f"20 videos of 112x112x32 took {seconds:.1f} s"  # ~1 s on an idle core


@pytest.mark.parametrize(
    ("layout", "kwargs", "message"),
    [
        ("kinetics", {}, "layout must be one of"),
        ("ucf101", {"mode": "reverse"}, "mode must be one of"),
        ("ucf101", {"num_classes": 2}, "mode 'set' needs num_classes >= 3"),
        ("ucf101", {"num_classes": 5, "mode": "order"}, "mode 'order' needs an even num_classes"),
        ("charades", {"mode": "order"}, "supports mode 'set' only"),
        ("charades", {"num_classes": 37}, "num_classes must be in [1, 36]"),
        ("hmdb51", {"videos_per_class": 1}, "videos_per_class must be at least 2"),
        ("hmdb51", {"width": 63}, "width and height must be even"),
        ("hmdb51", {"num_frames": 3}, "num_frames must be at least 4"),
        ("hmdb51", {"fps": 0.0}, "fps must be positive"),
        ("hmdb51", {"gop": 0}, "gop must be at least 1"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, layout: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        synth.synthesize(layout, str(tmp_path), **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written
