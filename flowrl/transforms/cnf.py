"""Continuous normalizing flows (FFJORD, Grathwohl et al. 2019).

``dz/dt = f(z, t, c)`` carries data ``z(0) = x`` to noise ``z(T)``; by the
instantaneous change of variables ``d log|det dz(t)/dx| / dt = tr(df/dz)``, so
``log|det dz(T)/dx| = int_0^T tr(df/dz) dt``.  The inverse integrates the same
system from ``T`` back to ``0``.

Trace: exact (``D`` Jacobian-vector products propagated through the dynamics
network in one batched pass) or Hutchinson ``v^T (df/dz) v`` with Rademacher
or Gaussian probes held fixed during one solve.  ``trace="auto"`` is exact for
``D <= exact_dim`` in training and ``D <= eval_exact_dim`` in eval; beyond
that, eval uses ``eval_probes`` fixed (seeded) Rademacher probes, so it is
deterministic, with standard deviation of the log-det error at most
``sqrt(2 / m) ||int_0^T df/dz dt||_F``.

Solvers come from torchdiffeq: ``odeint`` (backprop through the solver) or
``odeint_adjoint`` (``adjoint=True``: constant memory in the number of steps).
The step-size controller sees detached error norms, so gradients are those of
the discrete solution with its steps held fixed (no spurious coupling between
batch rows through the step size).  Adaptive tolerances below ``50 eps`` of
the dtype are raised to it (float32: ``6e-6``), where rounding would dominate
the error estimate.

Regularisation (Finlay et al. 2020): with ``kinetic_reg`` or ``jacobian_reg``
positive, a training forward pass also integrates ``int ||f||^2 dt`` and
``int ||df/dz||_F^2 dt`` (Hutchinson estimate ``||(df/dz) v||^2`` when the trace
is stochastic); :meth:`CNF.regularization_loss` returns their weighted batch
mean.  ``nfe`` counts dynamics evaluations (including adjoint backward solves).
"""

from __future__ import annotations

from typing import Optional, Sequence, cast

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from ..core import Transform
from ..estimators import sample_probes
from ..nn import as_hidden

__all__ = ["ODEMLP", "CNF", "cnf_regularization", "cnf_nfe"]


class ODEMLP(nn.Module):
    """Dynamics ``f(z, t, c)``: an MLP with ``t`` appended to every layer's input and tanh activations.

    :meth:`forward_and_jvp` returns ``f`` and ``(df/dz) V`` for tangents ``V``
    of shape ``(B or 1, m, D)`` by forward-mode propagation through the layers
    (``V -> s'(h) * (W_z V)``), which is differentiable with first-order autograd.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden_features: int | Sequence[int] = (64, 64),
                 zero_last: bool = True):
        super().__init__()
        widths = [dim, *as_hidden(hidden_features), dim]
        linears = [nn.Linear(a + 1 + (context_dim if i == 0 else 0), b)
                   for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
        if zero_last:
            nn.init.zeros_(linears[-1].weight)
            nn.init.zeros_(linears[-1].bias)
        self.layers = nn.ModuleList(linears)
        self.dim, self.context_dim = dim, context_dim
        self.widths = widths

    def _inputs(self, t: Tensor, z: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        tt = t.to(z.dtype).reshape(1, 1).expand(z.shape[0], 1)
        first = [z, tt] if context is None else [z, tt, context.to(z.dtype)]
        return torch.cat(first, dim=1), tt

    def forward_and_jvp(self, t: Tensor, z: Tensor, context: Optional[Tensor],
                        tangents: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        inp, tt = self._inputs(t, z, context)
        layers = cast(Sequence[nn.Linear], self.layers)
        h = layers[0](inp)
        tan = None if tangents is None else tangents @ layers[0].weight[:, : self.dim].t()
        for layer, width in zip(layers[1:], self.widths[1:-1]):
            a = torch.tanh(h)
            if tan is not None:
                tan = tan * (1 - a * a).unsqueeze(1)
                tan = tan @ layer.weight[:, :width].t()
            h = layer(torch.cat([a, tt], dim=1))
        return h, tan

    def forward(self, t: Tensor, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.forward_and_jvp(t, z, context, None)[0]


def _detached_rms_norm(tensors) -> Tensor:
    """Error norm for the step-size controller, cut from the graph (steps are not differentiated)."""
    if isinstance(tensors, Tensor):
        tensors = (tensors,)
    return max(t.detach().pow(2).mean().sqrt() for t in tensors if t.numel() > 0)


class _Augmented(nn.Module):
    """The augmented dynamics ``(z, logdet, [c], [kinetic, frobenius])`` for one solve."""

    def __init__(self, cnf: "CNF", probes: Tensor, exact: bool, has_context: bool, regularize: bool):
        super().__init__()
        self.dynamics = cnf.dynamics
        self.counter = cnf._nfe
        self.probes, self.exact = probes, exact
        self.has_context, self.regularize = has_context, regularize

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.counter[0] += 1
        z = state[0]
        context = state[2] if self.has_context else None
        f, jv = _dynamics_and_jvp(self.dynamics, t, z, context, self.probes)
        if self.exact:
            trace = torch.diagonal(jv, dim1=1, dim2=2).sum(-1)
        else:
            trace = (self.probes * jv).sum(-1).mean(-1)
        out = [f, trace]
        if context is not None:
            out.append(torch.zeros_like(context))
        if self.regularize:
            out.append((f * f).sum(-1))
            frob = (jv * jv).sum((-1, -2)) if self.exact else (jv * jv).sum(-1).mean(-1)
            out.append(frob)
        return tuple(out)


def _dynamics_and_jvp(dynamics: nn.Module, t: Tensor, z: Tensor, context: Optional[Tensor],
                      tangents: Tensor) -> tuple[Tensor, Tensor]:
    """``f`` and ``(df/dz) V``: analytic when the dynamics offer it, by autograd otherwise.

    The autograd fallback computes ``V^T (df/dz)`` (vector-Jacobian products),
    which has the same trace and Frobenius norm estimates.
    """
    analytic = getattr(dynamics, "forward_and_jvp", None)
    if analytic is not None:
        return analytic(t, z, context, tangents)
    with torch.enable_grad():
        zz = z if z.requires_grad else z.detach().requires_grad_(True)
        f = dynamics(t, zz, context)
        vs = tangents.expand(z.shape[0], -1, -1)
        rows = [torch.autograd.grad(f, zz, vs[:, j], create_graph=True)[0] for j in range(vs.shape[1])]
    return f, torch.stack(rows, dim=1)


class CNF(Transform):
    """One continuous flow block ``z(T) = x + int_0^T f(z, t, c) dt``; see the module docstring."""

    analytic_inverse = False

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden_features: int | Sequence[int] = (64, 64),
        dynamics: Optional[nn.Module] = None,
        T: float = 1.0,
        solver: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: Optional[float] = None,
        adjoint: bool = False,
        trace: str = "auto",
        exact_dim: int = 8,
        eval_exact_dim: int = 64,
        probe: str = "rademacher",
        n_probes: int = 1,
        eval_probes: int = 64,
        kinetic_reg: float = 0.0,
        jacobian_reg: float = 0.0,
        max_num_steps: int = 10_000,
    ):
        super().__init__()
        if trace not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"unknown trace {trace!r}; use 'auto', 'exact' or 'hutchinson'")
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"unknown probe {probe!r}; use 'rademacher' or 'gaussian'")
        if T <= 0:
            raise ValueError(f"integration time T must be positive, got {T}")
        if rtol <= 0 or atol <= 0:
            raise ValueError("rtol and atol must be positive")
        self.dim, self.context_dim = int(dim), int(context_dim)
        self.dynamics = dynamics if dynamics is not None else ODEMLP(dim, context_dim, hidden_features)
        self.T, self.solver, self.rtol, self.atol, self.step_size = float(T), solver, rtol, atol, step_size
        self.adjoint, self.trace = bool(adjoint), trace
        self.exact_dim, self.eval_exact_dim = int(exact_dim), int(eval_exact_dim)
        self.probe, self.n_probes, self.eval_probes = probe, int(n_probes), int(eval_probes)
        self.kinetic_reg, self.jacobian_reg = float(kinetic_reg), float(jacobian_reg)
        self.max_num_steps = int(max_num_steps)
        self._nfe = [0]
        self.regularization: dict[str, Tensor] = {}

    # ------------------------------------------------------------- counters
    @property
    def nfe(self) -> int:
        """Dynamics evaluations since the last :meth:`reset_nfe` (forward, inverse and adjoint solves)."""
        return self._nfe[0]

    def reset_nfe(self) -> None:
        self._nfe[0] = 0

    def regularization_loss(self) -> Tensor:
        """``kinetic_reg * mean int ||f||^2 + jacobian_reg * mean int ||J||_F^2`` of the last training forward."""
        if not self.regularization:
            return next(self.dynamics.parameters()).new_zeros(())
        return (self.kinetic_reg * self.regularization["kinetic"].mean()
                + self.jacobian_reg * self.regularization["jacobian"].mean())

    # --------------------------------------------------------------- solving
    def _exact(self) -> bool:
        if self.trace != "auto":
            return self.trace == "exact"
        return self.dim <= (self.exact_dim if self.training else self.eval_exact_dim)

    def _probes(self, z: Tensor, exact: bool) -> Tensor:
        if exact:
            return torch.eye(self.dim, dtype=z.dtype, device=z.device).unsqueeze(0)
        if self.training:
            return sample_probes((z.shape[0], self.n_probes, self.dim), self.probe, dtype=z.dtype, device=z.device)
        gen = torch.Generator(device=z.device).manual_seed(0)
        return sample_probes((1, self.eval_probes, self.dim), "rademacher", dtype=z.dtype, device=z.device,
                             generator=gen)

    def _options(self, dtype: torch.dtype) -> tuple[dict, float, float]:
        if self.step_size is not None:
            return dict(step_size=self.step_size), self.rtol, self.atol
        floor = 50 * torch.finfo(dtype).eps
        opts = dict(norm=_detached_rms_norm, max_num_steps=self.max_num_steps)
        return opts, max(self.rtol, floor), max(self.atol, floor)

    def _solve(self, x: Tensor, context: Optional[Tensor], t0: float, t1: float,
               regularize: bool) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"CNF over {self.dim} features got input of shape {tuple(x.shape)}")
        if (context is None) != (self.context_dim == 0):
            got = "missing" if context is None else "given"
            raise ValueError(f"CNF has context_dim={self.context_dim} but context is {got}")
        exact = self._exact()
        func = _Augmented(self, self._probes(x, exact), exact, context is not None, regularize)
        zeros = x.new_zeros(x.shape[0])
        state = [x, zeros]
        if context is not None:
            state.append(context.to(x.dtype))
        if regularize:
            state += [zeros, zeros]
        times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        opts, rtol, atol = self._options(x.dtype)
        kwargs = dict(rtol=rtol, atol=atol, method=self.solver, options=opts)
        try:
            if self.adjoint and torch.is_grad_enabled():
                params = tuple(p for p in self.dynamics.parameters() if p.requires_grad)
                out = odeint_adjoint(func, tuple(state), times, adjoint_params=params,
                                     adjoint_options=dict(opts), **kwargs)
            else:
                out = odeint(func, tuple(state), times, **kwargs)
        except AssertionError as err:  # torchdiffeq signals failures by assertions
            raise RuntimeError(f"ODE solve failed ({self.solver}, rtol={rtol:g}, atol={atol:g}): {err}") from err
        final = [s[-1] for s in out]
        if regularize:
            self.regularization = {"kinetic": final[-2], "jacobian": final[-1]}
        return final[0], final[1]

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        regularize = self.training and (self.kinetic_reg > 0 or self.jacobian_reg > 0)
        return self._solve(x, context, 0.0, self.T, regularize)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self._solve(z, context, self.T, 0.0, False)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, context_dim={self.context_dim}, T={self.T}, solver={self.solver!r}, "
                f"rtol={self.rtol:g}, atol={self.atol:g}, adjoint={self.adjoint}, trace={self.trace!r}")


def cnf_regularization(module: nn.Module) -> Tensor:
    """Sum of :meth:`CNF.regularization_loss` over every CNF block inside ``module``."""
    terms = [m.regularization_loss() for m in module.modules() if isinstance(m, CNF)]
    return sum(terms[1:], terms[0]) if terms else torch.zeros(())


def cnf_nfe(module: nn.Module, reset: bool = False) -> int:
    """Total dynamics evaluations of the CNF blocks inside ``module`` (optionally resetting the counters)."""
    total = 0
    for m in module.modules():
        if isinstance(m, CNF):
            total += m.nfe
            if reset:
                m.reset_nfe()
    return total
