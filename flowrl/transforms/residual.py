"""Invertible residual blocks (i-ResNet, Behrmann et al. 2019; Residual Flows, Chen et al. 2019).

``z = x + g(x, c)`` with ``Lip_x(g) <= L < 1`` (spectral normalisation,
LipSwish), so the block is invertible; ``log|det dz/dx| = log det(I + J_g)``.

Log-determinant modes (``logdet=``):

* ``"exact"``: ``slogdet(I + J_g)`` from the analytic Jacobian of ``g``.
* ``"series"``: in training, the power series ``sum_k (-1)^{k+1} tr(J^k)/k``
  with Hutchinson probes and either the unbiased Russian-roulette truncation
  (``estimator="roulette"``) or ``n_terms`` fixed terms (biased); with
  ``neumann_grad`` the gradient is the Neumann-series estimator, whose memory
  does not grow with the number of terms, and with ``grad_in_forward`` that
  gradient is computed during the forward pass (nothing of the series is kept
  for backward).
* ``"auto"`` (default): exact when ``D <= exact_dim`` (training) or
  ``D <= eval_exact_dim`` (eval), the series otherwise.

Evaluation mode is deterministic: the spectral-norm estimates are frozen
(converged on entering eval), and a series log-det uses fixed probes and
``n`` terms chosen so that the truncation error is at most ``eval_tol``
(``|error| <= D L^{n+1} / ((n+1)(1-L))``, ``L = coeff ** n_layers``).  The
traces are exact (``D`` basis probes) when ``D <= eval_probes``; otherwise
``m = eval_probes`` fixed Rademacher probes add an error whose standard
deviation (over the probe draw) is at most ``sqrt(2 D / m) (-log(1 - L))``.
With the default ``eval_exact_dim = 64`` the eval log-det is exact (to float
precision) up to 64 dimensions.

The inverse solves ``x = z - g(x)`` by fixed-point iteration (tolerance,
iteration cap, :class:`~flowrl.inversion.FixedPointError`); it is
differentiable by implicit differentiation: ``dx = (I + J_g)^{-1}(dz - dg)``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..core import Transform
from ..estimators import (
    exact_logdet,
    fixed_weights,
    power_series_logdet,
    roulette_weights,
    sample_probes,
    terms_for_bound,
)
from ..inversion import fixed_point
from ..spectral import Linearisation, LipschitzMLP

__all__ = ["ResidualBlock"]


class ResidualBlock(Transform):
    """``z = x + g(x, c)`` over vectors of size ``dim``; see the module docstring for the options."""

    g: LipschitzMLP

    analytic_inverse = False

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden_features: int | Sequence[int] = (64, 64),
        coeff: float = 0.97,
        n_power_iterations: int = 1,
        logdet: str = "auto",
        exact_dim: int = 8,
        eval_exact_dim: int = 64,
        estimator: str = "roulette",
        n_exact_terms: int = 2,
        geom_p: float = 0.5,
        n_terms: int = 8,
        n_probes: int = 1,
        probe: str = "rademacher",
        neumann_grad: bool = True,
        grad_in_forward: bool = True,
        eval_tol: float = 1e-2,
        eval_probes: int = 64,
        inverse_tol: Optional[float] = None,
        inverse_max_iter: int = 1000,
    ):
        super().__init__()
        if logdet not in ("auto", "exact", "series"):
            raise ValueError(f"unknown logdet mode {logdet!r}; use 'auto', 'exact' or 'series'")
        if estimator not in ("roulette", "fixed"):
            raise ValueError(f"unknown estimator {estimator!r}; use 'roulette' or 'fixed'")
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"unknown probe {probe!r}; use 'rademacher' or 'gaussian'")
        if n_probes < 1 or eval_probes < 1:
            raise ValueError("n_probes and eval_probes must be >= 1")
        self.dim = int(dim)
        self.context_dim = int(context_dim)
        self.g = LipschitzMLP(dim, context_dim, hidden_features, coeff, n_power_iterations)
        self.logdet_mode = logdet
        self.exact_dim, self.eval_exact_dim = int(exact_dim), int(eval_exact_dim)
        self.estimator, self.n_exact_terms, self.geom_p, self.n_terms = estimator, n_exact_terms, geom_p, n_terms
        self.n_probes, self.probe = int(n_probes), probe
        self.neumann_grad, self.grad_in_forward = bool(neumann_grad), bool(grad_in_forward)
        self.eval_tol, self.eval_probes = float(eval_tol), int(eval_probes)
        self.inverse_tol, self.inverse_max_iter = inverse_tol, int(inverse_max_iter)
        self.last_inverse_iterations = 0

    # ----------------------------------------------------------------- helpers
    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"residual block over {self.dim} features got input of shape {tuple(x.shape)}")

    def _exact(self) -> bool:
        if self.logdet_mode != "auto":
            return self.logdet_mode == "exact"
        return self.dim <= (self.exact_dim if self.training else self.eval_exact_dim)

    def _needs_grad(self, x: Tensor, context: Optional[Tensor]) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or (context is not None and context.requires_grad) or any(
            p.requires_grad for p in self.g.parameters()
        )

    def neumann_surrogate(self, x: Tensor, context: Optional[Tensor], probes: Tensor, w: Tensor) -> Tensor:
        """``mean_m v^T J_g(x) w`` per row: its gradient is the Neumann-series log-det gradient."""
        _, lin = self.g.evaluate(self.g.weights(update=False), x, context, slopes=True)
        return (probes * lin.jvp(w)).sum(-1).mean(-1)

    # ----------------------------------------------------------------- log-det
    def _logdet(self, x: Tensor, context: Optional[Tensor], lin: Linearisation) -> Tensor:
        if self._exact():
            return exact_logdet(lin.jacobian())
        if not self.training:
            return self._bounded_series(lin)
        shape = (x.shape[0], self.n_probes, self.dim)
        probes = sample_probes(shape, self.probe, dtype=x.dtype, device=x.device)
        if self.estimator == "roulette":
            weights = roulette_weights(self.n_exact_terms, self.geom_p)
        else:
            weights = fixed_weights(self.n_terms)
        if not self._needs_grad(x, context):
            return power_series_logdet(lin.jvp, probes, weights)[0]
        if not self.neumann_grad:  # backprop through every term: memory grows with N
            return power_series_logdet(lin.jvp, probes, weights)[0]
        with torch.no_grad():
            value, w = power_series_logdet(lin.detach().jvp, probes, weights, neumann=True)
        assert w is not None  # neumann=True returns the Neumann weights
        if self.grad_in_forward:
            params = [p for p in self.g.parameters() if p.requires_grad]
            return _ForwardGradLogdet.apply(value, x, context, probes, w, self, *params)
        surrogate = self.neumann_surrogate(x, context, probes, w)
        return value + (surrogate - surrogate.detach())

    def _bounded_series(self, lin: Linearisation) -> Tensor:
        lip = self.g.lipschitz_bound
        n = terms_for_bound(self.dim, lip, self.eval_tol)
        w0 = lin.weights[0]
        batch = lin.slopes[0].shape[0] if lin.slopes else 1
        if self.dim <= self.eval_probes:  # basis probes: exact traces, only the truncation error remains
            probes = torch.eye(self.dim, dtype=w0.dtype, device=w0.device).unsqueeze(0)
            return power_series_logdet(lin.jvp, probes.expand(batch, -1, -1), fixed_weights(n), basis=True)[0]
        gen = torch.Generator(device=w0.device).manual_seed(0)
        probes = sample_probes((1, self.eval_probes, self.dim), "rademacher", dtype=w0.dtype,
                               device=w0.device, generator=gen)
        return power_series_logdet(lin.jvp, probes.expand(batch, -1, -1), fixed_weights(n))[0]

    # --------------------------------------------------------------- transform
    def _slopes_grad(self) -> bool:
        """Whether the log-det differentiates through the activation slopes (not with the Neumann gradient)."""
        return self._exact() or not self.training or not self.neumann_grad

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        gx, lin = self.g.evaluate(self.g.weights(), x, context, slopes=True, slopes_grad=self._slopes_grad())
        return x + gx, self._logdet(x, context, lin)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        weights = self.g.weights()
        with torch.no_grad():
            frozen = [w.detach() for w in weights]
            zd = z.detach()
            cd = None if context is None else context.detach()
            x_star, its = fixed_point(
                lambda x: zd - self.g.evaluate(frozen, x, cd)[0], zd,
                tol=self.inverse_tol, max_iter=self.inverse_max_iter,
            )
        self.last_inverse_iterations = its
        if not self._needs_grad(z, context):
            with torch.no_grad():
                _, lin = self.g.evaluate(frozen, x_star, cd, slopes=True)
                return x_star, -self._logdet(x_star, cd, lin)
        # x = z - g(x*) has the right value; the hook turns its gradient u into
        # (I + J_g)^{-T} u, the implicit-function gradient of the fixed point.
        x = z - self.g.evaluate(weights, x_star, context)[0]
        with torch.no_grad():
            lin_star = self.g.evaluate(frozen, x_star, cd, slopes=True)[1]
        x.register_hook(lambda u: self._implicit_solve(lin_star, u))
        _, lin = self.g.evaluate(weights, x, context, slopes=True, slopes_grad=self._slopes_grad())
        return x, -self._logdet(x, context, lin)

    def _implicit_solve(self, lin: Linearisation, u: Tensor) -> Tensor:
        """``v = (I + J_g)^{-T} u``: by LU for ``D <= eval_exact_dim``, else by iterating ``v <- u - J^T v``."""
        if self.dim <= self.eval_exact_dim:
            jac = lin.jacobian()
            eye = torch.eye(self.dim, dtype=u.dtype, device=u.device)
            return torch.linalg.solve((eye + jac).transpose(1, 2), u.unsqueeze(-1)).squeeze(-1)
        return fixed_point(lambda v: u - lin.vjp(v), u, tol=self.inverse_tol, max_iter=self.inverse_max_iter)[0]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}, logdet={self.logdet_mode!r}"


class _ForwardGradLogdet(torch.autograd.Function):
    """Log-det value whose Neumann gradient is computed in the forward pass (Chen et al. 2019, Sec. 3.2).

    Forward stores ``d(sum_b s_b)/d(x, c, params)`` of the surrogate ``s``; backward
    scales them by the incoming gradient.  When that gradient is not the same
    for every row (a weighted loss), backward recomputes the surrogate once
    with the row weights, so the result is right for any loss.
    """

    @staticmethod
    def forward(fctx, value, x, context, probes, w, block, *params):  # noqa: D102
        fctx.block = block
        fctx.has_context = context is not None
        with torch.enable_grad():
            xs = x.detach().requires_grad_(x.requires_grad)
            cs = None if context is None else context.detach().requires_grad_(context.requires_grad)
            s = block.neumann_surrogate(xs, cs, probes, w)
            inputs = [t for t in (xs, cs, *params) if t is not None and t.requires_grad]
            grads = torch.autograd.grad(s.sum(), inputs, allow_unused=True) if inputs else ()
        fctx.input_mask = [t is not None and t.requires_grad for t in (xs, cs, *params)]
        saved = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, inputs)]
        fctx.save_for_backward(x, *(t for t in (context,) if t is not None), probes, w, *saved)
        fctx.n_params = len(params)
        return value.clone()

    @staticmethod
    def backward(fctx, grad_out):  # noqa: D102
        saved = list(fctx.saved_tensors)
        x = saved.pop(0)
        context = saved.pop(0) if fctx.has_context else None
        probes, w = saved.pop(0), saved.pop(0)
        mask = fctx.input_mask
        if bool((grad_out == grad_out[:1]).all()):
            scale = grad_out[:1]
            grads: list[Optional[Tensor]] = []
            it = iter(saved)
            for i, needed in enumerate(mask):
                if not needed:
                    grads.append(None)
                    continue
                g = next(it)
                grads.append(g * grad_out.reshape(-1, 1) if i < 2 else g * scale.reshape(()))
        else:
            params = [p for p in fctx.block.g.parameters() if p.requires_grad]
            with torch.enable_grad():
                xs = x.detach().requires_grad_(mask[0])
                cs = None if context is None else context.detach().requires_grad_(mask[1])
                s = fctx.block.neumann_surrogate(xs, cs, probes, w)
                cand = [xs, cs, *params]
                inputs = [t for t, m in zip(cand, mask) if m]
                out = torch.autograd.grad((s * grad_out).sum(), inputs, allow_unused=True)
            it = iter(out)
            grads = [next(it) if m else None for m in mask]
        return (None, grads[0], grads[1], None, None, None, *grads[2:])
