"""The model benchmark's code paths, run tiny on the CPU (the GPU throughput section included)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "model.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_model", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_main_prints_result_line(capsys) -> None:
    bench = load_benchmark()
    argv = [
        "--variant",
        "debug",
        "--input-size",
        "32",
        "--num-frames",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "0",
    ]
    argv += ["--device", "cpu", "--gpu-batch-size", "2", "--gpu-steps", "1"]
    line = bench.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == line
    match = re.fullmatch(r"RESULT model attention_overhead=(\S+) params_m=(\S+) gflops=(\S+)", line)
    assert match and all(float(v) > 0 for v in match.groups())
    assert any(line.startswith("throughput on cpu") for line in lines)
    assert sum("clips/s" in line for line in lines) == 2


def test_pair_shares_backbone_and_flops_grow_with_attention() -> None:
    bench = load_benchmark()
    stpa, backbone = bench.build_pair("debug", num_frames=2, input_size=64)
    for key, value in backbone.backbone.state_dict().items():
        assert torch.equal(value, stpa.backbone.state_dict()[key])
    clips, _ = bench.example_batch(1, 2, 64, num_classes=10)
    assert bench.forward_flops(stpa, clips) > bench.forward_flops(backbone, clips) > 0


def test_training_throughput_bf16_channels_last_on_cpu() -> None:
    bench = load_benchmark()
    stpa, _ = bench.build_pair("debug", num_frames=2, input_size=32)
    clips, targets = bench.example_batch(2, 2, 32, num_classes=10)
    before = stpa.head.fc.weight.detach().clone()
    clips_per_s = bench.training_throughput(stpa, clips, targets, num_steps=2, warmup=1)
    assert clips_per_s > 0
    assert stpa.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(before, stpa.head.fc.weight)  # the optimiser stepped
