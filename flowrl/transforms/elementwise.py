"""Elementwise maps.

Two kinds live here:

* :class:`ElementwiseBijection`: a scalar monotone map ``y = tau(x; theta)``
  whose parameters ``theta`` come from a conditioner (coupling or
  autoregressive network).  It returns ``y`` and ``log|dtau/dx|`` per element.
  The spline bijections in :mod:`flowrl.transforms.splines` follow the same
  interface.
* Stand-alone elementwise transforms with their own parameters
  (:class:`Scaling`) or none (:class:`Logit`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Transform, sum_except_batch

__all__ = ["ElementwiseBijection", "Additive", "Affine", "Scaling", "Logit", "soft_clamp"]


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Smooth clamp ``b * tanh(x / b)`` into ``(-b, b)`` (identity near 0)."""
    return bound * torch.tanh(x / bound)


class ElementwiseBijection:
    """Scalar bijection ``y = tau(x; theta)`` applied elementwise.

    ``params`` has shape ``x.shape + (num_params,)``.  ``forward`` and
    ``inverse`` return the output and the elementwise ``log|dy/dx|`` (resp.
    ``log|dx/dy|``).  Zero parameters give (close to) the identity.
    ``analytic_inverse``: ``False`` when :meth:`inverse` is a numerical solve
    (the layers built on the bijection report it as their own).
    """

    num_params: int = 0
    analytic_inverse: bool = True

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Additive(ElementwiseBijection):
    """NICE's additive coupling: ``y = x + t``, ``log|dy/dx| = 0``."""

    num_params = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], torch.zeros_like(y)


class Affine(ElementwiseBijection):
    """RealNVP's affine map ``y = x * exp(s) + t`` with a bounded log-scale.

    ``s = b * tanh(s_raw / b)`` keeps ``|s| < b`` (default ``b = 3``) so that
    a single layer can neither overflow nor collapse the scale.
    """

    num_params = 2

    def __init__(self, scale_bound: float = 3.0):
        if scale_bound <= 0:
            raise ValueError(f"scale_bound must be positive, got {scale_bound}")
        self.scale_bound = float(scale_bound)

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., 0], soft_clamp(params[..., 1], self.scale_bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return x * torch.exp(log_scale) + shift, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return (y - shift) * torch.exp(-log_scale), -log_scale


class Scaling(Transform):
    """Learned diagonal scaling ``z = x * exp(s)`` (NICE's last layer); ``log|det| = sum(s)``."""

    def __init__(self, shape: Sequence[int] | int):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        ld = self.log_scale.sum().expand(x.shape[0])
        return x * torch.exp(self.log_scale), ld

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        ld = -self.log_scale.sum().expand(z.shape[0])
        return z * torch.exp(-self.log_scale), ld

    def jacobian_mask(self, dim: int) -> Tensor:
        return torch.eye(dim, dtype=torch.bool)


class Logit(Transform):
    """``z = logit(alpha + (1 - 2 alpha) x)`` maps ``(0, 1)`` to the real line.

    ``alpha`` (default 1e-6) keeps the logit finite at the interval's ends,
    as in RealNVP's pre-processing of pixel intensities; inputs are clamped
    to ``[0, 1]`` first.
    """

    def __init__(self, alpha: float = 1e-6):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        a = self.alpha
        p = a + (1 - 2 * a) * x.clamp(0.0, 1.0)
        z = torch.log(p) - torch.log1p(-p)
        ld = math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p)
        return z, sum_except_batch(ld)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        a = self.alpha
        p = torch.sigmoid(z)
        x = (p - a) / (1 - 2 * a)
        ld = -math.log(1 - 2 * a) - F.softplus(-z) - F.softplus(z)
        return x, sum_except_batch(ld)

    def jacobian_mask(self, dim: int) -> Tensor:
        return torch.eye(dim, dtype=torch.bool)
