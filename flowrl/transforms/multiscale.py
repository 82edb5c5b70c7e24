"""Multi-scale architecture (RealNVP, Glow): squeeze and factor-out.

* :class:`Squeeze` trades space for channels,
  ``(C, H, W) -> (4C, H/2, W/2)``: each 2x2 block of pixels becomes 4
  channels.  It only reorders entries, so ``log|det| = 0``.
* :class:`Squeezed` runs an inner transform in the squeezed layout and
  unsqueezes its output, so that, seen from outside, it maps a tensor to a
  tensor of the same shape.
* :class:`FactorOut` applies an inner transform to the first channels only
  and passes the rest (the factored-out half) through unchanged.  Deeper
  levels therefore work on fewer dimensions, while the output ``z`` keeps
  the input's shape and ``log p(x)`` under a standard normal base is exact.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..core import Parts, Transform

__all__ = ["Squeeze", "Squeezed", "FactorOut", "squeeze", "unsqueeze"]


def squeeze(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``; raises ``ValueError`` when ``H`` or ``W`` is odd."""
    if x.dim() != 4:
        raise ValueError(f"squeeze expects images (batch, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got H={h}, W={w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(z: Tensor) -> Tensor:
    """``(B, 4C, H, W) -> (B, C, 2H, 2W)``, the inverse of :func:`squeeze`."""
    if z.dim() != 4 or z.shape[1] % 4:
        raise ValueError(f"unsqueeze expects (batch, 4C, H, W), got shape {tuple(z.shape)}")
    b, c4, h, w = z.shape
    z = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c4 // 4, 2 * h, 2 * w)


class Squeeze(Transform):
    """Space-to-channel reshuffle ``(C, H, W) -> (4C, H/2, W/2)``; ``log|det| = 0``.

    Changes the event shape: use it inside :class:`Squeezed` (or pair it
    with ``Inverse(Squeeze())``) to build a flow whose output has its input's shape.
    """

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return unsqueeze(z), z.new_zeros(z.shape[0])


class Squeezed(Transform):
    """``unsqueeze(f(squeeze(x)))``: runs ``inner`` on the squeezed image; same log-det as ``inner``."""

    def __init__(self, inner: Transform):
        super().__init__()
        self.inner = inner

    def parts(self, inverted: bool = False) -> Parts:
        return Parts([(self.inner, inverted)], self.around)

    @staticmethod
    def around(x: Tensor, run: Callable[[Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """``unsqueeze(run(squeeze(x)))``: ``run`` (any steps of ``inner``, either direction) in the squeezed layout."""
        y, ld = run(squeeze(x))
        return unsqueeze(y), ld

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        z, ld = self.inner(squeeze(x), context)
        return unsqueeze(z), ld

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x, ld = self.inner.inverse(squeeze(z), context)
        return unsqueeze(x), ld


class FactorOut(Transform):
    """``z = (f(x[:, :k]), x[:, k:])``: ``inner`` sees the first ``k`` channels; the rest leave as they are.

    The factored-out channels go straight to the base distribution, which
    is the multi-scale architecture's split; ``log|det| = log|det J_f|``.
    """

    def __init__(self, inner: Transform, channels: int, keep: int):
        super().__init__()
        if not 0 < keep < channels:
            raise ValueError(f"FactorOut must keep between 1 and {channels - 1} of {channels} channels, got {keep}")
        self.inner = inner
        self.channels = int(channels)
        self.keep = int(keep)

    def parts(self, inverted: bool = False) -> Parts:
        return Parts([(self.inner, inverted)], self.around)

    def around(self, x: Tensor, run: Callable[[Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """``(run(x[:, :keep]), x[:, keep:])``: ``run`` (steps of ``inner``, either direction) on the kept channels."""
        y, ld = run(x[:, : self.keep])
        return torch.cat([y, x[:, self.keep:]], dim=1), ld

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"FactorOut over {self.channels} channels got input of shape {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        kept, out = x[:, : self.keep], x[:, self.keep:]
        z, ld = self.inner(kept, context)
        return torch.cat([z, out], dim=1), ld

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        kept, out = z[:, : self.keep], z[:, self.keep:]
        x, ld = self.inner.inverse(kept, context)
        return torch.cat([x, out], dim=1), ld
