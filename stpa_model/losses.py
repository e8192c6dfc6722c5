"""Losses of STPA (Du et al., ECCV 2018; PAPER.md "Losses"): interaction, multi-scale diversity, classification.

Total (the paper): ``L = CE + lambda*||w||^2 + beta*l_inter + gamma*l_attn``. Weight decay (lambda) lives in
the optimiser; ``stpa_model.model.total_loss`` adds the other three. Every function returns a float32 scalar averaged over the
batch, computed in float32 also under autocast.

Shape legend: B clips (or frames, for the per-frame spatial attention), d rows of A, P positions, C channels,
N pyramid levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INTERACTION_NORMALIZATIONS: tuple[str, ...] = ("position", "size", "none")
DIVERSITY_NORMALIZATIONS: tuple[str, ...] = ("mean", "none")

# Floor under the diversity loss's square root (its derivative 1/(2 sqrt(s)) is infinite at 0).
_SQRT_FLOOR = 1e-12


def interaction_loss(
    attention: torch.Tensor, features: torch.Tensor, normalization: str = "position"
) -> torch.Tensor:
    """Eq. (6): ``-||A X||_F^2 + ||offdiag(A A^T)||_F^2``, averaged over the batch.

    The first term rewards maps that capture the largest variance of the position Gram matrix ``X X^T`` (the
    PCA objective ``tr(S X X^T S^T)`` with A in the role of S); the second pushes the d maps towards mutual
    orthogonality (the diagonal of ``A A^T`` is one after the L2 normalisation and is left out).

    [ours] The variance term grows without bound with the feature norms, the number of positions P and the
    channels C, so the features are normalised before it (``normalization``):

    - "position" (default): every position's feature vector is scaled to unit L2 norm and the term is divided
      by P. Then ``X X^T / P`` is the positions' cosine-similarity matrix with unit trace, each row of A
      contributes at most its top eigenvalue (<= 1), and the term lies in [-d, 0] whatever the feature scale,
      P or C. It measures how correlated the attended positions are, which is what the paper's "interaction"
      of neighbouring positions is about, and cannot be gamed by inflating feature norms.
    - "size": raw features, term divided by P*C (scale-dependent, kept for comparison).
    - "none": Eq. (6) as printed.

    The orthogonality term is not rescaled: it lies in [0, d(d-1)] for L2-normalised rows.

    Args:
        attention: A, (B, d, P), rows L2-normalised.
        features: X of the attended layer, (B, P, C).
        normalization: "position" | "size" | "none".

    Returns:
        float32 scalar.
    """
    a = attention.float()
    x = features.float()
    num_positions, num_channels = x.shape[1], x.shape[2]
    if normalization == "position":
        x = F.normalize(x, dim=-1)  # (B, P, C), unit-norm rows (all-zero rows stay zero)
        scale = 1.0 / num_positions
    elif normalization == "size":
        scale = 1.0 / (num_positions * num_channels)
    elif normalization == "none":
        scale = 1.0
    else:
        raise ValueError(
            f"interaction normalization must be one of {INTERACTION_NORMALIZATIONS}, got {normalization!r}"
        )
    variance = torch.bmm(a, x).square().sum(dim=(1, 2)) * scale  # (B, d, C) -> (B,)
    gram = torch.bmm(a, a.transpose(1, 2))  # (B, d, P) @ (B, P, d) -> (B, d, d)
    off_diagonal = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))  # (B, d, d), zero diagonal
    orthogonality = off_diagonal.square().sum(dim=(1, 2))  # (B,)
    return (orthogonality - variance).mean()


def diversity_loss(
    fused_softmax: torch.Tensor, level_softmax: torch.Tensor, normalization: str = "mean"
) -> torch.Tensor:
    """Multi-scale diversity loss ``sqrt(sum_j sum_m sum_k (1 - delta_{j,m,k}^2))``, averaged over the batch.

    ``delta_{j,m,k} = |a_{m,k} - softmax(Y_j)_{m,k}|`` with a the fused softmax before L2 normalisation.
    Minimising it pushes the fused attention away from every single scale.

    Numerics [ours]:

    - The sum is computed as ``N*d*P - sum(delta^2)``: both softmaxes are O(1/P), so the informative part is
      tiny next to the count N*d*P, and subtracting it from the exact count loses no more precision than
      summing N*d*P terms of (1 - delta^2) would (the gradient, -delta/sqrt(.), is exact either way).
    - ``normalization="mean"`` (default) divides the sum by N*d*P inside the square root, so the loss lies in
      [0, 1] and does not change scale when N, d, K or the input size are swept (the raw sum grows with N*d*P
      and the raw loss with its square root). "none" is the formula as printed.
    - The square root is floored at 1e-12. The sum cannot actually approach 0 for P > 2 positions (each row
      has ``sum_k delta^2 <= 2``, so the sum is at least N*d*(P-2)); the floor only guards P <= 2.
    - Note the gradient is weak by construction: it is ``delta / sqrt(sum)`` per entry with delta = O(1/P).

    Args:
        fused_softmax: a, (B, d, P), rows summing to one.
        level_softmax: softmax(Y_j) of all N levels, (N, B, d, P).
        normalization: "mean" | "none".

    Returns:
        float32 scalar.
    """
    a = fused_softmax.float()
    levels = level_softmax.float()
    num_levels, _, d, num_positions = levels.shape
    count = num_levels * d * num_positions
    delta_sq = (a.unsqueeze(0) - levels).square()  # (N, B, d, P): delta^2
    total = count - delta_sq.sum(dim=(0, 2, 3))  # (B,): sum_j sum_m sum_k (1 - delta^2)
    if normalization == "mean":
        total = total / count
    elif normalization != "none":
        raise ValueError(
            f"diversity normalization must be one of {DIVERSITY_NORMALIZATIONS}, got {normalization!r}"
        )
    return total.clamp_min(_SQRT_FLOOR).sqrt().mean()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Cross-entropy (single-label) or binary cross-entropy with logits (multi-label), mean over the batch.

    [ours] For multi-label datasets (Charades) the BCE is averaged over classes and clips (PyTorch's default
    reduction), so its scale does not grow with the number of classes.

    Args:
        logits: (B, num_classes).
        targets: int64 (B,) class indices when single-label; float (B, num_classes) multi-hot in {0, 1}
            when multi-label.
        multi_label: which of the two.

    Returns:
        float32 scalar.
    """
    if multi_label:
        if targets.shape != logits.shape or not targets.is_floating_point():
            raise ValueError(
                f"multi-label targets must be float multi-hot of shape {tuple(logits.shape)}, "
                f"got {targets.dtype} {tuple(targets.shape)}"
            )
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    if targets.dtype != torch.int64 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"single-label targets must be int64 class indices of shape ({logits.shape[0]},), "
            f"got {targets.dtype} {tuple(targets.shape)}"
        )
    return F.cross_entropy(logits.float(), targets)
