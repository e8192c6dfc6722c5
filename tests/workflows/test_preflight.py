"""Each input error a workflow finds before Ray starts (workflows/preflight.py, pipeline/flags.py): one line
``error: <message>`` on stderr, exit status 2, no traceback (``--debug`` shows it), and no Ray started, which is
what keeps them to seconds (issue 13 measured 24-28 s of retries for a missing data root).

The workflows run in this process (``workflows.training.main``, what ``workflows/train_<dataset>.py`` calls), except
one run of the script itself for the exit status a shell sees.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflows.training import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def run(capsys, dataset: str, *argv: str) -> tuple[int, str, str]:
    """``main(dataset, argv)`` -> (exit status, stdout, stderr); Ray must not have been started."""
    import ray

    started = time.perf_counter()
    code = main(dataset, [*argv, "--storage", "runs"])
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert not ray.is_initialized()
    print(f"{dataset} {' '.join(argv)}: exit {code} in {seconds:.2f} s")  # shown with -s: the times reported
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def own_videos(tmp_path: Path) -> Path:
    """``<root>/<class>/<video>`` with 2 classes x 10 videos (empty files: the preflight opens no video)."""
    root = tmp_path / "clips"
    for name in ("jump", "run"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            (root / name / f"{name}{i:02d}.mp4").write_bytes(b"")
    return root


@pytest.fixture
def ucf101_lists(tmp_path: Path) -> Path:
    """A UCF101 root whose training list has a bad line 2."""
    lists = tmp_path / "ucf" / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (tmp_path / "ucf" / "UCF-101").mkdir()
    (lists / "classInd.txt").write_text("1 A\r\n2 B\r\n")
    (lists / "trainlist01.txt").write_text("A/v_A_g01_c01.avi 1\r\nB/v_B_g01_c01.avi 7\r\n")
    (lists / "testlist01.txt").write_text("A/v_A_g02_c01.avi\r\nB/v_B_g02_c01.avi\r\n")
    return tmp_path / "ucf"


def test_missing_data_root(capsys, tmp_path):
    code, out, err = run(capsys, "charades", "--data-root", "nowhere")
    assert_one_line_error(code, err, f"--data-root {tmp_path / 'nowhere'}: no such folder")
    assert "to run" not in out


def test_dry_run_checks_the_same(capsys, tmp_path):
    code, out, err = run(capsys, "charades", "--data-root", "nowhere", "--dry-run")
    assert_one_line_error(code, err, "no such folder")
    assert "to run" not in out  # issue 13: the dry run showed a missing data root as "to run"


def test_data_root_without_the_layout(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "ucf101", "--data-root", "empty")
    assert_one_line_error(code, err, f"{tmp_path / 'empty' / 'UCF-101'} does not exist", "ucfTrainTestlist/")


def test_annotation_error_names_file_and_line(capsys, ucf101_lists):
    code, _, err = run(capsys, "ucf101", "--data-root", str(ucf101_lists))
    assert_one_line_error(code, err, f"{ucf101_lists / 'ucfTrainTestlist' / 'trainlist01.txt'}:2: label 7")


def test_debug_shows_the_traceback(capsys):
    code = main("charades", ["--data-root", "nowhere", "--debug", "--storage", "runs"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_unknown_preset_is_an_argparse_choice(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("charades", ["--preset", "ucf"])
    assert exit_info.value.code == 2
    assert "argument --preset: invalid choice: 'ucf'" in capsys.readouterr().err


def test_set_value_of_the_wrong_type_names_the_field(capsys):
    code, _, err = run(capsys, "charades", "--set", "train.epochs=abc")
    assert_one_line_error(code, err, "--set train.epochs=abc: train.epochs takes an integer, got 'abc'")


@pytest.mark.parametrize(
    ("item", "suggestion"),
    [
        ("model.betta=0", "model has no field 'betta' (did you mean 'beta'?)"),
        ("trian.epochs=1", "(did you mean 'train'?)"),
    ],
)
def test_set_misspelling_gets_a_suggestion(capsys, item, suggestion):
    code, _, err = run(capsys, "charades", "--set", item)
    assert_one_line_error(code, err, suggestion)


def test_set_value_the_config_refuses(capsys):
    code, _, err = run(capsys, "charades", "--set", "train.precision=fp8")
    assert_one_line_error(code, err, "precision must be fp32, bf16 or fp16")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the check is for machines without GPUs")
def test_gpu_preset_without_gpus_says_how_to_train_on_cpu(capsys):
    code, _, err = run(capsys, "ucf101", "--preset", "ucf101")
    assert_one_line_error(code, err, "preset ucf101 trains on GPUs", "this machine has none", "--cpu")
    code, _, err = run(capsys, "ucf101", "--preset", "ucf101", "--cpu", "--dry-run")
    assert code == 0, err


def test_unreachable_tracking_server(capsys, monkeypatch):
    with socket.socket() as refused:
        refused.bind(("127.0.0.1", 0))
        port = refused.getsockname()[1]  # bound, not listening: the connection is refused
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        code, _, err = run(capsys, "charades")
    assert_one_line_error(code, err, f"the MLflow tracking server http://127.0.0.1:{port} does not answer")


def test_silent_tracking_server_times_out(capsys, monkeypatch):
    import pipeline.tracking.runs

    monkeypatch.setattr(pipeline.tracking.runs, "TRACKING_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections queue, nothing ever answers
        port = silent.getsockname()[1]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{port}")
        code, _, err = run(capsys, "charades")
    assert_one_line_error(code, err, f"http://127.0.0.1:{port} does not answer (no answer within 0.5 s)")
    assert "secret" not in err


def test_own_videos_too_few_for_the_batch_the_user_chose(capsys, own_videos):
    code, _, err = run(capsys, "folder", "--data-root", str(own_videos), "--batch-size", "16")
    assert_one_line_error(
        code, err, "training videos are too few for 2 workers x batch 16", "lower --batch-size"
    )


def test_own_videos_fit_the_preset(capsys, own_videos):
    code, out, err = run(capsys, "folder", "--data-root", str(own_videos), "--num-workers", "4", "--dry-run")
    assert code == 0, err
    # the user's 4 workers stay; the preset's batch is lowered to what 4 equal shards of the training videos hold
    assert "training videos: the preset's batch 4 -> 3 per worker (--batch-size sets it)" in out, out
    assert "workflow train-clips-smoke-" in out  # --name defaults to the data root's folder name


def test_own_videos_bad_name_and_missing_lists(capsys, own_videos, tmp_path):
    code, _, err = run(capsys, "folder", "--data-root", str(own_videos), "--name", "my clips")
    assert_one_line_error(code, err, "--name 'my clips': use letters, digits")
    code, _, err = run(capsys, "folder", "--data-root", str(own_videos), "--annotations", "lists")
    assert_one_line_error(code, err, f"--annotations {tmp_path / 'lists'} does not exist")


def test_the_script_exits_2_without_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, str(REPO / "workflows" / "train_folder.py"), "--data-root", "nowhere"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: --data-root {tmp_path / 'nowhere'}: no such folder"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
