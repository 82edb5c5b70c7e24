"""FFJORD: reverse-ODE inverse, adjoint gradients, trace estimators, regularisation, NFE, eval mode."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flowrl
from flowrl.transforms.cnf import CNF, ODEMLP, cnf_nfe, cnf_regularization

from flow_cases import perturb

F64 = torch.float64


def _cnf(dim=3, context_dim=0, seed=0, **kw):
    torch.manual_seed(seed)
    cnf = CNF(dim, context_dim, (16,), **kw).double()
    perturb(cnf, std=0.3)
    return cnf


def test_backward_ode_inverse_reaches_its_tolerance():
    cnf = _cnf(context_dim=2, rtol=1e-9, atol=1e-9).eval()
    x, c = torch.randn(20, 3, dtype=F64), torch.randn(20, 2, dtype=F64)
    with torch.no_grad():
        z, ld = cnf(x, c)
        x2, ld2 = cnf.inverse(z, c)
    assert (x2 - x).abs().max().item() < 1e-6
    assert (ld + ld2).abs().max().item() < 1e-6
    loose = _cnf(context_dim=2, rtol=1e-4, atol=1e-4).eval()
    with torch.no_grad():
        err_loose = (loose.inverse(loose(x, c)[0], c)[0] - x).abs().max().item()
    assert 1e-7 < err_loose < 1e-2  # the error follows the tolerance


@pytest.mark.parametrize("context_dim", [0, 2])
def test_adjoint_gradients_match_direct_backprop(context_dim):
    x = torch.randn(6, 2, dtype=F64, requires_grad=True)
    c = torch.randn(6, context_dim, dtype=F64, requires_grad=True) if context_dim else None
    weights = torch.randn(6, dtype=F64)
    grads = []
    for adjoint in (False, True):
        cnf = _cnf(dim=2, context_dim=context_dim, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        z, ld = cnf(x, c)
        loss = (z.pow(2).sum(-1) * weights).sum() + (ld * weights).sum()
        inputs = [x] + ([c] if c is not None else []) + list(cnf.parameters())
        grads.append(torch.autograd.grad(loss, inputs))
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() < 1e-4


def test_adjoint_counts_backward_evaluations():
    x = torch.randn(4, 2, dtype=F64)
    counts = {}
    for adjoint in (False, True):
        cnf = _cnf(dim=2, adjoint=adjoint)
        cnf(x)[1].sum().backward()
        counts[adjoint] = cnf.nfe
    assert counts[False] > 0 and counts[True] > counts[False]  # the adjoint solve evaluates the dynamics too


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_trace_is_unbiased(probe):
    cnf = _cnf(dim=4, trace="hutchinson", probe=probe, rtol=1e-7, atol=1e-7)
    x = torch.randn(1, 4, dtype=F64).expand(3000, 4)  # one probe per row, independent draws
    with torch.no_grad():
        est = cnf(x)[1]
        cnf.trace = "exact"
        exact = cnf(x[:1])[1].item()
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 3 * se and se > 0


class _Linear(nn.Module):
    """``f(z) = A z`` without an analytic JVP (exercises the autograd fallback)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t, z, context=None):
        return z @ self.a.t()


def test_linear_ode_log_det_and_regularisers_match_closed_form():
    # A = a I + S with S antisymmetric: z(t) = e^{at} e^{St} x, ||f||^2 = e^{2at} ||A x||^2
    a, T = 0.3, 0.7
    s = torch.tensor([[0.0, 1.2, -0.4], [-1.2, 0.0, 0.5], [0.4, -0.5, 0.0]], dtype=F64)
    mat = a * torch.eye(3, dtype=F64) + s
    cnf = CNF(3, dynamics=_Linear(mat.clone()), T=T, rtol=1e-10, atol=1e-10, kinetic_reg=1.0,
              jacobian_reg=1.0, trace="exact").double()
    x = torch.randn(5, 3, dtype=F64)
    z, ld = cnf(x)
    assert torch.allclose(z, x @ torch.linalg.matrix_exp(T * mat).t(), atol=1e-7)
    assert torch.allclose(ld, torch.full_like(ld, 3 * a * T), atol=1e-7)
    kinetic = (x @ mat.t()).pow(2).sum(-1) * (math.exp(2 * a * T) - 1) / (2 * a)
    assert torch.allclose(cnf.regularization["kinetic"], kinetic, atol=1e-6)
    assert torch.allclose(cnf.regularization["jacobian"], torch.full_like(ld, T * mat.pow(2).sum().item()), atol=1e-6)
    reg = cnf_regularization(cnf)
    assert torch.allclose(reg, kinetic.mean() + T * mat.pow(2).sum(), atol=1e-6)
    reg.backward()
    assert cnf.dynamics.a.grad is not None and torch.isfinite(cnf.dynamics.a.grad).all()


def test_analytic_jvp_matches_autograd_fallback():
    torch.manual_seed(0)
    net = ODEMLP(3, 2, (8, 8), zero_last=False).double()
    z, c = torch.randn(4, 3, dtype=F64, requires_grad=True), torch.randn(4, 2, dtype=F64)
    tangents = torch.randn(4, 5, 3, dtype=F64)
    t = torch.tensor(0.3, dtype=F64)
    f, jv = net.forward_and_jvp(t, z, c, tangents)
    auto = torch.autograd.functional.jacobian(lambda v: net(t, v, c), z).reshape(4, 3, 4, 3)
    expected = torch.stack([tangents[b] @ auto[b, :, b, :].t() for b in range(4)])
    assert torch.allclose(f, net(t, z, c)) and torch.allclose(jv, expected, atol=1e-12)


def test_eval_is_deterministic_and_exact_trace_agrees():
    cnf = _cnf(dim=10, eval_exact_dim=4, eval_probes=32, rtol=1e-8, atol=1e-8)
    x = torch.randn(5, 10, dtype=F64)
    with torch.no_grad():
        t1, t2 = cnf(x)[1], cnf(x)[1]
        cnf.eval()
        e1, e2 = cnf(x)[1], cnf(x)[1]
        cnf.eval_exact_dim = 64
        exact = cnf(x)[1]
    assert not torch.equal(t1, t2) and torch.equal(e1, e2)
    assert (e1 - exact).abs().max().item() < 0.5  # 32 fixed probes: a deterministic, small error
    assert (t1 - exact).abs().max().item() > 0  # training uses one random probe


def test_nfe_counter_and_solver_errors():
    flow = flowrl.build_flow("ffjord", 2, hidden_features=(8,), rtol=1e-6, atol=1e-6)
    perturb(flow)
    with torch.no_grad():
        flow.log_prob(torch.randn(8, 2))
    n = cnf_nfe(flow, reset=True)
    assert n >= 8 and cnf_nfe(flow) == 0
    fixed = flowrl.build_flow("ffjord", 2, hidden_features=(8,), solver="rk4", step_size=0.25)
    with torch.no_grad():
        fixed.sample(3)
    assert cnf_nfe(fixed) == 4 * 4 + 0  # rk4: 4 evaluations per step, 4 steps
    capped = _cnf(dim=2, rtol=1e-12, atol=1e-12, max_num_steps=2)
    with pytest.raises(RuntimeError, match="ODE solve failed"):
        capped(torch.randn(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="trace"):
        CNF(2, trace="magic")
    with pytest.raises(ValueError, match="shape"):
        CNF(2)(torch.randn(3, 3))
