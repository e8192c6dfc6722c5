"""PyramidAttention on its own, against the paper's equations written out in numpy; score biases; heat maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stpa_model import PyramidAttention, attended_to_map, attention_heatmaps

# --- reference from PAPER.md steps 1-5 -------------------------------------------------------------------------


def block_pool(f: np.ndarray, size: int, reduce) -> np.ndarray:
    """R for an integer factor: (C, H, W) -> (C, size, size) by reducing factor x factor blocks."""
    c, h, w = f.shape
    fh, fw = h // size, w // size
    return reduce(f.reshape(c, size, fh, size, fw), axis=(2, 4))


def reference_layer(levels, weights, biases, num_frames, resample, fusion, fuse=None, l2=True):
    """Steps 1-5 for one clip. levels: list of (K, C_j, H_j, W_j); returns A (d, P), a (d, P), M (d, C_i)."""
    size = levels[-1].shape[-1]
    reduce = {"avg": np.mean, "max": np.max}[resample]
    scores = []
    for f, w, b in zip(levels, weights, biases, strict=True):
        columns = []
        for k in range(num_frames):
            pooled = block_pool(f[k], size, reduce)  # step 1: (C_j, H_i, W_i)
            columns.append(pooled.reshape(pooled.shape[0], -1).T)  # step 2: (H_i*W_i, C_j), row-major
        x_j = np.concatenate(columns)  # (P, C_j), positions ordered (frame, row, column)
        scores.append(w @ x_j.T + b[:, None])  # step 3: Y_j = W_j X_j^T + b_j, (d, P)
    if fusion == "sum":
        fused = np.sum(scores, axis=0)
    elif fusion == "mean":
        fused = np.mean(scores, axis=0)
    elif fusion == "max":
        fused = np.max(scores, axis=0)
    else:
        fused = fuse[0] @ np.concatenate(scores) + fuse[1][:, None]
    e = np.exp(fused - fused.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)  # step 4: softmax over positions
    attention = a / np.sqrt((a**2).sum(axis=1, keepdims=True)) if l2 else a
    x_i = np.concatenate([levels[-1][k].reshape(levels[-1].shape[1], -1).T for k in range(num_frames)])
    return attention, a, attention @ x_i  # step 5: M = A X_i


def random_pyramid(num_clips: int, num_frames: int, channels=(3, 5, 7), sizes=(8, 4, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(num_clips * num_frames, c, s, s, generator=g)
        for c, s in zip(channels, sizes, strict=True)
    ]


@pytest.mark.parametrize("fusion", ["sum", "mean", "max", "concat"])
@pytest.mark.parametrize("resample", ["avg", "max"])
@pytest.mark.parametrize("l2", [True, False])
def test_layer_matches_reference(fusion: str, resample: str, l2: bool) -> None:
    torch.manual_seed(0)
    num_clips, num_frames, d = 2, 3, 4
    features = random_pyramid(num_clips, num_frames)
    layer = PyramidAttention([3, 5, 7], d, resample=resample, fusion=fusion, l2_normalize=l2)
    with torch.no_grad():
        out = layer(features, num_frames=num_frames)
    weights = [p.weight[:, :, 0, 0].detach().numpy() for p in layer.projections]
    biases = [p.bias.detach().numpy() for p in layer.projections]
    fuse = (
        None
        if layer.fuse is None
        else (layer.fuse.weight[:, :, 0].detach().numpy(), layer.fuse.bias.detach().numpy())
    )
    assert out.attention.shape == (num_clips, d, num_frames * 4)
    assert out.attended.shape == (num_clips, d, 7)
    for b in range(num_clips):
        levels = [f[b * num_frames : (b + 1) * num_frames].numpy() for f in features]
        attention, a, m = reference_layer(levels, weights, biases, num_frames, resample, fusion, fuse, l2)
        np.testing.assert_allclose(out.attention[b].numpy(), attention, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.fused_softmax[b].numpy(), a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.attended[b].numpy(), m, rtol=1e-4, atol=1e-5)


def test_rows_nonnegative_unit_norm_or_stochastic() -> None:
    features = random_pyramid(2, 3)
    out = PyramidAttention([3, 5, 7], 6)(features, num_frames=3)
    assert (out.attention >= 0).all()
    torch.testing.assert_close(out.attention.norm(dim=-1), torch.ones(2, 6))
    torch.testing.assert_close(out.fused_softmax.sum(-1), torch.ones(2, 6))
    torch.testing.assert_close(out.level_softmax.sum(-1), torch.ones(3, 2, 6))
    plain = PyramidAttention([3, 5, 7], 6, l2_normalize=False)(features, num_frames=3)
    torch.testing.assert_close(plain.attention.sum(-1), torch.ones(2, 6))


def test_frame_permutation_permutes_columns_and_keeps_output() -> None:
    """The layer treats the K frames as a set (PAPER.md): columns of A move, M = A X does not change."""
    num_frames, hw = 4, 4
    features = random_pyramid(1, num_frames)
    layer = PyramidAttention([3, 5, 7], 4)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = layer(features, num_frames=num_frames)
        permuted = layer([f[perm] for f in features], num_frames=num_frames)
    torch.testing.assert_close(permuted.attended, out.attended, rtol=1e-5, atol=1e-6)
    columns = out.attention.reshape(1, 4, num_frames, hw)[:, :, perm].reshape(1, 4, -1)
    torch.testing.assert_close(permuted.attention, columns)


def test_spatio_temporal_differs_from_per_frame() -> None:
    features = random_pyramid(1, 3)
    layer = PyramidAttention([3, 5, 7], 4)
    joint = layer(features, num_frames=3)
    per_frame = layer(features, num_frames=1)
    assert joint.attended.shape == (1, 4, 7) and per_frame.attended.shape == (3, 4, 7)
    # per-frame = the layer applied to each frame alone
    alone = layer([f[1:2] for f in features], num_frames=1)
    torch.testing.assert_close(per_frame.attended[1:2], alone.attended)
    assert not torch.allclose(joint.attended, per_frame.attended.mean(0, keepdim=True))


@pytest.mark.parametrize("num_levels", [1, 2, 3, 4])
@pytest.mark.parametrize("num_frames", [1, 2, 5])
def test_any_number_of_levels_and_frames(num_levels: int, num_frames: int) -> None:
    channels, sizes = (2, 3, 4, 5)[-num_levels:], (16, 8, 4, 2)[-num_levels:]
    features = random_pyramid(2, num_frames, channels, sizes)
    out = PyramidAttention(channels, 4, resample="bilinear")(features, num_frames=num_frames)
    assert out.attention.shape == (2, 4, num_frames * 4)
    assert out.level_softmax.shape == (num_levels, 2, 4, num_frames * 4)
    assert out.attended.shape == (2, 4, channels[-1])
    assert out.features.shape == (2, num_frames * 4, channels[-1])
    assert torch.isfinite(out.attended).all()


def test_default_d_preserves_layer_shape() -> None:
    """d = H_i*W_i: M reshapes to layer i's shape, row m at spatial position m (row-major)."""
    features = random_pyramid(2, 1, sizes=(8, 4, 2))
    out = PyramidAttention([3, 5, 7], 4)(features, num_frames=1)
    m = attended_to_map(out.attended, out.feature_hw)
    assert m.shape == features[-1].shape
    torch.testing.assert_close(m[1, :, 1, 0], out.attended[1, 2])  # row 2 -> (h=1, w=0)
    with pytest.raises(ValueError, match="d must equal"):
        attended_to_map(out.attended[:, :3], out.feature_hw)


def test_layer_rejects_bad_inputs() -> None:
    layer = PyramidAttention([3, 5, 7], 4)
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        layer(random_pyramid(1, 2)[:2], num_frames=2)
    with pytest.raises(ValueError, match="not a multiple"):
        layer(random_pyramid(1, 3), num_frames=2)
    with pytest.raises(ValueError, match="fusion must be one of"):
        PyramidAttention([3], 4, fusion="product")


# --- the score biases b_j ----------------------------------------------------------------------------------


def score_biases(layer: PyramidAttention) -> list[torch.nn.Parameter]:
    """b_j of every level, and the "concat" projection's bias (also a per-row constant)."""
    biases = [projection.bias for projection in layer.projections]
    return biases + ([layer.fuse.bias] if layer.fuse is not None else [])


@pytest.mark.parametrize("fusion", ["sum", "mean", "max", "concat"])
def test_score_biases_cancel_in_the_softmax_except_with_max_fusion(fusion: str) -> None:
    """b_j adds one constant to every position of row m; the softmax over positions cancels it unless "max"
    fusion picks, position by position, which level's score wins. Kept for checkpoint compatibility: with
    sum, mean and concat fusion they neither change the layer nor train (gradient zero up to rounding)."""
    torch.manual_seed(0)
    layer = PyramidAttention([3, 5, 7], 4, fusion=fusion)
    features = random_pyramid(2, 3)
    out = layer(features, num_frames=3)
    (out.attended.square().sum() + out.level_softmax.square().sum()).backward()
    gradients = [b.grad.abs().max().item() for b in score_biases(layer)]
    weight_gradient = layer.projections[0].weight.grad.abs().max().item()
    with torch.no_grad():
        for bias in score_biases(layer):
            bias.add_(torch.randn_like(bias))
        moved = layer(features, num_frames=3)
    if fusion == "max":
        assert not torch.allclose(moved.attention, out.attention, atol=1e-4)
        assert min(gradients[:3]) > 1e-3 * weight_gradient
    else:
        torch.testing.assert_close(moved.attention, out.attention, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(moved.attended, out.attended, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(moved.level_softmax, out.level_softmax, rtol=1e-5, atol=1e-6)
        assert max(gradients) < 1e-5 * weight_gradient, (gradients, weight_gradient)


# --- heat maps -------------------------------------------------------------------------------------------------


def test_heatmaps_locate_the_attended_position() -> None:
    num_frames, h, w, d = 3, 2, 2, 4
    attention = torch.full((1, d, num_frames * h * w), 0.01)
    attention[0, :, 1 * h * w + 1 * w + 0] = 1.0  # frame 1, row 1, column 0
    maps = attention_heatmaps(attention, (h, w), num_frames, (16, 16))
    assert maps.shape == (1, num_frames, 16, 16) and maps.dtype == torch.float32
    assert maps.min() == 0.0 and maps.max() == 1.0
    flat = int(maps.reshape(-1).argmax())
    frame, rest = divmod(flat, 16 * 16)
    row, column = divmod(rest, 16)
    assert frame == 1 and row >= 8 and column < 8
    uniform = attention_heatmaps(torch.ones(2, d, num_frames * h * w), (h, w), num_frames, (8, 8))
    assert torch.equal(uniform, torch.zeros(2, num_frames, 8, 8))
    with pytest.raises(ValueError, match="positions"):
        attention_heatmaps(attention, (h, w), 2, (16, 16))
