"""Affine coupling on images with a convolutional conditioner (RealNVP / Glow).

A boolean mask of shape ``(C, H, W)`` marks the identity part ``A``:
``z_A = x_A`` and ``z_B = x_B * exp(s) + t`` with ``(t, s) = NN(x * mask, c)``,
so ``log|det J| = sum_{B} s``.  ``s`` is bounded by
:class:`flowrl.transforms.elementwise.Affine`.  Two masks: the spatial
checkerboard (same pattern in every channel) and the channel mask (half of
the channels).  A context vector enters the conditioner as extra constant
channels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..core import Transform, sum_except_batch
from ..nn import as_hidden
from .elementwise import Affine

__all__ = ["ImageAffineCoupling", "ConvConditioner", "checkerboard_mask", "channel_mask"]


def checkerboard_mask(shape: Sequence[int], parity: int) -> Tensor:
    """``True`` (identity) at pixels with ``(i + j) % 2 == parity``, in every channel."""
    c, h, w = shape
    ij = torch.arange(h).unsqueeze(1) + torch.arange(w).unsqueeze(0)
    return ((ij % 2) == parity).unsqueeze(0).expand(c, h, w).clone()


def channel_mask(shape: Sequence[int], parity: int) -> Tensor:
    """``True`` (identity) on the first ``C // 2`` channels (``parity=0``) or on the others (``parity=1``)."""
    c, h, w = shape
    if c < 2:
        raise ValueError(f"a channel mask needs at least 2 channels, got shape {tuple(shape)}")
    first = torch.arange(c) < c // 2
    keep = first if parity == 0 else ~first
    return keep[:, None, None].expand(c, h, w).clone()


class ConvConditioner(nn.Sequential):
    """``conv3x3 -> ReLU -> [conv1x1 -> ReLU]* -> conv3x3`` with the last convolution zero-initialised.

    Zero output at initialisation makes the coupling start at the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: Sequence[int] | int = (64, 64)):
        hidden = as_hidden(hidden_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden[0], 3, padding=1), nn.ReLU()]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Conv2d(a, b, 1), nn.ReLU()]
        last = nn.Conv2d(hidden[-1], out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]  # Conv2d built with bias=True has one
        layers.append(last)
        super().__init__(*layers)


class ImageAffineCoupling(Transform):
    """Affine coupling of images ``(B, C, H, W)`` under a fixed ``(C, H, W)`` identity mask.

    Args:
        mask: boolean ``(C, H, W)``, ``True`` on the identity part (see
            :func:`checkerboard_mask`, :func:`channel_mask`).
        context_dim: size of the optional context vector (broadcast as
            constant channels).
        hidden_channels: widths of the convolutional conditioner.
        scale_bound: bound of the log-scale (``b * tanh(s / b)``).
    """

    mask: Tensor
    identity_channels: Tensor
    transform_channels: Tensor

    def __init__(
        self,
        mask: Tensor,
        context_dim: int = 0,
        hidden_channels: Sequence[int] | int = (64, 64),
        scale_bound: float = 3.0,
    ):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 3:
            raise ValueError(f"image coupling mask must have shape (C, H, W), got {tuple(mask.shape)}")
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError("image coupling mask must split the pixels into two non-empty parts")
        self.shape = tuple(mask.shape)
        self.context_dim = int(context_dim)
        self.register_buffer("mask", mask)
        self.affine = Affine(scale_bound)
        per_channel = mask.flatten(1)
        # A mask that keeps or transforms whole channels is run on the channel
        # halves only (the conditioner does not see zeroed channels).
        self.channel_split = bool((per_channel.all(1) | ~per_channel.any(1)).all())
        if self.channel_split:
            keep = per_channel.all(1)
            self.register_buffer("identity_channels", torch.nonzero(keep).flatten())
            self.register_buffer("transform_channels", torch.nonzero(~keep).flatten())
            n_in, self._n_out = int(keep.sum()), int((~keep).sum())
        else:
            n_in = self._n_out = self.shape[0]
        self.conditioner = ConvConditioner(n_in + self.context_dim, 2 * self._n_out, hidden_channels)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"image coupling over {self.shape} got input of shape {tuple(x.shape)}")

    def _params(self, x: Tensor, context: Optional[Tensor]) -> Tensor:
        if self.channel_split:
            inp = x.index_select(1, self.identity_channels)
        else:
            inp = x * self.mask.to(x.dtype)
        b, (_, h, w) = x.shape[0], self.shape
        if context is not None:
            inp = torch.cat([inp, context.to(x.dtype)[:, :, None, None].expand(b, -1, h, w)], dim=1)
        out = self.conditioner(inp)  # (B, 2 * n_out, H, W)
        return out.reshape(b, 2, self._n_out, h, w).movedim(1, -1)

    def _couple(self, x: Tensor, context: Optional[Tensor], inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(x)
        params = self._params(x, context)
        fn = self.affine.inverse if inverse else self.affine.forward
        if self.channel_split:
            y, ld = fn(x.index_select(1, self.transform_channels), params)
            return x.index_copy(1, self.transform_channels, y), sum_except_batch(ld)
        y, ld = fn(x, params)
        return torch.where(self.mask, x, y), sum_except_batch(ld.masked_fill(self.mask, 0.0))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=True)
