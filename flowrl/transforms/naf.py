"""Neural autoregressive transformers (Huang et al. 2018): DSF and DDSF, in log space.

DSF, one layer of ``k`` sigmoids mixed on the simplex:
``y = logit(sum_k w_k sigmoid(a_k x + b_k))`` with ``a > 0``, ``w = softmax``.
DDSF stacks dense layers ``h' = logit(W sigmoid(a * (U h) + b))`` with
row-stochastic ``U`` and ``W``.  Every step is increasing, and each is onto
the real line, so the map is a bijection of R.

Everything is computed in log space so that no input in ``[-50, 50]`` (and
beyond) overflows: ``log y = LSE_k(log w_k + log sigmoid(u_k))`` and
``log(1 - y) = LSE_k(log w_k + log sigmoid(-u_k))`` give
``logit(y) = log y - log(1 - y)``, and the derivative is carried as a log
through the layers: ``log dy/dx = LSE_k(log w_k + log a_k + log sigmoid(u_k)
+ log sigmoid(-u_k) + log du_k/dx) - log y - log(1 - y)``.
Each sum over sigmoids is one batched matrix product with the mixing
weights after a shift by the largest term (:func:`_log_mix`), not a
logsumexp over the whole ``n x k`` grid (the numerical inverse evaluates the
transformer several times a dimension, so this cost counts twice).

The pseudo-parameters come from a conditioner (MADE).  Fixed offsets spread
the sigmoids' shifts over ``[-spread, spread]`` (and tilt DDSF's hidden
mixing rows apart), so zero pseudo-parameters give the smooth near-identity
``logit(mean_k sigmoid(x + beta_k))``, not ``k`` copies of one sigmoid (which
get identical gradients and stay a single affine map for ever).  The inverse
is numerical (:func:`flowrl.inversion.invert_monotone`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..inversion import invert_monotone
from .elementwise import ElementwiseBijection

__all__ = ["DeepSigmoid"]

_SOFTPLUS_INV_1 = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_INV_1) = 1

#: Starting grid of the numerical inverse for small batches (see :meth:`DeepSigmoid.inverse`).
START_GRID = torch.sinh(torch.linspace(-10.0, 10.0, 33))  # float32: `.to(y)` is free for float32 targets on the CPU
#: Largest number of targets for which the inverse starts from :data:`START_GRID`.
GRID_MAX_VALUES = 256


def _log_mix(w: Tensor, log_w: Tensor, t: Tensor) -> Tensor:
    """``log sum_k w_jk e^{t_k}`` for weights ``w`` ``(..., n, k)`` and logs ``t`` ``(..., k, c)``: ``(..., n, c)``.

    ``= M + log(W e^{t - M})`` with ``M = max_k t_k``: a batched matrix product
    instead of a logsumexp over the ``n x k`` grid (several times faster), as
    accurate while the sum stays normal.  The sum can underflow only where the
    weights of the largest terms do (saturated mixing logits, e.g. far out in
    the tails); there, and only there, the exact logsumexp is used.
    """
    top = t.amax(dim=-2, keepdim=True)
    total = w @ (t - top).exp()
    floor = torch.finfo(total.dtype).tiny ** 0.75  # ~1e-29 in float32, ~1e-231 in float64
    # On a CPU the test is free and spares the logsumexp; on an accelerator reading it back would
    # stall the device queue at every call, so the exact branch is always computed there instead.
    if total.device.type != "cpu" or bool((total < floor).any()):
        exact = torch.logsumexp(t.unsqueeze(-3) + log_w.unsqueeze(-1), dim=-2)
        return torch.where(total < floor, exact, top + total.clamp_min(floor).log())
    return top + total.log()


class DeepSigmoid(ElementwiseBijection):
    """DSF (``layers=1``) or DDSF (``layers >= 2``) scalar transformer with ``hidden`` sigmoids a layer.

    ``a = softplus(raw + softplus^{-1}(1)) + min_slope`` keeps every slope
    positive (``min_slope`` default 1e-3), so the map grows at least linearly
    in both tails and the numerical inverse always brackets its root.
    ``spread`` (default 1): the initial shifts of the sigmoids span ``[-spread, spread]``.
    """

    analytic_inverse = False  # inverted by bisection (flowrl.inversion.invert_monotone)

    def __init__(
        self, hidden: int = 16, layers: int = 1, min_slope: float = 1e-3, tol: Optional[float] = None,
        spread: float = 1.0,
    ):
        if hidden < 1 or layers < 1:
            raise ValueError(f"DeepSigmoid needs hidden >= 1 and layers >= 1, got {hidden}, {layers}")
        if spread < 0:
            raise ValueError(f"DeepSigmoid needs spread >= 0, got {spread}")
        self.hidden, self.layers, self.min_slope, self.tol = int(hidden), int(layers), float(min_slope), tol
        widths = [1] + [self.hidden] * (self.layers - 1) + [1]
        self._shapes: list[tuple[int, int]] = [(widths[i], widths[i + 1]) for i in range(self.layers)]
        k = self.hidden
        self.num_params = sum((k * m if m > 1 else 0) + 2 * k + n * k for m, n in self._shapes)
        # Symmetry breaking.  Identical sigmoids get identical gradients and stay identical for ever
        # (a DSF whose sigmoids coincide is an affine map), and a conditioner that starts at zero gives
        # identical ones; so the shifts start spread over [-spread, spread] and, in DDSF, the mixing rows
        # of a hidden layer start tilted differently (a fixed offset on the raw pseudo-parameters).
        # spread 1 fits as well as 2 or 3 and keeps the map close enough to the identity that the
        # numerical inverse needs ~5 evaluations a dimension instead of ~11 (DDSF at spread 2).
        ramp = torch.linspace(-1.0, 1.0, k, dtype=torch.float64) if k > 1 else torch.zeros(1, dtype=torch.float64)
        self._shift_offset = float(spread) * ramp  # (k,)
        self._mix_offset = {n: (torch.linspace(-1.0, 1.0, n, dtype=torch.float64)[:, None] * ramp) if n > 1 else None
                            for _, n in self._shapes}  # (n, k) logits

    def _prepare(self, params: Tensor) -> list[tuple]:
        """Per layer ``(log U or None, a, log a, b, log W, U or None, W)`` from raw pseudo-parameters."""
        k, start, out = self.hidden, 0, []
        for m, n in self._shapes:
            sizes = [k * m if m > 1 else 0, k, k, n * k]
            chunks = []
            for s in sizes:
                chunks.append(params[..., start:start + s])
                start += s
            u_raw, a_raw, b, w_raw = chunks
            log_u = torch.log_softmax(u_raw.unflatten(-1, (k, m)), dim=-1) if m > 1 else None
            a = F.softplus(a_raw + _SOFTPLUS_INV_1) + self.min_slope
            b = b + self._shift_offset.to(b)
            w_logits = w_raw.unflatten(-1, (n, k))
            mix_offset = self._mix_offset[n]
            if mix_offset is not None:
                w_logits = w_logits + mix_offset.to(w_logits)
            log_w = torch.log_softmax(w_logits, dim=-1)
            out.append((log_u, a, torch.log(a), b, log_w, None if log_u is None else log_u.exp(), log_w.exp()))
        return out

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log dy/dx)`` elementwise; ``params`` has shape ``x.shape + (num_params,)``."""
        return self._apply(x, self._prepare(params))

    def _apply(self, x: Tensor, prepared: list[tuple]) -> tuple[Tensor, Tensor]:
        h = x.unsqueeze(-1)  # (..., m)
        log_dh = torch.zeros_like(h)  # log dh/dx, all entries positive
        for log_u, a, log_a, b, log_w, u, w in prepared:
            if u is None:
                mixed, log_dmixed = h.expand(*h.shape[:-1], a.shape[-1]), log_dh.expand(*h.shape[:-1], a.shape[-1])
            else:  # U h and log(U dh/dx)
                mixed = (u * h.unsqueeze(-2)).sum(-1)
                log_dmixed = _log_mix(u, log_u, log_dh.unsqueeze(-1)).squeeze(-1)
            pre = a * mixed + b  # (..., k)
            ls_pos = F.logsigmoid(pre)
            ls_neg = ls_pos - pre  # log sigmoid(-u) = log sigmoid(u) - u
            log_dsig = ls_pos + ls_neg + log_a + log_dmixed
            # log y, log(1 - y) and log dy/dx: (..., n, 3) by one product with W
            log_y, log_1my, log_dy = _log_mix(w, log_w, torch.stack([ls_pos, ls_neg, log_dsig], dim=-1)).unbind(-1)
            h = log_y - log_1my
            log_dh = log_dy - log_y - log_1my
        return h.squeeze(-1), log_dh.squeeze(-1)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Numerical inverse (safeguarded Newton on an expanding bracket) with implicit gradients.

        Small batches (at most :data:`GRID_MAX_VALUES` targets) start from one
        batched evaluation on :data:`START_GRID` (``sinh`` of 33 points in
        ``[-10, 10]``, spanning ``|x| <= 1.1e4``), which brackets every root
        and puts Newton within a few steps of it, also where a trained NAF
        policy's roots sit: far out in flat tails, where a start from ``y``
        needs several more evaluations.  For a small batch the grid's extra
        arithmetic is free (per-op overhead dominates); a large batch starts
        from ``y`` instead.
        """
        prepared = self._prepare(params)
        grid = START_GRID if y.numel() <= GRID_MAX_VALUES else None
        return invert_monotone(lambda v: self._apply(v, prepared), y, tol=self.tol, grid=grid)
