"""The workflow engine (pipeline.workflow) on a real local Ray: ordering, keys, markers, skipping, retries, resume.

Steps here record each execution in a ledger folder outside the run root (one file per attempt), so a test can
count how often a step really ran, across Ray worker processes.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from pipeline import storage
from pipeline.errors import UserError
from pipeline.workflow import (
    MARKER,
    OUTPUTS,
    ForwardedLines,
    Step,
    StepContext,
    WorkflowError,
    format_plan,
    format_seconds,
    plan,
    run_workflow,
    step_keys,
    topological_order,
)


def _record(ctx: StepContext) -> None:
    ledger = Path(ctx.settings["ledger"])
    ledger.mkdir(parents=True, exist_ok=True)
    (ledger / f"{ctx.step}-{uuid.uuid4().hex}").write_text(str(os.getpid()))


def runs_of(ledger: Path, step: str) -> int:
    return len(list(ledger.glob(f"{step}-*"))) if ledger.exists() else 0


def make_numbers(ctx: StepContext) -> dict:
    _record(ctx)
    uri = storage.join(ctx.out_dir, "numbers.json")
    storage.write_text(uri, json.dumps(list(range(ctx.config["n"]))))
    return {"numbers": uri}


def total(ctx: StepContext, numbers: dict) -> dict:
    _record(ctx)
    values = json.loads(storage.read_text(numbers["numbers"]))
    return {"total": sum(values) * ctx.config.get("scale", 1)}


def report(ctx: StepContext, numbers: dict, total: dict) -> dict:
    _record(ctx)
    return {
        "line": f"{len(json.loads(storage.read_text(numbers['numbers'])))} numbers sum to {total['total']}"
    }


def flaky(ctx: StepContext, numbers: dict) -> dict:
    """Fails with an I/O error on its first attempt (a lost file share, say), succeeds on the retry."""
    _record(ctx)
    if runs_of(Path(ctx.settings["ledger"]), ctx.step) == 1:
        raise OSError("simulated transient storage error")
    return {"ok": True}


def broken_until_fixed(ctx: StepContext, numbers: dict) -> dict:
    """A step with a bug (ValueError: not retried) until the file named in its settings exists."""
    _record(ctx)
    if not os.path.exists(ctx.settings["fixed_flag"]):
        raise ValueError("bad input in step 'check'")
    return {"checked": True}


def missing_input(ctx: StepContext, numbers: dict) -> dict:
    """Reads a file that is not there: a missing input, which no retry brings back."""
    _record(ctx)
    return {"text": storage.read_text(ctx.settings["missing"])}


def refuses(ctx: StepContext, numbers: dict) -> dict:
    """Finds a problem the user must fix (too few videos, a cluster that cannot feed training)."""
    _record(ctx)
    raise UserError("3 training videos are too few: lower --batch-size")


def crash_worker(ctx: StepContext, numbers: dict) -> dict:
    """Kills its own worker process on the first attempt (what a node loss looks like to the task)."""
    _record(ctx)
    if runs_of(Path(ctx.settings["ledger"]), ctx.step) == 1:
        os._exit(1)
    return {"survived": True}


def _dag(tmp_path: Path, n: int = 4, scale: int = 1):
    settings = {"ledger": str(tmp_path / "ledger")}
    numbers = Step("numbers", make_numbers, config={"n": n}, settings=settings)
    tot = Step("total", total, config={"scale": scale}, inputs={"numbers": numbers}, settings=settings)
    rep = Step("report", report, inputs={"numbers": numbers, "total": tot}, settings=settings)
    return numbers, tot, rep


def test_topological_order_and_cycle_detection(tmp_path: Path) -> None:
    numbers, tot, rep = _dag(tmp_path)
    assert [s.name for s in topological_order([rep])] == ["numbers", "total", "report"]
    a = Step("a", make_numbers)
    b = Step("b", total, inputs={"numbers": a})
    object.__setattr__(a, "inputs", {"x": b})  # frozen dataclass: build the cycle by hand
    with pytest.raises(ValueError, match="cycle"):
        topological_order([b])
    with pytest.raises(ValueError, match="two different steps are named 'numbers'"):
        topological_order([Step("t", total, inputs={"a": numbers, "b": Step("numbers", make_numbers)})])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        Step("bad", make_numbers, config={"x": object()})


def test_keys_follow_config_and_upstream(tmp_path: Path) -> None:
    keys = step_keys(topological_order([_dag(tmp_path)[2]]))
    same = step_keys(topological_order([_dag(tmp_path)[2]]))
    assert keys == same
    scaled = step_keys(topological_order([_dag(tmp_path, scale=2)[2]]))
    assert scaled["numbers"] == keys["numbers"]  # untouched upstream keeps its key
    assert scaled["total"] != keys["total"] and scaled["report"] != keys["report"]  # changes propagate down
    more = step_keys(topological_order([_dag(tmp_path, n=5)[2]]))
    assert all(more[name] != keys[name] for name in keys)
    # settings are not part of the key
    moved = Step("numbers", make_numbers, config={"n": 4}, settings={"ledger": "/elsewhere"})
    assert step_keys([moved])["numbers"] == keys["numbers"]


@pytest.mark.slow
def test_run_commits_then_skips(ray_local, tmp_path: Path) -> None:
    root, ledger = str(tmp_path / "runs"), tmp_path / "ledger"
    rep = _dag(tmp_path)[2]
    lines: list[str] = []
    out = run_workflow([rep], root, "wf-a", log=lines.append)
    assert out["report"]["line"] == "4 numbers sum to 6"
    for status in plan([rep], root, "wf-a"):
        assert status.done
        assert Path(status.out_dir, MARKER).exists() and Path(status.out_dir, OUTPUTS).exists()
    assert json.loads((tmp_path / "runs" / "wf-a" / "workflow.json").read_text())["workflow_id"] == "wf-a"
    assert [runs_of(ledger, s) for s in ("numbers", "total", "report")] == [1, 1, 1]

    lines.clear()
    again = run_workflow([rep], root, "wf-a", log=lines.append)
    assert again == out
    assert [runs_of(ledger, s) for s in ("numbers", "total", "report")] == [1, 1, 1]
    assert sum(line.startswith("skip ") for line in lines) == 3
    assert "done" in format_plan(plan([rep], root, "wf-a"), "wf-a")

    # A changed config re-runs that step and what depends on it, not its upstream.
    rep2 = _dag(tmp_path, scale=3)[2]
    assert run_workflow([rep2], root, "wf-a", log=lines.append)["report"]["line"] == "4 numbers sum to 18"
    assert [runs_of(ledger, s) for s in ("numbers", "total", "report")] == [1, 2, 2]

    # --rerun forces a step and its downstream.
    run_workflow([rep2], root, "wf-a", rerun=["total"], log=lines.append)
    assert [runs_of(ledger, s) for s in ("numbers", "total", "report")] == [1, 3, 3]
    with pytest.raises(ValueError, match="unknown steps"):
        run_workflow([rep2], root, "wf-a", rerun=["nope"])

    # An uncommitted step (outputs present, marker missing: killed between the two) runs again.
    status = {s.name: s for s in plan([rep2], root, "wf-a")}
    os.remove(Path(status["report"].out_dir, MARKER))
    run_workflow([rep2], root, "wf-a", log=lines.append)
    assert runs_of(ledger, "report") == 4 and runs_of(ledger, "total") == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fn", "expected"),
    [(flaky, {"ok": True}), (crash_worker, {"survived": True})],
    ids=["transient-error", "worker-crash"],
)
def test_failed_attempt_is_retried(ray_local, tmp_path: Path, fn, expected) -> None:
    numbers = _dag(tmp_path)[0]
    step = Step("retried", fn, inputs={"numbers": numbers}, settings=numbers.settings, max_retries=1)
    out = run_workflow([step], str(tmp_path / "runs"), "wf-b", log=lambda _: None)
    assert out["retried"] == expected
    assert runs_of(tmp_path / "ledger", "retried") == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (missing_input, "No such file or directory: {missing}"),
        (refuses, "3 training videos are too few: lower --batch-size"),
    ],
    ids=["file-not-found", "user-error"],
)
def test_user_errors_are_not_retried_and_read_as_one_line(ray_local, tmp_path: Path, fn, message) -> None:
    missing = str(tmp_path / "gone.txt")
    numbers = _dag(tmp_path)[0]
    settings = {**numbers.settings, "missing": missing}
    step = Step("checked", fn, inputs={"numbers": numbers}, settings=settings, max_retries=2)
    with pytest.raises(WorkflowError) as info:
        run_workflow([step], str(tmp_path / "runs"), "wf-u", log=lambda _: None)
    assert runs_of(tmp_path / "ledger", "checked") == 1
    assert isinstance(info.value.user_error, UserError)
    assert str(info.value) == f"step checked: {message.format(missing=missing)}"  # no remote traceback


@pytest.mark.slow
def test_failed_step_stops_and_resume_continues_from_it(ray_local, tmp_path: Path) -> None:
    root, ledger, flag = str(tmp_path / "runs"), tmp_path / "ledger", tmp_path / "fixed"
    settings = {"ledger": str(ledger), "fixed_flag": str(flag)}
    numbers = Step("numbers", make_numbers, config={"n": 3}, settings=settings)
    check = Step("check", broken_until_fixed, inputs={"numbers": numbers}, settings=settings, max_retries=3)
    after = Step("total", total, inputs={"numbers": numbers}, settings=settings)
    final = Step("report", report, inputs={"numbers": numbers, "total": after}, settings=settings)
    with pytest.raises(WorkflowError, match="step 'check' failed") as info:
        run_workflow([check, final], root, "wf-d", log=lambda _: None)
    assert "same --workflow-id" in str(info.value)
    assert runs_of(ledger, "check") == 1  # a ValueError is a bug, not a transient error: no retries
    assert {s.name: s.done for s in plan([check, final], root, "wf-d")}["numbers"]

    flag.write_text("")
    out = run_workflow([check, final], root, "wf-d", log=lambda _: None)
    assert out["check"] == {"checked": True}
    assert runs_of(ledger, "numbers") == 1  # committed before the failure: not run again
    assert runs_of(ledger, "check") == 2


def test_forwarded_lines_pass_through_and_wake_the_waiting_driver() -> None:
    """The driver waits for a step's last line, which Ray's printing thread writes to the driver's stdout."""
    import io
    import threading

    out = io.StringIO()
    watcher = ForwardedLines(out)
    late = threading.Timer(0.2, lambda: watcher.write("(train pid=7) train: done in 3m05s"))
    late.start()
    late.join()
    # print() writes the text, then the newline: the line counts once it is complete.
    assert not watcher.wait_for("train: done in ", timeout_s=0.05)
    watcher.write("\n")
    assert watcher.wait_for("train: done in ", timeout_s=10)
    assert not watcher.wait_for("evaluate: done in ", timeout_s=0.05)
    assert out.getvalue() == "(train pid=7) train: done in 3m05s\n"
    assert [format_seconds(s) for s in (4.4, 185, 7260)] == ["4s", "3m05s", "2h01m"]
