"""Fixed-point iteration ``x <- y - g(x)`` for contractive residual maps ``y = x + g(x)``.

If ``Lip(g) <= L < 1`` the iteration converges (Banach), and after a step of
size ``s = |x_{k+1} - x_k|`` the error is at most ``s L / (1 - L)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["FixedPointError", "fixed_point", "default_tolerance"]


class FixedPointError(RuntimeError):
    """Raised when a fixed-point iteration does not reach its tolerance within its iteration cap."""


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative step tolerance: ``1e-12`` in float64, ``1e-6`` in float32/16."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def fixed_point(
    step: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    tol: Optional[float] = None,
    max_iter: int = 1000,
) -> tuple[Tensor, int]:
    """Iterate ``x <- step(x)`` from ``x0`` until every entry moves by at most ``tol * (1 + |x|)``.

    Returns ``(x, iterations)``.  Raises :class:`FixedPointError` (naming the
    remaining step size) when ``max_iter`` iterations do not suffice or the
    iterates become non-finite.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    tol = default_tolerance(x0.dtype) if tol is None else float(tol)
    x = x0
    gap = float("inf")
    for it in range(1, max_iter + 1):
        new = step(x)
        diff = (new - x).abs()
        x = new
        if not bool(torch.isfinite(x).all()):
            raise FixedPointError(f"fixed-point iteration diverged (non-finite values) after {it} iterations")
        excess = diff - tol * (1.0 + x.abs())
        if bool((excess <= 0).all()):
            return x, it
        gap = float(diff.max())
    raise FixedPointError(
        f"fixed-point iteration did not converge in {max_iter} iterations: last step {gap:.3e}, "
        f"tolerance {tol:.1e} (relative); is the map contractive (Lip < 1)?"
    )
