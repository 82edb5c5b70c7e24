"""Determinant-identity flows: planar, radial and Sylvester maps.

Each map ``g(v) = v + (low-rank update)`` has a log-det from the matrix
determinant lemma or Sylvester's identity, ``det(I_D + A B) = det(I_M + B A)``.
The map ``g`` is the transform's *forward*; planar and Sylvester maps have no
closed-form inverse, which is found with :func:`flowrl.inversion.invert_monotone`
on scalar increasing equations (safeguarded Newton with a tolerance and an
:class:`~flowrl.inversion.InversionError` when it fails), followed by one
differentiable Newton step so that the inverse carries exact first-order
gradients (implicit differentiation).

All maps are amortised when ``context_dim > 0``: their parameters are a
learned constant plus a network of the context (the hypernetwork strategy
used for variational posteriors ``q(z | x)``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Transform
from ..inversion import default_tolerance, invert_monotone
from ..nn import MLP

__all__ = ["ParameterSource", "PlanarMap", "RadialMap", "SylvesterMap"]


class ParameterSource(nn.Module):
    """Per-row parameters ``theta(c) = theta_0 + NN(c)`` (or ``theta_0`` without context)."""

    def __init__(self, n: int, context_dim: int = 0, hidden_features: Sequence[int] | int = (32,),
                 init_std: float = 0.1):
        super().__init__()
        self.n = n
        self.constant = nn.Parameter(init_std * torch.randn(n))
        self.net = MLP(context_dim, n, hidden_features, nn.Tanh, zero_last=True) if context_dim > 0 else None

    def forward(self, rows: int, context: Optional[Tensor]) -> Tensor:
        theta = self.constant.expand(rows, self.n)
        if self.net is not None:
            if context is None:
                raise ValueError("this amortised map needs a context")
            theta = theta + self.net(context)
        return theta


def _tanh_prime(a: Tensor) -> Tensor:
    """``d tanh(a) / da = 1 - tanh(a)^2``, computed stably as ``4 sigmoid(2a) sigmoid(-2a)``."""
    return 4 * torch.sigmoid(2 * a) * torch.sigmoid(-2 * a)


def _householder_q(a: Tensor) -> Tensor:
    """The ``Q`` factor of the thin QR decomposition of ``a`` ``(rows, D, M)``, as LAPACK's ``geqrf`` gives it.

    ``M`` batched Householder steps in plain tensor operations (no per-matrix solver call, no
    host synchronisation: batched ``linalg.qr`` of many small matrices is slow on GPUs).
    Step ``k`` reflects ``x = a_k[k:]`` onto ``beta e_1`` with ``beta = -sign(x_1) ||x||``
    (LAPACK's sign convention, ``sign(0) = +1``; no reflection where ``x_2.. = 0``), so that the
    result matches ``torch.linalg.qr(a).Q`` up to rounding and saved flows keep their function.
    """
    rows, d, m = a.shape
    idx = torch.arange(d, device=a.device)
    reflectors = []
    for k in range(m):
        x = a[:, :, k] * (idx >= k)  # (rows, D): the column from row k down
        alpha = a[:, k, k]
        tail = (x * (idx > k)).norm(dim=-1)
        beta = -torch.where(alpha >= 0, 1.0, -1.0).to(a.dtype) * torch.sqrt(alpha * alpha + tail * tail)
        u = x - beta[:, None] * (idx == k)
        norm = u.norm(dim=-1, keepdim=True)
        u = torch.where(tail[:, None] > 0, u / norm.clamp_min(torch.finfo(a.dtype).tiny), 0.0)
        reflectors.append(u)
        a = a - 2 * u[:, :, None] * (u[:, :, None] * a).sum(1, keepdim=True)
    q = torch.eye(d, m, dtype=a.dtype, device=a.device).expand(rows, d, m)
    for u in reversed(reflectors):
        q = q - 2 * u[:, :, None] * (u[:, :, None] * q).sum(1, keepdim=True)
    return q


@torch.no_grad()
def _newton_guess(fn, y: Tensor, steps: int) -> Tensor:
    """``steps`` plain Newton steps on ``fn(x) = y`` from ``x = y`` (``fn`` returns ``(f, log f')``).

    No safeguard and no host read: a starting point for :func:`flowrl.inversion.invert_monotone`,
    which brackets and polishes it; entries that left the finite range restart from ``y``.
    """
    x = y.clone()
    for _ in range(steps):
        fx, log_d = fn(x)
        x = x - (fx - y) * torch.exp(-log_d)
    return torch.where(torch.isfinite(x), x, y)


class PlanarMap(Transform):
    """Planar map ``g(v) = v + u' tanh(w^T v + b)`` (Rezende & Mohamed 2015).

    ``log|det| = log(1 + (w^T u') tanh'(w^T v + b))``.  Invertibility needs
    ``w^T u' > -1``; it is enforced by ``u' = u + (m(w^T u) - w^T u) w / ||w||^2``
    with ``m(a) = -1 + eps + softplus(a)`` (``eps = 1e-3`` keeps the log-det
    finite in float32).  Inverse: solve ``alpha + c tanh(alpha + b) = w^T y``
    for ``alpha = w^T v`` to relative tolerance ``tol`` (default: the dtype's).
    """

    analytic_inverse = False

    def __init__(
        self, dim: int, context_dim: int = 0, hidden_features: Sequence[int] | int = (32,), tol: Optional[float] = None
    ):
        super().__init__()
        self.dim, self.tol = dim, tol
        self.params = ParameterSource(2 * dim + 1, context_dim, hidden_features, init_std=1.0 / math.sqrt(dim))

    def _uwb(self, rows: int, context: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        theta = self.params(rows, context)
        u, w, b = theta[:, : self.dim], theta[:, self.dim : 2 * self.dim], theta[:, -1]
        wu = (w * u).sum(-1, keepdim=True)
        m = -1.0 + 1e-3 + F.softplus(wu)
        u_hat = u + (m - wu) * w / ((w * w).sum(-1, keepdim=True) + 1e-8)
        return u_hat, w, b

    def forward(self, v: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        u, w, b = self._uwb(v.shape[0], context)
        a = (w * v).sum(-1) + b
        c = (w * u).sum(-1)
        return v + u * torch.tanh(a)[:, None], torch.log1p(c * _tanh_prime(a))

    #: Start the safeguarded solve from a few plain Newton steps taken without host reads
    #: (``None``: on accelerators, where each iteration's convergence check stalls the queue;
    #: the solve then typically confirms convergence at its first check).
    newton_start: Optional[bool] = None

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        u, w, b = self._uwb(y.shape[0], context)
        c = (w * u).sum(-1)
        t = (w * y).sum(-1)

        def fn(s: Tensor) -> tuple[Tensor, Tensor]:
            return s + c * torch.tanh(s + b), torch.log1p(c * _tanh_prime(s + b))

        start = self.newton_start if self.newton_start is not None else y.device.type != "cpu"
        x0 = _newton_guess(fn, t.detach(), steps=8) if start else None
        alpha, log_dalpha = invert_monotone(fn, t, tol=self.tol, x0=x0)
        return y - u * torch.tanh(alpha + b)[:, None], log_dalpha

    def jacobian_mask(self, dim: int) -> None:
        return None


class RadialMap(Transform):
    """Radial map ``g(v) = v + beta (v - z0) / (alpha + r)``, ``r = ||v - z0||``.

    ``alpha = softplus(a) > 0`` and ``beta = -alpha + softplus(b')`` keep it
    invertible.  ``log|det| = (D-1) log(1 + beta h) + log(1 + beta h + beta h' r)``
    with ``h = 1 / (alpha + r)``; the inverse is closed-form along the radius:
    ``r`` is the positive root of ``r^2 + (alpha + beta - r_y) r - alpha r_y = 0``.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden_features: Sequence[int] | int = (32,)):
        super().__init__()
        self.dim = dim
        self.params = ParameterSource(dim + 2, context_dim, hidden_features, init_std=0.5)

    def _params(self, rows: int, context: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        theta = self.params(rows, context)
        z0 = theta[:, : self.dim]
        alpha = F.softplus(theta[:, -2]) + 1e-4
        beta = -alpha + F.softplus(theta[:, -1]) + 1e-4
        return z0, alpha, beta

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1 / (alpha + r)
        return (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * h - beta * h * h * r)

    def forward(self, v: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._params(v.shape[0], context)
        d = v - z0
        r = d.norm(dim=-1)
        return v + (beta / (alpha + r))[:, None] * d, self._logdet(r, alpha, beta)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._params(y.shape[0], context)
        d = y - z0
        ry = d.norm(dim=-1)
        p = alpha + beta - ry
        disc = torch.sqrt(p * p + 4 * alpha * ry)
        # two algebraically equal roots; pick the one free of cancellation
        r = torch.where(p > 0, 2 * alpha * ry / (p + disc).clamp_min(1e-30), (disc - p) / 2)
        scale = 1 + beta / (alpha + r)
        return z0 + d / scale[:, None], -self._logdet(r, alpha, beta)


class SylvesterMap(Transform):
    """Sylvester map ``g(v) = v + Q R tanh(R~ Q^T v + b)`` (van den Berg et al. 2018).

    ``Q`` (D x M) has orthonormal columns, ``R`` and ``R~`` are upper
    triangular with ``R_ii, R~_ii = tanh(.)`` so that ``R_ii R~_ii > -1``.
    By Sylvester's identity ``log|det| = sum_i log(1 + tanh'(a_i) R_ii R~_ii)``.
    ``variant``: ``"orthogonal"`` (Q from a QR decomposition, M <= D),
    ``"householder"`` (Q a product of ``reflections`` Householder matrices,
    M = D) or ``"triangular"`` (Q the identity or the reversal, M = D).
    Inverse: with ``s = Q^T v`` the equation ``s + R tanh(R~ s + b) = Q^T y`` is
    upper triangular, solved from the last coordinate up as scalar increasing
    equations (to relative tolerance ``tol``); the orthogonal complement is
    unchanged.
    """

    analytic_inverse = False

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        variant: str = "orthogonal",
        rank: Optional[int] = None,
        reflections: int = 2,
        reverse: bool = False,
        hidden_features: Sequence[int] | int = (32,),
        tol: Optional[float] = None,
    ):
        super().__init__()
        self.tol = tol
        if variant not in ("orthogonal", "householder", "triangular"):
            raise ValueError(f"unknown Sylvester variant {variant!r}; use 'orthogonal', 'householder' or 'triangular'")
        m = dim if (rank is None or variant != "orthogonal") else int(rank)
        if not 1 <= m <= dim:
            raise ValueError(f"rank must be in [1, {dim}], got {rank}")
        self.dim, self.m, self.variant, self.reflections = dim, m, variant, reflections
        n_tri = m * (m + 1) // 2
        n_q = {"orthogonal": dim * m, "householder": reflections * dim, "triangular": 0}[variant]
        self.n_q = n_q
        self.params = ParameterSource(2 * n_tri + m + n_q, context_dim, hidden_features, init_std=0.3)
        iu = torch.triu_indices(m, m)
        # Upper-triangular matrices are one gather from [flat, 0]: entry (i, j) reads flat[k] on and
        # above the diagonal, the appended zero (index n_tri) below it.
        gather = torch.full((m, m), n_tri, dtype=torch.long)
        gather[iu[0], iu[1]] = torch.arange(n_tri)
        self.register_buffer("triu_gather", gather.reshape(-1), persistent=False)
        self.register_buffer("triu_is_diag", iu[0] == iu[1], persistent=False)
        perm = torch.arange(dim - 1, -1, -1) if reverse else torch.arange(dim)
        self.register_buffer("perm_matrix", torch.eye(dim)[:, perm], persistent=False)

    def _upper(self, flat: Tensor) -> Tensor:
        """Rows of ``n_tri`` values -> upper-triangular ``(rows, m, m)`` with ``tanh`` on the diagonal."""
        flat = torch.where(self.triu_is_diag, torch.tanh(flat), flat)
        padded = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=-1)
        return padded[:, self.triu_gather].reshape(flat.shape[0], self.m, self.m)

    def _q(self, flat: Tensor, rows: int) -> Tensor:
        if self.variant == "triangular":
            return self.perm_matrix.to(flat.dtype).expand(rows, self.dim, self.dim)
        if self.variant == "orthogonal":
            a = flat.reshape(rows, self.dim, self.m) + torch.eye(self.dim, self.m, dtype=flat.dtype, device=flat.device)
            # LAPACK's batched QR is the fastest on a CPU; on GPUs, where batched QR of small matrices
            # costs ~100x more, the same Q comes from plain tensor operations.
            return torch.linalg.qr(a).Q if a.device.type == "cpu" else _householder_q(a)
        q = torch.eye(self.dim, dtype=flat.dtype, device=flat.device).expand(rows, self.dim, self.dim)
        for v in flat.reshape(rows, self.reflections, self.dim).unbind(1):
            v = v + 1e-3 * (v.norm(dim=-1, keepdim=True) < 1e-6)  # a zero vector reflects nothing
            v = v / v.norm(dim=-1, keepdim=True)
            q = q - 2 * (q @ v[:, :, None]) * v[:, None, :]
        return q

    def _unpack(self, rows: int, context: Optional[Tensor]):
        theta = self.params(rows, context)
        n_tri = self.m * (self.m + 1) // 2
        r = self._upper(theta[:, :n_tri])
        r_tilde = self._upper(theta[:, n_tri : 2 * n_tri])
        b = theta[:, 2 * n_tri : 2 * n_tri + self.m]
        q = self._q(theta[:, 2 * n_tri + self.m :], rows)
        return q, r, r_tilde, b

    def _logdet(self, pre: Tensor, r: Tensor, r_tilde: Tensor) -> Tensor:
        diag = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
        return torch.log1p(diag * _tanh_prime(pre)).sum(-1)

    def forward(self, v: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        q, r, r_tilde, b = self._unpack(v.shape[0], context)
        s = (q.transpose(1, 2) @ v[:, :, None]).squeeze(-1)
        pre = (r_tilde @ s[:, :, None]).squeeze(-1) + b
        y = v + (q @ (r @ torch.tanh(pre)[:, :, None])).squeeze(-1)
        return y, self._logdet(pre, r, r_tilde)

    #: Newton steps of the joint solve (quadratic convergence: ~5 from the start ``s = t`` at
    #: float64 tolerance for well-conditioned rows); rows it leaves unconverged are solved again.
    joint_newton_steps = 12
    #: Solve the inverse jointly (``True``), coordinate by coordinate (``False``) or by device
    #: (``None``: jointly on accelerators, where every scalar solve's host reads stall the queue).
    solve_jointly: Optional[bool] = None

    def _solve_jointly(self, t: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Newton on ``F(s) = s + R tanh(R~ s + b) - t = 0`` for all rows and coordinates at once.

        ``dF/ds = I + R diag(tanh'(pre)) R~`` is upper triangular with a positive diagonal, so a
        step is one batched triangular solve: a fixed number of steps and no host reads, where
        the coordinate-by-coordinate solve takes ``M`` safeguarded scalar solves.  Returns ``s``
        and whether each row's last step was within the tolerance (and finite).  A last step at
        rounding level, ``64 eps (1 + max |s|)``, counts as converged too: in float32 the triangular
        solve amplifies the rounding of ``s ~ 10`` past the default tolerance (2e-6) on rows
        with a small diagonal, where the scalar solves would stop at the same accuracy.
        """
        tol = max(self.tol if self.tol is not None else default_tolerance(t.dtype), 64 * torch.finfo(t.dtype).eps)
        eye = torch.eye(self.m, dtype=t.dtype, device=t.device)
        s = t.clone()
        step = torch.full_like(t, float("inf"))
        for _ in range(self.joint_newton_steps):
            pre = (r_tilde @ s[:, :, None]).squeeze(-1) + b
            residual = s + (r @ torch.tanh(pre)[:, :, None]).squeeze(-1) - t
            jac = eye + r * _tanh_prime(pre)[:, None, :] @ r_tilde
            step = torch.linalg.solve_triangular(jac, residual[:, :, None], upper=True).squeeze(-1)
            s = s - step
        scale = 1 + s.abs().amax(dim=-1, keepdim=True)  # rounding spreads along the triangular coupling
        converged = ((step.abs() <= tol * scale) & torch.isfinite(s)).all(dim=-1)
        return s, converged

    @staticmethod
    def _row_map(rii: Tensor, rtii: Tensor, rest: Tensor):
        """``x -> (x + r_ii tanh(r~_ii x + rest), log(1 + r_ii r~_ii tanh'(r~_ii x + rest)))``: one row of the solve."""
        def row(x: Tensor) -> tuple[Tensor, Tensor]:
            pre = rtii * x + rest
            return x + rii * torch.tanh(pre), torch.log1p(rii * rtii * _tanh_prime(pre))
        return row

    def _solve_sequentially(self, t: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor) -> Tensor:
        """The triangular system from the last coordinate up, one safeguarded scalar solve each."""
        s = torch.zeros_like(t)
        # R~ is upper triangular: pre_j = (R~ s)_j + b_j depends on s_j.. only, so tanh(pre_j) is
        # final once s_j is solved and is kept instead of recomputing R~ s at every step.
        tanh_pre = torch.zeros_like(t)
        for i in range(self.m - 1, -1, -1):
            rest = (r_tilde[:, i, i + 1 :] * s[:, i + 1 :]).sum(-1) + b[:, i]
            known = (r[:, i, i + 1 :] * tanh_pre[:, i + 1 :]).sum(-1)
            target = t[:, i] - known
            rii, rtii = r[:, i, i], r_tilde[:, i, i]
            s[:, i] = invert_monotone(self._row_map(rii, rtii, rest), target, tol=self.tol)[0]
            tanh_pre[:, i] = torch.tanh(rtii * s[:, i] + rest)
        return s

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        q, r, r_tilde, b = self._unpack(y.shape[0], context)
        t = (q.transpose(1, 2) @ y[:, :, None]).squeeze(-1)
        with torch.no_grad():
            joint = self.solve_jointly if self.solve_jointly is not None else t.device.type != "cpu"
            if not joint:  # a CPU: host reads are free, and M scalar solves cost less than the Newton steps
                s = self._solve_sequentially(t, r, r_tilde, b)
                converged = torch.ones_like(t[:, 0], dtype=torch.bool)
            else:  # accelerators: a fixed number of batched Newton steps, no host read until the check
                s, converged = self._solve_jointly(t, r, r_tilde, b)
            if not bool(converged.all()):  # the one host read of the joint solve
                rows = (~converged).nonzero().squeeze(1)
                s[rows] = self._solve_sequentially(t[rows], r[rows], r_tilde[rows], b[rows])
        # one differentiable Newton step on the whole triangular system
        pre = (r_tilde @ s[:, :, None]).squeeze(-1) + b
        residual = s + (r @ torch.tanh(pre)[:, :, None]).squeeze(-1) - t
        jac = torch.eye(self.m, dtype=y.dtype, device=y.device) + r * _tanh_prime(pre)[:, None, :] @ r_tilde
        s = s - torch.linalg.solve_triangular(jac, residual[:, :, None], upper=True).squeeze(-1)
        pre = (r_tilde @ s[:, :, None]).squeeze(-1) + b
        v = y - (q @ (r @ torch.tanh(pre)[:, :, None])).squeeze(-1)
        return v, -self._logdet(pre, r, r_tilde)
