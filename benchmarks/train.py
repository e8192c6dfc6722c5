"""Training throughput: the Ray Train loop (streaming from Ray Data) against a plain PyTorch loop, same run.

    python benchmarks/train.py [--videos-per-class 110] [--epochs 3] [--ddp] [--workdir DIR]

Both train the same model config on the same clips: a generated UCF101-layout dataset (160x128, 32 frames) is
decoded once into the decode-once cache (``pipeline.clips.cache``); the Ray side trains with
``pipeline.training.fit.fit(..., clip_cache=...)`` (Ray Data streaming from the cache, which crops and flips every
epoch anew, ``iter_torch_batches``, DDP wrapper, per-epoch checkpoints), the plain side loads one epoch's cached
batches into memory and runs forward / loss / backward / clip / step in a loop. The defaults give a realistic
epoch: 5 classes x 110 videos, about 400 training clips, 51 steps of 8.

The Ray loop reports per epoch (MLflow metrics, epochs after the first): ``train/clips_per_s`` over the whole
epoch, ``train/epoch_startup_s`` (epoch start to the first batch: Ray Data's streaming start-up and the first reads)
and ``train/step_s`` (each step after that), so that an epoch lasts start-up + steps x step time. The per-epoch
validation and checkpointing it does besides are not counted.

Prints per-measurement lines and, last:
``RESULT train ratio=<ray steps/s over whole epochs / plain steps/s> step_ratio=<plain step s / ray step s>
startup_s=... ray_steps_per_s=.. plain_steps_per_s=.. steps_per_epoch=.. workers=1 ...``
and, with ``--ddp``, the 2-worker DDP figure (``ddp2_steps_per_s``: steps/s of each rank, global batch doubled).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="r18", help="model variant (debug, r18, r50, ...)")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--num-segments", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="Ray epochs; the first is warm-up")
    parser.add_argument("--videos-per-class", type=int, default=110)
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--plain-steps", type=int, default=30)
    parser.add_argument("--ddp", action="store_true", help="also measure 2 DDP workers")
    parser.add_argument(
        "--use-gpu", action="store_true", help="train on one GPU per worker with bf16 autocast"
    )
    parser.add_argument(
        "--workdir", default=None, help="where data, cache and checkpoints go (default: temp)"
    )
    return parser.parse_args(argv)


def experiment(args, num_classes: int, num_workers: int):
    """The smoke preset with the benchmark's model, clip size and batch, applied as one set of overrides."""
    from pipeline.config import apply_overrides
    from pipeline.presets import smoke
    from stpa_model import model_config

    model = model_config(args.variant, input_size=args.input_size, num_segments=args.num_segments)
    overrides = {"model.backbone": model.backbone, "model.input_size": args.input_size}
    overrides["model.num_segments"] = args.num_segments
    for section in ("train_clips", "val_clips", "test_clips"):
        overrides[f"{section}.num_segments"] = args.num_segments
        overrides[f"{section}.short_side"] = int(args.input_size * 1.15)
        overrides[f"{section}.crop_size"] = args.input_size
    overrides.update(
        {
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "train.num_workers": num_workers,
            # CPU training: the workers share the machine's cores, as the plain loop has them all
            "train.cpus_per_worker": max(1, (os.cpu_count() or 1) // num_workers),
            "train.eval_every": 1000,
            "train.num_heatmap_clips": 0,
            # the default progress interval (PySlowFast logs every 10 iterations, MMAction2 every 20), not the smoke
            # preset's 2: each line logs to MLflow, which the plain loop does not do
            "train.log_every_steps": 20,
            "train.use_gpu": args.use_gpu,
            "train.precision": "bf16" if args.use_gpu else "fp32",
        }
    )
    return apply_overrides(smoke("ucf101", num_classes), overrides)


def plain_steps_per_second(exp, batches: list[dict], num_steps: int) -> float:
    """The baseline: the same model, loss and optimiser on in-memory batches, no Ray, no DDP."""
    from pipeline import schema
    from pipeline.training.optim import build_optimizer, scaled_lr
    from pipeline.video.transforms import frames_to_model_input
    from stpa_model import STPANet, total_loss

    torch.manual_seed(0)
    device = torch.device("cuda" if exp.train.use_gpu else "cpu")
    amp = exp.train.precision == "bf16"
    # The same memory layout as train_loop_per_worker (channels-last weights), so the ratio measures Ray's loop.
    model = STPANet(exp.model).to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, exp.optim, scaled_lr(exp.optim, exp.train.batch_size))
    tensors = [
        (torch.from_numpy(b[schema.FRAMES]), torch.from_numpy(b[schema.LABEL].astype(np.int64)))
        for b in batches
    ]

    def step(i: int) -> None:
        frames, labels = tensors[i % len(tensors)]
        frames, labels = frames.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            output = model(frames_to_model_input(frames))
        loss, _ = total_loss(output, labels, exp.model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), exp.optim.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(3):  # warm-up
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(num_steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return num_steps / (time.perf_counter() - start)


def ray_epochs(exp, train_uri: str, test_uri: str, cache: str, workdir: str) -> dict[str, float]:
    """Rank 0's own per-epoch figures (MLflow history), medians over the epochs after the first: steps/s over
    whole epochs, start-up to the first batch (s) and seconds per step after it."""
    from mlflow.tracking import MlflowClient

    from pipeline import metric_names as names
    from pipeline.training.fit import fit

    uri = f"sqlite:///{os.path.join(workdir, 'mlflow.db')}"
    name = f"bench-{exp.train.num_workers}w-{time.time_ns()}"
    storage = os.path.join(workdir, "ray")
    # Throughput only: no val split (nothing scored per epoch), the same training videos as before val existed.
    result = fit(
        exp,
        train_uri,
        test_uri,
        val_manifest=None,
        storage_path=storage,
        run_name=name,
        tracking_uri=uri,
        clip_cache=cache,
    )
    client = MlflowClient(tracking_uri=uri)

    def after_first(metric: str) -> list[float]:
        history = client.get_metric_history(result.mlflow_run_id, metric)
        values = [m.value for m in sorted(history, key=lambda m: m.step)]
        return values[1:]  # the first epoch includes the workers' start-up

    clips_per_s = after_first(names.TRAIN_CLIPS_PER_S)
    startup, step = after_first(names.TRAIN_EPOCH_STARTUP_S), after_first(names.TRAIN_STEP_S)
    print(
        f"  epochs after the first: clips/s {', '.join(f'{x:.1f}' for x in clips_per_s)}; start-up (s) "
        f"{', '.join(f'{x:.2f}' for x in startup)}; step (ms) {', '.join(f'{1000 * x:.0f}' for x in step)}",
        flush=True,
    )
    return {
        "steps_per_s": statistics.median(clips_per_s) / (exp.train.batch_size * exp.train.num_workers),
        "startup_s": statistics.median(startup),
        "step_s": statistics.median(step),
    }


def main() -> None:
    args = parse_args()
    import ray

    from pipeline.clips.cache import cached_clip_dataset
    from pipeline.data.prepare import prepare_manifest
    from pipeline.data.synth import synthesize

    workdir = args.workdir or tempfile.mkdtemp(prefix="stpa-bench-train-")
    data = os.path.join(workdir, "data")
    if not os.path.exists(os.path.join(workdir, "manifests", "train.parquet")):
        summary = synthesize(
            "ucf101", data, num_classes=args.num_classes, videos_per_class=args.videos_per_class,
            width=160, height=128, num_frames=32,
        )  # fmt: skip
        prepare_manifest(
            "ucf101",
            summary.videos_uri,
            summary.annotations_uri,
            os.path.join(workdir, "manifests"),
            val_fraction=0,
        )
    train_uri = os.path.join(workdir, "manifests", "train.parquet")
    test_uri = os.path.join(workdir, "manifests", "test.parquet")
    cache = os.path.join(workdir, "cache")

    ray.init(num_cpus=(os.cpu_count() or 1) + 2, include_dashboard=False, _node_ip_address="127.0.0.1")
    exp = experiment(args, args.num_classes, num_workers=1)
    dataset, entry = cached_clip_dataset(train_uri, exp.train_clips, cache)
    batches = list(dataset.iter_batches(batch_size=args.batch_size, batch_format="numpy", drop_last=True))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"model {args.variant} {args.input_size}px K={args.num_segments} batch {args.batch_size}; "
          f"{entry.num_rows} cached training clips ({'hit' if entry.hit else 'built'})")  # fmt: skip

    from pipeline.training.loop import steps_per_epoch

    num_steps = steps_per_epoch(entry.num_rows, 1, args.batch_size)
    print(f"{num_steps} steps an epoch; load average {load_average()}", flush=True)
    plain = [plain_steps_per_second(exp, batches, args.plain_steps)]
    print(f"plain loop: {plain[-1]:.3f} steps/s; load average {load_average()}", flush=True)
    ray_run = ray_epochs(exp, train_uri, test_uri, cache, workdir)
    print(
        f"ray train loop (1 worker): {ray_run['steps_per_s']:.3f} steps/s over whole epochs; start-up "
        f"{ray_run['startup_s']:.2f}s, {1000 * ray_run['step_s']:.0f} ms a step; load average {load_average()}",
        flush=True,
    )
    plain.append(plain_steps_per_second(exp, batches, args.plain_steps))
    print(f"plain loop: {plain[-1]:.3f} steps/s; load average {load_average()}", flush=True)
    plain_rate = statistics.mean(plain)
    extra = ""
    if args.ddp:
        ddp = ray_epochs(experiment(args, args.num_classes, 2), train_uri, test_uri, cache, workdir)
        print(f"ray train loop (2 DDP workers): {ddp['steps_per_s']:.3f} steps/s per rank (global batch x2)")
        extra = f" ddp2_steps_per_s={ddp['steps_per_s']:.3f} ddp2_clips_per_s={ddp['steps_per_s'] * 2 * args.batch_size:.2f}"
    ray.shutdown()
    print(
        f"RESULT train ratio={ray_run['steps_per_s'] / plain_rate:.3f} "
        f"step_ratio={1 / (plain_rate * ray_run['step_s']):.3f} startup_s={ray_run['startup_s']:.2f} "
        f"ray_steps_per_s={ray_run['steps_per_s']:.3f} plain_steps_per_s={plain_rate:.3f} "
        f"steps_per_epoch={num_steps} workers=1 model={args.variant} batch={args.batch_size}{extra}"
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
