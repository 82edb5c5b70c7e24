"""``Flow``: a transform over a base distribution, with exact density and sampling.

``log p(x | c) = log p_Z(f(x; c) | c) + log|det df/dx|``, and samples are
``x = f^{-1}(z; c)`` with ``z ~ p_Z``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .core import Transform, check_shape
from .distributions import BaseDistribution

__all__ = ["Flow", "set_validation", "validation_enabled"]

_VALIDATE = True


def set_validation(enabled: bool) -> None:
    """Turn input validation of every flow on or off (like ``torch.distributions``)."""
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Whether flows validate their inputs by default."""
    return _VALIDATE


class Flow(nn.Module):
    """A normalizing flow ``p(x | c)`` built from ``transform`` (data -> noise) and ``base``.

    Shapes follow ``torch.distributions``: ``log_prob`` takes ``x`` of shape
    ``(*batch, *shape)`` and a context ``(*batch', context_dim)`` that
    broadcasts against ``batch``; ``sample(n)`` returns ``(n, *shape)`` and
    ``sample(n, context)`` with ``context`` of shape ``(*B, context_dim)``
    returns ``(n, *B, *shape)``: ``n`` samples per context row.

    Exact up to float32 rounding on any device under PyTorch's default
    precision flags, except convolutions on a GPU, which cuDNN runs in TF32
    by default (~1e-3): see :mod:`flowrl.precision` (``ieee_float32()``).

    Example:
        >>> import torch
        >>> from flowrl import Compose, Flow, StandardNormal
        >>> from flowrl.transforms.coupling import Coupling, alternating_mask
        >>> from flowrl.transforms.elementwise import Affine
        >>> flow = Flow(Compose([Coupling(alternating_mask(2, i % 2), Affine(), 0, (16,)) for i in range(2)]),
        ...             StandardNormal(2))
        >>> x = flow.sample(3)
        >>> x.shape, flow.log_prob(x).shape
        (torch.Size([3, 2]), torch.Size([3]))
    """

    def __init__(
        self,
        transform: Transform,
        base: BaseDistribution,
        context_dim: int = 0,
        validate_args: Optional[bool] = None,
    ):
        super().__init__()
        self.transform = transform
        self.base = base
        self.shape: tuple[int, ...] = tuple(base.shape)
        self.context_dim = int(context_dim)
        self.validate_args = validate_args

    # ------------------------------------------------------------------ checks
    @property
    def event_numel(self) -> int:
        return math.prod(self.shape)

    def _validating(self) -> bool:
        return _VALIDATE if self.validate_args is None else bool(self.validate_args)

    def _check_context(self, context: Optional[Tensor]) -> None:
        if self.context_dim > 0 and context is None:
            raise ValueError(
                f"this flow is conditional (context_dim={self.context_dim}) but no context was given"
            )
        if self.context_dim == 0 and context is not None:
            raise ValueError("this flow is unconditional (context_dim=0) but a context was given")
        if context is not None:
            if context.dim() == 0 or context.shape[-1] != self.context_dim:
                raise ValueError(
                    f"context has shape {tuple(context.shape)}, expected last dimension {self.context_dim}"
                )
            if self._validating() and not bool(torch.isfinite(context).all()):
                raise ValueError("context contains NaN or inf values")

    # ----------------------------------------------------------------- density
    def log_prob(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Exact ``log p(x | c)`` with shape ``x.shape[:-len(shape)]`` broadcast with the context's."""
        check_shape(x, self.shape, "x")
        self._check_context(context)
        if self._validating() and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf values")
        nd = len(self.shape)
        x_batch = batch = x.shape[: x.dim() - nd]
        ctx_flat = None
        if context is not None:
            # Fast path: one context row per x row (what a policy passes) needs no
            # broadcast_shapes (a slow Python helper) and no expand.
            if context.shape[:-1] != batch:
                batch = torch.broadcast_shapes(batch, context.shape[:-1])
                context = context.expand(*batch, self.context_dim)
            ctx_flat = context.reshape(-1, self.context_dim)
        if x_batch != batch:
            x = x.expand(*batch, *self.shape)
        x_flat = x.reshape(-1, *self.shape)
        z, logdet = self.transform(x_flat, ctx_flat)
        lp = self.base.log_prob(z, ctx_flat) + logdet
        return lp.reshape(batch)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Alias of :meth:`log_prob`."""
        return self.log_prob(x, context)

    # ---------------------------------------------------------------- sampling
    def _flat_context(self, n: int, context: Optional[Tensor]) -> tuple[Optional[Tensor], tuple[int, ...]]:
        self._check_context(context)
        if context is None:
            return None, (n,)
        lead = tuple(context.shape[:-1])
        ctx = context.unsqueeze(0).expand(n, *context.shape).reshape(-1, self.context_dim)
        return ctx, (n, *lead)

    def rsample_and_log_prob(self, n: int, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Differentiable samples and their log-density from one pass through the inverse."""
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        ctx, lead = self._flat_context(n, context)
        rows = math.prod(lead)
        z = self.base.rsample(rows, ctx)
        base_lp = self.base.log_prob(z, ctx)
        x, logdet_inv = self.transform.inverse(z, ctx)
        lp = base_lp - logdet_inv
        return x.reshape(*lead, *self.shape), lp.reshape(lead)

    def rsample(self, n: int, context: Optional[Tensor] = None) -> Tensor:
        """Differentiable samples, shape ``(n, *shape)`` or ``(n, *B, *shape)``."""
        return self.rsample_and_log_prob(n, context)[0]

    @torch.no_grad()
    def sample(self, n: int, context: Optional[Tensor] = None) -> Tensor:
        """Samples without gradient, shape ``(n, *shape)`` or ``(n, *B, *shape)``."""
        return self.rsample_and_log_prob(n, context)[0]

    def sample_and_log_prob(self, n: int, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Samples and log-densities without gradient."""
        with torch.no_grad():
            return self.rsample_and_log_prob(n, context)

    def mode_sample(self, context: Optional[Tensor] = None) -> Tensor:
        """The base distribution's mode pushed through the flow (one per context row).

        This is the deterministic output a policy uses; it is not in general
        the mode of ``p(x)``.
        """
        ctx, lead = self._flat_context(1, context)
        rows = math.prod(lead)
        z = self.base.mode(rows, ctx)
        x, _ = self.transform.inverse(z, ctx)
        return x.reshape(*lead[1:], *self.shape) if context is not None else x.reshape(self.shape)

    @torch.no_grad()
    def fixed_candidates(self, context: Optional[Tensor] = None, candidates: int = 64) -> tuple[Tensor, Tensor]:
        """The base mode and ``candidates`` fixed base points pushed through the flow, with ``log p(x_k | c)``.

        ``x_0 = f^-1(mode)``, ``x_k = f^-1(g(eps_k, c))`` for fixed noise ``eps_k``
        (the same for every call): points ``(candidates + 1, *context_lead, *shape)``
        and their log-densities ``(candidates + 1, *context_lead)``.  Deterministic
        choices among them: :meth:`mode_estimate` (highest density), or any other
        score a caller has (e.g. a critic's value of each candidate action).
        """
        if candidates < 0:
            raise ValueError(f"candidates must be >= 0, got {candidates}")
        ctx, lead = self._flat_context(candidates + 1, context)
        rows = math.prod(lead[1:])
        anchor = self.base._anchor
        eps = _fixed_noise(candidates, self.shape).to(device=anchor.device, dtype=anchor.dtype)
        eps = eps.unsqueeze(1).expand(candidates, rows, *self.shape).reshape(-1, *self.shape)
        head_ctx = None if ctx is None else ctx[:rows]
        z = torch.cat([self.base.mode(rows, head_ctx),
                       self.base.from_noise(eps, None if ctx is None else ctx[rows:])])
        x, logdet_inv = self.transform.inverse(z, ctx)
        lp = self.base.log_prob(z, ctx) - logdet_inv
        return x.reshape(candidates + 1, *lead[1:], *self.shape), lp.reshape(candidates + 1, *lead[1:])

    @torch.no_grad()
    def mode_estimate(self, context: Optional[Tensor] = None, candidates: int = 64) -> Tensor:
        """The highest-density point among fixed candidates: ``argmax_k log p(f^-1(z_k) | c)``.

        The candidates are those of :meth:`fixed_candidates` (the base mode and
        ``candidates`` fixed base points pushed through the flow): a deterministic
        estimate of the mode of ``p(x | c)``, one per context row.  Unlike
        :meth:`mode_sample` it lands on a high-density point of the flow's own
        density, wherever the flow has moved the mass (a bimodal ``p`` can push
        the base mode between its modes).  ``candidates=0`` gives :meth:`mode_sample`.
        """
        if candidates < 0:
            raise ValueError(f"candidates must be >= 0, got {candidates}")
        if candidates == 0:
            return self.mode_sample(context)
        x, lp = self.fixed_candidates(context, candidates)
        k1 = candidates + 1
        flat_x, flat_lp = x.reshape(k1, -1, *self.shape), lp.reshape(k1, -1)
        best = flat_lp.argmax(dim=0)
        chosen = flat_x[best, torch.arange(flat_x.shape[1], device=best.device)]
        return chosen.reshape(x.shape[1:])

    def extra_repr(self) -> str:
        return f"shape={self.shape}, context_dim={self.context_dim}"


def _fixed_noise(n: int, shape: tuple[int, ...]) -> Tensor:
    """``n`` standard normal draws of ``shape`` from a fixed seed (CPU), the same on every call."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
