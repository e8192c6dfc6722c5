from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import OptimConfig
from pipeline.training.optim import build_optimizer, build_scheduler, freeze_batchnorm, lr_factor, scaled_lr


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )


def test_warmup_then_cosine_exact_values():
    cfg = OptimConfig(warmup_steps=4, warmup_start_factor=0.2, schedule="cosine")
    assert [lr_factor(s, 14, cfg) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(4, 14, cfg) == pytest.approx(1.0)
    assert lr_factor(9, 14, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(14, 14, cfg) == pytest.approx(0.0)


def test_step_schedule_milestones():
    cfg = OptimConfig(schedule="step", step_milestones=(0.5, 0.75), step_gamma=0.1)
    assert [lr_factor(s, 8, cfg) for s in (0, 3, 4, 5, 6, 7)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_scheduler_drives_optimizer_lr():
    net = small_net()
    cfg = OptimConfig(warmup_steps=2, warmup_start_factor=0.5)
    opt = build_optimizer(net, cfg, lr=0.4)
    sched = build_scheduler(opt, total_steps=10, config=cfg)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2, 0.3, 0.4])


def test_no_weight_decay_on_norms_and_biases():
    net = small_net()
    opt = build_optimizer(net, OptimConfig(weight_decay=1e-3), lr=0.1)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert decayed == {id(net[0].weight), id(net[3].weight)}
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert len(opt.param_groups[1]["params"]) == 2 + 4  # two conv biases, two BN weight+bias pairs


def test_linear_lr_scaling():
    assert scaled_lr(OptimConfig(lr=0.01, reference_batch_size=64), 128) == pytest.approx(0.02)


@pytest.mark.parametrize(("mode", "num_frozen"), [("all", 2), ("partial", 1), ("none", 0)])
def test_freeze_batchnorm(mode, num_frozen):
    net = small_net().train()
    assert freeze_batchnorm(net, mode) == num_frozen
    bns = [net[1], net[4]]
    frozen = bns[2 - num_frozen :] if num_frozen else []
    for bn in bns:
        is_frozen = any(bn is f for f in frozen)
        assert bn.training is not is_frozen
        assert bn.weight.requires_grad is not is_frozen
    before = [bn.running_mean.clone() for bn in bns]
    net(torch.randn(2, 3, 8, 8) * 5 + 3)
    for bn, old in zip(bns, before, strict=True):
        changed = not torch.equal(bn.running_mean, old)
        assert changed is not any(bn is f for f in frozen)


def test_config_validation():
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(optimizer="adam")
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="poly")
