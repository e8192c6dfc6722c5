"""Spatial transforms of uint8 frames: resize, crops, flip (pytorchvideo ``transforms/functional`` style).

Every function takes frames as uint8 ``(..., H, W, 3)`` in [0, 255] (any leading axes, e.g. ``(K, T, H, W, 3)``)
and returns uint8 in the same layout; all frames of a call get the same geometry, so a clip stays consistent.
Normalisation to float happens later, on the training device. Random choices come from a caller-supplied
``numpy.random.Generator``; box computations are separate pure functions so they can be tested exactly.

Crop boxes are ``(top, left, height, width)`` in pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # (top, left, height, width)

# TSN's multi-scale crop: crop sides are these fractions of the shorter image side.
TSN_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (..., H, W, 3), got {frames.dtype} {frames.shape}")


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(height, width)`` after scaling the shorter side to ``size``; the longer side is truncated (torchvision)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of every frame to ``(height, width)``.

    Uses ``torch.nn.functional.interpolate`` on the CPU on uint8 directly (antialiased when shrinking, as
    torchvision and Pillow do, ``align_corners=False``).

    Returns:
        uint8 (..., height, width, 3).
    """
    _check_frames(frames)
    lead, (h, w) = frames.shape[:-3], frames.shape[-3:-1]
    if (h, w) == (height, width):
        return frames
    x = (
        torch.from_numpy(np.ascontiguousarray(frames)).reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    )  # (N, 3, H, W)
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).reshape(*lead, height, width, 3).numpy()  # (..., height, width, 3)


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
    """Scale frames so that their shorter side is ``size`` (aspect ratio kept, see :func:`short_side_size`).

    Returns:
        uint8 (..., H', W', 3) with ``min(H', W') == size``.
    """
    _check_frames(frames)
    return resize(frames, *short_side_size(frames.shape[-3], frames.shape[-2], size))


def crop(frames: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of ``box`` in every frame (a view, not a copy).

    Returns:
        uint8 (..., box height, box width, 3).
    """
    top, left, height, width = box
    if top < 0 or left < 0 or top + height > frames.shape[-3] or left + width > frames.shape[-2]:
        raise ValueError(f"crop box {box} outside frames of size {frames.shape[-3:-1]}")
    return frames[..., top : top + height, left : left + width, :]


def center_box(height: int, width: int, size: int) -> Box:
    """The centred ``size`` x ``size`` box; an odd margin leaves the extra pixel at the bottom/right."""
    if size > min(height, width):
        raise ValueError(f"crop size {size} larger than frames of size {(height, width)}")
    return (height - size) // 2, (width - size) // 2, size, size


def three_crop_boxes(height: int, width: int, size: int) -> list[Box]:
    """Three ``size`` x ``size`` boxes along the longer side: start, centre, end (centred on the shorter side).

    For square frames (``height == width``) the crops run along the height (top, centre, bottom), as SlowFast's
    ``uniform_crop`` does.
    """
    top, left, _, _ = center_box(height, width, size)
    if width > height:
        return [(top, 0, size, size), (top, left, size, size), (top, width - size, size, size)]
    return [(0, left, size, size), (top, left, size, size), (height - size, left, size, size)]


def spatial_crop(frames: np.ndarray, size: int, crop_index: int, num_crops: int) -> np.ndarray:
    """Test-time crop ``crop_index`` of ``num_crops`` (1: centre crop; 3: :func:`three_crop_boxes`).

    Returns:
        uint8 (..., size, size, 3).
    """
    height, width = frames.shape[-3:-1]
    if num_crops == 1:
        box = center_box(height, width, size)
    elif num_crops == 3:
        box = three_crop_boxes(height, width, size)[crop_index]
    else:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    return crop(frames, box)


def multi_scale_crop_box(
    height: int,
    width: int,
    crop_size: int,
    rng: np.random.Generator,
    scales: tuple[float, ...] = TSN_SCALES,
    max_distort: int = 1,
) -> Box:
    """TSN's multi-scale crop (``GroupMultiScaleCrop`` with ``fix_crop`` and ``more_fix_crop``).

    Crop sides are ``int(min(height, width) * scale)`` for each scale (snapped to ``crop_size`` when within 3
    pixels of it); height and width scales are chosen as a random pair whose scale indices differ by at most
    ``max_distort``. The offset is a random one of 13 fixed positions on a 5 x 5 grid with steps
    ``(height - crop_h) // 4`` and ``(width - crop_w) // 4``: the four corners, the centre, the four edge centres
    and the four quarter points.

    Returns:
        ``(top, left, crop_h, crop_w)``; the caller resizes the crop to ``crop_size`` x ``crop_size``.
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [crop_size if abs(s - crop_size) < 3 else s for s in sides]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
    h_step, w_step = (height - crop_h) // 4, (width - crop_w) // 4
    grid = [
        (0, 0),
        (0, 4),
        (4, 0),
        (4, 4),
        (2, 2),
        (0, 2),
        (4, 2),
        (2, 0),
        (2, 4),
        (1, 1),
        (1, 3),
        (3, 1),
        (3, 3),
    ]
    row, col = grid[int(rng.integers(len(grid)))]  # in quarter steps: (row, column)
    return row * h_step, col * w_step, crop_h, crop_w


def random_scale_crop(
    frames: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    scales: tuple[float, ...] = TSN_SCALES,
    max_distort: int = 1,
) -> np.ndarray:
    """Training crop: a :func:`multi_scale_crop_box` of the frames, resized to ``crop_size`` x ``crop_size``.

    Returns:
        uint8 (..., crop_size, crop_size, 3).
    """
    _check_frames(frames)
    box = multi_scale_crop_box(frames.shape[-3], frames.shape[-2], crop_size, rng, scales, max_distort)
    return resize(crop(frames, box), crop_size, crop_size)


def hflip(frames: np.ndarray) -> np.ndarray:
    """Frames mirrored left-right.

    Returns:
        uint8 (..., H, W, 3), a new contiguous array.
    """
    _check_frames(frames)
    # torch's flip of a contiguous array: 0.1-0.6 ms per 8 frames of 224 x 224 here, numpy's reversed-stride copy
    # 1.2-4 ms (about a tenth of a training clip's decode CPU).
    return torch.from_numpy(np.ascontiguousarray(frames)).flip(-2).numpy()


# ImageNet statistics: the backbones are ImageNet-pretrained ResNets (torchvision convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frames_to_model_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 clip frames to the model's normalised float input, on the frames' device.

    Args:
        frames: uint8 (B, K, T, H, W, 3) in [0, 255].

    Returns:
        float32 (B, K*T, 3, H, W), ImageNet-normalised. The T frames of each segment are folded into the K axis:
        STPA attends over all K*T frames jointly (PAPER.md, spatio-temporal version).
    """
    b, k, t, h, w, c = frames.shape
    x = frames.reshape(b, k * t, h, w, c).permute(0, 1, 4, 2, 3)  # (B, K*T, 3, H, W)
    x = x.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
    return (x - mean) / std
