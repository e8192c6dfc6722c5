"""Losses against implementations written here from the equations (numpy loops), and hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stpa_model import (
    STPAOutput,
    build_model,
    classification_loss,
    diversity_loss,
    interaction_loss,
    model_config,
    total_loss,
)

# --- independent references ------------------------------------------------------------------------------------


def reference_interaction(a: np.ndarray, x: np.ndarray, normalization: str) -> float:
    """Eq. (6) with explicit loops over maps m, n and positions k; batch mean. a (B, d, P), x (B, P, C)."""
    losses = []
    for a_b, x_b in zip(a.astype(np.float64), x.astype(np.float64), strict=True):
        d, p = a_b.shape
        c = x_b.shape[1]
        if normalization == "position":
            norms = np.sqrt((x_b**2).sum(axis=1, keepdims=True))
            x_b = np.where(norms > 0, x_b / np.maximum(norms, 1e-300), 0.0)
        variance = 0.0
        for m in range(d):
            row = np.zeros(c)
            for k in range(p):
                row += a_b[m, k] * x_b[k]
            variance += (row**2).sum()
        scale = {"position": 1.0 / p, "size": 1.0 / (p * c), "none": 1.0}[normalization]
        orthogonality = 0.0
        for m in range(d):
            for n in range(d):
                if m != n:
                    orthogonality += sum(a_b[m, k] * a_b[n, k] for k in range(p)) ** 2
        losses.append(orthogonality - scale * variance)
    return float(np.mean(losses))


def reference_interaction_matrix_form(a: np.ndarray, x: np.ndarray) -> float:
    """Eq. (6) as printed: -sum((A X X^T A^T) o I) + sumsq((A A^T) o (1 - I)); batch mean."""
    losses = []
    for a_b, x_b in zip(a.astype(np.float64), x.astype(np.float64), strict=True):
        eye = np.eye(a_b.shape[0])
        losses.append(-(a_b @ x_b @ x_b.T @ a_b.T * eye).sum() + (((a_b @ a_b.T) * (1 - eye)) ** 2).sum())
    return float(np.mean(losses))


def reference_diversity(fused: np.ndarray, levels: np.ndarray, normalization: str) -> float:
    """sqrt(sum_j sum_m sum_k (1 - delta_{j,m,k}^2)), delta = |a - softmax(Y_j)|, loops; batch mean."""
    num_levels, batch, d, p = levels.shape
    values = []
    for b in range(batch):
        total = 0.0
        for j in range(num_levels):
            for m in range(d):
                for k in range(p):
                    delta = abs(float(fused[b, m, k]) - float(levels[j, b, m, k]))
                    total += 1.0 - delta**2
        if normalization == "mean":
            total /= num_levels * d * p
        values.append(math.sqrt(total))
    return float(np.mean(values))


def random_attention(batch: int, d: int, p: int, seed: int) -> torch.Tensor:
    a = torch.randn(batch, d, p, generator=torch.Generator().manual_seed(seed)).softmax(-1)
    return a / a.norm(dim=-1, keepdim=True)


# --- interaction loss ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["position", "size", "none"])
def test_interaction_loss_matches_loops(normalization: str) -> None:
    a = random_attention(2, 4, 6, seed=0)
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(1)) * 3
    x[0, 2] = 0.0  # an all-zero position (dead ReLUs) must not produce NaN under "position"
    got = interaction_loss(a, x, normalization).item()
    assert got == pytest.approx(
        reference_interaction(a.numpy(), x.numpy(), normalization), rel=1e-5, abs=1e-5
    )


def test_interaction_loss_matches_printed_matrix_form() -> None:
    a = random_attention(3, 5, 7, seed=2)
    x = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(3))
    got = interaction_loss(a, x, "none").item()
    assert got == pytest.approx(reference_interaction_matrix_form(a.numpy(), x.numpy()), rel=1e-5)


def test_interaction_loss_hand_cases() -> None:
    # A = identity rows (d = P = 3): A X = X and A A^T = I has no off-diagonal mass.
    a = torch.eye(3)[None]
    x = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]])  # ||X||_F^2 = 25 + 0 + 1 = 26
    assert interaction_loss(a, x, "none").item() == pytest.approx(-26.0)
    assert interaction_loss(a, x, "size").item() == pytest.approx(-26.0 / (3 * 2))
    assert interaction_loss(a, x, "position").item() == pytest.approx(-(1.0 + 0.0 + 1.0) / 3)
    # Two identical maps (d = 2, P = 2, both rows (1, 1)/sqrt 2): off-diagonal of A A^T is 1 twice -> +2;
    # X = [[1, 0], [1, 0]]: each row of A X is (sqrt 2, 0) -> ||A X||^2 = 4.
    s = 1 / math.sqrt(2)
    a = torch.tensor([[[s, s], [s, s]]])
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert interaction_loss(a, x, "none").item() == pytest.approx(2.0 - 4.0)


def test_interaction_loss_position_normalization_is_scale_free_and_bounded() -> None:
    a = random_attention(2, 6, 10, seed=4)
    x = torch.rand(2, 10, 8, generator=torch.Generator().manual_seed(5))
    small = interaction_loss(a, x, "position")
    large = interaction_loss(a, 1000 * x, "position")
    assert small.item() == pytest.approx(large.item(), rel=1e-5)
    # variance term in [-d, 0]: with orthogonality >= 0, the loss is at least -d.
    assert small.item() >= -6.0
    assert interaction_loss(a, 1000 * x, "none").item() < -1e4  # the raw form is not scale-free


# --- diversity loss --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["mean", "none"])
def test_diversity_loss_matches_loops(normalization: str) -> None:
    g = torch.Generator().manual_seed(6)
    levels = torch.randn(3, 2, 4, 5, generator=g).softmax(-1)  # (N, B, d, P)
    fused = levels.sum(0).softmax(-1)  # a = softmax(sum_j Y_j) is not what this tests; any row-stochastic a
    got = diversity_loss(fused, levels, normalization).item()
    assert got == pytest.approx(reference_diversity(fused.numpy(), levels.numpy(), normalization), rel=1e-6)


def test_diversity_loss_hand_cases() -> None:
    # a equal to the only level: delta = 0 everywhere -> sqrt(N * d * P) raw, 1 normalised.
    a = torch.full((1, 2, 4), 0.25)
    assert diversity_loss(a, a[None], "none").item() == pytest.approx(math.sqrt(1 * 2 * 4))
    assert diversity_loss(a, a[None], "mean").item() == pytest.approx(1.0)
    # d = 1, P = 2: a = (0.5, 0.5), level = (1, 0): delta = (0.5, 0.5), sum of (1 - 0.25) twice = 1.5.
    a = torch.tensor([[[0.5, 0.5]]])
    level = torch.tensor([[[[1.0, 0.0]]]])
    assert diversity_loss(a, level, "none").item() == pytest.approx(math.sqrt(1.5))
    assert diversity_loss(a, level, "mean").item() == pytest.approx(math.sqrt(0.75))


def test_diversity_loss_gradient_is_finite_at_zero() -> None:
    """delta = 1 everywhere makes the sum exactly 0, where d sqrt/ds is infinite: the floor keeps it finite."""
    a = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    level = torch.tensor([[[[0.0, 1.0]]]], requires_grad=True)
    loss = diversity_loss(a, level, "none")
    loss.backward()
    assert loss.item() == pytest.approx(1e-6)
    assert torch.isfinite(a.grad).all() and torch.isfinite(level.grad).all()


def test_diversity_gradient_pushes_fused_away_from_levels() -> None:
    g = torch.Generator().manual_seed(7)
    levels = torch.randn(2, 1, 3, 6, generator=g).softmax(-1)
    logits = torch.randn(1, 3, 6, generator=g, requires_grad=True)
    before = diversity_loss(logits.softmax(-1), levels)
    before.backward()
    with torch.no_grad():
        after = diversity_loss((logits - 10.0 * logits.grad).softmax(-1), levels)
    assert after < before


# --- classification and total loss -----------------------------------------------------------------------------


def test_cross_entropy_matches_formula() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    expected = np.mean(
        [
            -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1))),
            -(0.5 - math.log(2 * math.exp(0.5) + math.exp(3))),
        ]
    )
    assert classification_loss(logits, targets, multi_label=False).item() == pytest.approx(expected, rel=1e-6)


def test_binary_cross_entropy_matches_formula() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    terms = [-math.log(sig(2.0)), -math.log(1 - sig(-1.0)), -math.log(sig(0.0)), -math.log(sig(3.0))]
    assert classification_loss(logits, targets, multi_label=True).item() == pytest.approx(
        np.mean(terms), rel=1e-6
    )


def test_classification_loss_rejects_wrong_targets() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="int64 class indices"):
        classification_loss(logits, torch.tensor([0.0, 1.0]), multi_label=False)
    with pytest.raises(ValueError, match="float multi-hot"):
        classification_loss(logits, torch.tensor([0, 1]), multi_label=True)


def fake_output(logits: torch.Tensor, interaction: float, diversity: float) -> STPAOutput:
    losses = {"interaction": torch.tensor(interaction), "diversity": torch.tensor(diversity)}
    return STPAOutput(logits=logits, losses=losses, attention=None)


def test_total_loss_weights_auxiliary_terms() -> None:
    logits = torch.tensor([[1.0, 0.0]])
    targets = torch.tensor([1])
    ce = classification_loss(logits, targets, False).item()
    config = model_config("debug", num_classes=2, beta=0.5, gamma=0.25)
    loss, parts = total_loss(fake_output(logits, 3.0, 2.0), targets, config)
    assert loss.item() == pytest.approx(ce + 0.5 * 3.0 + 0.25 * 2.0)
    assert {k: round(v.item(), 5) for k, v in parts.items()} == {
        "classification": round(ce, 5),
        "interaction": 3.0,
        "diversity": 2.0,
    }
    plain = model_config("debug", num_classes=2, attention="plain", beta=0.5, gamma=0.25)
    loss, parts = total_loss(fake_output(logits, 3.0, 2.0), targets, plain)
    assert loss.item() == pytest.approx(ce)  # the non-interaction baseline: aux losses reported, not weighted
    assert set(parts) == {"classification", "interaction", "diversity"}


def test_total_loss_on_model_output_multi_label() -> None:
    torch.manual_seed(0)
    model = build_model("debug", num_classes=5, multi_label=True, input_size=32)
    output = model(torch.randn(2, 3, 3, 32, 32))
    targets = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])
    loss, parts = total_loss(output, targets, model.config)
    expected = parts["classification"] + 1e-3 * parts["interaction"] + 1.0 * parts["diversity"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.config.beta == 1e-3 and model.config.gamma == 1.0
