"""GPU check (``make gpu-check``): what one GPU machine does with this project, in at most 8 minutes.

    python benchmarks/gpu_check.py [--sections model,busy,train_loop,ddp,compile] [--dry-run] [--workdir DIR]

Sections, in this order (each isolated: one that fails prints its traceback, the others still run, and the exit
status is 1). Time bound: ``--budget`` 480 s; a section starts only before ``--start-deadline`` (400 s) and with at
least its expected need (``NEEDS``, estimated) of the budget left, and the busy section's passes stop when time runs
short, so the whole check ends within 8 minutes; a skipped section says so:

    model       STPA ResNet-50, K=8 frames at 224, training clips/s (forward, loss, backward, SGD step) in bf16
                autocast with channels-last weights, batch 16 (``benchmarks/model.py``'s ``training_throughput``)
    busy        the GPU's busy fraction when the same training step is fed by the Ray Data clip pipeline
                (``build_clip_dataset``, decode tasks on all of the machine's CPUs) from real decoding of
                Charades-like videos (640x480 H.264, x264 defaults: a keyframe at most every 250 frames, B-frames),
                and of their ``stpa transcode`` copies (short side 256, an IDR every 16 frames). Busy = CUDA-event
                time of the training steps / wall time of the pass (and NVML's utilisation when ``pynvml`` is
                installed). A pass without the GPU step measures the decode rate per CPU, which gives the decode CPUs
                one GPU needs: GPU clips/s / (decode clips/s per CPU)
    train_loop  the Ray Train loop (``pipeline.training.fit.fit``: one worker, one GPU, NCCL, bf16, clips from the
                decode-once cache) against a plain PyTorch loop on the same GPU and the same cached clips: steps/s
                of epochs after the first, as the loop measures them
    ddp         ``fit`` with one Ray Train worker per GPU (DDP over NCCL), when the machine has two or more GPUs
                (with one, ``train_loop`` already ran the NCCL path with world size 1)
    compile     the ``model`` figure with ``torch.compile`` (compile time reported apart; needs a C compiler)

Without CUDA (or with ``--dry-run``) every section runs a CPU dry mode in seconds: the debug model at 32 px with K=2,
a few tiny videos, one Ray Train epoch of a few steps; ``ddp`` and ``compile`` say why they are skipped; the exit
status is 0 when nothing failed. CI runs it (tests/benchmarks/test_gpu_check.py) so the check cannot rot.

Last line: ``RESULT gpu_check device=<name> clips_per_s_bf16=.. busy_originals=.. busy_copies=..
decode_cpus_per_gpu=.. decode_cpus_per_gpu_copies=.. train_ratio=.. ddp_gpus=.. clips_per_s_compile=.. failed=N``
(``-`` for figures not measured).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.model import example_batch, training_throughput  # noqa: E402

ORDER = ("model", "busy", "train_loop", "ddp", "compile")
# Seconds a section is expected to need on one GPU machine (estimates: the check has not run on a GPU yet); a
# section starts only with at least this much of the budget left, so the check ends within it.
NEEDS = {"model": 30, "busy": 120, "train_loop": 120, "ddp": 120, "compile": 180}


@dataclass(frozen=True)
class Sizes:
    """What a run measures: full size on a GPU, tiny in the CPU dry mode."""

    variant: str
    input_size: int
    num_segments: int
    short_side: int
    batch_size: int
    model_steps: int
    num_videos: int  # Charades-like videos generated for the busy and train_loop sections
    video_size: tuple[int, int]  # (width, height)
    video_frames: int
    busy_clips: int  # clips per timed pass of the busy section
    train_rows: int  # cached training clips: train_rows // batch_size steps per epoch
    train_epochs: int


FULL = Sizes("r50", 224, 8, 256, 16, 20, 16, (640, 480), 240, 480, 800, 3)
DRY = Sizes("debug", 32, 2, 40, 2, 2, 4, (96, 72), 24, 8, 8, 2)


@dataclass
class Context:
    """Shared by the sections: settings, the clock, what earlier sections made and measured."""

    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    dry: bool
    workdir: Path
    started: float = field(default_factory=time.perf_counter)
    figures: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)  # "originals" / "copies" -> manifest URI

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def time_left(self) -> float:
        """Seconds until the check must be done (``--budget``)."""
        return self.args.budget - self.elapsed()


# --- shared helpers -------------------------------------------------------------------------------------------------
def write_charades_like(path: str, width: int, height: int, num_frames: int, seed: int) -> None:
    """A Charades-like H.264 MP4 at 24 fps, libx264 at its defaults (preset medium, B-frames, a keyframe at most
    every 250 frames) on one thread: ``benchmarks/probe.py``'s frames (a drifting gradient, a moving square, noise
    of +-4 levels), which the encoder codes with ordinary P/B decisions. Imports only PyAV and numpy (a Ray task)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    side = height // 4
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            base = (xs + 2 * ys + 3 * i) % 256
            image = np.stack([base, (base * 3 // 2 + 40) % 256, 255 - base], axis=-1).astype(
                np.int16
            )  # (H, W, 3)
            x0, y0 = (7 * i) % (width - side), (3 * i) % (height - side)
            image[y0 : y0 + side, x0 : x0 + side] = (200, 60, 30)
            image += rng.integers(-4, 5, size=image.shape, dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def ensure_ray(ctx: Context) -> None:
    """A local Ray with every CPU of the machine (one more in the dry mode, for the Ray Train worker)."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    # Functions of this file reach Ray workers by value: run as a script or loaded by a test, it is not a module
    # the workers could import.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    num_cpus = (os.cpu_count() or 1) + (1 if ctx.dry else 0)
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    for name in ("ray.data", "ray.train"):  # the sections print their own lines; Ray's go to its log files
        logging.getLogger(name).setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.enable_auto_log_stats = False


def ensure_videos(ctx: Context) -> None:
    """Charades-like videos in two classes as a ``folder`` dataset, their manifest, and their transcoded copies'
    manifest (``ctx.manifests``); made once, by Ray tasks."""
    if ctx.manifests:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from pipeline.data.manifest import read_manifest
    from pipeline.data.prepare import prepare_manifest
    from pipeline.data.transcode import transcode_manifests
    from pipeline.video.transcode import TranscodeSettings

    ensure_ray(ctx)
    sizes, root = ctx.sizes, ctx.workdir / "videos"
    width, height = sizes.video_size
    names = [f"{'ab'[i % 2]}/v{i:03d}.mp4" for i in range(sizes.num_videos)]
    started = time.perf_counter()
    for folder in {(root / name).parent for name in names}:
        folder.mkdir(parents=True, exist_ok=True)
    write = ray.remote(num_cpus=1)(write_charades_like)
    ray.get([write.remote(str(root / n), width, height, sizes.video_frames, i) for i, n in enumerate(names)])
    lists = ctx.workdir / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "trainlist01.txt").write_text("".join(f"{n}\n" for n in names[2:]))
    (lists / "testlist01.txt").write_text("".join(f"{n}\n" for n in names[:2]))
    report = prepare_manifest("folder", str(root), str(lists), str(ctx.workdir / "manifests"), val_fraction=0)
    table = pa.concat_tables([read_manifest(uri)[0] for uri in report.manifest_uris.values()])
    originals = str(ctx.workdir / "manifests" / "all.parquet")
    pq.write_table(table, originals)
    copies = transcode_manifests(
        [originals], str(ctx.workdir / "copies"), TranscodeSettings(), log=lambda _: None
    )
    ctx.manifests = {"originals": originals, "copies": copies.manifest_uris[originals]}
    print(
        f"  data: {len(names)} videos {width}x{height}, {sizes.video_frames} frames, x264 defaults, and their copies "
        f"({copies.num_transcoded} transcoded, {copies.task_cpu_seconds:.1f} CPU s) in {time.perf_counter() - started:.1f}s"
    )


def repeated(manifest_uri: str, num_rows: int):
    """The manifest's rows repeated (ids made distinct: ``<id>#<r>``) to ``num_rows`` rows."""
    import pyarrow as pa

    from pipeline import schema
    from pipeline.data.manifest import read_manifest

    table, _ = read_manifest(manifest_uri)
    parts, r = [], 0
    while sum(p.num_rows for p in parts) < num_rows:
        ids = pa.array([f"{v}#{r}" for v in table.column(schema.VIDEO_ID).to_pylist()], pa.string())
        parts.append(table.set_column(table.schema.get_field_index(schema.VIDEO_ID), schema.VIDEO_ID, ids))
        r += 1
    return pa.concat_tables(parts).slice(0, num_rows)


def build_model(ctx: Context, num_classes: int):
    from stpa_model import build_model as build

    torch.manual_seed(0)
    model = build(
        ctx.sizes.variant,
        input_size=ctx.sizes.input_size,
        num_segments=ctx.sizes.num_segments,
        num_classes=num_classes,
    )
    return model.to(ctx.device, memory_format=torch.channels_last).train()


def clip_config(ctx: Context):
    from pipeline.clips.dataset import ClipConfig

    s = ctx.sizes
    return ClipConfig(
        num_segments=s.num_segments, short_side=s.short_side, crop_size=s.input_size, train=True
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- sections -------------------------------------------------------------------------------------------------------
def section_model(ctx: Context) -> None:
    """bf16 + channels-last training clips/s of the STPA model (eager)."""
    s = ctx.sizes
    model = build_model(ctx, num_classes=157)
    clips, targets = example_batch(s.batch_size, s.num_segments, s.input_size, 157, ctx.device)
    rate = training_throughput(model, clips, targets, s.model_steps, warmup=1 if ctx.dry else 3)
    ctx.figures["clips_per_s_bf16"] = f"{rate:.1f}"
    memory = (
        f", peak memory {torch.cuda.max_memory_allocated(ctx.device) / 2**30:.1f} GiB"
        if ctx.device.type == "cuda"
        else ""
    )
    print(
        f"  {s.variant} K={s.num_segments} {s.input_size}px batch {s.batch_size}: {rate:.1f} clips/s (bf16, channels-last){memory}"
    )


def section_compile(ctx: Context) -> None:
    """The model section with torch.compile."""
    if ctx.dry:
        print(
            "  skipped in the CPU dry mode: torch.compile is checked on CUDA (on a CPU it needs minutes and a C++ toolchain)"
        )
        return
    s = ctx.sizes
    model = build_model(ctx, num_classes=157)
    clips, targets = example_batch(s.batch_size, s.num_segments, s.input_size, 157, ctx.device)
    started = time.perf_counter()
    training_throughput(model, clips, targets, num_steps=1, compile_model=True, warmup=2)  # compiles
    compile_seconds = time.perf_counter() - started
    rate = training_throughput(model, clips, targets, s.model_steps, compile_model=True, warmup=1)
    ctx.figures["clips_per_s_compile"] = f"{rate:.1f}"
    print(f"  torch.compile: {rate:.1f} clips/s after {compile_seconds:.0f}s of compiling and warm-up")


class _NvmlSampler:
    """Mean GPU utilisation reported by NVML, sampled every 0.1 s in a thread (when pynvml is installed)."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - optional: without NVML the CUDA-event figure stands alone
            self._nvml = None

    def __enter__(self) -> _NvmlSampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean(self) -> float | None:
        return statistics.mean(self.samples) / 100 if self.samples else None


def fed_pass(ctx: Context, dataset, model, optimizer, train: bool) -> tuple[int, float, float]:
    """One pass over a clip dataset as a training loop consumes it: ``(clips, wall seconds, busy seconds)``.

    ``train=False`` only moves the batches to the device (the decode rate); ``train=True`` runs a training step on
    each, timed by CUDA events on a GPU (the CPU dry mode times it with the clock).
    """
    from pipeline import schema
    from pipeline.training.ray_hooks import TrainBatchCollate
    from pipeline.video.transforms import frames_to_model_input
    from stpa_model import total_loss

    s, device = ctx.sizes, ctx.device
    timings: list = []
    busy_cpu = 0.0
    num_clips = 0
    started = time.perf_counter()
    batches = dataset.iter_torch_batches(
        batch_size=s.batch_size,
        drop_last=True,
        collate_fn=TrainBatchCollate(),
        device=device,
        prefetch_batches=2,
    )
    for batch in batches:
        num_clips += s.batch_size
        if not train:
            continue
        step_started = time.perf_counter()
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            output = model(frames_to_model_input(batch[schema.FRAMES]))
        loss, _ = total_loss(output, batch[schema.LABEL], model.config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            end.record()
            timings.append((begin, end))
        else:
            busy_cpu += time.perf_counter() - step_started
    synchronize(device)
    wall = time.perf_counter() - started
    busy = sum(b.elapsed_time(e) for b, e in timings) / 1000 if timings else busy_cpu
    return num_clips, wall, busy


def section_busy(ctx: Context) -> None:
    """The GPU's busy fraction when fed by Ray Data from real decoding; decode CPUs per GPU."""
    import ray

    from pipeline.clips.dataset import build_clip_dataset

    ensure_videos(ctx)
    cpus = int(ray.cluster_resources()["CPU"])
    model = build_model(ctx, num_classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    config = clip_config(ctx)
    for kind in ("originals", "copies"):
        table = repeated(ctx.manifests[kind], ctx.sizes.busy_clips)
        fed_pass(ctx, build_clip_dataset(table, config, epoch=0), model, optimizer, train=True)  # warm-up
        if ctx.time_left() < 60:
            print(f"  {kind}: stopped after the warm-up pass (time bound)")
            return
        clips, wall, _ = fed_pass(
            ctx, build_clip_dataset(table, config, epoch=1), model, optimizer, train=False
        )
        decode_rate = clips / wall
        decode_per_cpu = decode_rate / cpus
        with _NvmlSampler(ctx.device) as nvml:
            clips, wall, busy = fed_pass(
                ctx, build_clip_dataset(table, config, epoch=2), model, optimizer, train=True
            )
        gpu_rate = clips / busy  # what the GPU does when it never waits
        needed = gpu_rate / decode_per_cpu
        ctx.figures[f"busy_{kind}"] = f"{busy / wall:.2f}"
        ctx.figures["decode_cpus_per_gpu" + ("" if kind == "originals" else "_copies")] = f"{needed:.0f}"
        nvml_text = f", NVML utilisation {nvml.mean():.2f}" if nvml.mean() is not None else ""
        print(
            f"  {kind}: decode alone {decode_rate:.1f} clips/s on {cpus} CPUs "
            f"({decode_per_cpu:.2f} per CPU); fed to the training step {clips / wall:.1f} clips/s, GPU busy "
            f"{busy / wall:.2f} of the time{nvml_text}; the step alone {gpu_rate:.1f} clips/s -> {needed:.0f} "
            "decode CPUs per GPU"
        )


def experiment(ctx: Context, num_classes: int, num_workers: int):
    """The smoke preset with this check's model, clips, batch and precision (as ``benchmarks/train.py`` builds it)."""
    from pipeline.config import apply_overrides
    from pipeline.presets import smoke
    from stpa_model import model_config

    s = ctx.sizes
    model = model_config(s.variant, input_size=s.input_size, num_segments=s.num_segments)
    overrides: dict[str, object] = {
        "model.backbone": model.backbone,
        "model.input_size": s.input_size,
        "model.num_segments": s.num_segments,
    }
    for section in ("train_clips", "val_clips", "test_clips"):
        overrides[f"{section}.num_segments"] = s.num_segments
        overrides[f"{section}.short_side"] = s.short_side
        overrides[f"{section}.crop_size"] = s.input_size
    overrides.update(
        {
            "train.epochs": s.train_epochs,
            "train.batch_size": s.batch_size,
            "train.num_workers": num_workers,
            "train.use_gpu": ctx.device.type == "cuda",
            "train.precision": "bf16",
            "train.eval_every": 1000,
            "train.num_heatmap_clips": 0,
            "train.final_test": False,
            "train.num_checkpoints_kept": s.train_epochs + 2,  # every epoch's metrics.json stays readable
        }
    )
    return apply_overrides(smoke("ucf101", num_classes), overrides)


def cached_training_clips(ctx: Context, exp) -> tuple[str, str]:
    """(training manifest URI, cache root): the copies' rows repeated to ``train_rows``, decoded once."""
    import pyarrow.parquet as pq

    from pipeline.clips.cache import cached_clip_dataset

    ensure_videos(ctx)
    manifest = str(ctx.workdir / "train_rows.parquet")
    cache = str(ctx.workdir / "clip_cache")
    if not os.path.exists(manifest):
        pq.write_table(repeated(ctx.manifests["copies"], ctx.sizes.train_rows), manifest)
    cached_clip_dataset(manifest, exp.train_clips, cache)
    return manifest, cache


def ray_train_steps_per_second(ctx: Context, exp, manifest: str, cache: str, name: str) -> float:
    """Median in-loop steps/s of epochs after the first (each epoch's ``train/clips_per_s`` in its checkpoint's
    metrics.json); ``fit`` with MLflow off."""
    from pipeline import metric_names as names
    from pipeline.training.checkpoint import METRICS_FILE
    from pipeline.training.fit import fit

    storage = str(ctx.workdir / "ray")
    fit(
        exp,
        manifest,
        None,
        val_manifest=None,
        storage_path=storage,
        run_name=name,
        tracking_uri="",
        clip_cache=cache,
    )
    reports = [
        json.loads(Path(p).read_text())
        for p in glob.glob(f"{storage}/{name}/**/{METRICS_FILE}", recursive=True)
    ]
    epochs = sorted(
        (r[names.EPOCH], r[names.TRAIN_CLIPS_PER_S]) for r in reports if names.TRAIN_CLIPS_PER_S in r
    )
    rates = [rate for _, rate in epochs[1:]] or [
        rate for _, rate in epochs
    ]  # the first epoch includes start-up
    return statistics.median(rates) / (exp.train.batch_size * exp.train.num_workers)


def plain_steps_per_second(ctx: Context, exp, cache_rows: list[dict], num_steps: int) -> float:
    """The same model, loss, optimiser and batches in a plain loop on the same device (no Ray, no DDP)."""
    from pipeline.training.optim import build_optimizer, scaled_lr
    from pipeline.video.transforms import frames_to_model_input
    from stpa_model import STPANet, total_loss

    torch.manual_seed(0)
    device = ctx.device
    model = STPANet(exp.model).to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, exp.optim, scaled_lr(exp.optim, exp.train.batch_size))

    def step(i: int) -> None:
        frames, labels = cache_rows[i % len(cache_rows)]
        frames, labels = frames.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            output = model(frames_to_model_input(frames))
        loss, _ = total_loss(output, labels, exp.model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), exp.optim.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(2):  # warm-up
        step(i)
    synchronize(device)
    started = time.perf_counter()
    for i in range(num_steps):
        step(i)
    synchronize(device)
    return num_steps / (time.perf_counter() - started)


def section_train_loop(ctx: Context) -> None:
    """The Ray Train loop against a plain loop on the same device and clips."""
    import numpy as np

    from pipeline import schema
    from pipeline.clips.cache import cached_clip_dataset

    ensure_ray(ctx)
    exp = experiment(ctx, num_classes=2, num_workers=1)
    manifest, cache = cached_training_clips(ctx, exp)
    dataset, _ = cached_clip_dataset(manifest, exp.train_clips, cache)
    batches = [
        (torch.from_numpy(b[schema.FRAMES]), torch.from_numpy(b[schema.LABEL].astype(np.int64)))
        for b in dataset.iter_batches(batch_size=exp.train.batch_size, batch_format="numpy", drop_last=True)
    ][:20]
    steps = len(batches) if ctx.dry else 50
    plain = plain_steps_per_second(ctx, exp, batches, steps)
    ray_rate = ray_train_steps_per_second(ctx, exp, manifest, cache, f"gpu-check-{time.time_ns()}")
    plain_after = plain_steps_per_second(ctx, exp, batches, steps)
    plain_rate = (plain + plain_after) / 2
    ctx.figures["train_ratio"] = f"{ray_rate / plain_rate:.2f}"
    print(
        f"  {exp.train.batch_size} clips a step, {ctx.sizes.train_rows // exp.train.batch_size} steps an epoch: "
        f"Ray Train loop {ray_rate:.2f} steps/s, plain loop {plain:.2f} and {plain_after:.2f} steps/s: ratio "
        f"{ray_rate / plain_rate:.2f}"
    )


def section_ddp(ctx: Context) -> None:
    """``fit`` with one Ray Train worker per GPU (DDP over NCCL)."""
    num_gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    if num_gpus < 2:
        ctx.figures["ddp_gpus"] = str(num_gpus)
        reason = (
            "no GPU in the CPU dry mode"
            if num_gpus == 0
            else "one GPU: train_loop ran the NCCL path (world size 1)"
        )
        print(f"  skipped: {reason}")
        return
    ensure_ray(ctx)
    exp = experiment(ctx, num_classes=2, num_workers=num_gpus)
    manifest, cache = cached_training_clips(ctx, exp)
    rate = ray_train_steps_per_second(ctx, exp, manifest, cache, f"gpu-check-ddp-{time.time_ns()}")
    ctx.figures["ddp_gpus"] = str(num_gpus)
    print(
        f"  DDP over {num_gpus} GPUs (NCCL): {rate:.2f} steps/s per rank, {rate * exp.train.batch_size * num_gpus:.1f} clips/s"
    )


SECTIONS: dict[str, Callable[[Context], None]] = {
    "model": section_model,
    "busy": section_busy,
    "train_loop": section_train_loop,
    "ddp": section_ddp,
    "compile": section_compile,
}


def run_sections(ctx: Context, names: list[str]) -> list[str]:
    """Each section in turn, isolated; returns the names of those that failed."""
    failed = []
    for name in names:
        print(f"== {name} ({ctx.elapsed():.0f}s)", flush=True)
        need = 0 if ctx.dry else NEEDS[name]
        if ctx.elapsed() > ctx.args.start_deadline or ctx.time_left() < need:
            print(
                f"section {name}: skipped (time bound: {ctx.elapsed():.0f}s gone, {ctx.time_left():.0f}s left of "
                f"{ctx.args.budget:.0f}s, it needs about {need}s; none starts after {ctx.args.start_deadline:.0f}s)"
            )
            continue
        started = time.perf_counter()
        try:
            SECTIONS[name](ctx)
        except Exception:  # noqa: BLE001 - a failing section must not stop the others
            traceback.print_exc(file=sys.stdout)
            failed.append(name)
            print(f"section {name}: FAILED ({time.perf_counter() - started:.1f}s)", flush=True)
            continue
        print(f"section {name}: ok ({time.perf_counter() - started:.1f}s)", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(ORDER), help=f"comma-separated, from {ORDER}")
    parser.add_argument("--dry-run", action="store_true", help="the CPU dry mode even when CUDA is available")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds the whole check may take")
    parser.add_argument("--start-deadline", type=float, default=400.0, help="no section starts after this")
    parser.add_argument(
        "--workdir", default=None, help="where videos, caches and checkpoints go (default: temp)"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.sections.split(",") if n]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; sections: {', '.join(ORDER)}")

    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)  # the dry mode's models are tiny: more threads only synchronise
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="stpa-gpu-check-"))
    ctx = Context(args, DRY if dry else FULL, device, dry, workdir)
    name = torch.cuda.get_device_name(device) if not dry else "cpu"
    print(
        f"gpu check on {name} ({torch.cuda.device_count() if not dry else 0} GPUs, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}){': CPU dry mode' if dry else ''}; sections {', '.join(names)}; workdir {workdir}",
        flush=True,
    )
    try:
        failed = run_sections(ctx, names)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    figures = " ".join(
        f"{key}={ctx.figures.get(key, '-')}"
        for key in (
            "clips_per_s_bf16",
            "busy_originals",
            "busy_copies",
            "decode_cpus_per_gpu",
            "decode_cpus_per_gpu_copies",
            "train_ratio",
            "ddp_gpus",
            "clips_per_s_compile",
        )
    )
    print(f"done in {ctx.elapsed():.0f}s; failed sections: {', '.join(failed) or 'none'}")
    print(
        f"RESULT gpu_check device={name.replace(' ', '_')} dry_run={int(dry)} {figures} failed={len(failed)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
