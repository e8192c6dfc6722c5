"""STPANet end to end: shapes, gradients, precision, determinism, frame order, config, training."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from stpa_model import (
    VARIANTS,
    ModelConfig,
    STPANet,
    attention_heatmaps,
    build_model,
    model_config,
    total_loss,
)


def clips_of(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def labels_of(batch: int, num_classes: int) -> torch.Tensor:
    return torch.arange(batch) % num_classes


# --- shape grid ------------------------------------------------------------------------------------------------

PYRAMIDS = {
    1: ("res5",),
    2: ("res4", "res5"),
    3: ("res3", "res4", "res5"),
    4: ("res2", "res3", "res4", "res5"),
}


@pytest.mark.parametrize("input_size", [32, 64, 96])
@pytest.mark.parametrize("num_frames", [1, 3])
@pytest.mark.parametrize("num_levels", [1, 2, 3, 4])
def test_shape_grid_debug(num_levels: int, num_frames: int, input_size: int) -> None:
    model = build_model("debug", pyramid_layers=PYRAMIDS[num_levels], input_size=input_size)
    out = model(clips_of(2, num_frames, input_size))
    side = (input_size + 31) // 32  # res5 after five stride-2 steps, (h - 1) // 2 + 1 each
    assert out.logits.shape == (2, 10)
    assert out.attention.shape == (2, side * side, num_frames * side * side)
    assert out.feature_hw == (side, side)
    assert set(out.losses) == {"interaction", "diversity"}
    assert all(v.shape == () and torch.isfinite(v) for v in out.losses.values())


@pytest.mark.parametrize(
    ("backbone", "num_frames", "pyramid", "channels"),
    [
        ("resnet18", 2, ("res3", "res4", "res5"), 512),
        ("resnet34", 1, ("res4", "res5"), 512),
        ("resnet50", 2, ("res3", "res4", "res5"), 2048),
        ("resnet101", 1, ("res3", "res4"), 1024),  # i = res4: the backbone stops there
    ],
)
def test_shape_real_backbones(
    backbone: str, num_frames: int, pyramid: tuple[str, ...], channels: int
) -> None:
    model = build_model("r50", backbone=backbone, input_size=64, pyramid_layers=pyramid, num_classes=7).eval()
    assert model.head.fc.in_features == channels
    with torch.no_grad():
        out = model(clips_of(1, num_frames, 64))
    side = 2 if pyramid[-1] == "res5" else 4
    assert out.logits.shape == (1, 7)
    assert out.attention.shape == (1, side * side, num_frames * side * side)


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention": "none"},
        {"spatio_temporal": False},
        {"embed_in_backbone": True, "pyramid_layers": ("res2", "res3")},
        {"embed_in_backbone": True, "spatio_temporal": False},
        {"attention_dim": 5},
        {"fusion": "concat", "resample": "bilinear"},
    ],
)
def test_shapes_of_options(overrides: dict) -> None:
    model = build_model("debug", **overrides)
    out = model(clips_of(2, 3, 64))
    assert out.logits.shape == (2, 10)
    if overrides.get("attention") == "none":
        assert out.attention is None and out.losses == {} and out.feature_hw is None
        return
    side = 8 if overrides.get("pyramid_layers") == ("res2", "res3") else 2
    d = overrides.get("attention_dim", side * side)
    assert out.attention.shape == (2, d, 3 * side * side)


# --- gradients -------------------------------------------------------------------------------------------------

GRADIENT_CASES = [
    {"fusion": "sum"},
    {"fusion": "mean"},
    {"fusion": "max"},
    {"fusion": "concat"},
    {"resample": "max"},
    {"resample": "bilinear"},
    {"attention": "plain"},
    {"attention": "none"},
    {"spatio_temporal": False},
    {"embed_in_backbone": True, "pyramid_layers": ("res3", "res4")},
    {"embed_in_backbone": True, "spatio_temporal": False, "pyramid_layers": ("res3", "res4")},
    {"l2_normalize": False, "pyramid_layers": ("res5",)},
    {"temporal_position_embedding": True},
    {"temporal_position_embedding": True, "spatio_temporal": False},
    {"temporal_position_embedding": True, "attention": "none"},
    {"temporal_shift": True},
    {"multi_label": True},
    {
        "interaction_detach_features": False,
        "interaction_normalization": "size",
        "diversity_normalization": "none",
    },
]


@pytest.mark.parametrize(
    "overrides", GRADIENT_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_every_parameter_gets_a_gradient(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model("debug", **overrides)
    out = model(clips_of(2, 3, 64))
    targets = torch.eye(10)[:2] if model.config.multi_label else labels_of(2, 10)
    loss, _ = total_loss(out, targets, model.config)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_auxiliary_losses_reach_the_attention_only_when_weighted() -> None:
    model = build_model("debug", attention="plain")
    out = model(clips_of(2, 3, 64))
    assert out.losses["interaction"].grad_fn is None and out.losses["diversity"].grad_fn is None
    model = build_model("debug", gamma=0.0)
    out = model(clips_of(2, 3, 64))
    assert out.losses["interaction"].grad_fn is not None and out.losses["diversity"].grad_fn is None


def test_interaction_loss_detaches_attended_features() -> None:
    """By default the interaction loss reaches the backbone only through A (scores), not through X directly."""

    def grads(detach: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("debug", interaction_detach_features=detach)
        model(clips_of(2, 3, 64)).losses["interaction"].backward()
        return model.pyramid.projections[0].weight.grad, model.backbone.layer4[0].conv2.weight.grad

    projection_detached, backbone_detached = grads(True)
    projection_attached, backbone_attached = grads(False)
    assert projection_detached.abs().sum() > 0 and backbone_detached.abs().sum() > 0
    torch.testing.assert_close(projection_detached, projection_attached)  # the X path does not touch W_j
    assert not torch.allclose(backbone_detached, backbone_attached)


# --- precision, determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [{}, {"spatio_temporal": False}, {"fusion": "concat", "temporal_shift": True}]
)
def test_no_nan_under_bf16_autocast(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model("debug", **overrides)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(clips_of(2, 3, 64))
    assert out.logits.dtype == torch.bfloat16 and out.attention.dtype == torch.float32
    loss, parts = total_loss(out, labels_of(2, 10), model.config)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if model.config.spatio_temporal:
        torch.testing.assert_close(out.attention.norm(dim=-1), torch.ones(2, 4), rtol=1e-3, atol=1e-3)


def test_deterministic_under_a_seed() -> None:
    def run() -> tuple[dict, torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(123)
        model = build_model("debug", dropout=0.5)
        out = model(clips_of(2, 3, 64))
        total_loss(out, labels_of(2, 10), model.config)[0].backward()
        return model.state_dict(), out.logits, [p.grad for p in model.parameters()]

    state_a, logits_a, grads_a = run()
    state_b, logits_b, grads_b = run()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(logits_a, logits_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    torch.manual_seed(124)
    assert not torch.equal(build_model("debug").head.fc.weight, state_a["head.fc.weight"])


# --- attention maps --------------------------------------------------------------------------------------------


def test_rows_of_attention_nonnegative_unit_norm() -> None:
    out = build_model("debug")(clips_of(2, 3, 64))
    assert (out.attention >= 0).all()
    torch.testing.assert_close(out.attention.norm(dim=-1), torch.ones(2, 4))


def test_per_frame_attention_rows_unit_norm_per_frame() -> None:
    out = build_model("debug", spatio_temporal=False)(clips_of(2, 3, 64))
    per_frame = out.attention.reshape(2, 4, 3, 4)  # (B, d, K, H*W)
    assert (per_frame >= 0).all()
    torch.testing.assert_close(per_frame.norm(dim=-1), torch.ones(2, 4, 3))


def test_heatmaps_from_model_output() -> None:
    out = build_model("debug")(clips_of(2, 3, 64))
    maps = attention_heatmaps(out.attention, out.feature_hw, 3, (64, 64))
    assert maps.shape == (2, 3, 64, 64)
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and maps.max() == 1.0


# --- frame order -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [{}, {"spatio_temporal": False}, {"attention": "none"}, {"fusion": "max"}]
)
def test_frame_permutation_leaves_logits_unchanged(overrides: dict) -> None:
    """The paper's layer treats the K frames as a set (PAPER.md): in eval mode the logits ignore frame order."""
    torch.manual_seed(0)
    model = build_model("debug", num_segments=4, **overrides).eval()
    clips = clips_of(2, 4, 64)
    perm = torch.tensor([3, 1, 0, 2])
    with torch.no_grad():
        logits = model(clips).logits
        permuted = model(clips[:, perm]).logits
    torch.testing.assert_close(permuted, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{"temporal_position_embedding": True}, {"temporal_shift": True}])
def test_temporal_order_options_see_frame_order(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model("debug", num_segments=4, **overrides).eval()
    if model.head.temporal_embedding is not None:
        with torch.no_grad():  # zero-initialised: give it values, as training would
            model.head.temporal_embedding.normal_()
    clips = clips_of(2, 4, 64)
    with torch.no_grad():
        assert not torch.allclose(model(clips).logits, model(clips.flip(1)).logits, atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"spatio_temporal": False},
        {"attention": "none"},
        {"embed_in_backbone": True, "spatio_temporal": False},
    ],
)
def test_temporal_position_embedding_starts_as_the_papers_head(overrides: dict) -> None:
    """Zero-initialised, the option adds (K, num_classes, C) parameters and computes the same eval logits."""
    clips = clips_of(2, 3, 64)
    torch.manual_seed(0)
    plain = build_model("debug", **overrides).eval()
    torch.manual_seed(0)
    ordered = build_model("debug", temporal_position_embedding=True, **overrides).eval()
    extra = {n: p.shape for n, p in ordered.named_parameters()}.items() - {
        n: p.shape for n, p in plain.named_parameters()
    }.items()
    assert extra == {("head.temporal_embedding", (3, 10, 64))}
    with torch.no_grad():
        torch.testing.assert_close(ordered(clips).logits, plain(clips).logits, rtol=1e-5, atol=1e-6)


def test_frame_tokens_split_the_attended_feature_and_head_weighs_each_frame() -> None:
    """Tokens are the K frames' shares of M (their mean is the paper's pooled feature); the logits are
    b + (1/K) sum_k (W + E_k) T_k, written out with a loop."""
    torch.manual_seed(0)
    model = build_model("debug", temporal_position_embedding=True).eval()
    with torch.no_grad():
        model.head.temporal_embedding.normal_()
        clips = clips_of(2, 3, 64)
        features = model.forward_features(clips)
        assert features.tokens.shape == (2, 3, 64)
        torch.manual_seed(0)
        paper = build_model("debug").eval()
        pooled = paper.forward_features(clips).tokens[:, 0]  # (B, C): mean over the d rows of M
        torch.testing.assert_close(features.tokens.mean(dim=1), pooled, rtol=1e-5, atol=1e-6)
        weight, bias, embedding = model.head.fc.weight, model.head.fc.bias, model.head.temporal_embedding
        expected = bias + sum((weight + embedding[k]) @ features.tokens[:, k].T for k in range(3)).T / 3
        torch.testing.assert_close(model.forward_head(features).logits, expected, rtol=1e-5, atol=1e-6)


def fit_reversed_clips(num_steps: int, **overrides) -> float:
    """Train on 4 clips (label 0) and their time-reversed copies (label 1); return the eval-mode accuracy.

    48 x 48 inputs give d = 4 maps over P = 12 positions. (At 32 x 32, P = 3 and the diversity loss, whose
    reachable range grows as P shrinks, outweighs the classification loss at the default gamma.)
    """
    torch.manual_seed(0)
    clips = clips_of(4, 3, 48, seed=1)
    inputs = torch.cat([clips, clips.flip(1)])
    targets = torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)])
    model = build_model("debug", num_classes=2, input_size=48, dropout=0.0, **overrides)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(num_steps):
        loss, _ = total_loss(model(inputs), targets, model.config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(inputs).logits.argmax(1) == targets).float().mean().item()


@pytest.mark.parametrize("overrides", [{"temporal_position_embedding": True}, {"temporal_shift": True}])
def test_temporal_order_option_fits_reversed_clips(overrides: dict) -> None:
    assert fit_reversed_clips(60, **overrides) == 1.0


def test_default_model_cannot_tell_reversed_clips_apart() -> None:
    """Contrast: the same training without the option stays at chance, because its logits ignore order."""
    assert fit_reversed_clips(30) == 0.5


# --- training, speed -------------------------------------------------------------------------------------------


def train_debug(num_steps: int, beta: float) -> list[dict[str, float]]:
    torch.manual_seed(0)
    model = build_model("debug", dropout=0.0, input_size=32, beta=beta)
    clips, targets = clips_of(6, 3, 32), labels_of(6, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(num_steps):
        loss, parts = total_loss(model(clips), targets, model.config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in parts.items()})
    return history


def test_debug_model_trains() -> None:
    unweighted = train_debug(15, beta=0.0)
    weighted = train_debug(15, beta=1.0)
    for history in (unweighted, weighted):
        assert history[-1]["classification"] < 0.5 * history[0]["classification"]
    assert unweighted[0]["interaction"] == weighted[0]["interaction"]  # same initial model
    assert weighted[-1]["interaction"] < unweighted[-1]["interaction"]  # beta drives the interaction loss


def test_debug_forward_backward_is_fast_on_cpu() -> None:
    model = build_model("debug")
    clips, targets = clips_of(2, 3, 64), labels_of(2, 10)
    timings = []
    for _ in range(4):
        start = time.perf_counter()
        total_loss(model(clips), targets, model.config)[0].backward()
        timings.append(time.perf_counter() - start)
    assert min(timings[1:]) < 0.5, timings


# --- configuration ---------------------------------------------------------------------------------------------


def test_variants_build_and_override() -> None:
    assert {"debug", "r18", "r50"} <= set(VARIANTS)
    assert VARIANTS["r50"].backbone == "resnet50" and VARIANTS["r18"].backbone == "resnet18"
    model = build_model("debug", num_classes=3, pyramid_layers=["res4", "res5"])
    assert isinstance(model, STPANet) and model.config.pyramid_layers == ("res4", "res5")
    assert model.head.fc.out_features == 3 and len(model.pyramid.projections) == 2
    assert model_config("r50").num_attention_maps == 49  # d = 7 x 7 at 224 (PAPER.md)


def test_unknown_names_are_reported_with_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown ModelConfig field\(s\) \['fusoin'\]; valid fields: .*'fusion'"
    ):
        build_model("debug", fusoin="max")
    with pytest.raises(ValueError, match="unknown model variant 'r999'.*'debug'"):
        build_model("r999")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone": "vgg16"}, "backbone must be one of"),
        ({"attention": "self"}, "attention must be one of"),
        ({"resample": "nearest"}, "resample must be one of"),
        ({"fusion": "product"}, "fusion must be one of"),
        ({"pyramid_layers": ()}, "at least one stage"),
        ({"pyramid_layers": ("res5", "res4")}, "ordered shallow to deep"),
        ({"pyramid_layers": ("res6",)}, "pyramid_layers entry must be one of"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"attention_dim": 0}, "attention_dim must be None or a positive int"),
        ({"embed_in_backbone": True, "attention_dim": 5}, "embed_in_backbone needs d"),
        (
            {"temporal_position_embedding": True, "embed_in_backbone": True},
            "temporal_position_embedding needs a pooled vector per frame",
        ),
        ({"interaction_normalization": "batch"}, "interaction_normalization must be one of"),
    ],
)
def test_invalid_config_is_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_config("debug", **overrides)


def test_config_is_frozen_and_replaceable() -> None:
    config = model_config("debug")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.beta = 1.0  # type: ignore[misc]
    assert dataclasses.replace(config, beta=0.0).beta == 0.0
    assert ModelConfig().attention == "interaction" and not ModelConfig().temporal_shift


def test_runtime_input_errors() -> None:
    model = build_model("debug", temporal_position_embedding=True)  # num_segments = 3
    with pytest.raises(ValueError, match="num_segments=3"):
        model(clips_of(1, 4, 64))
    with pytest.raises(ValueError, match=r"clips must be \(B, K, 3, H, W\)"):
        model(torch.zeros(2, 3, 64, 64))
    embedded = build_model("debug", embed_in_backbone=True)  # d = 4 fixed by input_size 64
    with pytest.raises(ValueError, match="d must equal H_i\\*W_i"):
        embedded(clips_of(1, 3, 96))
