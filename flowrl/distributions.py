"""Base distributions of flows: ``log_prob(z, context)`` and ``rsample(n, context)``.

A base distribution acts on flat batches: ``z`` has shape ``(N, *shape)`` and
a context, when given, has shape ``(N, context_dim)``.  ``rsample(n)`` draws
``n`` samples; ``rsample(n, context)`` draws one sample per context row
(``n`` must equal the number of rows).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .core import sum_except_batch
from .nn import MLP

__all__ = ["BaseDistribution", "StandardNormal", "ConditionalDiagonalNormal"]

_LOG_2PI = math.log(2 * math.pi)


class BaseDistribution(nn.Module):
    """Interface of a flow's base distribution over tensors of shape ``shape``.

    A scalar buffer ``_anchor`` follows ``.to(device)`` and ``.double()``:
    noise and constants are created on its device and dtype.
    """

    shape: tuple[int, ...]
    context_dim: int = 0
    _anchor: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def rsample(self, n: int, context: Optional[Tensor] = None) -> Tensor:
        """``n`` reparameterised samples: :meth:`from_noise` of standard normal noise."""
        ctx_rows = None if context is None else context.shape[0]
        if ctx_rows is not None and ctx_rows != n:
            raise ValueError(f"rsample({n}) needs {n} context rows, got {ctx_rows}")
        eps = torch.randn(n, *self.shape, device=self._anchor.device, dtype=self._anchor.dtype)
        return self.from_noise(eps, context)

    def from_noise(self, eps: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """The reparameterisation ``z = g(eps, c)`` of standard normal noise ``eps`` (``(N, *shape)``)."""
        raise NotImplementedError

    def mode(self, n: int, context: Optional[Tensor] = None) -> Tensor:
        """The distribution's mode, broadcast to ``n`` rows."""
        raise NotImplementedError


class StandardNormal(BaseDistribution):
    """``N(0, I)``: ``log p(z) = -0.5 (||z||^2 + D log 2 pi)``."""

    def __init__(self, shape: Sequence[int] | int):
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        d = math.prod(self.shape)
        return -0.5 * (sum_except_batch(z * z) + d * _LOG_2PI)

    def from_noise(self, eps: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return eps

    def mode(self, n: int, context: Optional[Tensor] = None) -> Tensor:
        return self._anchor.new_zeros(n, *self.shape)


class ConditionalDiagonalNormal(BaseDistribution):
    """``N(mu(c), diag sigma(c)^2)`` with mean and log-scale from a network of the context.

    The log-scale is soft-clamped to ``[-log_scale_bound, log_scale_bound]``
    with ``b * tanh(s / b)`` so that the density stays finite.
    """

    def __init__(
        self,
        shape: Sequence[int] | int,
        context_dim: int,
        hidden_features: Sequence[int] | int = (64,),
        log_scale_bound: float = 7.0,
    ):
        super().__init__()
        if context_dim <= 0:
            raise ValueError("ConditionalDiagonalNormal needs context_dim > 0")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.context_dim = context_dim
        self.log_scale_bound = log_scale_bound
        d = math.prod(self.shape)
        self.net = MLP(context_dim, 2 * d, hidden_features, zero_last=True)

    def _params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(context)
        mean, raw = out.chunk(2, dim=-1)
        b = self.log_scale_bound
        log_scale = b * torch.tanh(raw / b)
        return mean.reshape(-1, *self.shape), log_scale.reshape(-1, *self.shape)

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if context is None:
            raise ValueError("ConditionalDiagonalNormal needs a context")
        mean, log_scale = self._params(context)
        eps = (z - mean) * torch.exp(-log_scale)
        d = math.prod(self.shape)
        return -0.5 * (sum_except_batch(eps * eps) + d * _LOG_2PI) - sum_except_batch(log_scale)

    def from_noise(self, eps: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """``z = mu(c) + sigma(c) * eps``."""
        if context is None:
            raise ValueError("ConditionalDiagonalNormal needs a context")
        mean, log_scale = self._params(context)
        return mean + torch.exp(log_scale) * eps

    def mode(self, n: int, context: Optional[Tensor] = None) -> Tensor:
        if context is None:
            raise ValueError("ConditionalDiagonalNormal needs a context")
        return self._params(context)[0]
