"""Stochastic estimators of traces and log-determinants (Hutchinson, Russian roulette, Neumann series).

For a matrix ``J`` with ``||J||_2 <= L < 1``:

* Hutchinson: ``tr(A) = E_v[v^T A v]`` for probes with ``E[v v^T] = I``
  (Rademacher or standard Gaussian).
* Power series: ``log det(I + J) = tr log(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k``.
* Russian roulette (Chen et al. 2019): draw ``N``, keep terms ``k <= N`` and
  weight term ``k`` by ``1 / P(N >= k)``; the estimate is unbiased.  Here
  ``N = n_exact + G`` with ``G ~ Geometric(p)`` on ``{0, 1, ...}``, so
  ``P(N >= k) = (1 - p) ** max(0, k - n_exact)``.
* Neumann-series gradient: ``d log det(I + J) = tr((I + J)^{-1} dJ) =
  sum_{k>=0} (-1)^k tr(J^k dJ)``, estimated by ``v^T dJ w`` with
  ``w = sum_{k<N} (-1)^k J^k v / P(N >= k + 1)``; differentiating the
  surrogate ``v^T J w`` (``w`` held fixed) gives it, so memory does not grow
  with ``N``.

Functions take the Jacobian through ``jvp(t) = J t`` on tangents of shape
``(B, m, D)`` (``m`` probes per row).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = [
    "sample_probes",
    "hutchinson_trace",
    "roulette_weights",
    "fixed_weights",
    "power_series_logdet",
    "exact_logdet",
    "truncation_error_bound",
    "terms_for_bound",
    "hutchinson_std_bound",
]

JVP = Callable[[Tensor], Tensor]


def sample_probes(shape: tuple[int, ...], kind: str = "rademacher", *, dtype=None, device=None,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Probe vectors with ``E[v v^T] = I``: ``"rademacher"`` (+-1) or ``"gaussian"`` (standard normal)."""
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=device)
        return (2 * bits - 1).to(dtype or torch.get_default_dtype())
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    raise ValueError(f"unknown probe distribution {kind!r}; use 'rademacher' or 'gaussian'")


def hutchinson_trace(matvec: JVP, probes: Tensor) -> Tensor:
    """``mean_m v_m^T A v_m`` per row: unbiased estimate of ``tr(A)``; ``probes`` is ``(B, m, D)``."""
    return (probes * matvec(probes)).sum(-1).mean(-1)


def roulette_weights(n_exact: int = 2, p: float = 0.5,
                     generator: Optional[torch.Generator] = None) -> list[float]:
    """Weights ``1 / P(N >= k)`` for ``k = 1..N`` with ``N = n_exact + Geometric(p)`` drawn once."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"geometric p must be in (0, 1), got {p}")
    if n_exact < 1:
        raise ValueError(f"n_exact must be >= 1, got {n_exact}")
    u = float(torch.rand((), generator=generator))
    extra = int(math.floor(math.log1p(-u) / math.log1p(-p)))  # P(G >= m) = (1 - p)^m
    n = n_exact + extra
    return [(1.0 - p) ** (-max(0, k - n_exact)) for k in range(1, n + 1)]


def fixed_weights(n_terms: int) -> list[float]:
    """Weights of a plain truncated series with ``n_terms`` terms (biased by the tail)."""
    if n_terms < 1:
        raise ValueError(f"n_terms must be >= 1, got {n_terms}")
    return [1.0] * n_terms


def power_series_logdet(jvp: JVP, probes: Tensor, weights: list[float],
                        neumann: bool = False, basis: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """Series estimate ``sum_k w_k (-1)^{k+1} v^T J^k v / k`` (mean over probes), shape ``(B,)``.

    With ``neumann=True`` also returns ``w = sum_{k<N} (-1)^k w_{k+1} J^k v``
    (``(B, m, D)``), the vector of the Neumann-series gradient surrogate
    ``mean_m v^T J w``.  Differentiable in whatever ``jvp`` depends on; call
    it under ``torch.no_grad()`` when only the value is needed.  With
    ``basis=True`` the probes are the ``D`` basis vectors and the traces are
    exact (sum instead of mean over probes).
    """
    term = probes
    logdet = probes.new_zeros(probes.shape[0])
    w = torch.zeros_like(probes) if neumann else None
    for k, weight in enumerate(weights, start=1):
        if neumann:
            w = w + ((-1) ** (k - 1) * weight) * term
        term = jvp(term)
        quad = (probes * term).sum(-1)
        logdet = logdet + ((-1) ** (k + 1) * weight / k) * (quad.sum(-1) if basis else quad.mean(-1))
    return logdet, w


def exact_logdet(jacobian: Tensor) -> Tensor:
    """``log|det(I + J)|`` from the full ``(B, D, D)`` Jacobian ``J`` (by LU)."""
    eye = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
    return torch.linalg.slogdet(eye + jacobian)[1]


def truncation_error_bound(dim: int, lip: float, n_terms: int) -> float:
    """``|sum_{k>n} (-1)^{k+1} tr(J^k)/k| <= D L^{n+1} / ((n + 1)(1 - L))`` (since ``|tr(J^k)| <= D L^k``)."""
    return dim * lip ** (n_terms + 1) / ((n_terms + 1) * (1.0 - lip))


def terms_for_bound(dim: int, lip: float, tol: float, max_terms: int = 10_000) -> int:
    """Smallest ``n`` with :func:`truncation_error_bound` ``<= tol`` (at most ``max_terms``)."""
    if not 0.0 <= lip < 1.0:
        raise ValueError(f"Lipschitz bound must be in [0, 1), got {lip}")
    n = 1
    while truncation_error_bound(dim, lip, n) > tol and n < max_terms:
        n += 1
    return n


def hutchinson_std_bound(dim: int, lip: float, n_probes: int) -> float:
    """Std of the Rademacher/Gaussian estimate of ``tr log(I + J)`` with ``m`` probes:
    ``<= sqrt(2/m) ||log(I + J)||_F <= sqrt(2 D / m) (-log(1 - L))``."""
    return math.sqrt(2.0 * dim / n_probes) * (-math.log1p(-lip))
