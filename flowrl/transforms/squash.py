"""Tanh squash of an unbounded flow sample into a box of actions ``[low, high]``.

``a = low + (high - low) * (tanh(u) + 1) / 2``, with
``log|da/du| = log((high - low) / 2) + log(1 - tanh(u)^2)`` per coordinate and
the stable form ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``
(exact, and finite for every finite ``u``, unlike ``log(1 - tanh(u)^2)``,
which underflows to ``-inf`` once ``tanh(u)`` rounds to 1).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Transform

__all__ = ["SquashToBox", "log_dtanh", "BOUNDARY_EPS"]

_LOG2 = math.log(2.0)

#: Actions on (or rounded onto) the box boundary are pulled this far inside the
#: normalised interval [-1, 1] before ``atanh`` so that their log-density is finite.
BOUNDARY_EPS = 1e-6


def log_dtanh(u: Tensor) -> Tensor:
    """``log(d tanh(u)/du) = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, elementwise."""
    return 2.0 * (_LOG2 - u - F.softplus(-2.0 * u))


class SquashToBox(Transform):
    """The bijection between actions in ``(low, high)`` (data) and the real line (noise).

    ``forward(a) = atanh(y)`` with ``y = 2 (a - low) / (high - low) - 1`` is the
    density direction; ``inverse(u) = low + (high - low) (tanh(u) + 1) / 2`` the
    sampling direction.  Both report the log-det through :func:`log_dtanh`
    evaluated at ``u``.

    Boundary actions: float32 ``tanh`` rounds to exactly +-1 once ``|u| > ~9``,
    so a sampled (and stored) action can lie on the boundary where ``atanh`` is
    infinite.  The density direction clamps ``y`` into
    ``[-1 + BOUNDARY_EPS, 1 - BOUNDARY_EPS]`` (``|u| <= ~7.25``): such actions get
    the finite log-density of the nearest interior point.
    """

    low: Tensor
    half_width: Tensor
    log_half_width: Tensor

    def __init__(self, low: Sequence[float] | Tensor, high: Sequence[float] | Tensor):
        super().__init__()
        low_t = torch.as_tensor(low, dtype=torch.float32).flatten()
        high_t = torch.as_tensor(high, dtype=torch.float32).flatten()
        if low_t.shape != high_t.shape:
            raise ValueError(f"low and high have different shapes {tuple(low_t.shape)} and {tuple(high_t.shape)}")
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError(
                f"the tanh squash needs finite action bounds, got low={low_t.tolist()}, high={high_t.tolist()}"
            )
        if not bool((high_t > low_t).all()):
            raise ValueError(f"action bounds need high > low, got low={low_t.tolist()}, high={high_t.tolist()}")
        self.register_buffer("low", low_t, persistent=False)
        self.register_buffer("half_width", (high_t - low_t) / 2, persistent=False)
        self.register_buffer("log_half_width", torch.log(self.half_width).sum(), persistent=False)
        self.dim = int(low_t.numel())

    def on_boundary(self, a: Tensor) -> Tensor:
        """Rows with a coordinate that :meth:`forward` clamps (on or within ``BOUNDARY_EPS`` of the boundary)."""
        y = (a - self.low) / self.half_width - 1.0
        return (y.abs() >= 1.0 - BOUNDARY_EPS).any(dim=1)

    def forward(self, a: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``u = atanh(2 (a - low) / (high - low) - 1)``; log-det ``-sum(log|da/du|)``."""
        y = (a - self.low) / self.half_width - 1.0
        y = y.clamp(-1.0 + BOUNDARY_EPS, 1.0 - BOUNDARY_EPS)
        u = torch.atanh(y)
        logdet = -(log_dtanh(u).sum(dim=1) + self.log_half_width)
        return u, logdet

    def inverse(self, u: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``a = low + (high - low) (tanh(u) + 1) / 2``; log-det ``sum(log|da/du|)``."""
        a = self.low + self.half_width * (torch.tanh(u) + 1.0)
        logdet = log_dtanh(u).sum(dim=1) + self.log_half_width
        return a, logdet

    def jacobian_mask(self, dim: int) -> Tensor:
        return torch.eye(dim, dtype=torch.bool)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
