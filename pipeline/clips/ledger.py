"""The decode ledger: which videos failed to decode (and why), and how many times each video was decoded.

A small Ray actor (``num_cpus=0``) owned by the process that builds clip datasets, one per process and Ray
session, shared by all the datasets it builds under distinct keys (see ``pipeline.clips.dataset``). Decode tasks
record their failures and draw per-video epoch numbers from it; the driver reads a ``DecodeReport``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeFailure:
    video_id: str
    video_uri: str
    reason: str
    epoch: int


class DecodeLedger:
    """Ray actor state: decode failures and per-video decode counts, per dataset key."""

    def __init__(self) -> None:
        self._failures: dict[str, list[tuple[str, str, str, int]]] = {}
        self._draws: dict[str, dict[str, int]] = {}

    def record(self, key: str, failures: list[tuple[str, str, str, int]]) -> None:
        self._failures.setdefault(key, []).extend(failures)

    def failures(self, key: str) -> list[tuple[str, str, str, int]]:
        return list(self._failures.get(key, []))

    def next_epochs(self, key: str, video_ids: list[str]) -> list[int]:
        """The epoch of each video's next decode (its number of earlier decodes), counting this one."""
        draws = self._draws.setdefault(key, {})
        epochs = []
        for video_id in video_ids:
            epochs.append(draws.get(video_id, 0))
            draws[video_id] = epochs[-1] + 1
        return epochs


_LEDGERS: dict[tuple[str, str], object] = {}  # (Ray session, worker id) -> ledger actor owned by this process


def decode_ledger():
    """This process's decode ledger in the current Ray session (created on first use)."""
    import ray

    context = ray.get_runtime_context()
    owner = (context.get_session_name(), context.get_worker_id())
    if owner not in _LEDGERS:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        _LEDGERS.clear()  # handles from an earlier Ray session are dead
        # On this process's own node: the ledger then lives exactly as long as the driver that owns it. Left to the
        # scheduler it may land on a worker node, whose loss would fail every later decode batch (seen in the
        # node-loss test) although training itself could go on. Restarted (empty) if its process alone dies.
        _LEDGERS[owner] = (
            ray.remote(num_cpus=0)(DecodeLedger)
            .options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(context.get_node_id(), soft=True),
                max_restarts=-1,
                max_task_retries=-1,
            )
            .remote()
        )
    return _LEDGERS[owner]


class DecodeReport:
    """The decode failures of one clip dataset, readable after (or during) iteration.

    Create one with ``DecodeReport.new()`` in the process that iterates (or drives) the dataset and pass it to
    ``build_clip_dataset(..., report=report)``. Failures repeat if the dataset is iterated several times; ``ids``
    and ``num_failed`` count distinct videos.
    """

    def __init__(self, ledger, key: str) -> None:
        self.ledger = ledger
        self.key = key

    @classmethod
    def new(cls) -> DecodeReport:
        return cls(decode_ledger(), uuid.uuid4().hex)

    @property
    def failures(self) -> list[DecodeFailure]:
        import ray

        return [DecodeFailure(*f) for f in ray.get(self.ledger.failures.remote(self.key))]

    @property
    def reasons(self) -> dict[str, str]:
        """Failed video id -> reason (the latest one)."""
        return {f.video_id: f.reason for f in self.failures}

    @property
    def ids(self) -> list[str]:
        return sorted(self.reasons)

    @property
    def num_failed(self) -> int:
        return len(self.reasons)

    def summary(self) -> str:
        reasons = self.reasons
        if not reasons:
            return "decode report: no failures"
        lines = [f"decode report: {len(reasons)} video(s) could not be decoded and were left out:"]
        lines += [f"  {video_id}: {reason}" for video_id, reason in sorted(reasons.items())]
        return "\n".join(lines)
