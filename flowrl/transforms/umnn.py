"""UMNN transformer (Wehenkel & Louppe 2019): the integral of an unconstrained positive network.

``f(x) = beta + int_0^x g(t, h) dt`` where ``g > 0`` is a free-form network of
``t`` and an embedding ``h`` (``beta`` and ``h`` come from the conditioner).
The integral is computed by Clenshaw-Curtis quadrature on ``N + 1`` nodes,
``int_0^x g = (x / 2) sum_j w_j g(x (s_j + 1) / 2)`` with ``s_j = cos(j pi / N)``,
and autograd differentiates through the quadrature sum (parameters and ``x``).
``log f'(x) = log g(x, h)`` exactly; the quadrature error (tiny for the smooth
integrand used here) is the gap between this and the derivative of the
computed ``f``.  ``g = exp(7 tanh(n / 7))`` lies in ``[e^-7, e^7]``, so ``f``
is onto the real line and the numerical inverse always brackets its root.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..inversion import InversionError, invert_monotone
from ..nn import as_hidden
from .elementwise import ElementwiseBijection

__all__ = ["UnconstrainedMonotone", "clenshaw_curtis"]


def clenshaw_curtis(n: int) -> tuple[Tensor, Tensor]:
    """Nodes ``s_j = cos(j pi / n)`` and weights of ``int_{-1}^{1} g(s) ds ~ sum_j w_j g(s_j)``, ``n`` even."""
    if n < 2 or n % 2:
        raise ValueError(f"Clenshaw-Curtis needs an even number of intervals >= 2, got {n}")
    j = torch.arange(n + 1, dtype=torch.float64)
    nodes = torch.cos(j * math.pi / n)
    k = torch.arange(1, n // 2 + 1, dtype=torch.float64)
    b = torch.where(k == n // 2, 1.0, 2.0)
    series = (b / (4 * k * k - 1))[None, :] * torch.cos(2 * math.pi * j[:, None] * k[None, :] / n)
    c = torch.where((j == 0) | (j == n), 1.0, 2.0)
    weights = c / n * (1 - series.sum(1))
    return nodes, weights


class UnconstrainedMonotone(nn.Module, ElementwiseBijection):
    """UMNN scalar transformer; pseudo-parameters are ``(h_1..h_signal, beta)``.

    Args:
        signal: size of the embedding ``h`` each dimension receives.
        hidden_features: widths of the integrand network ``g``.
        nodes: Clenshaw-Curtis intervals ``N`` (``N + 1`` evaluations of ``g``).
        tol: tolerance of the numerical inverse.
    """

    _nodes: Tensor
    _weights: Tensor
    _coarse_nodes: Tensor
    _coarse_weights: Tensor

    analytic_inverse = False  # inverted by bisection (flowrl.inversion.invert_monotone)

    def __init__(
        self,
        signal: int = 16,
        hidden_features: Sequence[int] | int = (64, 64),
        nodes: int = 32,
        tol: Optional[float] = None,
    ):
        super().__init__()
        hidden = as_hidden(hidden_features)
        self.signal, self.num_params, self.tol = int(signal), int(signal) + 1, tol
        s, w = (v.to(torch.get_default_dtype()) for v in clenshaw_curtis(nodes))
        self.register_buffer("_nodes", (s + 1) / 2, persistent=False)  # in [0, 1]
        self.register_buffer("_weights", w / 2, persistent=False)  # sum to 1
        sc, wc = (v.to(torch.get_default_dtype()) for v in clenshaw_curtis(min(nodes, 8)))
        self.register_buffer("_coarse_nodes", (sc + 1) / 2, persistent=False)
        self.register_buffer("_coarse_weights", wc / 2, persistent=False)
        self.embed = nn.Linear(self.signal, hidden[0])
        self.time = nn.Parameter(torch.randn(hidden[0]) / math.sqrt(self.signal + 1))
        # SiLU: smooth (so the quadrature converges fast) and several times cheaper than tanh on CPU
        layers: list[nn.Module] = [nn.SiLU()]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        last = nn.Linear(hidden[-1], 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def _log_integrand(self, t: Tensor, h_proj: Tensor) -> Tensor:
        """``log g(t, h)`` for ``t`` of shape ``(..., M)`` and projected embeddings ``(..., H)``."""
        pre = torch.addcmul(h_proj.unsqueeze(-2), t.unsqueeze(-1), self.time)  # (..., M, H), one fused op
        out = self.body(pre).squeeze(-1)
        return 7.0 * torch.tanh(out / 7.0)

    def _map(self, x: Tensor, h_proj: Tensor, beta: Tensor, coarse: bool = False) -> tuple[Tensor, Tensor]:
        """``(beta + x sum_j w_j g(x s_j), log g(x))`` for projected embeddings ``h_proj``."""
        nodes, weights = (self._coarse_nodes, self._coarse_weights) if coarse else (self._nodes, self._weights)
        t = torch.cat([x.unsqueeze(-1) * nodes, x.unsqueeze(-1)], dim=-1)  # nodes, then x itself
        log_g = self._log_integrand(t, h_proj)
        integral = x * (log_g[..., :-1].exp() * weights).sum(-1)
        return beta + integral, log_g[..., -1]

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), log g(x))`` elementwise; ``params`` has shape ``x.shape + (signal + 1,)``."""
        return self._map(x, self.embed(params[..., : self.signal]), params[..., -1])

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Numerical inverse (safeguarded Newton) with implicit gradients.

        The embedding is projected once; Newton starts from the linearisation
        at 0, ``x0 = (y - beta) / g(0)`` (``f(0) = beta`` needs no quadrature),
        is refined on a coarse 8-interval rule (a quarter of the cost) to
        ``1e-4``, and finishes on the full rule, so the root is that of the
        full quadrature (exact log-densities); the final ``log g(x)`` is one
        integrand value, not a quadrature.
        """
        h_proj, beta = self.embed(params[..., : self.signal]), params[..., -1]

        def log_g(v: Tensor) -> Tensor:
            return self._log_integrand(v.unsqueeze(-1), h_proj).squeeze(-1)

        with torch.no_grad():
            x0 = (y - beta) * torch.exp(-log_g(torch.zeros_like(y)))
        if self._coarse_nodes.numel() < self._nodes.numel():
            try:  # a cheap first solve with 8 Clenshaw-Curtis intervals; the full rule then needs ~2 Newton steps
                with torch.no_grad():
                    x0, _ = invert_monotone(lambda v: self._map(v, h_proj, beta, coarse=True), y, tol=1e-4, x0=x0,
                                            log_derivative=log_g)
            except InversionError:  # the coarse rule need not be monotone for a wiggly integrand: keep x0
                pass
        return invert_monotone(lambda v: self._map(v, h_proj, beta), y, tol=self.tol, x0=x0, log_derivative=log_g)
