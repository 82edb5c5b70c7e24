"""Observations in: real-valued arrays, frame settings, area-average downsampling and quantisation.

The building blocks of :class:`flowrl.novelty.encoders.FrameEncoder`, which turns
uint8 or float frames into the inputs of a novelty model.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["downsample", "check_frames", "quantize", "real_tensor"]


def real_tensor(obs: Any, what: str = "observations") -> Tensor:
    """``obs`` (array-like or tensor) as a tensor of real numbers, or ``ValueError`` (dicts, bools, complex)."""
    if isinstance(obs, dict):
        raise ValueError("dict observations are not supported: choose one key (obs_key) first")
    x = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs)
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{what} must be real numbers, got dtype {x.dtype}")
    return x


def downsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Area average of ``(B, C, H, W)`` to ``(B, C, h, w)``: each output pixel is the mean of its input block."""
    h, w = (int(s) for s in size)
    return F.adaptive_avg_pool2d(x, (h, w))


def check_frames(
    image_shape: Sequence[int], size: int | Sequence[int], grey: bool, max_value: float, channels_last: Optional[bool],
) -> tuple[tuple[int, int, int], tuple[int, int], tuple[int, int, int]]:
    """Validated ``(C, H, W)``, downsampled ``(h, w)`` (an int means ``(s, s)``, no larger than the frames)
    and the model's ``(c, h, w)`` (``c = 1`` if ``grey``); ``ValueError`` names a bad setting."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}")
    size_hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(size_hw) != 2 or min(size_hw) < 1:
        raise ValueError(f"size must be an int or (h, w) with positive sizes, got {size!r}")
    if size_hw[0] > shape[1] or size_hw[1] > shape[2]:
        raise ValueError(f"size {size_hw} is larger than the frames' (H, W) = {shape[1:]}: downsampling only")
    if not max_value > 0:
        raise ValueError(f"max_value must be positive, got {max_value}")
    if channels_last not in (None, True, False):
        raise ValueError(f"channels_last must be None, True or False, got {channels_last!r}")
    return shape, size_hw, (1 if grey else shape[0], *size_hw)


def quantize(x: Tensor, levels: int, max_value: float) -> Tensor:
    """Level index ``min(floor(L x / max_value), L - 1)`` in ``{0, ..., L - 1}`` (as floats)."""
    return torch.floor(x * (levels / max_value)).clamp_(0, levels - 1)
