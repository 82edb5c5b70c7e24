"""Tolerances for two computations of the same quantity that may round differently.

Two evaluations of one expression that differ in batch composition, memory
layout, reduction order, thread count or device do not round alike: each
float operation may be off by half an ulp (``eps / 2`` relative) and a sum of
``n`` terms accumulates about ``sqrt(n)`` of those (rounding errors add like a
random walk).  Errors are relative to the *intermediate* values, not to the
result: a log-density of 1 built from terms of size 50 keeps their absolute
error.  Hence the bound used here,

    |a - b| <= ops * eps(dtype) * sqrt(terms) * (1 + scale),

with ``scale`` the largest magnitude on the path (by default that of the
reference), ``terms`` the longest sum and ``ops`` a count of rounding steps on
the path (64 by default: a few layers of a small network).  It follows from the
dtype, not from one machine's kernels: float32 gives ``64 * 1.19e-7 = 7.6e-6``
per unit of scale, float64 ``1.4e-14``.  Where exactness itself is the claim
(a state-dict round trip, the same batch evaluated twice) compare with
``torch.equal`` instead.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["rounding_atol", "assert_close_rounding"]


def _tensor(x: Any) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def rounding_atol(reference: Any, *, terms: int = 1, ops: int = 64, scale: Optional[float] = None) -> float:
    """``ops * eps * sqrt(terms) * (1 + scale)``; ``eps`` of ``reference``'s dtype, ``scale`` its largest magnitude.

    >>> round(rounding_atol(torch.tensor([1.0, -3.0])), 8)  # 64 * 2**-23 * (1 + 3)
    3.052e-05
    """
    ref = _tensor(reference)
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    if scale is None:
        scale = float(ref.abs().max()) if ref.numel() else 0.0
    return ops * torch.finfo(dtype).eps * math.sqrt(max(int(terms), 1)) * (1.0 + float(scale))


def assert_close_rounding(actual: Any, expected: Any, *, terms: int = 1, ops: int = 64,
                          scale: Optional[float] = None, msg: str = "") -> None:
    """Assert ``|actual - expected| <= rounding_atol(expected, ...)`` everywhere (same shapes, no NaN)."""
    a, e = _tensor(actual), _tensor(expected)
    assert a.shape == e.shape, f"{msg} shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}"
    assert not (a.isnan().any() or e.isnan().any()), f"{msg} NaN values"
    tol = rounding_atol(e, terms=terms, ops=ops, scale=scale)
    gap = float((a.double() - e.double()).abs().max()) if a.numel() else 0.0
    assert gap <= tol, f"{msg} largest difference {gap:.3g} exceeds the rounding tolerance {tol:.3g}"
