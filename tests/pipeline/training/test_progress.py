"""Progress inside an epoch: a line every N steps with the numbers PySlowFast and MMAction2 print, and the same
numbers in MLflow at the optimiser step."""

from __future__ import annotations

import re

import torch
from mlflow.tracking import MlflowClient

from pipeline import metric_names as names
from pipeline.tracking.runs import RankZeroRun
from pipeline.training.progress import StepProgress, format_eta

LINE = re.compile(
    r"^epoch (\d+)/2 step (\d+)/5  loss (\d+\.\d{4})  lr (\S+)  clips/s (\d+\.\d)  data (\d+\.\d{3})s  eta (\S+)$"
)


def _run(tmp_path) -> RankZeroRun:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    return RankZeroRun(uri, client.create_run(experiment_id).info.run_id)


def test_a_line_every_n_steps_and_the_same_numbers_in_mlflow(tmp_path, capsys):
    run = _run(tmp_path)
    progress = StepProgress(every=2, num_epochs=2, steps_per_epoch=5, clips_per_step=8, run=run, enabled=True)
    global_step = 0
    for epoch in range(2):
        progress.start_epoch()
        for step in range(5):
            progress.batch_arrived()
            global_step += 1
            progress.step_done(
                epoch, step, torch.tensor(float(10 * epoch + step)), 0.1 / global_step, global_step
            )
    lines = capsys.readouterr().out.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(int(m[1]), int(m[2])) for m in parsed] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    # the mean loss of the steps since the previous line: (0+1)/2, (2+3)/2, then the window restarts each epoch
    assert [float(m[3]) for m in parsed] == [0.5, 2.5, 10.5, 12.5]
    assert parsed[-1][7] == "0:00:00"  # one step of milliseconds left

    history = run.client.get_metric_history(run.run_id, names.TRAIN_LOSS)
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (2, 0.5),
        (4, 2.5),
        (7, 10.5),
        (9, 12.5),
    ]
    lrs = sorted(run.client.get_metric_history(run.run_id, names.TRAIN_LR), key=lambda m: m.step)
    assert [m.value for m in lrs] == [0.1 / 2, 0.1 / 4, 0.1 / 7, 0.1 / 9]
    assert len(run.client.get_metric_history(run.run_id, names.TRAIN_DATA_WAIT_S)) == 4


def test_other_ranks_and_every_zero_print_nothing(capsys):
    for every, enabled in ((2, False), (0, True)):
        progress = StepProgress(every, 1, 4, 8, run=None, enabled=enabled)
        progress.start_epoch()
        for step in range(4):
            progress.batch_arrived()
            progress.step_done(0, step, torch.tensor(1.0), 0.1, step + 1)
    assert capsys.readouterr().out == ""


def test_eta_format():
    assert (
        format_eta(59.6) == "0:01:00"
        and format_eta(3 * 3600 + 5) == "3:00:05"
        and format_eta(-1) == "0:00:00"
    )
