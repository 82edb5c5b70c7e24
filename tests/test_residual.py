"""Residual Flows: estimators, spectral normalisation, fixed-point inverse, eval mode, memory."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

import flowrl
from flowrl.estimators import (
    exact_logdet,
    fixed_weights,
    hutchinson_std_bound,
    power_series_logdet,
    roulette_weights,
    sample_probes,
    truncation_error_bound,
)
from flowrl.inversion import FixedPointError, fixed_point
from flowrl.spectral import LipschitzMLP, SpectralLinear
from flowrl.transforms.residual import ResidualBlock

from flow_cases import perturb, two_moons

F64 = torch.float64


def _block(dim=6, context_dim=0, seed=0, **kw):
    torch.manual_seed(seed)
    block = ResidualBlock(dim, context_dim, (16,), **kw).double()
    perturb(block, std=0.3)
    block.g.weights(update=True)
    block.eval()  # converge the power iteration
    block.train()
    return block


def _exact(block, x, context=None):
    with torch.no_grad():
        _, lin = block.g.evaluate(block.g.weights(update=False), x, context, slopes=True)
        return exact_logdet(lin.jacobian()), lin


def _mean_and_se(samples: torch.Tensor):
    return samples.mean().item(), samples.std().item() / math.sqrt(len(samples))


# --------------------------------------------------------------- estimators
def test_analytic_jacobian_matches_autograd():
    block = _block(dim=5, context_dim=2)
    x, c = torch.randn(3, 5, dtype=F64), torch.randn(3, 2, dtype=F64)
    weights = block.g.weights(update=False)
    _, lin = block.g.evaluate(weights, x, c, slopes=True)
    auto = jacobian(lambda v: block.g.evaluate(weights, v, c)[0], x).reshape(3, 5, 3, 5)
    for b in range(3):
        assert torch.allclose(lin.jacobian()[b], auto[b, :, b, :], atol=1e-12)
    u = torch.randn(3, 5, dtype=F64)
    assert torch.allclose(lin.vjp(u), torch.einsum("bi,bij->bj", u, lin.jacobian()), atol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_series_is_unbiased(probe):
    block = _block()
    x = torch.randn(1, 6, dtype=F64)
    exact, lin = _exact(block, x)
    n = 60  # truncation bias <= D L^61 / (61 (1 - L)), L = ||J_g(x)||_2: far below 3 standard errors
    lip = torch.linalg.matrix_norm(lin.jacobian()[0], 2).item()
    assert truncation_error_bound(6, lip, n) < 1e-3
    g = torch.Generator().manual_seed(0)
    probes = sample_probes((1, 4000, 6), probe, dtype=F64, generator=g)
    with torch.no_grad():
        terms = probes
        est = torch.zeros(4000, dtype=F64)
        for k in range(1, n + 1):
            terms = lin.jvp(terms)
            est += (-1) ** (k + 1) / k * (probes * terms).sum(-1)[0]
    mean, se = _mean_and_se(est)
    assert abs(mean - exact.item()) < 3 * se, (mean, exact.item(), se)
    assert se > 0


def test_russian_roulette_is_unbiased():
    block = _block()
    x = torch.randn(1, 6, dtype=F64)
    exact, lin = _exact(block, x)
    g = torch.Generator().manual_seed(1)
    draws = []
    lengths = []
    with torch.no_grad():
        for _ in range(3000):
            w = roulette_weights(n_exact=1, p=0.6, generator=g)
            lengths.append(len(w))
            v = sample_probes((1, 1, 6), dtype=F64, generator=g)
            draws.append(power_series_logdet(lin.jvp, v, w)[0])
    mean, se = _mean_and_se(torch.cat(draws))
    assert abs(mean - exact.item()) < 3 * se, (mean, exact.item(), se)
    assert min(lengths) == 1 and max(lengths) > 4  # the truncation really is random


def test_roulette_weights_match_survival_probabilities():
    g = torch.Generator().manual_seed(0)
    ns = torch.tensor([len(roulette_weights(2, 0.5, generator=g)) for _ in range(20000)], dtype=F64)
    # N = 2 + Geometric(0.5) on {0, 1, ...}: P(N >= 4) = 0.25, E[N] = 3
    assert abs((ns >= 4).double().mean().item() - 0.25) < 0.015
    assert abs(ns.mean().item() - 3.0) < 0.05
    assert roulette_weights(2, 0.5, generator=g)[:3] == [1.0, 1.0, 2.0]


def test_block_forward_logdet_estimator_is_unbiased_in_training():
    block = _block(logdet="series", n_exact_terms=2, geom_p=0.5)
    x = torch.randn(1, 6, dtype=F64).expand(200, 6)
    exact, _ = _exact(block, x[:1])
    torch.manual_seed(0)
    with torch.no_grad():
        means = torch.stack([block(x)[1].mean() for _ in range(150)])  # one N per call: average rows per call
    mean, se = _mean_and_se(means)
    assert abs(mean - exact.item()) < 3 * se, (mean, exact.item(), se)


def _param_projection(block, seed=5):
    g = torch.Generator().manual_seed(seed)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in block.g.parameters()]
    return lambda: sum((p.grad * d).sum() for p, d in zip(block.g.parameters(), dirs) if p.grad is not None)


def test_neumann_gradient_is_unbiased():
    block = _block(logdet="series", grad_in_forward=True)
    x = torch.randn(1, 6, dtype=F64)
    proj = _param_projection(block)
    block.zero_grad()
    _, lin = block.g.evaluate(block.g.weights(update=False), x, None, slopes=True)
    exact_logdet(lin.jacobian()).sum().backward()
    target = proj().item()
    torch.manual_seed(0)
    xs = x.expand(100, 6)
    draws = []
    for _ in range(150):
        block.zero_grad()
        block(xs)[1].mean().backward()
        draws.append(proj().item())
    mean, se = _mean_and_se(torch.tensor(draws, dtype=F64))
    assert abs(mean - target) < 3 * se, (mean, target, se)


def test_gradient_in_forward_equals_surrogate_gradient_for_any_loss_weights():
    x = torch.randn(5, 6, dtype=F64, requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=F64)
    grads = {}
    for in_forward in (True, False):
        block = _block(logdet="series", grad_in_forward=in_forward)
        for uniform in (True, False):
            torch.manual_seed(7)
            block.zero_grad()
            x.grad = None
            ld = block(x)[1]
            (ld.sum() if uniform else (ld * weights).sum()).backward()
            grads[in_forward, uniform] = [x.grad.clone()] + [
                torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in block.g.parameters()
            ]
    for uniform in (True, False):
        a, b = grads[True, uniform], grads[False, uniform]
        assert len(a) == len(b)
        for ga, gb in zip(a, b):
            assert torch.allclose(ga, gb, atol=1e-10)


def _saved_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.mark.parametrize("neumann,grows", [(True, False), (False, True)])
def test_training_memory_does_not_grow_with_series_terms_under_neumann_gradient(neumann, grows):
    x = torch.randn(64, 12, dtype=F64)
    sizes = []
    for n_terms in (4, 32):
        block = _block(dim=12, logdet="series", estimator="fixed", n_terms=n_terms, neumann_grad=neumann)
        sizes.append(_saved_bytes(lambda: block(x)[1].sum()))
    if grows:
        assert sizes[1] > 4 * sizes[0]
    else:
        assert sizes[1] == sizes[0]


# ---------------------------------------------------------- spectral norm
def test_jacobian_spectral_norm_is_below_coefficient():
    torch.manual_seed(0)
    coeff = 0.9
    flow = flowrl.build_flow("resflow", 4, 2, transforms=2, hidden_features=(32, 32), coeff=coeff).double()
    data = torch.randn(256, 4, dtype=F64) * 2
    opt = torch.optim.Adam(flow.parameters(), lr=3e-2)
    for _ in range(10):
        loss = -flow.log_prob(data, torch.randn(256, 2, dtype=F64)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    perturb(flow, std=0.5)  # far from where power iteration last looked
    flow.eval()  # entering eval converges the power iteration
    x, c = 3 * torch.randn(10, 4, dtype=F64), torch.randn(10, 2, dtype=F64)
    for block in flow.transform.transforms:
        jac = jacobian(lambda v: block.g(v, c), x, vectorize=True).reshape(10, 4, 10, 4)
        for b in range(10):
            j_g = jac[b, :, b, :]
            assert torch.linalg.matrix_norm(j_g, 2).item() < coeff


def test_spectral_linear_state_and_eval_determinism():
    layer = SpectralLinear(5, 7, coeff=0.5).double()
    assert {"u", "v"} <= set(layer.state_dict())
    with torch.no_grad():
        layer.weight.mul_(10)
    layer.eval()
    u = layer.u.clone()
    w1 = layer.weight_sn(update=False)
    layer.weight_sn(update=False)
    assert torch.equal(layer.u, u)
    assert abs(torch.linalg.matrix_norm(w1, 2).item() - 0.5) < 1e-8
    layer.train()
    layer.weight_sn(update=True)
    assert layer.u.shape == u.shape


def test_lipschitz_mlp_bound_and_bad_arguments():
    mlp = LipschitzMLP(3, 0, (8, 8), coeff=0.9)
    assert abs(mlp.lipschitz_bound - 0.9 ** 3) < 1e-12
    with pytest.raises(ValueError, match="coeff"):
        SpectralLinear(3, 3, coeff=1.0)
    with pytest.raises(ValueError, match="logdet"):
        ResidualBlock(3, logdet="magic")
    with pytest.raises(ValueError, match="estimator"):
        ResidualBlock(3, estimator="magic")
    with pytest.raises(ValueError, match="context"):
        ResidualBlock(3, 2)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="shape"):
        ResidualBlock(3)(torch.randn(2, 4))


# --------------------------------------------------------------- inverse
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fixed_point_inverse_reaches_its_tolerance(dtype):
    block = _block(dim=5, context_dim=2).to(dtype)
    block.eval()
    z, c = 4 * torch.randn(50, 5, dtype=dtype), torch.randn(50, 2, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    with torch.no_grad():
        x, _ = block.inverse(z, c)
        residual = x + block.g.evaluate(block.g.weights(), x, c)[0] - z
    lip = block.g.lipschitz_bound
    # last step s <= tol (1 + |x|), so |x - x*| <= s L / (1 - L); the residual is that step
    assert (residual.abs() <= tol * (1 + x.abs()) * (1 + lip / (1 - lip)) + 4 * torch.finfo(dtype).eps * z.abs()).all()
    assert block.last_inverse_iterations >= 1


def test_fixed_point_errors_are_clear():
    with pytest.raises(FixedPointError, match="did not converge in 3 iterations"):
        fixed_point(lambda x: 0.99 * x + 1.0, torch.zeros(4), tol=1e-12, max_iter=3)
    with pytest.raises(FixedPointError, match="non-finite"):
        fixed_point(lambda x: 1e200 * x * x + 1.0, torch.ones(2, dtype=F64), max_iter=50)
    x, its = fixed_point(lambda x: 0.5 * x + 1.0, torch.zeros(3, dtype=F64))
    assert torch.allclose(x, torch.full((3,), 2.0, dtype=F64), atol=1e-10) and its > 10
    block = _block(dim=3, inverse_max_iter=2, inverse_tol=1e-15)
    with pytest.raises(FixedPointError, match="contractive"):
        block.inverse(torch.randn(4, 3, dtype=F64))


def test_inverse_gradient_is_the_implicit_function_gradient():
    block = _block(dim=4, context_dim=1)
    block.eval()
    z = torch.randn(3, 4, dtype=F64, requires_grad=True)
    c = torch.randn(3, 1, dtype=F64, requires_grad=True)
    x, _ = block.inverse(z, c)
    weights = torch.randn(3, 4, dtype=F64)
    (x * weights).sum().backward()
    with torch.no_grad():
        _, lin = block.g.evaluate(block.g.weights(), x, c, slopes=True)
        eye = torch.eye(4, dtype=F64)
        expected = torch.linalg.solve((eye + lin.jacobian()).transpose(1, 2), weights.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(z.grad, expected, atol=1e-10)
    # the context gradient by finite differences of the solve
    h = 1e-6
    with torch.no_grad():
        xp = block.inverse(z, c + h)[0]
        xm = block.inverse(z, c - h)[0]
    fd = ((xp - xm) * weights).sum(-1) / (2 * h)
    assert torch.allclose(c.grad.squeeze(-1), fd, atol=1e-6)


# -------------------------------------------------------------- eval mode
def test_eval_series_is_deterministic_and_within_its_bound():
    block = _block(dim=10, eval_exact_dim=4, eval_tol=1e-3, eval_probes=16)
    x = torch.randn(6, 10, dtype=F64)
    exact, _ = _exact(block, x)
    with torch.no_grad():
        train_a, train_b = block(x)[1], block(x)[1]
        block.eval()
        a, b = block(x)[1], block(x)[1]
        single = block(x[2:3])[1]
    assert not torch.equal(train_a, train_b)  # training estimates are random
    assert torch.equal(a, b) and torch.allclose(single, a[2:3], atol=1e-12)  # eval is deterministic, row-local
    # D <= eval_probes: basis probes, so only the stated truncation bound remains
    assert (a - exact).abs().max().item() <= 1e-3
    block.eval_probes = 4  # random probes: within 3 times the stated standard-deviation bound
    with torch.no_grad():
        c = block(x)[1]
    assert (c - exact).abs().max().item() < 1e-3 + 3 * hutchinson_std_bound(10, block.g.lipschitz_bound, 4)
    assert not torch.allclose(c, exact, atol=1e-6)
    # and the default (exact up to 64 dimensions) agrees with the brute-force log-det
    block.eval_exact_dim = 64
    with torch.no_grad():
        assert torch.allclose(block(x)[1], exact, atol=1e-10)


def test_resflow_with_series_logdet_trains_and_eval_series_matches_exact():
    torch.manual_seed(0)
    flow = flowrl.build_flow("resflow", 2, transforms=3, hidden_features=(32,), logdet="series", eval_tol=1e-3)
    data = two_moons(1024)
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)
    start = -flow.log_prob(data).mean().item()
    for _ in range(30):
        loss = -flow.log_prob(data[torch.randint(0, 1024, (128,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        series = flow.log_prob(data)
        for block in flow.transform.transforms:
            block.logdet_mode = "exact"
        exact = flow.log_prob(data)
    assert -exact.mean().item() < start - 0.05
    assert (series - exact).abs().max().item() < 3 * 1e-3  # three blocks, each truncated to 1e-3


def test_module_apply_reaches_every_submodule_of_a_resflow():
    """``nn.Module.apply`` is not shadowed: ``flow.apply(fn)`` visits every module (e.g. a custom init)."""
    flow = flowrl.build_flow("resflow", 3, transforms=2, hidden_features=(8,))
    seen = []
    assert flow.apply(seen.append) is flow
    assert len(seen) == len(list(flow.modules())) and any(type(m).__name__ == "LipschitzMLP" for m in seen)
