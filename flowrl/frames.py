"""Observations in: validation of arrays and frames, and area-average downsampling, shared by novelty models.

:class:`FrameInput` is a mixin for :class:`flowrl.novelty.OnlineDensityModel`
subclasses that model frames ``(C, H, W)``: it accepts uint8 or float frames
with values in ``[0, max_value]``, channels first or last, one frame or a
batch, and gives ``(B, C, H, W)`` float32 tensors on the model's device, or
a ``ValueError`` that names the problem.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FrameInput", "downsample", "check_frames", "real_tensor"]


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
    return F.adaptive_avg_pool2d(x, tuple(int(s) for s in size))


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
    return shape, size_hw, (1 if grey else shape[0], *size_hw)  # type: ignore[return-value]


class FrameInput:
    """Frames in: :meth:`_init_frames` keeps the settings; the host provides ``device``."""

    image_shape: tuple[int, int, int]
    size: tuple[int, int]
    grey: bool
    channels_last: Optional[bool]
    max_value: float
    device: torch.device

    def _init_frames(self, image_shape: Sequence[int], size: Sequence[int], grey: bool, max_value: float,
                     channels_last: Optional[bool]) -> None:
        """Keep the (validated, see :func:`check_frames`) frame settings."""
        self.image_shape = tuple(image_shape)  # type: ignore[assignment]
        self.size = tuple(size)
        self.grey = bool(grey)
        self.max_value = float(max_value)
        self.channels_last = channels_last

    def downsampled(self, x: Tensor) -> Tensor:
        """Frames ``(B, C, H, W)`` area-averaged to ``(B, c, h, w)``, channels averaged if ``grey``."""
        small = downsample(x, self.size)
        return small.mean(dim=1, keepdim=True) if self.grey else small

    def _as_nchw(self, x: Tensor) -> Tensor:
        c, h, w = self.image_shape
        chw, hwc = (c, h, w), (h, w, c)
        if x.dim() == 3:  # a single frame
            x = x.unsqueeze(0)
        trailing = tuple(x.shape[1:]) if x.dim() == 4 else None
        if self.channels_last is not True and trailing == chw:
            return x
        if self.channels_last is not False and trailing == hwc:
            return x.permute(0, 3, 1, 2)
        layouts = {None: f"(batch, {c}, {h}, {w}) or (batch, {h}, {w}, {c})",
                   False: f"(batch, {c}, {h}, {w})", True: f"(batch, {h}, {w}, {c})"}
        raise ValueError(f"images have shape {tuple(x.shape)}, expected {layouts[self.channels_last]}")

    def as_batch(self, obs: Any) -> Tensor:
        """Validated frames as float32 ``(batch, C, H, W)`` on the model's device."""
        x = self._as_nchw(real_tensor(obs, "images").to(device=self.device, dtype=torch.float32))
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images contain NaN or inf values")
        if bool((x < 0).any()) or bool((x > self.max_value).any()):
            raise ValueError(f"pixel values must lie in [0, max_value={self.max_value:g}], "
                             f"got [{float(x.min()):g}, {float(x.max()):g}]")
        return x.contiguous()
