"""Exact tests of the uint8 frame transforms on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.video import transforms


def _ramp(height: int, width: int, lead: tuple[int, ...] = ()) -> np.ndarray:
    """uint8 (*lead, H, W, 3) whose pixel (y, x) holds (y, x, y + x): every crop is identifiable."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([y, x, y + x], axis=-1).astype(np.uint8)
    return np.broadcast_to(img, (*lead, height, width, 3)).copy()


def test_short_side_size():
    assert transforms.short_side_size(240, 320, 128) == (128, 170)  # 128 * 320 / 240 = 170.67, truncated
    assert transforms.short_side_size(320, 240, 128) == (170, 128)
    assert transforms.short_side_size(48, 48, 32) == (32, 32)


@pytest.mark.parametrize(("src", "dst"), [((48, 64), (24, 32)), ((24, 32), (60, 80)), ((50, 70), (37, 41))])
def test_resize_matches_pillow_bilinear(src, dst):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, *src, 3), dtype=np.uint8)
    out = transforms.resize(frames, *dst)
    assert out.dtype == np.uint8 and out.shape == (2, *dst, 3)
    for f, o in zip(frames, out, strict=True):
        ref = np.asarray(Image.fromarray(f).resize((dst[1], dst[0]), Image.BILINEAR)).astype(int)
        assert np.abs(o.astype(int) - ref).max() <= 1


def test_resize_short_side_keeps_constant_and_leading_axes():
    frames = np.full((2, 3, 24, 40, 3), 77, dtype=np.uint8)  # (K, T, H, W, 3)
    out = transforms.resize_short_side(frames, 12)
    assert out.shape == (2, 3, 12, 20, 3) and out.dtype == np.uint8
    assert np.all(out == 77)
    same = transforms.resize_short_side(frames, 24)
    assert same.shape == frames.shape and np.array_equal(same, frames)


def test_center_crop_exact():
    frames = _ramp(5, 8)
    assert transforms.center_box(5, 8, 3) == (1, 2, 3, 3)
    out = transforms.spatial_crop(frames, 3, 0, 1)
    np.testing.assert_array_equal(out[..., 0], [[1, 1, 1], [2, 2, 2], [3, 3, 3]])  # rows 1..3
    np.testing.assert_array_equal(out[..., 1], [[2, 3, 4]] * 3)  # columns 2..4


def test_three_crops_along_longer_side():
    assert transforms.three_crop_boxes(4, 10, 4) == [(0, 0, 4, 4), (0, 3, 4, 4), (0, 6, 4, 4)]
    assert transforms.three_crop_boxes(10, 4, 4) == [(0, 0, 4, 4), (3, 0, 4, 4), (6, 0, 4, 4)]
    assert transforms.three_crop_boxes(7, 11, 5) == [(1, 0, 5, 5), (1, 3, 5, 5), (1, 6, 5, 5)]
    frames = _ramp(4, 10, lead=(2,))
    lefts = [int(transforms.spatial_crop(frames, 4, i, 3)[0, 0, 0, 1]) for i in range(3)]
    assert lefts == [0, 3, 6]


def test_multi_scale_crop_offsets_are_the_tsn_grid():
    # base 12, scales (1, .75) -> sides [12, 9]; 9 is within 3 pixels of crop_size 8 -> snapped to 8.
    # For an 8 x 8 crop of 12 x 16 frames: steps (12 - 8) // 4 = 1 and (16 - 8) // 4 = 2.
    expected_8x8 = {
        (0, 0), (0, 8), (4, 0), (4, 8), (2, 4),  # corners and centre
        (0, 4), (4, 4), (2, 0), (2, 8),  # edge centres
        (1, 2), (1, 6), (3, 2), (3, 6),  # quarter points
    }  # fmt: skip
    rng = np.random.default_rng(0)
    boxes = [transforms.multi_scale_crop_box(12, 16, 8, rng, scales=(1.0, 0.75)) for _ in range(3000)]
    assert {b[2:] for b in boxes} == {(12, 12), (12, 8), (8, 12), (8, 8)}
    assert {b[:2] for b in boxes if b[2:] == (8, 8)} == expected_8x8
    for top, left, h, w in boxes:
        assert top + h <= 12 and left + w <= 16


def test_multi_scale_crop_max_distort_zero_gives_square_crops():
    rng = np.random.default_rng(1)
    boxes = [transforms.multi_scale_crop_box(120, 160, 112, rng, max_distort=0) for _ in range(500)]
    # base 120: sides int(120 * s) = 120, 105, 90, 79; 112 is not within 3 of any.
    assert {b[2:] for b in boxes} == {(120, 120), (105, 105), (90, 90), (79, 79)}


def test_random_scale_crop_shape_and_content():
    frames = np.full((3, 2, 30, 40, 3), 9, dtype=np.uint8)
    out = transforms.random_scale_crop(frames, 16, np.random.default_rng(0))
    assert out.shape == (3, 2, 16, 16, 3) and out.dtype == np.uint8 and np.all(out == 9)


def test_hflip_exact():
    frames = _ramp(3, 5, lead=(2,))
    out = transforms.hflip(frames)
    np.testing.assert_array_equal(out[0, :, :, 1], [[4, 3, 2, 1, 0]] * 3)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(transforms.hflip(out), frames)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        transforms.resize_short_side(np.zeros((4, 4, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="larger"):
        transforms.center_box(4, 6, 5)
    with pytest.raises(ValueError, match="num_crops"):
        transforms.spatial_crop(_ramp(8, 8), 4, 0, 2)
    with pytest.raises(ValueError, match="outside"):
        transforms.crop(_ramp(4, 4), (2, 2, 3, 3))
