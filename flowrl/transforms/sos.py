"""Sum-of-squares polynomial transformer (Jaini et al. 2019).

``f(x) = c + eps x + int_0^x sum_k p_k(t / B)^2 dt`` with ``K`` polynomials
``p_k`` of degree ``r``: the integrand is a sum of squares, so ``f`` is
increasing, and its integral is a polynomial of degree ``2r + 1`` in closed
form: with ``q(s) = sum_k p_k(s)^2 = sum_j q_j s^j``,
``int_0^x q(t / B) dt = B sum_j q_j (x / B)^{j+1} / (j + 1)``.

Polynomials of high degree overflow when stacked (``50^9`` then ``(.)^9``),
so the polynomial acts on ``[-B, B]`` and ``f`` continues with affine tails of
slope ``f'(+-B)`` outside (continuous value and slope); ``eps`` (default
1e-3) keeps the slope positive where every ``p_k`` vanishes at once.
Zero pseudo-parameters give ``f(x) = (1 + eps) x``.  The inverse is numerical.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..inversion import invert_monotone
from .elementwise import ElementwiseBijection

__all__ = ["SumOfSquaresPolynomial"]


class SumOfSquaresPolynomial(ElementwiseBijection):
    """SOS transformer with ``polynomials`` squares of degree ``degree`` on ``[-bound, bound]``."""

    analytic_inverse = False  # inverted by bisection (flowrl.inversion.invert_monotone)

    def __init__(
        self, polynomials: int = 3, degree: int = 4, bound: float = 5.0, eps: float = 1e-3, tol: Optional[float] = None
    ):
        if polynomials < 1 or degree < 0 or bound <= 0 or eps <= 0:
            raise ValueError(
                "SOS needs polynomials >= 1, degree >= 0, bound > 0, eps > 0; "
                f"got {polynomials}, {degree}, {bound}, {eps}"
            )
        self.polynomials, self.degree, self.bound = polynomials, degree, float(bound)
        self.eps, self.tol = float(eps), tol
        self.num_params = polynomials * (degree + 1) + 1
        r = degree + 1
        # anti-diagonal sums: q_j = sum_{l + m = j} A_lm
        self._antidiag = (torch.arange(r)[:, None] + torch.arange(r)[None, :]).flatten()

    def _integrand_coefficients(self, params: Tensor) -> tuple[Tensor, Tensor]:
        k, r = self.polynomials, self.degree + 1
        coeffs = params[..., : k * r].unflatten(-1, (k, r))
        identity = torch.zeros(r, dtype=params.dtype, device=params.device)
        identity[0] = 1.0 / math.sqrt(k)
        coeffs = coeffs + identity
        outer = (coeffs.unsqueeze(-1) * coeffs.unsqueeze(-2)).sum(-3).flatten(-2)  # (..., r*r)
        q = outer.new_zeros(*outer.shape[:-1], 2 * r - 1)
        q = q.index_add(-1, self._antidiag.to(params.device), outer)
        return q, params[..., -1]

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), log f'(x))`` elementwise; ``params`` has shape ``x.shape + (num_params,)``."""
        return self._apply(x, self._integrand_coefficients(params))

    def _apply(self, x: Tensor, prepared: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        q, shift = prepared
        b = self.bound
        s = torch.clamp(x, -b, b) / b
        n = q.shape[-1]
        terms = [torch.ones_like(s)]
        for _ in range(n):  # s^0..s^n by repeated products (pow's gradient at s = 0 is NaN)
            terms.append(terms[-1] * s)
        powers = torch.stack(terms, dim=-1)
        integral = b * (q * powers[..., 1:] / torch.arange(1, n + 1, device=x.device, dtype=x.dtype)).sum(-1)
        slope = (q * powers[..., :-1]).sum(-1)
        y = shift + self.eps * x + integral + (x - b * s) * slope
        return y, torch.log(slope + self.eps)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Numerical inverse (safeguarded Newton on an expanding bracket) with implicit gradients."""
        prepared = self._integrand_coefficients(params)
        return invert_monotone(lambda v: self._apply(v, prepared), y, tol=self.tol)
