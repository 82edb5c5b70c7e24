"""Numerical inversion of elementwise increasing maps, shared by every family without a closed form.

:func:`invert_monotone` solves ``f(x) = y`` elementwise for an increasing
``f`` with ``f(-inf) = -inf`` and ``f(+inf) = +inf``:

1. *Safeguarded Newton from* ``x0 = y``: every evaluation narrows a bracket
   ``[lo, hi]`` that starts as the whole line; a Newton step
   ``x - (f(x) - y) / f'(x)`` is taken when it lands strictly inside it.
2. *Bracket expansion*: while a side is still open, a step towards it is
   capped at ``step * (1 + |x|)``, with ``step`` doubling at every capped
   step (never clamped: a root far out is found, not cut off); once both
   sides are closed, a Newton step that leaves the bracket is replaced by bisection, so the
   iteration cannot diverge.  One evaluation gives both ``f`` and ``f'``,
   so a smooth map costs a handful of evaluations.
3. *Implicit gradient*: the solve runs without autograd; one differentiable
   Newton step ``x = x* - (f(x*) - y) / f'(x*)`` at the solution then gives
   ``dx/dy = 1 / f'(x)`` and ``dx/dtheta = -(df/dtheta) / f'(x)`` for every
   parameter ``theta`` that ``f`` closes over (implicit function theorem),
   and refines the value by one more Newton step.

An :class:`InversionError` is raised when the bracket cannot be found or the
iteration does not reach the tolerance.

:func:`fixed_point` iterates ``x <- y - g(x)`` for contractive residual maps
``y = x + g(x)``: if ``Lip(g) <= L < 1`` it converges (Banach), and after a
step of size ``s`` the error is at most ``s L / (1 - L)``; it raises
:class:`FixedPointError` (an :class:`InversionError`) when it does not.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = [
    "InversionError",
    "invert_monotone",
    "default_tolerance",
    "FixedPointError",
    "fixed_point",
    "fixed_point_tolerance",
]

MonotoneFn = Callable[[Tensor], tuple[Tensor, Tensor]]


class InversionError(RuntimeError):
    """A numerical inverse did not bracket its root or did not converge."""


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative step tolerance ``|dx| <= tol * (1 + |x|)``: 1e-11 in float64, 2e-6 otherwise."""
    return 1e-11 if dtype == torch.float64 else 2e-6


def _solve(
    fn: MonotoneFn, y: Tensor, tol: float, max_iter: int, max_expansions: int, x0: Tensor,
    lo: Optional[Tensor] = None, hi: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Newton from ``x0`` inside a bracket ``[lo, hi]`` (default: the whole line): the root and ``log f'``.

    The root is the last Newton step, ``log f'`` is the one of the last
    evaluation, a step of at most ``tol * (1 + |x|)`` away: its error is
    ``|f''/f'| * tol * (1 + |x|)``, float32 rounding for a smooth map, and it
    saves the evaluation of ``f'`` at the root (a fifth of a small solve).

    Every evaluation narrows the bracket (``f(x) < y`` moves ``lo`` to ``x``,
    else ``hi``).  While a side is still open, a step towards it is capped at
    ``step * (1 + |x|)`` (``step`` doubles at every capped step: an
    expansion), so a flat region cannot throw ``x`` arbitrarily far, while a
    root at ``x ~ 1e4`` is still reached in about 6 capped steps (13 with
    absolute caps); once both sides are closed, a Newton step that leaves
    the bracket is replaced by bisection.  An iteration in
    which every Newton step lands inside a closed bracket (the usual case
    near the root) takes a short path of a dozen tensor ops: for the small
    batches of a policy's rollout the solver's own ops cost as much as the map.
    """
    inf = torch.full_like(y, float("inf"))
    lo = -inf if lo is None else lo
    hi = inf if hi is None else hi
    x = x0.clone()
    step = torch.ones_like(y)
    expansions = torch.zeros_like(y, dtype=torch.int32)
    fx, logd = fn(x)
    done = torch.zeros_like(y, dtype=torch.bool)
    for _ in range(max_iter):
        below = fx < y
        lo = torch.where(below, x, lo)
        hi = torch.where(below, hi, x)
        delta = (fx - y) * torch.exp(-logd)
        newton = x - delta
        inside = (newton > lo) & (newton < hi)  # False for a NaN or infinite step
        step_small = (delta.abs() <= x.abs().mul_(tol).add_(tol)) | (fx == y)
        if bool((done | step_small).all()):
            return torch.where(step_small & inside, newton, x), logd
        closed = torch.isfinite(lo) & torch.isfinite(hi)
        if bool((inside & closed).all()):  # short path: plain Newton steps inside closed brackets
            done = done | step_small
            x = torch.where(done, x, newton)
            fx, logd = fn(x)
            continue
        mid = 0.5 * (lo + hi)
        exhausted = closed & ((mid <= lo) | (mid >= hi) | ((hi - lo) <= tol * (1 + x.abs())))
        done = done | step_small | exhausted
        if bool(done.all()):
            return torch.where(step_small & inside, newton, x), logd
        if bool((expansions > max_expansions).any()):
            break
        cap = step * (1 + x.abs())
        towards_open = torch.where(below, x + cap, x - cap)
        capped = ~closed & (~inside | ((newton - x).abs() > cap))
        x_new = torch.where(capped, towards_open, torch.where(inside, newton, mid))
        expansions = expansions + (capped & ~done).int()
        step = torch.where(capped, 2 * step, step)
        x = torch.where(done, x, x_new)
        fx, logd = fn(x)
    left = ~done
    if bool((expansions > max_expansions).any()):
        raise InversionError(
            f"could not bracket the root of a monotone map for "
            f"{int((left & (expansions > max_expansions)).sum().item())} of {y.numel()} values after "
            f"{max_expansions} expansions (is the map onto the real line? are the targets finite?)"
        )
    raise InversionError(
        f"numerical inverse did not converge for {int(left.sum().item())} of {y.numel()} values in {max_iter} "
        f"iterations (tolerance {tol:g}); largest bracket left {(hi - lo)[left].max().item():.3g}"
    )


def _grid_start(fn: MonotoneFn, y: Tensor, grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bracket ``[lo, hi]`` and a secant start ``x0`` for each target from one batched evaluation on ``grid``.

    ``fn`` is evaluated once on ``grid`` broadcast to ``(G, *y.shape)``; a
    target between two grid values gets that cell as its bracket and the
    secant point as its start, one outside the grid gets the end point as its
    start and one open side.
    """
    g = grid.to(y)
    n = g.shape[0]
    fg, _ = fn(g.reshape(-1, *([1] * y.dim())).expand(n, *y.shape))
    f_rows = fg.reshape(n, -1).T.contiguous()  # (targets, G), increasing along each row
    count = torch.searchsorted(f_rows, y.reshape(-1, 1).contiguous())  # grid values strictly below the target
    i_lo, i_hi = (count - 1).clamp_(min=0), count.clamp(max=n - 1)
    f_lo, f_hi = f_rows.gather(1, i_lo).view_as(y), f_rows.gather(1, i_hi).view_as(y)
    count, x_lo, x_hi = count.view_as(y), g[i_lo].view_as(y), g[i_hi].view_as(y)
    inside = (count > 0) & (count < n)
    lo = torch.where(count > 0, x_lo, -math.inf)
    hi = torch.where(count < n, x_hi, math.inf)
    t = ((y - f_lo) / (f_hi - f_lo)).nan_to_num_(0.5).clamp_(0.0, 1.0)
    x0 = torch.where(inside, torch.lerp(x_lo, x_hi, t), torch.where(count > 0, x_hi, x_lo))
    return x0, lo, hi


def invert_monotone(
    fn: MonotoneFn,
    y: Tensor,
    *,
    tol: Optional[float] = None,
    max_iter: int = 100,
    max_expansions: int = 100,
    x0: Optional[Tensor] = None,
    log_derivative: Optional[Callable[[Tensor], Tensor]] = None,
    grid: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Solve ``fn(x)[0] = y`` elementwise; returns ``x`` and ``log|dx/dy| = -log f'(x)``.

    Args:
        fn: ``x -> (f(x), log f'(x))``, elementwise and increasing, onto the
            real line; it may close over parameters (they get gradients).
        y: targets, any shape.
        tol: relative step tolerance ``|dx| <= tol (1 + |x|)``
            (default :func:`default_tolerance` of ``y.dtype``).
        max_iter: evaluations (Newton, expansion or bisection steps) before :class:`InversionError`.
        max_expansions: capped steps towards an open side before :class:`InversionError`.
        x0: initial guess (default ``y``), e.g. a cheap linearisation of ``f``.
        log_derivative: ``x -> log f'(x)`` alone, for the final log-det under
            autograd, where it is cheaper than ``fn`` (UMNN: one integrand value
            instead of a quadrature); default ``fn(x)[1]``.  Without autograd the
            solve's last evaluation gives the log-det.
        grid: increasing 1-D points at which ``fn`` is first evaluated in one
            batched call (``fn`` must then broadcast an input of shape
            ``(G, *y.shape)`` against its parameters): each target starts
            from the secant point of its grid cell, inside a closed bracket.
            Cheaper than ``x0`` when the map is far from the identity (a
            trained NAF policy's roots deep in flat tails).
            Not combined with ``x0``.
    """
    if not bool(torch.isfinite(y).all()):
        raise InversionError("numerical inverse got non-finite targets")
    tol = default_tolerance(y.dtype) if tol is None else float(tol)
    if tol <= 0:
        raise ValueError(f"tolerance must be positive, got {tol}")
    if x0 is not None and (x0.shape != y.shape or not bool(torch.isfinite(x0).all())):
        raise ValueError(f"initial guess x0 must be finite and shaped like y {tuple(y.shape)}, got {tuple(x0.shape)}")
    if grid is not None and x0 is not None:
        raise ValueError("give either an initial guess x0 or a grid, not both")
    if grid is not None and (grid.dim() != 1 or grid.numel() < 2 or not bool((grid[1:] > grid[:-1]).all())):
        raise ValueError(f"grid must be a 1-D increasing tensor of at least 2 points, got shape {tuple(grid.shape)}")
    log_fprime = log_derivative if log_derivative is not None else (lambda v: fn(v)[1])
    with torch.no_grad():
        lo = hi = None
        if grid is not None:
            start, lo, hi = _grid_start(fn, y.detach(), grid)
        else:
            start = y.detach() if x0 is None else x0.detach().to(y.dtype)
        x_star, logd_star = _solve(fn, y.detach(), tol, max_iter, max_expansions, start, lo, hi)
    if not torch.is_grad_enabled():
        return x_star, -logd_star
    f_star, logd_star = fn(x_star)
    x = x_star - (f_star - y) * torch.exp(-logd_star)  # one differentiable Newton step
    return x, -log_fprime(x)


class FixedPointError(InversionError):
    """Raised when a fixed-point iteration does not reach its tolerance within its iteration cap."""


def fixed_point_tolerance(dtype: torch.dtype) -> float:
    """Relative step tolerance of :func:`fixed_point`: ``1e-12`` in float64, ``1e-6`` in float32/16."""
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
    tol = fixed_point_tolerance(x0.dtype) if tol is None else float(tol)
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
