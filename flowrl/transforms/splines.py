"""Monotone spline bijections with linear (identity) tails.

Both splines map ``[-bound, bound]`` onto itself through ``K`` bins whose
widths, heights and knot derivatives come from unconstrained parameters,
and are the identity outside the interval.  They follow the
:class:`~flowrl.transforms.elementwise.ElementwiseBijection` interface:
``params`` has shape ``x.shape + (num_params,)`` and ``forward`` /
``inverse`` return the output with the elementwise log-derivative.

* :class:`RationalQuadraticSpline` (Durkan et al. 2019, Neural Spline Flows):
  a rational-quadratic map per bin, inverted by a quadratic formula.
* :class:`CubicSpline` (Durkan et al. 2019, Cubic-Spline Flows): a monotone
  cubic Hermite map per bin, inverted by solving a cubic in closed form.

Zero parameters give the identity (uniform bins, unit slopes), so a
coupling whose conditioner starts at zero starts at the identity.

Numerics: inputs are clamped to the interval before the bin search (so the
search never leaves the table and the unused branch of ``torch.where`` never
sees a value outside its bin), discriminants are clamped at zero, and
log-derivatives are taken of quantities bounded away from zero by the
minimum bin sizes and derivatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import ElementwiseBijection

__all__ = ["RationalQuadraticSpline", "CubicSpline", "spline_knots"]

SMALL_C3 = 1e-3


def _check_params(x: Tensor, params: Tensor, num_params: int) -> None:
    if params.shape != x.shape + (num_params,):
        raise ValueError(
            f"spline params have shape {tuple(params.shape)}, expected {tuple(x.shape) + (num_params,)}"
        )


def _bin_sizes(raw: Tensor, min_size: float) -> Tensor:
    """Fractions of the interval: ``min + (1 - K min) softmax(raw)`` (sum to 1, each >= min)."""
    k = raw.shape[-1]
    return min_size + (1.0 - min_size * k) * torch.softmax(raw, dim=-1)


def spline_knots(sizes: Tensor, bound: float) -> Tensor:
    """Knot positions ``(..., K + 1)`` in ``[-bound, bound]`` from bin fractions ``(..., K)``.

    The cumulative sum is divided by its last entry so the end knots are
    exactly ``-bound`` and ``bound`` despite rounding.
    """
    c = torch.cumsum(sizes, dim=-1)
    c = F.pad(c / c[..., -1:], (1, 0), value=0.0)
    return (2.0 * bound) * c - bound


def _locate(knots: Tensor, v: Tensor) -> Tensor:
    """Bin index ``(..., 1)`` of ``v`` (already clamped to the knots' range) in ``knots (..., K + 1)``."""
    k = knots.shape[-1] - 1
    idx = torch.searchsorted(knots, v.unsqueeze(-1), right=True) - 1
    return idx.clamp_(0, k - 1)


def _pair(t: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Values of ``t`` at ``idx`` and ``idx + 1`` along the last axis (squeezed)."""
    both = torch.gather(t, -1, torch.cat([idx, idx + 1], dim=-1))
    return both[..., 0], both[..., 1]


class _Spline(ElementwiseBijection):
    """Shared checks and tail handling; subclasses implement the inside map."""

    def __init__(self, bins: int, bound: float, min_width: float, min_height: float, min_derivative: float):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if bound <= 0:
            raise ValueError(f"bound must be positive, got {bound}")
        if not 0 <= min_width * bins < 1 or not 0 <= min_height * bins < 1:
            raise ValueError(
                f"min_width and min_height must be in [0, 1/bins) = [0, {1 / bins}), got {min_width}, {min_height}"
            )
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must be in (0, 1), got {min_derivative}")
        self.bins = int(bins)
        self.bound = float(bound)
        self.min_width = float(min_width)
        self.min_height = float(min_height)
        self.min_derivative = float(min_derivative)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bins={self.bins}, bound={self.bound})"

    def _apply(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        _check_params(v, params, self.num_params)
        b = self.bound
        inside = (v >= -b) & (v <= b)
        out, logd = self._inside(v.clamp(-b, b), params, inverse)
        return torch.where(inside, out, v), torch.where(inside, logd, torch.zeros_like(logd))

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(y, params, inverse=True)

    def _inside(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class RationalQuadraticSpline(_Spline):
    """Monotone rational-quadratic spline (Neural Spline Flows) with identity tails.

    In bin ``k`` with ``xi = (x - x_k) / w_k`` and slope ``s_k = h_k / w_k``:
    ``y = y_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / (s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi))``.

    Parameters per element (``num_params = 3 bins - 1``): ``bins`` raw widths,
    ``bins`` raw heights (softmax, with minimum fractions) and ``bins - 1``
    raw interior derivatives ``d = 1 + (1 - min_d) (softplus(raw) / log 2 - 1)``
    (so ``raw = 0`` gives ``d = 1`` and ``d >= min_d``).  The boundary
    derivatives are 1 so the spline joins the identity tails smoothly.
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        super().__init__(bins, bound, min_width, min_height, min_derivative)
        self.num_params = 3 * self.bins - 1

    def _knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.bins
        xk = spline_knots(_bin_sizes(params[..., :k], self.min_width), self.bound)
        yk = spline_knots(_bin_sizes(params[..., k:2 * k], self.min_height), self.bound)
        d = 1.0 + (1.0 - self.min_derivative) * (F.softplus(params[..., 2 * k:]) / math.log(2.0) - 1.0)
        return xk, yk, F.pad(d, (1, 1), value=1.0)

    def _inside(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        xk, yk, dk = self._knots(params)
        idx = _locate(yk if inverse else xk, v)
        x0, x1 = _pair(xk, idx)
        y0, y1 = _pair(yk, idx)
        d0, d1 = _pair(dk, idx)
        w, h = x1 - x0, y1 - y0
        s = h / w
        two_s = 2.0 * s
        if inverse:
            dy = v - y0
            c = d0 + d1 - two_s
            qa = h * (s - d0) + dy * c
            qb = h * d0 - dy * c
            qc = -s * dy
            # The root in [0, 1] is (-qb + sq) / (2 qa) = 2 qc / (-qb - sq); take the form
            # without cancellation (qb < 0 implies qa >= h s > 0, and qb >= 0 implies qb + sq > 0).
            sq = torch.sqrt((qb * qb - 4.0 * qa * qc).clamp_min(0.0))
            pos = qb >= 0
            num = torch.where(pos, 2.0 * qc, sq - qb)
            den = torch.where(pos, -qb - sq, 2.0 * qa)
            den = torch.where(den == 0, torch.full_like(den, -1.0), den)  # only when qc = 0: xi = 0
            xi = (num / den).clamp(0.0, 1.0)
            out = x0 + xi * w
        else:
            xi = ((v - x0) / w).clamp(0.0, 1.0)
            c = d0 + d1 - two_s
        om = 1.0 - xi
        cross = xi * om
        den = s + c * cross
        if not inverse:
            out = y0 + h * (s * xi * xi + d0 * cross) / den
        num = (s * s) * (d1 * xi * xi + two_s * cross + d0 * om * om)
        logd = torch.log(num) - 2.0 * torch.log(den)
        return out, (-logd if inverse else logd)


class CubicSpline(_Spline):
    """Monotone cubic Hermite spline (Cubic-Spline Flows) with identity tails.

    In bin ``k``, with ``xi = (x - x_k) / w_k``, ``s = h_k / w_k`` and
    normalised end slopes ``a = d_k / s``, ``b = d_{k+1} / s``:
    ``y = y_k + h_k (a xi + (3 - 2a - b) xi^2 + (a + b - 2) xi^3)``.

    The cubic is strictly increasing when ``0 < a, b <= max_ratio < 3``
    (Fritsch & Carlson 1980).  This holds by construction: interior
    derivatives are ``d_k = r_k min(s_{k-1}, s_k)`` with
    ``r_k = min_d + (max_ratio - min_d) sigmoid(raw + c)`` in
    ``(min_d, max_ratio)``; the boundary derivatives are 1 (smooth joins with
    the identity tails), which needs the end bins' slopes ``>= 1 / max_ratio``:
    their height fractions have the floor ``w / max_ratio``.  Constant
    offsets make zero parameters give uniform bins and unit derivatives,
    i.e. the identity.

    The inverse solves the cubic in closed form (Cardano / trigonometric,
    or the quadratic formula when the cubic term vanishes) in float64 and
    finishes with a Newton step in the input's dtype, which removes
    rounding error and carries the implicit-function gradient.

    Parameters per element (``num_params = 3 bins - 1``): raw widths, raw
    heights, raw interior derivative ratios.  Needs ``bins >= 2``.
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
        max_ratio: float = 2.5,
    ):
        super().__init__(bins, bound, min_width, min_height, min_derivative)
        if self.bins < 2:
            raise ValueError(f"CubicSpline needs bins >= 2, got {bins}")
        if not 1.0 < max_ratio < 3.0:
            raise ValueError(f"max_ratio must be in (1, 3), got {max_ratio}")
        k = self.bins
        if 1.0 / max_ratio + (k - 2) * self.min_height >= 1.0:
            raise ValueError("min_height too large for the end bins' height floor")
        self.num_params = 3 * k - 1
        self.max_ratio = float(max_ratio)
        # Height floors at uniform widths, and the softmax shares that give uniform heights.
        floor0 = torch.full((k,), self.min_height, dtype=torch.float64)
        floor0[0] = floor0[-1] = 1.0 / (k * max_ratio)
        share0 = (1.0 / k - floor0) / (1.0 - floor0.sum())
        self._height_offset = torch.log(share0)
        lo = self.min_derivative
        self._ratio_offset = math.log((1.0 - lo) / (max_ratio - lo)) - math.log1p(-(1.0 - lo) / (max_ratio - lo))

    def _knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k, m = self.bins, self.max_ratio
        widths = _bin_sizes(params[..., :k], self.min_width)
        floor = torch.full_like(widths, self.min_height)
        floor = torch.cat([widths[..., :1] / m, floor[..., 1:-1], widths[..., -1:] / m], dim=-1)
        offset = self._height_offset.to(device=params.device, dtype=params.dtype)
        share = torch.softmax(params[..., k:2 * k] + offset, dim=-1)
        heights = floor + (1.0 - floor.sum(dim=-1, keepdim=True)) * share
        slopes = heights / widths
        lo = self.min_derivative
        ratio = lo + (m - lo) * torch.sigmoid(params[..., 2 * k:] + self._ratio_offset)
        d = ratio * torch.minimum(slopes[..., :-1], slopes[..., 1:])
        return spline_knots(widths, self.bound), spline_knots(heights, self.bound), F.pad(d, (1, 1), value=1.0)

    def _inside(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        xk, yk, dk = self._knots(params)
        idx = _locate(yk if inverse else xk, v)
        x0, x1 = _pair(xk, idx)
        y0, y1 = _pair(yk, idx)
        d0, d1 = _pair(dk, idx)
        w, h = x1 - x0, y1 - y0
        s = h / w
        a, b = d0 / s, d1 / s
        c2, c3 = 3.0 - 2.0 * a - b, a + b - 2.0
        if inverse:
            u = ((v - y0) / h).clamp(0.0, 1.0)
            t = _solve_monotone_cubic(a, c2, c3, u)
            # One Newton step in the working dtype: polishes the root and gives autograd
            # the implicit-function derivative dt = (du - dp) / p'(t).
            p = t * (a + t * (c2 + t * c3))
            dp = a + t * (2.0 * c2 + 3.0 * c3 * t)
            xi = (t - (p - u) / dp).clamp(0.0, 1.0)
            out = x0 + xi * w
        else:
            xi = ((v - x0) / w).clamp(0.0, 1.0)
            out = y0 + h * (xi * (a + xi * (c2 + xi * c3)))
        dp = a + xi * (2.0 * c2 + 3.0 * c3 * xi)
        logd = torch.log(s) + torch.log(dp.clamp_min(torch.finfo(dp.dtype).tiny))
        return out, (-logd if inverse else logd)


@torch.no_grad()
def _solve_monotone_cubic(a: Tensor, c2: Tensor, c3: Tensor, u: Tensor, newton_steps: int = 2) -> Tensor:
    """Root in ``[0, 1]`` of ``c3 t^3 + c2 t^2 + a t - u`` (increasing on ``[0, 1]``), no gradient.

    Computed in float64: the trigonometric form when three roots are real,
    Cardano's (cancellation-free) form when one is, and the quadratic
    formula ``t = 2u / (a + sqrt(a^2 + 4 c2 u))`` when ``|c3| < 1e-3``; of
    the candidate roots the one nearest ``[0, 1]`` is kept, then polished by
    ``newton_steps`` clamped Newton steps.
    """
    dtype = u.dtype
    a, c2, c3, u = (v.double() for v in (a, c2, c3, u))
    small = c3.abs() < SMALL_C3
    # quadratic branch
    t_quad = 2.0 * u / (a + torch.sqrt((a * a + 4.0 * c2 * u).clamp_min(0.0)))
    # cubic branch: monic t^3 + B t^2 + C t + D, depressed with t = tau - B / 3
    safe = torch.where(small, torch.ones_like(c3), c3)
    B, C, D = c2 / safe, a / safe, -u / safe
    shift = B / 3.0
    p = C - B * shift
    q = 2.0 * shift ** 3 - C * shift + D
    disc = (q / 2.0) ** 2 + (p / 3.0) ** 3
    # one real root: w^3 = -q/2 - sign(q) sqrt(disc), tau = w - p / (3 w)
    sq = torch.sqrt(disc.clamp_min(0.0))
    w3 = -q / 2.0 - torch.where(q >= 0, sq, -sq)
    w = torch.sign(w3) * w3.abs().pow(1.0 / 3.0)
    w_safe = torch.where(w == 0, torch.ones_like(w), w)
    tau_one = torch.where(w == 0, torch.zeros_like(w), w - p / (3.0 * w_safe))
    # three real roots: tau_j = 2 sqrt(-p/3) cos(phi/3 - 2 pi j / 3)
    m = 2.0 * torch.sqrt((-p / 3.0).clamp_min(0.0))
    pm = p * m
    pm_safe = torch.where(pm == 0, torch.ones_like(pm), pm)
    cos_arg = (3.0 * q / pm_safe).clamp(-1.0, 1.0)
    phi = torch.acos(cos_arg)
    taus = torch.stack([m * torch.cos((phi - 2.0 * math.pi * j) / 3.0) for j in range(3)], dim=-1)
    roots3 = taus - shift.unsqueeze(-1)
    dist = (roots3 - roots3.clamp(0.0, 1.0)).abs()
    t_three = torch.gather(roots3, -1, dist.argmin(dim=-1, keepdim=True)).squeeze(-1)
    t_cubic = torch.where(disc > 0, tau_one - shift, t_three)
    t = torch.where(small, t_quad, t_cubic)
    t = torch.nan_to_num(t, nan=0.5).clamp(0.0, 1.0)
    for _ in range(newton_steps):
        f = t * (a + t * (c2 + t * c3)) - u
        df = a + t * (2.0 * c2 + 3.0 * c3 * t)
        t = (t - f / df).clamp(0.0, 1.0)
    return t.to(dtype)
