"""Spline-specific checks of the rational-quadratic and cubic spline bijections.

The generic suite (test_properties.py) covers the ``nsf`` / ``csf`` flows;
here the elementwise splines themselves are checked: identity at zero
parameters, knots and edges, monotonicity, continuity of the derivative,
log-derivatives against autograd and finite differences, gradients of the
inverse, and float32 stability at the interval's edges and far tails.
"""

from __future__ import annotations

import pytest
import torch

import flowrl
from flowrl.transforms.splines import CubicSpline, RationalQuadraticSpline

SPLINES = [
    pytest.param(lambda **k: RationalQuadraticSpline(**k), id="rq"),
    pytest.param(lambda **k: CubicSpline(**k), id="cubic"),
]
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
BOUND = 3.0


def _params(spline, shape, scale, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, spline.num_params, generator=g, dtype=torch.float64)).to(dtype)


def _knots(spline, params):
    """Knots and knot derivatives ``(rows, K + 1)`` of ``params (rows, num_params)``."""
    xk, yk, dk = spline._knots(params.t().contiguous())  # the splines work bins-first
    return xk.t(), yk.t(), dk.t()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", SPLINES)
def test_zero_params_give_the_identity(make, dtype):
    sp = make(bins=6, bound=BOUND)
    x = torch.linspace(-2 * BOUND, 2 * BOUND, 1001, dtype=dtype)
    p = torch.zeros(*x.shape, sp.num_params, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for fn in (sp.forward, sp.inverse):
        y, ld = fn(x, p)
        assert (y - x).abs().max().item() < tol
        assert ld.abs().max().item() < tol


def test_num_params_and_interface():
    assert RationalQuadraticSpline(bins=8).num_params == 23
    assert CubicSpline(bins=5).num_params == 14
    sp = RationalQuadraticSpline(bins=3, bound=2.0)
    x = torch.randn(2, 3, 4)
    y, ld = sp.forward(x, _params(sp, x.shape, 1.0, torch.float32))
    assert y.shape == x.shape and ld.shape == x.shape
    with pytest.raises(ValueError, match="params have shape"):
        sp.forward(x, torch.zeros(2, 3, 4, sp.num_params + 1))
    with pytest.raises(ValueError, match="bins"):
        RationalQuadraticSpline(bins=0)
    with pytest.raises(ValueError, match="bound"):
        CubicSpline(bound=-1.0)
    with pytest.raises(ValueError, match="min_width"):
        RationalQuadraticSpline(bins=10, min_width=0.2)
    with pytest.raises(ValueError, match="bins >= 2"):
        CubicSpline(bins=1)


@pytest.mark.parametrize("make", SPLINES)
def test_knots_map_to_knots_and_edges_are_fixed(make):
    dtype = torch.float64
    sp = make(bins=5, bound=BOUND)
    p = _params(sp, (7,), 2.0, dtype)
    xk, yk, _ = _knots(sp, p)
    assert (xk[:, 0] == -BOUND).all() and (xk[:, -1] == BOUND).all()
    assert (yk[:, 0] == -BOUND).all() and (yk[:, -1] == BOUND).all()
    k1 = xk.shape[1]
    pk = p.unsqueeze(1).expand(-1, k1, -1)
    y, _ = sp.forward(xk, pk)
    assert (y - yk).abs().max().item() < 1e-12
    x, _ = sp.inverse(yk, pk)
    assert (x - xk).abs().max().item() < 1e-12
    edges = torch.tensor([-BOUND, BOUND], dtype=dtype).expand(7, 2)
    pe = p.unsqueeze(1).expand(-1, 2, -1)
    assert torch.equal(sp.forward(edges, pe)[0], edges)
    assert torch.equal(sp.inverse(edges, pe)[0], edges)


@pytest.mark.parametrize("make", SPLINES)
def test_tails_are_the_identity_and_derivative_is_continuous_there(make):
    dtype = torch.float64
    sp = make(bins=5, bound=BOUND)
    p = _params(sp, (9,), 2.0, dtype)
    outside = torch.tensor([-1e4, -50.0, -BOUND - 1e-9, BOUND + 1e-9, 50.0, 1e4], dtype=dtype)
    po = p[0].expand(len(outside), -1)
    for fn in (sp.forward, sp.inverse):
        y, ld = fn(outside, po)
        assert torch.equal(y, outside) and torch.equal(ld, torch.zeros_like(ld))
    # just inside the interval the log-derivative tends to 0 (slope 1 joins the tails),
    # linearly in the distance to the edge (measured in units of the end bins' widths)
    xk, _, _ = _knots(sp, p)
    widths = torch.stack([xk[:, 1] - xk[:, 0], xk[:, -1] - xk[:, -2]], dim=1)
    pe = p.unsqueeze(1).expand(-1, 2, -1)
    edge = torch.tensor([-BOUND, BOUND], dtype=dtype)
    toward_centre = -edge.sign()
    lds = []
    for frac in (1e-4, 1e-6):
        _, ld = sp.forward(edge + toward_centre * frac * widths, pe)
        lds.append(ld.abs())
    assert lds[1].max().item() < 1e-3
    assert (lds[1] <= 0.02 * lds[0] + 1e-12).all()  # O(distance): 100x closer, ~100x smaller


@pytest.mark.parametrize("make", SPLINES)
def test_derivative_is_continuous_at_interior_knots(make):
    dtype = torch.float64
    sp = make(bins=6, bound=BOUND)
    p = _params(sp, (5,), 1.0, dtype)
    xk, _, _ = _knots(sp, p)
    interior = xk[:, 1:-1]
    pk = p.unsqueeze(1).expand(-1, interior.shape[1], -1)
    _, ld_left = sp.forward(interior - 1e-9, pk)
    _, ld_right = sp.forward(interior + 1e-9, pk)
    assert (ld_left - ld_right).abs().max().item() < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", SPLINES)
def test_strictly_increasing_for_extreme_parameters(make, dtype):
    sp = make(bins=8, bound=BOUND)
    rows = 6
    x = torch.linspace(-BOUND - 1, BOUND + 1, 4001, dtype=dtype).expand(rows, -1)
    p = _params(sp, (rows, 1), 6.0, dtype).expand(-1, x.shape[1], -1)
    y, ld = sp.forward(x, p)
    assert torch.isfinite(ld).all()
    assert (y[:, 1:] >= y[:, :-1]).all()
    if dtype == torch.float64:
        assert (y[:, 1:] > y[:, :-1]).all()


@pytest.mark.parametrize("make", SPLINES)
def test_log_derivative_matches_autograd_and_finite_differences(make):
    dtype = torch.float64
    sp = make(bins=7, bound=BOUND)
    x = (torch.rand(500, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 2 - 1) * (BOUND + 1)
    p = _params(sp, x.shape, 1.5, dtype)
    xr = x.clone().requires_grad_(True)
    y, ld = sp.forward(xr, p)
    (dydx,) = torch.autograd.grad(y.sum(), xr)
    assert (dydx.log() - ld).abs().max().item() < 1e-9
    h = 1e-6
    fd = (sp.forward(x + h, p)[0] - sp.forward(x - h, p)[0]) / (2 * h)
    assert ((fd.log() - ld).abs() < 1e-4).float().mean().item() > 0.99  # a knot may sit inside [x-h, x+h]
    yr = y.detach().clone().requires_grad_(True)
    x2, ld_inv = sp.inverse(yr, p)
    (dxdy,) = torch.autograd.grad(x2.sum(), yr)
    assert (dxdy.log() - ld_inv).abs().max().item() < 1e-8
    assert (ld + ld_inv).abs().max().item() < 1e-9


@pytest.mark.parametrize("make", SPLINES)
def test_gradients_of_both_directions_pass_gradcheck(make):
    sp = make(bins=4, bound=2.0)
    x = torch.tensor([-2.5, -1.3, -0.2, 0.4, 1.7], dtype=torch.float64)
    p = _params(sp, x.shape, 1.0, torch.float64, seed=3).requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, q: sp.forward(v, q), (xr, p))
    y = sp.forward(x, p.detach())[0].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, q: sp.inverse(v, q), (y, p))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", SPLINES)
def test_round_trip_random_parameters(make, dtype):
    sp = make(bins=8, bound=BOUND)
    g = torch.Generator().manual_seed(2)
    x = ((torch.rand(20000, dtype=torch.float64, generator=g) * 2 - 1) * (BOUND + 1)).to(dtype)
    p = _params(sp, x.shape, 1.0, dtype)
    y, ld = sp.forward(x, p)
    x2, ld2 = sp.inverse(y, p)
    eps = torch.finfo(dtype).eps
    # error allowed: a few ulps of y, magnified by the inverse slope dx/dy = exp(-ld)
    allowed = 64 * eps * BOUND * torch.exp(-ld.double()) + 16 * eps * BOUND
    assert ((x2 - x).abs().double() <= allowed).all()
    # log-dets agree up to the round-trip error times d(log-derivative)/dx
    assert ((ld + ld2).abs().double() <= 1e4 * eps * (1 + torch.exp(-ld.double()))).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", SPLINES)
def test_finite_at_edges_and_far_tails(make, dtype):
    sp = make(bins=8, bound=5.0)
    b = torch.tensor(5.0, dtype=dtype)
    near = [torch.nextafter(b, b + 1).item(), torch.nextafter(b, b - 1).item()]
    vals = [0.0, 1e-30, 5.0, -5.0, *near, *(-v for v in near), 50.0, -50.0, 1e4, -1e4, 4.999, -4.999]
    v = torch.tensor(vals, dtype=dtype)
    for scale in (0.0, 1.0, 10.0):
        p = _params(sp, v.shape, scale, dtype).requires_grad_(True)
        for fn in (sp.forward, sp.inverse):
            vr = v.clone().requires_grad_(True)
            out, ld = fn(vr, p)
            assert torch.isfinite(out).all() and torch.isfinite(ld).all()
            gv, gp = torch.autograd.grad(out.sum() + ld.sum(), (vr, p))
            assert torch.isfinite(gv).all() and torch.isfinite(gp).all()
    p = _params(sp, v.shape, 1.0, dtype)
    x2, _ = sp.inverse(sp.forward(v, p)[0], p)
    assert (x2 - v).abs().max().item() < (1e-3 if dtype == torch.float32 else 1e-9)


def test_cubic_inverse_is_accurate_where_the_cubic_degenerates():
    """End slopes near 0, cubic term near 0, and values near the bin ends."""
    from flowrl.transforms.splines import _hermite, _hermite_slope, _solve_hermite

    g = torch.Generator().manual_seed(0)
    n = 20000
    a = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-15, 0.9, generator=g))
    b = torch.where(torch.rand(n, generator=g) < 0.5, (2 - a).clamp(1e-7, 2.5),
                    torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-15, 0.9, generator=g)))
    u = torch.where(torch.rand(n, generator=g) < 0.5,
                    10 ** torch.empty(n, dtype=torch.float64).uniform_(-15, 0, generator=g) * 0.5,
                    torch.rand(n, generator=g, dtype=torch.float64) * 0.5)
    t = _solve_hermite(a, b, u)
    # relative backward error at machine precision, forward error within conditioning
    assert ((_hermite(a, b, t) - u).abs() <= 1e-14 * u + 1e-300).all()
    lo, hi = torch.zeros_like(u), torch.ones_like(u)
    for _ in range(100):
        mid = (lo + hi) / 2
        below = _hermite(a, b, mid) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    ref = (lo + hi) / 2
    cond = 1e-16 * u / _hermite_slope(a, b, ref) + 1e-16 * ref
    assert ((t - ref).abs() <= 100 * cond).all()


def test_flows_accept_spline_options_and_reject_unknown_ones():
    torch.manual_seed(0)
    for name in ("nsf", "csf"):
        f = flowrl.build_flow(name, 4, transforms=3, hidden_features=(8, 8), bins=5, bound=2.5, permutation="random", seed=1)
        x = torch.randn(6, 4)
        assert f.log_prob(x).shape == (6,)
        with pytest.raises(ValueError, match="unknown keyword"):
            flowrl.build_flow(name, 4, knots=3)
        with pytest.raises(ValueError, match="transforms"):
            flowrl.build_flow(name, 4, transforms=0)
        with pytest.raises(ValueError, match="permutation"):
            flowrl.build_flow(name, 4, permutation="sideways")
