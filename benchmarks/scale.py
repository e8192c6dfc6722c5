"""Scale-out benchmark: ingest clips/s on a 1-node vs a 2-node Ray cluster with the same CPUs, and the cost of
moving decoded clips between nodes.

    python benchmarks/scale.py [--cpus 2] [--cycles 3] [--passes 3] [--repeat 2] [--data-dir DIR]

Dataset: the UCF101-like videos of ``benchmarks/ingest.py`` (``prepare_data``: 320x240, 25 fps, MPEG-4 Part 2
AVI written by ``pipeline.data.synth``, manifest from ``pipeline.data.prepare.prepare_manifest``), cached in ``--data-dir``
(by default the same folder as ``ingest.py``'s, so either benchmark reuses the other's videos). Each pass decodes
every video ``--repeat`` times. Clips: TSN test sampling K=8 x T=1, shorter side 256, centre crop 224 (uint8
(8, 1, 224, 224, 3), 1.2 MB per clip) unless ``--short-side``/``--crop-size`` say otherwise.

Clusters (``tests/ray_cluster.LocalRayCluster``, i.e. ``cluster/local.sh``: real raylets on this machine, token
auth), started one after the other, never both at once:
    1 node:  the head with ``--cpus`` CPUs;
    2 nodes: the head and one worker node with ``--cpus / 2`` CPUs each.
Per ``--cycles`` cycle both are measured, the order flipped every other cycle (1-2, 2-1, ...) so a drift in the
machine's load does not favour one. A driver subprocess (``cluster.env()``: a client of the cluster, never
``ray.init`` in this process) builds the clip dataset with ``pipeline.clips.dataset.build_clip_dataset`` and iterates it
as ``ingest.py`` does: one untimed warm-up pass (worker start-up), then ``--passes`` timed passes (median
reported). It also counts the CPU seconds of every process of the cluster (the raylets' processes, found by
``local.sh``'s ``STPA_LOCAL_CLUSTER`` marker, plus the driver) per clip: on a shared machine that is the figure
the neighbours disturb least. Then it reads, from Ray's state API (``ray.util.state.list_tasks``), every finished
``decode_clip_batch`` task of the timed passes with the node it ran on and its duration, so the 2-node figure
shows that both nodes decoded, and gives the decode time per clip (task wall time / clips).

Remote object transfer (2 nodes only): a task pinned to a node (``NodeAffinitySchedulingStrategy``, hard)
returns a uint8 array the size of one decode block (the clips per block ``build_clip_dataset`` picks here); the
driver on the head waits for it without fetching (``ray.wait(fetch_local=False)``) and then times ``ray.get``.
Pinned to the worker node, the get pulls the block across nodes; pinned to the head it maps the local object
store (zero copy). The difference is the transfer cost, alternated ``--transfer-reps`` times.
``transfer_fraction = transfer ms per clip / decode ms per clip`` (decode: mean task duration per clip). Here
both nodes share one machine, so the transfer runs over loopback TCP (no network latency or bandwidth limit): a
lower bound for a real network.

Last line: ``RESULT scale one_node_clips_per_s=... two_node_clips_per_s=... ratio=... transfer_ms_per_clip=...
transfer_fraction=... cpus=...``, where ``ratio`` is the median over cycles of (2-node / 1-node clips/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from pipeline.clips.dataset import ClipConfig, auto_decode_batch_size  # noqa: E402

DRIVER_MARK = "SCALE_DRIVER "  # prefix of the driver's result line on stdout
DECODE_TASK = (
    "decode_clip_batch"  # Ray Data names a map task after its function: MapBatches(decode_clip_batch)
)


# --- driver (a subprocess connected to one cluster) ---------------------------------------------------------------
def cluster_cpu_seconds(marker: str) -> dict[int, float]:
    """CPU seconds (user + system) of this process and of every process whose environment holds ``marker``."""
    import psutil

    wanted = marker.encode()
    times = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if wanted not in f.read().split(b"\0") and int(pid) != os.getpid():
                    continue
            cpu = psutil.Process(int(pid)).cpu_times()
        except (OSError, psutil.Error):
            continue
        times[int(pid)] = cpu.user + cpu.system
    return times


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the second (exited ones are missed)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def decode_tasks(node_names: dict[str, str]) -> list[dict]:
    """Finished decode tasks of this cluster: node name, start and end (ms)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("state", "=", "FINISHED")], detail=True, limit=10_000, timeout=60)
    return [
        {
            "task_id": t.task_id,
            "node": node_names.get(t.node_id, t.node_id),
            "start_ms": t.start_time_ms,
            "end_ms": t.end_time_ms,
        }
        for t in tasks
        if DECODE_TASK in (t.name or "")
    ]


def block_transfer(node_ids: dict[str, str], shape: tuple[int, ...], reps: int) -> dict[str, list[float]]:
    """Seconds of ``ray.get`` in the driver of a ``shape`` uint8 block made by a task pinned to each node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def make_block(shape: tuple[int, ...], seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)

    seconds: dict[str, list[float]] = {name: [] for name in node_ids}
    for rep in range(reps + 1):  # the first round is a warm-up (connections, worker start-up)
        for name, node_id in node_ids.items():
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            ref = make_block.options(scheduling_strategy=strategy).remote(shape, rep)
            ray.wait([ref], fetch_local=False)  # made and sealed on its node, not fetched yet
            started = time.perf_counter()
            block = ray.get(ref)
            elapsed = time.perf_counter() - started
            assert block.shape == shape
            del block, ref
            if rep:
                seconds[name].append(elapsed)
    return seconds


def run_driver(spec: dict) -> dict:
    """The measurements on the cluster this process is a client of (``RAY_ADDRESS`` in the environment)."""
    import pyarrow.parquet as pq
    import ray
    from ray.util.state import list_nodes

    from benchmarks.ingest import consume, repeat_rows
    from pipeline.clips.dataset import build_clip_dataset

    config = ClipConfig(**spec["config"])
    ray.init(logging_level="warning", log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.verbose_stats_logs = False
    context.enable_auto_log_stats = False
    my_node = ray.get_runtime_context().get_node_id()
    node_ids = {n.node_name: n.node_id for n in list_nodes(filters=[("state", "=", "ALIVE")])}
    node_names = {v: k for k, v in node_ids.items()}
    cpus = int(ray.cluster_resources()["CPU"])
    table = repeat_rows(pq.read_table(spec["manifest"]), spec["repeat"])
    num_clips = table.num_rows * config.num_views

    started = time.perf_counter()
    assert consume(build_clip_dataset(table, config)) == num_clips
    warmup_s = time.perf_counter() - started
    timed_from_ms = time.time() * 1000  # decode tasks starting from here belong to the timed passes
    passes = []
    for _ in range(spec["passes"]):
        cpu_before = cluster_cpu_seconds(spec["marker"])
        started = time.perf_counter()
        seen = consume(build_clip_dataset(table, config))
        seconds = time.perf_counter() - started
        cpu = cpu_delta(cpu_before, cluster_cpu_seconds(spec["marker"]))
        assert seen == num_clips, (seen, num_clips)
        passes.append({"seconds": seconds, "clips_per_s": num_clips / seconds, "cpu_s": cpu})

    time.sleep(2.0)  # task events reach the GCS about once a second
    tasks = [t for t in decode_tasks(node_names) if t["start_ms"] >= timed_from_ms]
    per_block = auto_decode_batch_size(table.num_rows, cpus, config.num_views)  # as build_clip_dataset picks
    result = {
        "nodes": sorted(node_ids),
        "driver_node": node_names[my_node],
        "cpus": cpus,
        "num_clips": num_clips,
        "clips_per_block": per_block,
        "warmup_s": warmup_s,
        "passes": passes,
        "tasks": tasks,
    }
    if len(node_ids) > 1:
        s = config.crop_size
        shape = (per_block, config.num_segments, config.frames_per_segment, s, s, 3)  # one decode block
        result["block_bytes"] = int(np.prod(shape))
        result["transfer_s"] = block_transfer(node_ids, shape, spec["transfer_reps"])
    ray.shutdown()
    return result


# --- the parent: data, clusters, report -------------------------------------------------------------------------
def measure(layout: str, cpus: int, spec: dict, timeout_s: float) -> dict:
    """Start the ``layout`` cluster ("1node" or "2node", ``cpus`` CPUs in all), run the driver, stop it."""
    from tests.ray_cluster import LocalRayCluster

    if layout == "1node":
        cluster = LocalRayCluster(num_workers=0, head_cpus=cpus)
    else:
        cluster = LocalRayCluster(num_workers=1, head_cpus=cpus // 2, worker_cpus=cpus // 2)
    started = time.perf_counter()
    with cluster:
        up_s = time.perf_counter() - started
        spec = dict(spec, marker=f"STPA_LOCAL_CLUSTER={cluster.temp_dir}")
        env = cluster.env()
        env.setdefault("OMP_NUM_THREADS", "1")
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--driver", json.dumps(spec)],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        lines = [x for x in done.stdout.splitlines() if x.startswith(DRIVER_MARK)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(
                f"{layout} driver failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
            )
    result = json.loads(lines[-1].removeprefix(DRIVER_MARK))
    result["cluster_up_s"] = up_s
    return result


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def summarize(layout: str, cycle: int, r: dict) -> dict:
    """Print one cluster's figures; returns its medians."""
    clips_per_s = statistics.median(p["clips_per_s"] for p in r["passes"])
    cpu_ms = statistics.median(1000 * p["cpu_s"] / r["num_clips"] for p in r["passes"])
    per_node: dict[str, int] = {}
    busy_ms = 0.0
    for t in r["tasks"]:
        per_node[t["node"]] = per_node.get(t["node"], 0) + 1
        busy_ms += t["end_ms"] - t["start_ms"]
    num_decoded = r["num_clips"] * len(r["passes"])
    expected_tasks = -(-r["num_clips"] // r["clips_per_block"]) * len(r["passes"])
    decode_ms = busy_ms / num_decoded
    print(
        f"cycle {cycle} {layout}: nodes {r['nodes']} ({r['cpus']} CPUs), up in {r['cluster_up_s']:.0f}s, "
        f"warm-up pass {r['warmup_s']:.1f}s; passes "
        + ", ".join(f"{p['clips_per_s']:.1f}" for p in r["passes"])
        + f" clips/s ({r['num_clips']} clips each); cluster CPU {cpu_ms:.0f} ms/clip; decode tasks per node "
        f"{dict(sorted(per_node.items()))}, {decode_ms:.1f} ms/clip in the task; load {load_average()}"
    )
    if len(r["tasks"]) != expected_tasks:
        print(f"  warning: {len(r['tasks'])} decode tasks listed, {expected_tasks} expected")
    if len(per_node) != len(r["nodes"]):
        print(f"  warning: decode tasks ran on {sorted(per_node)} of nodes {r['nodes']}")
    out = {"clips_per_s": clips_per_s, "cpu_ms": cpu_ms, "decode_ms": decode_ms, "per_node": per_node}
    if "transfer_s" in r:
        remote = next(n for n in r["transfer_s"] if n != r["driver_node"])
        remote_ms = statistics.median(r["transfer_s"][remote]) * 1000
        local_ms = statistics.median(r["transfer_s"][r["driver_node"]]) * 1000
        mb = r["block_bytes"] / 1e6
        transfer_ms_per_clip = (remote_ms - local_ms) / r["clips_per_block"]
        print(
            f"  transfer of a {mb:.1f} MB block ({r['clips_per_block']} clips) to the driver: from {remote} "
            f"{remote_ms:.1f} ms (median of "
            + ", ".join(f"{1000 * s:.1f}" for s in r["transfer_s"][remote])
            + f"), local {local_ms:.2f} ms; {mb / (remote_ms / 1000):.0f} MB/s; "
            f"{transfer_ms_per_clip:.2f} ms per clip = {transfer_ms_per_clip / decode_ms:.3f} of decoding"
        )
        out.update(
            transfer_ms_per_clip=transfer_ms_per_clip,
            transfer_fraction=transfer_ms_per_clip / decode_ms,
            transfer_mb_per_s=mb / (remote_ms / 1000),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each cluster in all (even)")
    parser.add_argument(
        "--cycles", type=int, default=3, help="1-node + 2-node measurements, order alternated"
    )
    parser.add_argument("--passes", type=int, default=3, help="timed passes per cluster, after one warm-up")
    parser.add_argument("--num-videos", type=int, default=48)
    parser.add_argument("--num-frames", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=2, help="times each video is decoded per pass")
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--transfer-reps", type=int, default=10, help="block transfers timed per node")
    parser.add_argument("--data-dir", default=None, help="where the generated dataset is kept and reused")
    parser.add_argument("--driver-timeout", type=float, default=600.0, help="seconds per driver run")
    parser.add_argument("--driver", default=None, help=argparse.SUPPRESS)  # internal: run as the driver
    args = parser.parse_args()

    if args.driver is not None:
        print(DRIVER_MARK + json.dumps(run_driver(json.loads(args.driver))), flush=True)
        return
    if args.cpus < 2 or args.cpus % 2:
        raise SystemExit(f"--cpus must be even and >= 2 (two nodes of --cpus/2), got {args.cpus}")
    if min(args.cycles, args.passes, args.repeat, args.transfer_reps) < 1:
        raise SystemExit("--cycles, --passes, --repeat and --transfer-reps must be >= 1")
    config = ClipConfig(
        num_segments=8,
        frames_per_segment=1,
        train=False,
        short_side=args.short_side,
        crop_size=args.crop_size,
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the nodes, as in ingest.py

    from benchmarks.ingest import prepare_data

    data_dir = args.data_dir or os.path.join(
        tempfile.gettempdir(), "stpa-bench", f"ucf101-320x240-{args.num_videos}v-{args.num_frames}f"
    )
    manifest = prepare_data(data_dir, args.num_videos, args.num_frames)
    spec = {
        "manifest": manifest,
        "repeat": args.repeat,
        "passes": args.passes,
        "transfer_reps": args.transfer_reps,
        "config": {
            "num_segments": config.num_segments,
            "frames_per_segment": config.frames_per_segment,
            "train": config.train,
            "short_side": config.short_side,
            "crop_size": config.crop_size,
        },
    }
    print(
        f"videos: {manifest} x {args.repeat} per pass; clips K=8 x T=1, short side {args.short_side}, crop "
        f"{args.crop_size}; {args.cpus} CPUs per cluster; load average {load_average()}"
    )
    results: dict[str, list[dict]] = {"1node": [], "2node": []}
    for cycle in range(args.cycles):
        order = ("1node", "2node") if cycle % 2 == 0 else ("2node", "1node")
        for layout in order:
            raw = measure(layout, args.cpus, spec, args.driver_timeout)
            results[layout].append(summarize(layout, cycle, raw))

    one = statistics.median(r["clips_per_s"] for r in results["1node"])
    two = statistics.median(r["clips_per_s"] for r in results["2node"])
    ratios = [
        b["clips_per_s"] / a["clips_per_s"] for a, b in zip(results["1node"], results["2node"], strict=True)
    ]
    cpu_ratios = [b["cpu_ms"] / a["cpu_ms"] for a, b in zip(results["1node"], results["2node"], strict=True)]
    transfer_ms = statistics.median(r["transfer_ms_per_clip"] for r in results["2node"])
    fraction = statistics.median(r["transfer_fraction"] for r in results["2node"])
    mb_per_s = statistics.median(r["transfer_mb_per_s"] for r in results["2node"])
    decode_ms = statistics.median(r["decode_ms"] for r in results["1node"] + results["2node"])
    print(
        f"2-node / 1-node clips/s per cycle: {', '.join(f'{x:.3f}' for x in ratios)}; cluster CPU per clip "
        f"(2-node / 1-node): {', '.join(f'{x:.3f}' for x in cpu_ratios)}"
    )
    print(
        f"decode: {decode_ms:.1f} ms per clip per decode task ({1000 / decode_ms:.1f} clips/s per CPU); "
        f"transfer {mb_per_s:.0f} MB/s; load average at the end {load_average()}"
    )
    print(
        f"RESULT scale one_node_clips_per_s={one:.1f} two_node_clips_per_s={two:.1f} "
        f"ratio={statistics.median(ratios):.3f} transfer_ms_per_clip={transfer_ms:.2f} "
        f"transfer_fraction={fraction:.3f} cpus={args.cpus}"
    )


if __name__ == "__main__":
    main()
