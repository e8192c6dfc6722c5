"""The ``stpa`` command line's own behaviour (issue 13): help texts, renamed flags, ``stpa config``, read-only
commands that create no file, and a tracking server that does not answer."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.flags import PRESET_NAMES
from pipeline.presets import PRESETS
from workflows.training import build_parser as workflow_parser


@pytest.fixture(autouse=True)
def _in_empty_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def _all_help(parser: argparse.ArgumentParser) -> list[str]:
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                texts += _all_help(sub)
    return texts


def test_help_texts_show_only_real_defaults():
    parsers = [build_parser()] + [
        workflow_parser(d, sweep) for d in ("charades", "folder") for sweep in (0, 1)
    ]
    for text in (" ".join(t.split()) for parser in parsers for t in _all_help(parser)):
        assert "(default: None)" not in text and "(default: False)" not in text and "%%" not in text, text
    assert "(default: smoke)" in " ".join(workflow_parser("folder").format_help().split())


def test_preset_choices_are_the_presets():
    assert tuple(PRESETS) == PRESET_NAMES


def test_prepare_num_workers_names_the_new_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "folder", "--videos", "v", "--out", "o", "--num-workers", "4"])
    assert exit_info.value.code == 2
    assert "--num-workers is now --probe-workers" in capsys.readouterr().err


def test_config_list_and_show(capsys):
    assert main(["config", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert all(name in rows for name in PRESETS)
    assert rows["ucf101"].split()[-2:] == ["GPU", "bf16"] and rows["smoke"].split()[-2:] == ["CPU", "fp32"]

    assert (
        main(
            ["config", "show", "--preset", "ucf101", "--cpu", "--set", "model.beta=0", "--num-segments", "4"]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["dataset"] == "ucf101" and shown["model"]["num_classes"] == 101
    assert shown["train"]["use_gpu"] is False and shown["model"]["beta"] == 0.0
    assert shown["train_clips"]["num_segments"] == shown["test_clips"]["num_segments"] == 4

    assert main(["config", "show", "--set", "model.betta=1"]) == 2
    assert "did you mean 'beta'?" in capsys.readouterr().err


def test_read_only_commands_create_no_files(tmp_path, capsys):
    assert main(["models", "list"]) == 0
    assert "no registered stpa models" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no registered model stpa-mine.*train_folder.py --name mine"):
        main(["models", "show", "mine"])
    with pytest.raises(SystemExit, match="no registered model stpa-ucf101"):
        main(["predict", "ucf101", "video.mp4"])
    assert list(tmp_path.iterdir()) == []  # issue 13: `stpa models list` created an empty mlflow.db


@pytest.mark.parametrize(
    "command", [["models", "list"], ["models", "show", "ucf101"], ["predict", "ucf101", "v.mp4"]]
)
def test_unreachable_tracking_server_fails_in_one_line(capsys, command):
    with socket.socket() as refused:
        refused.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{refused.getsockname()[1]}"
        assert main([*command, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the MLflow tracking server {uri} does not answer") and "\n" not in err
