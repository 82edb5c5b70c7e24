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


def _check_params(x: Tensor, params: Tensor, num_params: int) -> None:
    if params.shape != x.shape + (num_params,):
        raise ValueError(
            f"spline params have shape {tuple(params.shape)}, expected {tuple(x.shape) + (num_params,)}"
        )


# Internally the splines work "bins first": parameters as ``(num_params, M)``
# for ``M`` elements, so every reduction over bins (softmax, cumsum, bin
# search, gather) runs along dimension 0 and is vectorised over the elements.
# (PyTorch's CPU softmax over a short last dimension is ~10x slower.)


def _bin_sizes(raw: Tensor, min_size: float) -> Tensor:
    """Fractions of the interval ``(K, M)``: ``min + (1 - K min) softmax(raw)`` over bins (dim 0)."""
    return min_size + (1.0 - min_size * raw.shape[0]) * torch.softmax(raw, dim=0)


def spline_knots(sizes: Tensor, bound: float) -> Tensor:
    """Knot positions ``(K + 1, M)`` in ``[-bound, bound]`` from bin fractions ``(K, M)``.

    The end knots are exactly ``-bound`` and ``bound`` (``c_K / c_K = 1`` and
    ``2b - b = b`` are exact); the interior ones are the cumulative sums divided
    by their total (robust to rounding).
    """
    c = torch.cumsum(sizes, dim=0)
    return F.pad((2.0 * bound) * (c / c[-1:]) - bound, (0, 0, 1, 0), value=-bound)


def _locate(knots: Tensor, v: Tensor) -> Tensor:
    """Pair of indices ``(2, M)``: bin ``k`` of ``v`` (clamped to the knots' range) and ``k + 1``.

    ``k`` counts the interior knots ``<= v``, so it lies in ``[0, K - 1]``.
    """
    idx = (v >= knots[1:-1]).sum(dim=0)
    return torch.stack([idx, idx + 1])


def _pair(t: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Values of ``t (K + 1, M)`` at bin ``k`` and ``k + 1`` (``idx`` from :func:`_locate`)."""
    both = torch.gather(t, 0, idx)
    return both[0], both[1]


class _Spline(ElementwiseBijection):
    """Shared checks and tail handling; subclasses implement the inside map."""

    def _bin(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, ...]:
        """Knots ``(x0, x1, y0, y1)`` and end derivatives ``(d0, d1)`` of the bin holding ``v``."""
        xk, yk, dk = self._knots(params)
        idx = _locate(yk if inverse else xk, v)
        return (*_pair(xk, idx), *_pair(yk, idx), *_pair(dk, idx))

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
        flat = v.reshape(-1)
        inside = (flat > -b) & (flat < b)  # at +-bound the spline equals the identity tails exactly
        bins_first = params.reshape(-1, self.num_params).t().contiguous()
        out, logd = self._inside(flat.clamp(-b, b), bins_first, inverse)
        out = torch.where(inside, out, flat)
        return out.reshape(v.shape), logd.masked_fill(~inside, 0.0).reshape(v.shape)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(y, params, inverse=True)

    def _inside(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Map ``v (M,)`` inside the interval with bins-first ``params (num_params, M)``."""
        raise NotImplementedError

    def _knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Knot positions ``x``, ``y`` and derivatives ``d`` from bins-first ``params``."""
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
        xk = spline_knots(_bin_sizes(params[:k], self.min_width), self.bound)
        yk = spline_knots(_bin_sizes(params[k:2 * k], self.min_height), self.bound)
        d = 1.0 + (1.0 - self.min_derivative) * (F.softplus(params[2 * k:]) / math.log(2.0) - 1.0)
        return xk, yk, F.pad(d, (0, 0, 1, 1), value=1.0)

    def _inside(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        x0, x1, y0, y1, d0, d1 = self._bin(v, params, inverse)
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

    The cubic is evaluated in Bernstein form (no cancellation, see
    :func:`_hermite`).  The inverse works from the nearer end of the bin
    (mirroring ``t -> 1 - t`` past the middle), takes the best closed-form
    root (quadratic formula, Cardano, trigonometric) in float64, polishes
    it with bracketed Newton steps (:func:`_solve_hermite`), and finishes
    with one Newton step in the input's dtype, which carries the
    implicit-function gradient ``dt = (du - dp) / p'(t)``.

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
        widths = _bin_sizes(params[:k], self.min_width)
        floor = torch.cat([widths[:1] / m, widths.new_full((k - 2, widths.shape[1]), self.min_height),
                           widths[-1:] / m], dim=0)
        offset = self._height_offset.to(device=params.device, dtype=params.dtype).unsqueeze(1)
        share = _bin_sizes(params[k:2 * k] + offset, 0.0)
        heights = floor + (1.0 - floor.sum(dim=0, keepdim=True)) * share
        slopes = heights / widths
        lo = self.min_derivative
        ratio = lo + (m - lo) * torch.sigmoid(params[2 * k:] + self._ratio_offset)
        d = ratio * torch.minimum(slopes[:-1], slopes[1:])
        return spline_knots(widths, self.bound), spline_knots(heights, self.bound), F.pad(d, (0, 0, 1, 1), value=1.0)

    def _inside(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        x0, x1, y0, y1, d0, d1 = self._bin(v, params, inverse)
        w, h = x1 - x0, y1 - y0
        s = h / w
        a, b = d0 / s, d1 / s
        if inverse:
            # Solve from the nearer end of the bin: past the middle, mirror the cubic
            # (t -> 1 - t swaps a and b) so that the root is small and 1 - u exact.
            u_lo = ((v - y0) / h).clamp(0.0, 1.0)
            u_hi = ((y1 - v) / h).clamp(0.0, 1.0)
            mirror = u_lo > 0.5
            a, b = torch.where(mirror, b, a), torch.where(mirror, a, b)
            u = torch.where(mirror, u_hi, u_lo)
            t = _solve_hermite(a, b, u)
            # One Newton step in the working dtype: polishes the root and gives autograd
            # the implicit-function derivative dt = (du - dp) / p'(t).
            t = (t - (_hermite(a, b, t) - u) / _hermite_slope(a, b, t)).clamp(0.0, 1.0)
            out = torch.where(mirror, x1 - t * w, x0 + t * w)
        else:
            t = ((v - x0) / w).clamp(0.0, 1.0)
            out = y0 + h * _hermite(a, b, t)
        dp = _hermite_slope(a, b, t).clamp_min(torch.finfo(t.dtype).tiny)
        logd = torch.log(s) + torch.log(dp)
        return out, (-logd if inverse else logd)


def _hermite(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Unit cubic with ``p(0) = 0, p(1) = 1, p'(0) = a, p'(1) = b``, in Bernstein form.

    ``p = a t (1-t)^2 + (3 - b) t^2 (1-t) + t^3``: every term is >= 0 for ``b < 3``,
    so there is no cancellation.
    """
    r = 1.0 - t
    return t * (a * r * r + t * ((3.0 - b) * r + t))


def _hermite_slope(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """``p'(t) = a (1-t)^2 + 2 (3 - a - b) t (1-t) + b t^2``."""
    r = 1.0 - t
    return a * r * r + t * (2.0 * (3.0 - a - b) * r + b * t)


@torch.no_grad()
def _solve_hermite(a: Tensor, b: Tensor, u: Tensor, newton_steps: int = 3) -> Tensor:
    """Root in ``[0, 1]`` of ``p(t) = u`` for the increasing unit cubic :func:`_hermite`, no gradient.

    In float64, with ``p(t) = c3 t^3 + c2 t^2 + a t`` (``c2 = 3 - 2a - b``,
    ``c3 = a + b - 2``), candidate roots come from closed forms: the
    quadratic formula ``t = 2u / (a + sqrt(a^2 + 4 c2 u))`` (exact when
    ``c3 = 0``), and the depressed cubic: Cardano's cancellation-free form
    when one root is real, the trigonometric form when three are.  Each
    candidate is clamped to ``[0, 1]`` and the one with the smallest
    residual ``|p(t) - u|`` is kept: this sidesteps the regimes where one
    formula loses precision (``c3 -> 0`` makes the monic form blow up;
    nearly double roots make ``acos`` lose digits).  ``newton_steps``
    Newton steps safeguarded by the bracket ``p(lo) <= u <= p(hi)``
    (bisection when a step leaves it) remove the remaining rounding error.
    """
    dtype = u.dtype
    a, b, u = a.double(), b.double(), u.double()
    c2, c3 = 3.0 - 2.0 * a - b, a + b - 2.0
    candidates = [2.0 * u / (a + torch.sqrt((a * a + 4.0 * c2 * u).clamp_min(0.0)))]
    # monic t^3 + B t^2 + C t + D, depressed with t = tau - B / 3: tau^3 + p tau + q = 0
    safe = torch.where(c3 == 0, torch.ones_like(c3), c3)
    B, C, D = c2 / safe, a / safe, -u / safe
    shift = B / 3.0
    p = C - B * shift
    q = (2.0 * shift * shift - C) * shift + D
    disc = (q / 2.0) ** 2 + (p / 3.0) ** 3
    # one real root: w^3 = -q/2 - sign(q) sqrt(disc), tau = w - p / (3 w)
    sq = torch.sqrt(disc.clamp_min(0.0))
    w3 = -q / 2.0 - torch.where(q >= 0, sq, -sq)
    w = torch.sign(w3) * w3.abs().pow(1.0 / 3.0)
    w_safe = torch.where(w == 0, torch.ones_like(w), w)
    candidates.append(torch.where(w == 0, torch.zeros_like(w), w - p / (3.0 * w_safe)) - shift)
    # three real roots: tau_j = m cos((phi - 2 pi j) / 3), m = 2 sqrt(-p/3), cos(phi) = 3q / (p m)
    m = 2.0 * torch.sqrt((-p / 3.0).clamp_min(0.0))
    pm = p * m
    phi = torch.acos((3.0 * q / torch.where(pm == 0, torch.ones_like(pm), pm)).clamp(-1.0, 1.0))
    candidates += [m * torch.cos((phi - 2.0 * math.pi * j) / 3.0) - shift for j in range(3)]
    cand = torch.nan_to_num(torch.stack(candidates, dim=-1), nan=0.5).clamp(0.0, 1.0)
    resid = _hermite(a.unsqueeze(-1), b.unsqueeze(-1), cand) - u.unsqueeze(-1)
    best = resid.abs().argmin(dim=-1, keepdim=True)
    t = torch.gather(cand, -1, best).squeeze(-1)
    f = torch.gather(resid, -1, best).squeeze(-1)
    lo = torch.where(f <= 0, t, torch.zeros_like(t))
    hi = torch.where(f <= 0, torch.ones_like(t), t)
    for _ in range(newton_steps):
        step = t - f / _hermite_slope(a, b, t)
        t = torch.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
        f = _hermite(a, b, t) - u
        lo = torch.where(f <= 0, t, lo)
        hi = torch.where(f <= 0, hi, t)
    return t.to(dtype)
