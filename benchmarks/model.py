"""Benchmark: what the STPA attention costs on top of its backbone (not a test).

Times one training step's forward + backward of STPANet (default: ResNet-50, N = 3 pyramid levels res3-res5,
K = 8 frames at 224 x 224, interaction + diversity losses) against the bare backbone with average pooling
(the same config with ``attention="none"``, i.e. TSN: ResNet-50, global average pool over K*H*W, linear) on the
same batch, in the same process, alternating the two (and their order) every repetition; reports medians.
The baseline's backbone gets the STPA model's backbone weights, so both compute the same convolutions.

Last line: ``RESULT model attention_overhead=<stpa / backbone time> params_m=<STPA params, millions>
gflops=<STPA forward GFLOPs per clip>`` (FLOPs as counted by ``torch.utils.flop_counter``: 2 per
multiply-add, convolutions and matrix products).

With a CUDA device (or ``--device``), also measures training throughput in clips/s under bf16 autocast with
channels_last weights (``--compile`` adds ``torch.compile``), printed with the device's name.

    python benchmarks/model.py                      # CPU: ResNet-50, 1 clip of 8 frames, 5 repetitions
    python benchmarks/model.py --variant debug --input-size 64 --repeats 3
    python benchmarks/model.py --device cuda --batch-size 16 --compile
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from stpa_model import STPANet, build_model, total_loss


@dataclass
class Timing:
    """One forward+backward: wall-clock seconds and this process's CPU seconds (all threads)."""

    wall: float
    cpu: float


@dataclass
class OverheadResult:
    stpa: list[Timing]
    backbone: list[Timing]

    def median(self, which: str, clock: str) -> float:
        return statistics.median(getattr(t, clock) for t in getattr(self, which))

    def ratio(self, clock: str = "wall") -> float:
        """Median STPA time over median backbone time."""
        return self.median("stpa", clock) / self.median("backbone", clock)


def machine_description() -> str:
    """CPU model, core count, torch version and intra-op threads of this machine."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, {platform.system()} {platform.release()}"
    )


def example_batch(
    batch_size: int, num_frames: int, input_size: int, num_classes: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised clips (B, K, 3, H, W) float32 and int64 labels (B,)."""
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(batch_size, num_frames, 3, input_size, input_size, generator=g)
    targets = torch.randint(0, num_classes, (batch_size,), generator=g)
    return clips.to(device), targets.to(device)


def forward_backward_seconds(model: STPANet, clips: torch.Tensor, targets: torch.Tensor) -> Timing:
    """Time forward, total loss and backward (gradients cleared first; no optimiser step)."""
    model.zero_grad(set_to_none=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    loss, _ = total_loss(model(clips), targets, model.config)
    loss.backward()
    if clips.is_cuda:
        torch.cuda.synchronize()
    return Timing(wall=time.perf_counter() - start, cpu=time.process_time() - start_cpu)


def forward_flops(model: STPANet, clips: torch.Tensor) -> int:
    """FLOPs of one forward pass (2 per multiply-add), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(clips)
    return counter.get_total_flops()


def measure_overhead(
    stpa: STPANet,
    backbone: STPANet,
    clips: torch.Tensor,
    targets: torch.Tensor,
    repeats: int,
    warmup: int = 1,
) -> OverheadResult:
    """Alternate STPA and baseline forward+backward ``repeats`` times (order flipped every repetition)."""
    for _ in range(warmup):
        forward_backward_seconds(stpa, clips, targets)
        forward_backward_seconds(backbone, clips, targets)
    result = OverheadResult([], [])
    for index in range(repeats):
        if index % 2 == 0:
            result.stpa.append(forward_backward_seconds(stpa, clips, targets))
            result.backbone.append(forward_backward_seconds(backbone, clips, targets))
        else:
            result.backbone.append(forward_backward_seconds(backbone, clips, targets))
            result.stpa.append(forward_backward_seconds(stpa, clips, targets))
    return result


def training_throughput(
    model: STPANet,
    clips: torch.Tensor,
    targets: torch.Tensor,
    num_steps: int,
    amp_dtype: torch.dtype | None = torch.bfloat16,
    channels_last: bool = True,
    compile_model: bool = False,
    warmup: int = 3,
) -> float:
    """Training steps (forward, loss, backward, SGD step) per second, times clips per step: clips/s.

    Runs on the device of ``model`` and ``clips`` (CUDA in the benchmark; the tests run it on the CPU).
    """
    device_type = clips.device.type
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            output = step_model(clips)
        loss, _ = total_loss(output, targets, model.config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device_type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    if device_type == "cuda":
        torch.cuda.synchronize()
    return num_steps * clips.shape[0] / (time.perf_counter() - start)


def build_pair(variant: str, num_frames: int, input_size: int, seed: int = 0) -> tuple[STPANet, STPANet]:
    """The STPA model of ``variant`` and its bare-backbone baseline sharing the same backbone weights."""
    torch.manual_seed(seed)
    stpa = build_model(variant, input_size=input_size, num_segments=num_frames)
    backbone = build_model(variant, input_size=input_size, num_segments=num_frames, attention="none")
    backbone.backbone.load_state_dict(stpa.backbone.state_dict(), strict=True)
    return stpa, backbone


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="r50", help="model variant (stpa_model.VARIANTS)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per step")
    parser.add_argument("--num-frames", type=int, default=8, help="K frames per clip")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="clock of the RESULT ratio: wall time, or process CPU time (steadier on a shared machine)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else None,
        help="device for the throughput section (default: cuda when available, else skipped)",
    )
    parser.add_argument(
        "--gpu-batch-size", type=int, default=16, help="clips per step in the throughput section"
    )
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"machine: {machine_description()}")
    stpa, backbone = build_pair(args.variant, args.num_frames, args.input_size)
    stpa.train()
    backbone.train()
    config = stpa.config
    print(
        f"model: variant={args.variant} backbone={config.backbone} pyramid={','.join(config.pyramid_layers)} "
        f"d={config.num_attention_maps} attention={config.attention} K={args.num_frames} "
        f"input={args.input_size}x{args.input_size} batch={args.batch_size} clip(s)"
    )
    clips, targets = example_batch(args.batch_size, args.num_frames, args.input_size, config.num_classes)
    params_m = sum(p.numel() for p in stpa.parameters()) / 1e6
    backbone_params_m = sum(p.numel() for p in backbone.parameters()) / 1e6
    gflops = forward_flops(stpa, clips) / args.batch_size / 1e9
    backbone_gflops = forward_flops(backbone, clips) / args.batch_size / 1e9
    print(f"params: stpa {params_m:.3f} M, backbone+avgpool {backbone_params_m:.3f} M")
    print(f"forward GFLOPs per clip: stpa {gflops:.3f}, backbone+avgpool {backbone_gflops:.3f}")

    result = measure_overhead(stpa, backbone, clips, targets, args.repeats, args.warmup)
    print(f"forward+backward seconds per step (float32, {args.repeats} alternating repetitions):")
    for clock in ("wall", "cpu"):
        for which in ("stpa", "backbone"):
            values = [getattr(t, clock) for t in getattr(result, which)]
            print(f"  {clock:4s} {which:8s}: median {result.median(which, clock):.4f}  all {_fmt(values)}")
        print(f"  {clock:4s} ratio stpa/backbone: {result.ratio(clock):.3f}")

    if args.device is not None:
        device = torch.device(args.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_description()
        print(f"throughput on {device} ({name}), bf16 autocast + channels_last, batch {args.gpu_batch_size}:")
        gpu_clips, gpu_targets = example_batch(
            args.gpu_batch_size, args.num_frames, args.input_size, config.num_classes, device
        )
        for compile_model in (False, True) if args.compile else (False,):
            for label, model in (("stpa", stpa), ("backbone", backbone)):
                clips_per_s = training_throughput(
                    model.to(device), gpu_clips, gpu_targets, args.gpu_steps, compile_model=compile_model
                )
                print(f"  {label:9s} compile={compile_model}: {clips_per_s:.2f} clips/s")

    line = f"RESULT model attention_overhead={result.ratio(args.clock):.3f} params_m={params_m:.4g} gflops={gflops:.4g}"
    print(line)
    return line


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


if __name__ == "__main__":
    main()
