"""The flow core: shapes, broadcasting, composition, registry and base distributions."""

import pytest
import torch

import flowrl
from flowrl import Compose, ConditionalDiagonalNormal, Flow, Inverse, StandardNormal, build_flow
from flowrl.transforms.coupling import Coupling, alternating_mask
from flowrl.transforms.elementwise import Affine, Logit
from flowrl.transforms.permutations import Permutation, ReversePermutation
from tolerances import assert_close_rounding


def test_sample_and_log_prob_shapes_follow_torch_distributions():
    flow = build_flow("realnvp", 3, context_dim=2, transforms=2, hidden_features=(8,))
    c = torch.randn(5, 2)
    assert flow.sample(4, c).shape == (4, 5, 3)
    assert flow.sample(4, c[0]).shape == (4, 3)
    x, lp = flow.rsample_and_log_prob(6, c)
    assert x.shape == (6, 5, 3) and lp.shape == (6, 5)
    # a context broadcasts over leading batch dimensions of x
    assert flow.log_prob(torch.randn(7, 5, 3), c).shape == (7, 5)
    assert flow.log_prob(torch.randn(7, 1, 3), c).shape == (7, 5)
    uncond = build_flow("realnvp", 3)
    assert uncond.sample(4).shape == (4, 3)
    assert uncond.log_prob(torch.randn(2, 4, 3)).shape == (2, 4)
    assert uncond.log_prob(torch.randn(3)).shape == ()


def test_inverse_swaps_directions_exactly():
    t = Coupling(alternating_mask(4, 0), Affine(), 0, (8,))
    with torch.no_grad():
        for p in t.parameters():
            p.normal_()
    x = torch.randn(5, 4)
    z, ld = t(x)
    zi, ldi = Inverse(t).inverse(x)
    assert torch.equal(z, zi) and torch.equal(ld, ldi)
    assert torch.equal(Inverse(t)(z)[0], t.inverse(z)[0])


def test_compose_sums_logdets_and_reverses_on_inverse():
    a = Coupling(alternating_mask(4, 0), Affine(), 0, (8,))
    b = Coupling(alternating_mask(4, 1), Affine(), 0, (8,))
    with torch.no_grad():
        for p in list(a.parameters()) + list(b.parameters()):
            p.normal_(std=0.3)
    c = Compose([a, ReversePermutation(4), b])
    x = torch.randn(6, 4, dtype=torch.float32)
    z, ld = c(x)
    y1, l1 = a(x)
    y2, _ = ReversePermutation(4)(y1)
    y3, l3 = b(y2)
    assert torch.allclose(z, y3) and torch.allclose(ld, l1 + l3)
    assert torch.allclose(c.inverse(z)[0], x, atol=1e-5)
    with pytest.raises(ValueError):
        Compose([])


def test_permutation_rejects_non_permutations_and_bad_shapes():
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation([0, 0, 1])
    with pytest.raises(ValueError, match="shape"):
        ReversePermutation(3)(torch.randn(2, 4))


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown flow 'nope'"):
        build_flow("nope", 2)
    with pytest.raises(ValueError, match="unknown keyword argument"):
        build_flow("realnvp", 2, layers=3)
    with pytest.raises(ValueError, match="dim"):
        build_flow("realnvp", 0)
    with pytest.raises(ValueError, match="base"):
        build_flow("realnvp", 2, base="laplace")
    with pytest.raises(ValueError, match="context_dim"):
        build_flow("realnvp", 2, base="conditional")
    assert "realnvp" in flowrl.available_flows() and "nice" in flowrl.available_flows()


def test_conditional_base_depends_on_context_and_is_normalised():
    torch.manual_seed(0)
    base = ConditionalDiagonalNormal(1, context_dim=1, hidden_features=(8,))
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(std=0.5)
    c = torch.tensor([[1.0]])
    h = 0.01
    grid = torch.arange(-30, 30, h)[:, None]
    mass = base.log_prob(grid, c.expand(len(grid), 1)).exp().sum() * h
    assert abs(mass.item() - 1) < 1e-3
    a = base.rsample(1000, torch.full((1000, 1), -2.0)).mean()
    b = base.rsample(1000, torch.full((1000, 1), 2.0)).mean()
    assert abs(a - b) > 0.05
    flow = build_flow("realnvp", 2, context_dim=3, base="conditional", transforms=1, hidden_features=(8,))
    assert isinstance(flow.base, ConditionalDiagonalNormal)


def test_standard_normal_follows_dtype_and_mode():
    base = StandardNormal((2, 3)).double()
    assert base.rsample(4).dtype == torch.float64 and base.rsample(4).shape == (4, 2, 3)
    assert torch.equal(base.mode(2), torch.zeros(2, 2, 3, dtype=torch.float64))


def test_mode_sample_is_deterministic_and_shaped():
    flow = build_flow("realnvp", 2, context_dim=1, transforms=2, hidden_features=(8,))
    c = torch.randn(4, 1)
    a, b = flow.mode_sample(c), flow.mode_sample(c)
    assert a.shape == (4, 2) and torch.equal(a, b)


class _Cube(flowrl.Transform):
    """``z = x^3``: pushes the base mode ``z = 0`` onto ``x = 0``, where ``p(x) = N(x^3) 3 x^2`` is zero."""

    def forward(self, x, context=None):
        return x**3, torch.log(3 * x**2).sum(-1)

    def inverse(self, z, context=None):
        x = torch.sign(z) * z.abs() ** (1 / 3)
        return x, -torch.log(3 * x**2).sum(-1)


def test_mode_estimate_finds_a_mode_the_base_mode_misses():
    flow = Flow(_Cube(), StandardNormal(1), validate_args=False)
    x_star = (2 / 3) ** (1 / 6)  # argmax of 2 log x - x^6 / 2
    lp_star = flow.log_prob(torch.tensor([[x_star]]))
    assert flow.log_prob(flow.mode_sample().reshape(1, 1)) == float("-inf")
    est = flow.mode_estimate(candidates=64)
    assert est.shape == (1,) and torch.equal(est, flow.mode_estimate(candidates=64))
    # the best of 64 fixed normal draws is within ~0.05 of x*^3; log p is flat there (curvature ~ -14)
    assert flow.log_prob(est.reshape(1, 1)) > lp_star - 0.1
    assert torch.equal(flow.mode_estimate(candidates=0), flow.mode_sample())
    with pytest.raises(ValueError, match="candidates"):
        flow.mode_estimate(candidates=-1)


def test_mode_estimate_is_per_context_row_and_never_below_the_base_mode():
    torch.manual_seed(0)
    flow = build_flow("realnvp", 2, context_dim=3, transforms=2, hidden_features=(16,))
    for p in flow.parameters():  # a visibly non-Gaussian, context-dependent density
        torch.nn.init.normal_(p, std=0.5)
    c = torch.randn(5, 3)
    est = flow.mode_estimate(c, candidates=32)
    assert est.shape == (5, 2) and torch.equal(est, flow.mode_estimate(c, candidates=32))
    row_by_row = torch.stack([flow.mode_estimate(c[i], candidates=32) for i in range(5)])
    torch.testing.assert_close(est, row_by_row)
    lp_est, lp_base = flow.log_prob(est, c), flow.log_prob(flow.mode_sample(c), c)
    assert (lp_est >= lp_base - 1e-5 * (1 + lp_base.abs())).all()
    assert (lp_est > lp_base + 1e-3).any()


def test_fixed_candidates_are_fixed_scored_by_log_prob_and_hold_the_mode_estimate():
    torch.manual_seed(0)
    flow = build_flow("realnvp", 2, context_dim=3, transforms=2, hidden_features=(16,))
    for p in flow.parameters():
        torch.nn.init.normal_(p, std=0.5)
    c = torch.randn(5, 3)
    x, lp = flow.fixed_candidates(c, candidates=8)
    assert x.shape == (9, 5, 2) and lp.shape == (9, 5)
    again = flow.fixed_candidates(c, candidates=8)
    assert torch.equal(x, again[0]) and torch.equal(lp, again[1])
    # the first candidate is the base mode pushed through (in a larger batch: equal up to rounding)
    assert_close_rounding(x[0], flow.mode_sample(c))
    assert_close_rounding(lp, flow.log_prob(x.reshape(45, 2), c.repeat(9, 1)).reshape(9, 5))
    assert torch.equal(flow.mode_estimate(c, candidates=8), x[lp.argmax(0), torch.arange(5)])
    unconditional = build_flow("realnvp", 2, transforms=1, hidden_features=(8,))
    ux, ulp = unconditional.fixed_candidates(candidates=4)
    assert ux.shape == (5, 2) and ulp.shape == (5,)
    with pytest.raises(ValueError, match="candidates"):
        flow.fixed_candidates(c, candidates=-1)


def test_validation_can_be_turned_off():
    flow = build_flow("realnvp", 2, transforms=1, hidden_features=(8,))
    bad = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(bad)
    flowrl.set_validation(False)
    try:
        assert torch.isnan(flow.log_prob(bad)).all()
    finally:
        flowrl.set_validation(True)
    assert Flow(flow.transform, flow.base, validate_args=False).log_prob(bad).isnan().all()


def test_logit_maps_unit_interval_and_inverts():
    t = Logit(1e-3).double()
    x = torch.rand(10, 3, dtype=torch.float64)
    z, ld = t(x)
    x2, ld2 = t.inverse(z)
    assert torch.allclose(x, x2, atol=1e-10) and torch.allclose(ld, -ld2)
    edges = torch.tensor([[0.0, 1.0, 0.5]])
    assert torch.isfinite(t(edges)[0]).all() and torch.isfinite(t(edges)[1]).all()
