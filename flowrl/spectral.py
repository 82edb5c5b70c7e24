"""Lipschitz-constrained networks for residual flows: spectral normalisation and LipSwish.

``SpectralLinear`` rescales its weight ``W -> W / max(1, sigma(W) / coeff)``
where ``sigma(W)`` (the largest singular value) is estimated by power
iteration; the singular-vector estimates ``u, v`` are buffers, so they are
saved in the state dict.  ``LipschitzMLP`` stacks such layers with LipSwish
activations, so that ``Lip(g) <= coeff ** n_layers < 1`` with respect to its
(non-context) input, and exposes its Jacobian analytically: Jacobian-vector
products, vector-Jacobian products and the full Jacobian cost a few matrix
products instead of extra autograd passes.

Power iteration: in training mode every call of :meth:`SpectralLinear.weight_sn`
with ``update=True`` does ``n_power_iterations`` steps; in eval mode nothing is
updated, so outputs are deterministic.  Switching to eval mode
(``module.eval()``) first runs the iteration to convergence, so that the
estimate is the true spectral norm (singular vectors to ``1e-13`` in float64, or after 1000 steps)
and the Lipschitz bound holds at evaluation time even if the weights were
changed since the last training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import as_hidden

__all__ = ["SpectralLinear", "LipSwish", "LipschitzMLP", "Linearisation"]


def _normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    return v / v.norm().clamp_min(eps)


class SpectralLinear(nn.Module):
    """Linear layer ``y = W_sn x + W_c c + b`` with ``||W_sn||_2 <= coeff``.

    Only the weight acting on ``x`` is normalised; the context weight ``W_c``
    (present when ``context_features > 0``) is free, because the Lipschitz
    constraint is only needed with respect to ``x``.
    """

    u: Tensor
    v: Tensor
    context_weight: Optional[nn.Parameter]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coeff: float = 0.97,
        n_power_iterations: int = 1,
        context_features: int = 0,
    ):
        super().__init__()
        if not 0.0 < coeff < 1.0:
            raise ValueError(f"coeff must be in (0, 1), got {coeff}")
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.in_features, self.out_features = in_features, out_features
        self.coeff = float(coeff)
        self.n_power_iterations = int(n_power_iterations)
        layer = nn.Linear(in_features + context_features, out_features)
        self.weight = nn.Parameter(layer.weight.detach()[:, :in_features].clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())
        self.context_weight = (
            nn.Parameter(layer.weight.detach()[:, in_features:].clone()) if context_features > 0 else None
        )
        g = torch.Generator().manual_seed(0)
        self.register_buffer("u", _normalize(torch.randn(out_features, generator=g)))
        self.register_buffer("v", _normalize(torch.randn(in_features, generator=g)))

    @torch.no_grad()
    def power_iteration(self, steps: int) -> None:
        """``steps`` power-iteration updates of the singular-vector estimates."""
        w = self.weight
        u, v = self.u.to(w.dtype), self.v.to(w.dtype)
        for _ in range(steps):
            v = _normalize(w.t() @ u)
            u = _normalize(w @ v)
        self.u.copy_(u)
        self.v.copy_(v)

    @torch.no_grad()
    def converge(self, max_steps: int = 1000, tol: Optional[float] = None) -> None:
        """Power iteration until ``u`` and ``v`` move by less than ``tol`` (default 1e-13 in float64, 1e-6 else)."""
        if tol is None:
            tol = 1e-13 if self.weight.dtype == torch.float64 else 1e-6
        for _ in range(max_steps):
            u, v = self.u.clone(), self.v.clone()
            self.power_iteration(1)
            if max(float((self.u - u).abs().max()), float((self.v - v).abs().max())) <= tol:
                break

    def sigma(self) -> Tensor:
        """Power-iteration estimate ``u^T W v`` of the largest singular value (differentiable in ``W``)."""
        return torch.dot(self.u.clone(), self.weight @ self.v.clone())

    def weight_sn(self, update: bool) -> Tensor:
        """``W / max(1, sigma / coeff)``; ``update`` runs power iteration first."""
        if update:
            self.power_iteration(self.n_power_iterations)
        factor = torch.clamp(self.sigma() / self.coeff, min=1.0)
        return self.weight / factor

    def train(self, mode: bool = True) -> "SpectralLinear":
        if self.training and not mode:
            self.converge()
        return super().train(mode)

    def extra_repr(self) -> str:
        ctx = 0 if self.context_weight is None else self.context_weight.shape[1]
        return f"in={self.in_features}, out={self.out_features}, context={ctx}, coeff={self.coeff}"


class LipSwish(nn.Module):
    """``LipSwish(x) = x sigmoid(beta x) / 1.1`` with learnable ``beta = softplus(p) > 0``; Lip <= 1.

    (Chen et al. 2019: ``max_x d/dx [x sigmoid(beta x)] ~= 1.0998`` for every ``beta``.)
    """

    def __init__(self):
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(0.5413))  # softplus -> 1.0

    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta)

    def value_and_slope(self, h: Tensor, slope_grad: bool = True) -> tuple[Tensor, Tensor]:
        """``(f(h), f'(h))`` with ``f'(h) = (s + beta h s (1 - s)) / 1.1``, ``s = sigmoid(beta h)``.

        ``slope_grad=False`` computes ``f'`` outside autograd.
        """
        b = self.beta()
        s = torch.sigmoid(b * h)
        value = h * s / 1.1
        if not slope_grad:
            with torch.no_grad():
                b, s, h = b.detach(), s.detach(), h.detach()
        with torch.set_grad_enabled(slope_grad and torch.is_grad_enabled()):
            slope = (s + b * h * s * (1 - s)) / 1.1
        return value, slope

    def forward(self, h: Tensor) -> Tensor:
        return self.value_and_slope(h)[0]


@dataclass
class Linearisation:
    """The Jacobian ``J = W_L D_{L-1} W_{L-1} ... D_1 W_1`` of an MLP at a batch of points.

    ``weights[l]`` is ``(out, in)``; ``slopes[l]`` is ``(B, out)`` (the
    activation derivatives after layer ``l``).  Tangents have shape ``(B, D)``
    or ``(B, m, D)`` (``m`` vectors per row).
    """

    weights: list[Tensor]
    slopes: list[Tensor]

    def detach(self) -> "Linearisation":
        return Linearisation([w.detach() for w in self.weights], [s.detach() for s in self.slopes])

    def jvp(self, v: Tensor) -> Tensor:
        """``J v`` for each row (and each of the ``m`` vectors of that row)."""
        squeeze = v.dim() == 2
        t = v.unsqueeze(1) if squeeze else v
        for w, s in zip(self.weights[:-1], self.slopes):
            t = (t @ w.t()) * s.unsqueeze(1)
        t = t @ self.weights[-1].t()
        return t.squeeze(1) if squeeze else t

    def vjp(self, u: Tensor) -> Tensor:
        """``J^T u`` for each row."""
        squeeze = u.dim() == 2
        t = u.unsqueeze(1) if squeeze else u
        t = t @ self.weights[-1]
        for w, s in zip(reversed(self.weights[:-1]), reversed(self.slopes)):
            t = (t * s.unsqueeze(1)) @ w
        return t.squeeze(1) if squeeze else t

    def jacobian(self) -> Tensor:
        """Full Jacobian ``(B, D_out, D_in)``; costs ``B D (sum of layer sizes)`` multiply-adds per layer."""
        d_in = self.weights[0].shape[1]
        w0 = self.weights[0]
        eye = torch.eye(d_in, dtype=w0.dtype, device=w0.device)
        batch = self.slopes[0].shape[0] if self.slopes else 1
        cols = self.jvp(eye.expand(batch, d_in, d_in))  # cols[b, j] = J_b e_j
        return cols.transpose(1, 2)


class LipschitzMLP(nn.Module):
    """``g(x, c) = W_L f(... f(W_1 x + W_c c + b_1)) + b_L`` with ``Lip_x(g) <= coeff ** L``.

    Every weight acting on ``x`` is spectrally normalised to ``coeff`` and
    ``f`` is LipSwish (Lip <= 1).  Call :meth:`weights` once per transform
    call (it runs power iteration in training mode), then :meth:`evaluate` as
    often as needed (fixed-point iterations see one fixed function).
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = (64, 64),
        coeff: float = 0.97,
        n_power_iterations: int = 1,
    ):
        super().__init__()
        widths = [features, *as_hidden(hidden_features), features]
        self.layers = nn.ModuleList(
            SpectralLinear(a, b, coeff, n_power_iterations, context_features if i == 0 else 0)
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.activations = nn.ModuleList(LipSwish() for _ in widths[1:-1])
        self.features = features
        self.context_features = context_features
        self.coeff = float(coeff)

    @property
    def lipschitz_bound(self) -> float:
        """Upper bound ``coeff ** n_layers`` of ``Lip_x(g)`` (given a converged power iteration)."""
        return self.coeff ** len(self.layers)

    @property
    def _linears(self) -> Sequence[SpectralLinear]:
        return cast(Sequence[SpectralLinear], self.layers)

    def weights(self, update: Optional[bool] = None) -> list[Tensor]:
        """Normalised weights; ``update`` (default: ``self.training``) runs power iteration."""
        update = self.training if update is None else update
        return [layer.weight_sn(update) for layer in self._linears]

    @overload
    def evaluate(self, weights: list[Tensor], x: Tensor, context: Optional[Tensor] = None,
                 slopes: Literal[False] = False, slopes_grad: bool = True) -> tuple[Tensor, None]: ...

    @overload
    def evaluate(self, weights: list[Tensor], x: Tensor, context: Optional[Tensor] = None, *,
                 slopes: Literal[True], slopes_grad: bool = True) -> tuple[Tensor, Linearisation]: ...

    def evaluate(self, weights: list[Tensor], x: Tensor, context: Optional[Tensor] = None,
                 slopes: bool = False, slopes_grad: bool = True) -> tuple[Tensor, Optional[Linearisation]]:
        """``g(x, c)`` with the given normalised weights, and its :class:`Linearisation` if ``slopes``.

        ``slopes_grad=False`` computes the activation slopes outside autograd (nothing is saved for them).
        """
        layers = self._linears
        first = layers[0]
        h = x @ weights[0].t() + first.bias
        if first.context_weight is not None:
            if context is None:
                raise ValueError("this residual block is conditional but no context was given")
            h = h + context.to(x.dtype) @ first.context_weight.t()
        derivs = []
        activations = cast(Sequence[LipSwish], self.activations)
        for act, w, layer in zip(activations, weights[1:], layers[1:]):
            a, d = act.value_and_slope(h, slope_grad=not slopes or slopes_grad)
            derivs.append(d)
            h = a @ w.t() + layer.bias
        return h, (Linearisation(weights, derivs) if slopes else None)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.evaluate(self.weights(), x, context)[0]

