"""Durable workflow DAGs from plain Ray tasks: steps chained by ObjectRefs, committed to storage with a marker.

``ray.workflow`` is gone (last in Ray 2.47) and ``DAGNode.execute`` is deprecated (DESIGN.md), so a workflow here
is a handful of ``Step`` objects and one function, ``run_workflow``, that submits each unfinished step as a Ray task
(``max_retries``) whose arguments are its upstream steps' ObjectRefs. Durability comes from storage, not from Ray:

    <run root>/<workflow id>/<step>/<key>/
        outputs.json    what the step returns (a JSON dict: URIs, metrics, ids)
        ...             whatever the step writes into its folder (manifests, caches)
        _SUCCESS        written last: the step is committed

``key`` hashes the step's name, version, config and its upstream steps' keys, so a changed config or upstream
gives a new folder and never reuses stale outputs. A re-run with the same workflow id skips every committed step
(and says so), re-runs the rest, and a long step resumes from its own checkpoints (training passes a run name
derived from the key to Ray Train). Usage::

    data = Step("data", make_data, config={"classes": 5})
    train = Step("train", train_model, config=cfg, inputs={"data": data})
    outputs = run_workflow([train], root="s3://bucket/runs", workflow_id="charades-smoke-1a2b3c")
    outputs["train"]["checkpoint_uri"]

A step function is ``fn(ctx: StepContext, **upstream_outputs) -> dict`` and runs in a Ray task, so it may run on any
node: it must read and write through ``pipeline.storage`` (fsspec) only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline import storage
from pipeline.errors import UserError

MARKER = "_SUCCESS"
FORWARD_WAIT_S = 5.0  # how long the driver waits for a finished step's last output line to be forwarded
OUTPUTS = "outputs.json"
PLAN = "workflow.json"


@dataclass(frozen=True)
class StepContext:
    """What a running step knows about itself."""

    workflow_id: str
    step: str
    key: str
    out_dir: str  # the step's folder (URI): write artifacts here
    config: dict[str, Any]
    settings: dict[str, Any]  # Step.settings: environment facts that are not part of the key
    fresh: bool  # True when the step was forced to run again (--rerun): do not resume earlier attempts


@dataclass(frozen=True, eq=False)
class Step:
    """One node of a workflow DAG.

    Attributes:
        name: unique within the workflow; also the folder name.
        fn: ``fn(ctx, **inputs) -> dict`` (JSON-serialisable), a module-level function (Ray pickles it).
        config: JSON-serialisable settings; part of the step's key.
        settings: facts about where it runs (a tracking URI, scorer count), passed along but not in the key.
        inputs: upstream steps by the keyword their outputs are passed under.
        version: bump when the step's code changes meaning, so old outputs are not reused.
        max_retries: Ray task retries on a crash (worker or node death) or a retryable exception.
        num_cpus, num_gpus: resources the step's own task holds (0 for steps that only drive other Ray work).
    """

    name: str
    fn: Callable[..., dict]
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Step] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    version: str = "1"
    max_retries: int = 2
    num_cpus: float = 0.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"step name must be a non-empty folder name, got {self.name!r}")
        try:
            json.dumps(self.config, sort_keys=True)
        except TypeError as e:
            raise ValueError(f"step {self.name!r}: config is not JSON-serialisable: {e}") from None


def topological_order(targets: Sequence[Step]) -> list[Step]:
    """Every step the targets need, upstream first; fails on a cycle or two different steps sharing a name."""
    order: list[Step] = []
    state: dict[int, str] = {}  # id(step) -> "visiting" | "done"
    names: dict[str, Step] = {}

    def visit(step: Step, path: tuple[str, ...]) -> None:
        if state.get(id(step)) == "done":
            return
        if state.get(id(step)) == "visiting":
            raise ValueError(f"workflow has a cycle: {' -> '.join((*path, step.name))}")
        if step.name in names and names[step.name] is not step:
            raise ValueError(f"two different steps are named {step.name!r}")
        names[step.name] = step
        state[id(step)] = "visiting"
        for upstream in step.inputs.values():
            visit(upstream, (*path, step.name))
        state[id(step)] = "done"
        order.append(step)

    for target in targets:
        visit(target, ())
    return order


def step_keys(order: Sequence[Step]) -> dict[str, str]:
    """Each step's key: sha256 of (name, version, config, upstream keys), 12 hex digits."""
    keys: dict[str, str] = {}
    for step in order:
        payload = {
            "name": step.name,
            "version": step.version,
            "config": step.config,
            "inputs": {arg: keys[upstream.name] for arg, upstream in sorted(step.inputs.items())},
        }
        keys[step.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return keys


def step_dir(root: str, workflow_id: str, step: str, key: str) -> str:
    return storage.join(root, workflow_id, step, key)


def config_id(prefix: str, config: dict[str, Any]) -> str:
    """A workflow id derived from a configuration: ``<prefix>-<8 hex digits of its hash>``."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


@dataclass(frozen=True)
class StepStatus:
    name: str
    key: str
    out_dir: str
    done: bool
    upstream: tuple[str, ...]
    finished_at: str | None = None  # from the marker
    seconds: float | None = None


def plan(targets: Sequence[Step], root: str, workflow_id: str) -> list[StepStatus]:
    """The DAG in execution order with each step's key, folder and whether it is committed (reads markers)."""
    order = topological_order(targets)
    keys = step_keys(order)
    statuses = []
    for step in order:
        out_dir = step_dir(root, workflow_id, step.name, keys[step.name])
        marker = storage.join(out_dir, MARKER)
        done = storage.exists(marker)
        info = json.loads(storage.read_text(marker) or "{}") if done else {}
        statuses.append(
            StepStatus(
                step.name,
                keys[step.name],
                out_dir,
                done,
                tuple(upstream.name for upstream in step.inputs.values()),
                info.get("finished_at"),
                info.get("seconds"),
            )
        )
    return statuses


def format_plan(statuses: Sequence[StepStatus], workflow_id: str) -> str:
    lines = [f"workflow {workflow_id}: {len(statuses)} steps"]
    for s in statuses:
        after = f" (after {', '.join(s.upstream)})" if s.upstream else ""
        state = f"done {s.finished_at}, {s.seconds:.0f}s" if s.done else "to run"
        lines.append(f"  {s.name:<9} {s.key}  {state:<32}{after}".rstrip())
        lines.append(f"  {'':<9} {s.out_dir}")
    return "\n".join(lines)


def _done_line(step: str) -> str:
    """The line a step's task prints last (before its duration), which the driver waits for (``ForwardedLines``)."""
    return f"{step}: done in "


def _execute(fn: Callable[..., dict], ctx: StepContext, input_names: list[str], *upstream: dict) -> dict:
    """The body of every step's Ray task: run the function, then commit outputs and the marker (last)."""
    start = time.time()
    print(f"{ctx.step}: started", flush=True)
    try:
        outputs = fn(ctx, **dict(zip(input_names, upstream, strict=True)))
    except FileNotFoundError as error:  # a missing input: no retry brings it back
        raise UserError(
            f"{error.strerror or 'not found'}: {error.filename}" if error.filename else str(error)
        ) from error
    if not isinstance(outputs, dict):
        raise TypeError(f"step {ctx.step!r} returned {type(outputs).__name__}, expected a dict")
    storage.write_text(storage.join(ctx.out_dir, OUTPUTS), json.dumps(outputs, indent=1, sort_keys=True))
    seconds = time.time() - start
    marker = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds, "key": ctx.key}
    storage.write_text(storage.join(ctx.out_dir, MARKER), json.dumps(marker))
    print(f"{_done_line(ctx.step)}{format_seconds(seconds)}", flush=True)
    return outputs


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h01m``: a duration as people read it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ForwardedLines:
    """The driver's stdout, passed through and watched for the line each step's task prints last.

    Ray forwards a task's output to the driver asynchronously (a log monitor tails the worker's files), so without
    waiting the driver's own next line (the summary, say) can come before the step's last lines. Ray prints
    forwarded lines to whatever ``sys.stdout`` is at the time, so the driver installs this wrapper and, after a
    step's result arrives, waits (briefly) for that step's ``_done_line``.
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.seen: set[str] = set()
        self.condition = threading.Condition()
        self._partial = ""  # the current line's text so far: print() writes a line and its newline separately

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        with self.condition:
            *complete, self._partial = (self._partial + text).split("\n")
            done = [line for line in complete if " done in " in line]
            if done:  # seen once the newline is out, so the driver's next line starts on a line of its own
                self.seen.update(done)
                self.condition.notify_all()
        return written

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno, ...: the stream's
        return getattr(self.stream, name)

    def wait_for(self, text: str, timeout_s: float) -> bool:
        """Until a written line contains ``text`` (True) or ``timeout_s`` passes (False)."""
        with self.condition:
            return self.condition.wait_for(lambda: any(text in line for line in self.seen), timeout=timeout_s)


def _retryable_exceptions() -> list[type[BaseException]]:
    """Exceptions worth retrying (I/O, lost workers, failed training attempts); config errors and
    ``UserError`` (bad input, a cluster too small: ``pipeline.errors``) are not."""
    import ray.exceptions

    return [OSError, TimeoutError, ConnectionError, RuntimeError, ray.exceptions.RayError]


def run_workflow(
    targets: Sequence[Step],
    root: str,
    workflow_id: str,
    *,
    rerun: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run the DAG that produces ``targets``, skipping committed steps; returns every step's outputs by name.

    Args:
        targets: the final steps; their upstream steps are found through ``Step.inputs``.
        root: the run root (path or fsspec URI) shared by every node that may run a step.
        workflow_id: names the run: the same id resumes it.
        rerun: step names to run again although committed; their downstream steps run again too.
        log: where progress lines go.
    """
    import ray

    order = topological_order(targets)
    keys = step_keys(order)
    unknown = set(rerun) - {step.name for step in order}
    if unknown:
        raise ValueError(f"--rerun names unknown steps {sorted(unknown)}; steps: {[s.name for s in order]}")
    root = storage.normalize_uri(root)
    _write_plan(order, keys, root, workflow_id)
    forced: set[str] = set()
    for step in order:
        if step.name in rerun or any(upstream.name in forced for upstream in step.inputs.values()):
            forced.add(step.name)

    results: dict[str, Any] = {}  # name -> outputs dict (committed) or ObjectRef (submitted)
    pending: dict[Any, str] = {}
    submitted: list[str] = []
    for step in order:
        out_dir = step_dir(root, workflow_id, step.name, keys[step.name])
        marker = storage.join(out_dir, MARKER)
        if step.name not in forced and storage.exists(marker):
            info = json.loads(storage.read_text(marker) or "{}")
            log(f"skip {step.name}: finished {info.get('finished_at', '?')} ({out_dir})")
            results[step.name] = json.loads(storage.read_text(storage.join(out_dir, OUTPUTS)))
            continue
        if step.name in forced:
            storage.remove(marker)  # uncommitted until it finishes again
        fresh = step.name in forced
        ctx = StepContext(workflow_id, step.name, keys[step.name], out_dir, step.config, step.settings, fresh)
        names = list(step.inputs)
        task = ray.remote(_execute).options(
            name=step.name,  # the prefix of its forwarded output lines: "(train pid=...)"
            max_retries=step.max_retries,
            retry_exceptions=_retryable_exceptions(),
            num_cpus=step.num_cpus,
            num_gpus=step.num_gpus,
        )
        ref = task.remote(step.fn, ctx, names, *(results[step.inputs[n].name] for n in names))  # [ray]
        results[step.name] = ref
        pending[ref] = step.name
        submitted.append(step.name)
    if submitted:
        log(f"run {', '.join(submitted)}")

    wait_s = FORWARD_WAIT_S if _forwarding_output() else 0.0
    with _watched_stdout() as forwarded:
        while pending:  # steps as they finish; the first failure stops the workflow
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            try:
                results[name] = ray.get(done[0])
            except Exception as e:
                for ref in pending:
                    ray.cancel(ref)
                raise WorkflowError(workflow_id, name, e) from e
            forwarded.wait_for(_done_line(name), timeout_s=wait_s)
    return results


def _forwarding_output() -> bool:
    """Whether this driver prints its tasks' output (``ray.init(log_to_driver=True)``, the default): Ray keeps no
    public flag, only the thread that prints; without it there is no line to wait for."""
    import ray._private.worker

    return getattr(ray._private.worker.global_worker, "logger_thread", None) is not None


@contextlib.contextmanager
def _watched_stdout():
    watcher = ForwardedLines(sys.stdout)
    sys.stdout = watcher
    try:
        yield watcher
    finally:
        sys.stdout = watcher.stream


class WorkflowError(RuntimeError):
    """A step failed (after its retries, unless it raised a ``UserError``, which is never retried).

    Attributes:
        step: the step's name.
        user_error: the step's ``UserError`` (unwrapped from Ray's task error), or None for any other failure.
    """

    def __init__(self, workflow_id: str, step: str, cause: BaseException) -> None:
        self.step = step
        self.user_error = _user_error_of(cause)
        if self.user_error is not None:
            message = f"step {step}: {self.user_error}"
        else:
            message = (
                f"workflow {workflow_id}: step {step!r} failed after its retries: {cause}\n"
                f"Fix the cause and run the same command again (same --workflow-id): committed steps are skipped."
            )
        super().__init__(message)


def _user_error_of(error: BaseException) -> UserError | None:
    """The ``UserError`` that failed a Ray task, unwrapped from its ``RayTaskError`` (whose ``cause`` is what the
    task raised; its own text is the whole remote traceback), or None when something else failed it."""
    for _ in range(8):  # a task that ran a task: causes chain
        cause = getattr(error, "cause", None)
        if cause is None:
            return error if isinstance(error, UserError) else None
        error = cause
    return None


def _write_plan(order: Sequence[Step], keys: dict[str, str], root: str, workflow_id: str) -> None:
    """``<root>/<workflow id>/workflow.json``: the DAG, its keys and configs, for people and tools."""
    doc = {
        "workflow_id": workflow_id,
        "steps": [
            {
                "name": step.name,
                "key": keys[step.name],
                "version": step.version,
                "inputs": {arg: upstream.name for arg, upstream in step.inputs.items()},
                "config": step.config,
                "out_dir": step_dir(root, workflow_id, step.name, keys[step.name]),
            }
            for step in order
        ],
    }
    storage.write_text(storage.join(root, workflow_id, PLAN), json.dumps(doc, indent=1, sort_keys=True))
