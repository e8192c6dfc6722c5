"""Parsers of the official annotation files: the real UCF101/HMDB51 split files (when ../shared/data is there) and
small files written here, including every error a user can hit (each must name the file and line)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline import storage
from pipeline.data.datasets import AnnotationError, Segment, charades, folder, hmdb51, ucf101

SHARED_ANNOTATIONS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "annotations"
UCF_LISTS = SHARED_ANNOTATIONS / "ucf101" / "ucfTrainTestlist"
HMDB_SPLITS = SHARED_ANNOTATIONS / "hmdb51" / "testTrainMulti_7030_splits"


def _write(folder_path: Path, files: dict[str, str]) -> Path:
    folder_path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder_path / name).write_bytes(text.encode())
    return folder_path


def _crlf(*lines: str) -> str:
    return "".join(f"{line}\r\n" for line in lines)


# --- the real files -----------------------------------------------------------------------------------------------
@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("split", "num_train", "num_test"), [(1, 9537, 3783), (2, 9586, 3734), (3, 9624, 3696)]
)
def test_real_ucf101_splits_parse_to_official_counts(split: int, num_train: int, num_test: int) -> None:
    if not UCF_LISTS.is_dir():
        pytest.skip(f"{UCF_LISTS} not found")
    assert b"\r\n" in (UCF_LISTS / "classInd.txt").read_bytes()  # parsed as published, CRLF
    index = ucf101.load(str(UCF_LISTS), split)
    assert len(index.class_names) == 101
    assert index.class_names[0] == "ApplyEyeMakeup" and index.class_names[100] == "YoYo"
    assert len(index.of_split("train")) == num_train
    assert len(index.of_split("test")) == num_test
    assert {r.label for r in index.records} == set(range(101))
    # The quirk: classInd says HandstandPushups, the files say v_HandStandPushups_*; train and test agree.
    handstand = [r for r in index.records if r.video_id.startswith("v_HandStandPushups_")]
    assert handstand and {r.label for r in handstand} == {index.class_names.index("HandstandPushups")}
    assert {r.split for r in handstand} == {"train", "test"}
    # Every test label equals the one the file name's class implies (case-insensitively).
    lower = [name.lower() for name in index.class_names]
    for record in index.of_split("test"):
        assert lower.index(record.video_id.split("_")[1].lower()) == record.label


@pytest.mark.shared_data
@pytest.mark.parametrize("split", [1, 2, 3])
def test_real_hmdb51_splits_parse_to_official_counts(split: int) -> None:
    if not HMDB_SPLITS.is_dir():
        pytest.skip(f"{HMDB_SPLITS} not found")
    assert len(list(HMDB_SPLITS.iterdir())) == 153
    index = hmdb51.load(str(HMDB_SPLITS), split)
    assert len(index.class_names) == 51
    assert list(index.class_names) == sorted(index.class_names)
    assert index.class_names[0] == "brush_hair" and index.class_names[-1] == "wave"
    assert len(index.of_split("train")) == 3570
    assert len(index.of_split("test")) == 1530
    assert index.num_unused == 1666
    assert len(index.records) + index.num_unused == 6766
    per_class = Counter((r.label, r.split) for r in index.records)
    assert set(per_class.values()) == {70, 30}  # the 70/30 split of every class
    # names with brackets and exclamation marks survive
    assert any("[_NEW_AUDIO_]_UPDATED!!!!" in r.path for r in index.records)


# --- UCF101 format ------------------------------------------------------------------------------------------------
UCF_CLASSES = _crlf("1 ApplyEyeMakeup", "2 HandstandPushups", "3 YoYo")


def test_ucf101_small_lists_with_crlf_and_the_case_quirk(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "ucfTrainTestlist",
        {
            "classInd.txt": UCF_CLASSES,
            "trainlist01.txt": _crlf(
                "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
                "HandstandPushups/v_HandStandPushups_g08_c01.avi 2",
                "YoYo/v_YoYo_g08_c01.avi 3",
            ),
            # test list: no label; the folder spelled like the files (a re-packaged copy) still maps to class 2
            "testlist01.txt": _crlf(
                "HandStandPushups/v_HandStandPushups_g01_c01.avi", "YoYo/v_YoYo_g01_c01.avi"
            ),
        },
    )
    index = ucf101.load(str(root), 1)
    assert index.class_names == ("ApplyEyeMakeup", "HandstandPushups", "YoYo")
    assert [(r.video_id, r.split, r.label) for r in index.records] == [
        ("v_ApplyEyeMakeup_g08_c01", "train", 0),
        ("v_HandStandPushups_g08_c01", "train", 1),
        ("v_YoYo_g08_c01", "train", 2),
        ("v_HandStandPushups_g01_c01", "test", 1),
        ("v_YoYo_g01_c01", "test", 2),
    ]
    assert index.records[3].path == "HandStandPushups/v_HandStandPushups_g01_c01.avi"
    assert index.records[4].source_line == 2 and index.records[4].source_path.endswith("testlist01.txt")


@pytest.mark.parametrize(
    ("file_name", "text", "line", "message"),
    [
        ("classInd.txt", _crlf("1 A", "3 B"), 2, "out of order"),
        ("classInd.txt", _crlf("1 A", "2 a"), 2, "listed twice"),
        ("classInd.txt", _crlf("1 A", "two B"), 2, "expected '<index> <ClassName>'"),
        ("classInd.txt", "\r\n", None, "no classes"),
        (
            "trainlist01.txt",
            _crlf("A/v_A_g01_c01.avi 1", "A/v_A_g02_c01.avi"),
            2,
            "expected '<Class>/<video> <label>'",
        ),
        ("trainlist01.txt", _crlf("A/v_A_g01_c01.avi 2"), 1, "label 2 disagrees with folder 'A'"),
        ("trainlist01.txt", _crlf("C/v_C_g01_c01.avi 1"), 1, "unknown class 'C'"),
        ("trainlist01.txt", _crlf("v_A_g01_c01.avi 1"), 1, "expected a path '<Class>/<video file>'"),
        ("trainlist01.txt", _crlf("A/v_A_g01_c01.avi 1", "A/v_A_g01_c01.avi 1"), 2, "duplicate video id"),
        ("testlist01.txt", _crlf("B/v_B_g01_c01.avi", "B/x y z"), 2, "expected"),
        ("testlist01.txt", _crlf("A/v_A_g09_c01.avi"), 1, "duplicate video id 'v_A_g09_c01'"),
        ("testlist01.txt", "", None, "the test split lists no videos"),
    ],
)
def test_ucf101_errors_name_file_and_line(
    tmp_path: Path, file_name: str, text: str, line: int | None, message: str
) -> None:
    files = {
        "classInd.txt": _crlf("1 A", "2 B"),
        "trainlist01.txt": _crlf("A/v_A_g09_c01.avi 1", "B/v_B_g09_c01.avi 2"),
        "testlist01.txt": _crlf("B/v_B_g01_c01.avi"),
    }
    files[file_name] = text
    root = _write(tmp_path / "lists", files)
    with pytest.raises(AnnotationError) as caught:
        ucf101.load(str(root), 1)
    assert message in str(caught.value)
    assert caught.value.path.endswith(file_name)
    assert caught.value.line_number == line
    if line is not None:
        assert f"{file_name}:{line}:" in str(caught.value)


def test_ucf101_missing_split_file_is_named(tmp_path: Path) -> None:
    root = _write(tmp_path / "lists", {"classInd.txt": _crlf("1 A"), "trainlist01.txt": _crlf("A/a.avi 1")})
    with pytest.raises(FileNotFoundError, match="testlist01.txt"):
        ucf101.load(str(root), 1)
    with pytest.raises(FileNotFoundError, match="trainlist02.txt"):
        ucf101.load(str(root), 2)


def test_ucf101_reads_through_fsspec_memory() -> None:
    root = "memory://stpa-test-datasets/ucfTrainTestlist"
    storage.write_text(f"{root}/classInd.txt", UCF_CLASSES)
    storage.write_text(f"{root}/trainlist02.txt", _crlf("YoYo/v_YoYo_g08_c01.avi 3"))
    storage.write_text(f"{root}/testlist02.txt", _crlf("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"))
    index = ucf101.load(root, 2)
    assert index.split == 2
    assert [(r.split, r.label) for r in index.records] == [("train", 2), ("test", 0)]


# --- HMDB51 format ------------------------------------------------------------------------------------------------
def _hmdb_line(video: str, flag: int) -> str:
    return f"{video} {flag} \n"  # the official trailing space


def test_hmdb51_flags_sorted_labels_and_unused(tmp_path: Path) -> None:
    files = {}
    for split in (1, 2):
        files[f"wave_test_split{split}.txt"] = (
            _hmdb_line("w0.avi", 1) + _hmdb_line("w1.avi", 2) + _hmdb_line("w2.avi", 0)
        )
        files[f"brush_hair_test_split{split}.txt"] = _hmdb_line("b0.avi", 2) + _hmdb_line("b1.avi", 1)
    root = _write(tmp_path / "testTrainMulti_7030_splits", files)
    index = hmdb51.load(str(root), 1)
    assert index.class_names == ("brush_hair", "wave")  # sorted, not file order
    assert [(r.video_id, r.path, r.split, r.label) for r in index.records] == [
        ("b0", "brush_hair/b0.avi", "test", 0),
        ("b1", "brush_hair/b1.avi", "train", 0),
        ("w0", "wave/w0.avi", "train", 1),
        ("w1", "wave/w1.avi", "test", 1),
    ]
    assert index.num_unused == 1
    with pytest.raises(AnnotationError, match="no '<class>_test_split3.txt' files"):
        hmdb51.load(str(root), 3)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (_hmdb_line("a.avi", 1) + "b.avi 3 \n", 2, "flag must be 0 (unused), 1 (train) or 2 (test)"),
        (_hmdb_line("a.avi", 1) + "b.avi\n", 2, "expected '<video>.avi <0|1|2>'"),
        (_hmdb_line("a.avi", 1) + _hmdb_line("x.avi", 1), 2, "duplicate video id 'x'"),
        ("\n", None, "lists no videos"),
    ],
)
def test_hmdb51_errors_name_file_and_line(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    root = _write(
        tmp_path / "splits",
        {"run_test_split1.txt": _hmdb_line("x.avi", 2) + _hmdb_line("y.avi", 1), "sit_test_split1.txt": text},
    )
    with pytest.raises(AnnotationError) as caught:
        hmdb51.load(str(root), 1)
    assert message in str(caught.value)
    assert caught.value.path.endswith("sit_test_split1.txt")
    assert caught.value.line_number == line


def test_hmdb51_class_without_this_split_and_empty_split(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "a",
        {
            "run_test_split1.txt": _hmdb_line("x.avi", 1),
            "run_test_split2.txt": _hmdb_line("x.avi", 2),
            "sit_test_split2.txt": _hmdb_line("y.avi", 1),
        },
    )
    with pytest.raises(AnnotationError, match=r"classes \['sit'\] have split files for other splits"):
        hmdb51.load(str(root), 1)
    root = _write(tmp_path / "b", {"run_test_split1.txt": _hmdb_line("x.avi", 1) + _hmdb_line("z.avi", 0)})
    with pytest.raises(AnnotationError, match="the test split lists no videos"):
        hmdb51.load(str(root), 1)


# --- Charades format ----------------------------------------------------------------------------------------------
CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
CHARADES_CLASSES = (
    "c000 Holding some clothes\nc001 Putting clothes somewhere\nc002 Taking a picture of something\n"
)


def _charades(tmp_path: Path, train_rows: str, test_rows: str = "", classes: str = CHARADES_CLASSES) -> Path:
    if not test_rows:
        test_rows = "ZZ001,HR43,Kitchen,6,7,Yes,Script.,,Desc.,c002 0.00 1.00,5.00\n"
    return _write(
        tmp_path / "Charades",
        {
            "Charades_v1_classes.txt": classes,
            "Charades_v1_train.csv": CHARADES_HEADER + train_rows,
            "Charades_v1_test.csv": CHARADES_HEADER + test_rows,
        },
    )


def test_charades_quoted_fields_multiline_and_empty_actions(tmp_path: Path) -> None:
    train = (
        '46GP8,HR43,Kitchen,6,7,Yes,"A person cooks, then eats.",food;dish,'
        '"A person is cooking, and then, eating;",c001 11.90 21.20;c000 0.00 12.60;c001 25.00 30.00,30.33\n'
        'N11GT,KBPD,Stairs,5,5,Yes,"Walks up the stairs,\nthen down.",stairs,"Two-line\nscript",,18.17\n'
        "0IH69,6RE8,Bedroom,6,5,Yes,Sits.,bed,Sits on bed.,c002 3.00 3.00,12.50\n"
    )
    root = _charades(tmp_path, train)
    index = charades.load(str(root))
    assert index.multi_label and index.split is None
    assert index.class_names == (
        "Holding some clothes",
        "Putting clothes somewhere",
        "Taking a picture of something",
    )
    first, empty, instant = index.of_split("train")
    assert first.video_id == "46GP8" and first.path == "46GP8.mp4"
    assert first.labels == (0, 1)  # distinct, sorted
    assert first.segments == (Segment(1, 11.9, 21.2), Segment(0, 0.0, 12.6), Segment(1, 25.0, 30.0))
    assert first.duration == pytest.approx(30.33)
    assert first.source_line == 2
    assert (
        empty.video_id == "N11GT" and empty.labels == () and empty.segments == () and empty.duration == 18.17
    )
    assert empty.source_line == 3  # the row spans lines 3-5
    assert instant.source_line == 6 and instant.segments == (Segment(2, 3.0, 3.0),)
    assert [r.video_id for r in index.of_split("test")] == ["ZZ001"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("AAAAA,S,K,6,7,Yes,s,o,d,c001 5.00 4.00,10.00", "ends before it starts"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,c003 1.00 4.00,10.00", "unknown class c003"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,c001 1.00,10.00", "is not 'cNNN start end'"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,x001 1.00 2.00,10.00", "is not 'cNNN start end'"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,c001 1.00 2.00;,10.00", "is not 'cNNN start end'"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,c001 a 2.00,10.00", "is not a number of seconds"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,c001 -1.00 2.00,10.00", "starts before 0"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,c001 1.00 nan,10.00", "not a finite number"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,,", "length: '' is not a number"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,,0", "length must be positive"),
        ("AAAAA,S,K,6,7,Yes,s,o,d,10.00", "10 fields, the header has 11"),
        (",S,K,6,7,Yes,s,o,d,,10.00", "empty id"),
        ("BBBBB,S,K,6,7,Yes,s,o,d,,10.00", "duplicate video id 'BBBBB' (first listed at"),
    ],
)
def test_charades_errors_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    good = 'BBBBB,S,K,6,7,Yes,"a, b",o,d,c000 0.00 1.00,3.00\n'
    root = _charades(tmp_path, good + row + "\n")
    with pytest.raises(AnnotationError) as caught:
        charades.load(str(root))
    assert message in str(caught.value)
    assert caught.value.path.endswith("Charades_v1_train.csv")
    assert caught.value.line_number == 3


def test_charades_header_and_classes_errors(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "c1",
        {
            "Charades_v1_classes.txt": CHARADES_CLASSES,
            "Charades_v1_train.csv": "id,script,length\nA,s,1.0\n",
            "Charades_v1_test.csv": CHARADES_HEADER,
        },
    )
    with pytest.raises(AnnotationError, match=r"Charades_v1_train.csv:1: header lacks \['actions'\]"):
        charades.load(str(root))
    with pytest.raises(AnnotationError, match=r"Charades_v1_classes.txt:2: class id c002 out of order"):
        charades.load(str(_charades(tmp_path / "c2", "", classes="c000 a\nc002 b\n")))
    with pytest.raises(AnnotationError, match=r"Charades_v1_classes.txt:1: expected 'cNNN <class name>'"):
        charades.load(str(_charades(tmp_path / "c3", "", classes="Holding some clothes\n")))
    with pytest.raises(AnnotationError, match="the train split lists no videos"):
        charades.load(str(_charades(tmp_path / "c4", "")))


# --- folder -------------------------------------------------------------------------------------------------------
def test_folder_hash_split_is_deterministic_with_the_documented_fraction() -> None:
    paths = [f"class{i % 7}/video_{i:05d}.mp4" for i in range(4000)]
    test = [p for p in paths if folder.is_test_video(p)]
    assert abs(len(test) / len(paths) - folder.TEST_FRACTION) < 0.02
    assert test == [p for p in paths if folder.is_test_video(p)]
    # a video keeps its split when others are added: the rule depends on its own path only
    assert folder.is_test_video(test[0]) and not folder.is_test_video(sorted(set(paths) - set(test))[0])


def test_folder_layout_hash_split(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    names = {
        "walk": [f"w{i}.mp4" for i in range(12)],
        "jump": [f"j{i}.avi" for i in range(12)] + ["notes.txt"],
    }
    for class_name, files in names.items():
        (root / class_name).mkdir(parents=True)
        for name in files:
            (root / class_name / name).write_bytes(b"x")
    (root / "stray.mp4").write_bytes(b"x")  # not in a class folder: ignored
    index = folder.load(str(root))
    assert index.class_names == ("jump", "walk")
    assert len(index.records) == 24
    assert {r.video_id for r in index.records} >= {"walk/w0", "jump/j11"}
    for record in index.records:
        assert record.split == ("test" if folder.is_test_video(record.path) else "train")
        assert record.label == index.class_names.index(record.path.split("/")[0])
    assert index.of_split("train") and index.of_split("test")


def test_folder_layout_with_split_lists(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    for class_name in ("b", "a"):
        (root / class_name).mkdir(parents=True)
    lists = _write(
        tmp_path / "lists", {"trainlist01.txt": _crlf("b/x.mp4", "a/x.mp4 1"), "testlist01.txt": "b/y.mp4\n"}
    )
    index = folder.load(str(root), str(lists), 1)
    assert index.class_names == ("a", "b")  # no classInd.txt: sorted folder names
    assert [(r.video_id, r.split, r.label) for r in index.records] == [
        ("b/x", "train", 1),
        ("a/x", "train", 0),
        ("b/y", "test", 1),
    ]
    _write(lists, {"classInd.txt": _crlf("1 b", "2 a")})
    with pytest.raises(AnnotationError, match=r"trainlist01.txt:2: label 1 disagrees with folder 'a'"):
        folder.load(str(root), str(lists), 1)
