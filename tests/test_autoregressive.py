"""The autoregressive family beyond the generic suite: MADE masks, pass counts,
numerical inverses (accuracy, far roots, errors, implicit gradients) and fitting."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

import flowrl
from flowrl.inversion import InversionError, invert_monotone
from flowrl.made import MADE
from flowrl.transforms.autoregressive import MaskedAutoregressive
from flowrl.transforms.naf import DeepSigmoid
from flowrl.transforms.sos import SumOfSquaresPolynomial
from flowrl.transforms.umnn import UnconstrainedMonotone, clenshaw_curtis
from flow_cases import perturb, two_moons

F64 = torch.float64
NUMERICAL = [
    pytest.param("naf", {}, id="naf-dsf"),
    pytest.param("naf", {"dense": True}, id="naf-ddsf"),
    pytest.param("bnaf", {}, id="bnaf"),
    pytest.param("sos", {}, id="sos"),
    pytest.param("umnn", {}, id="umnn"),
]
SMALL = dict(transforms=2, hidden_features=(16,))
SMALL_EXTRA = {"naf": dict(hidden=6), "bnaf": dict(hidden_features=(6, 6)), "sos": {},
               "umnn": dict(signal=6, integrand_features=(16, 16), nodes=16)}


def _flow(name, dim, context_dim=0, seed=0, std=0.15, **extra):
    torch.manual_seed(seed)
    kwargs = {**SMALL, **SMALL_EXTRA.get(name, {}), **extra}
    flow = flowrl.build_flow(name, dim, context_dim, **kwargs).to(F64)
    perturb(flow, std=std, seed=seed + 1)
    return flow.eval()


# ---------------------------------------------------------------------- MADE
@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_made_jacobian_is_strictly_lower_triangular_in_its_order(seed, context_dim):
    g = torch.Generator().manual_seed(seed)
    dim = 6
    order = torch.randperm(dim, generator=g)
    torch.manual_seed(seed)
    made = MADE(dim, 2, context_dim, (13, 11), order, activation=torch.nn.Tanh, zero_last=False).to(F64)
    x = torch.randn(4, dim, dtype=F64)
    c = torch.randn(4, context_dim, dtype=F64) if context_dim else None
    jac = jacobian(lambda v: made(v, c), x)  # (4, D, P, 4, D)
    dep = torch.stack([jac[b, :, :, b, :] for b in range(4)]).abs().amax(dim=(0, 2)) > 0  # out dim x in dim
    rank = torch.empty(dim, dtype=torch.long)
    rank[order] = torch.arange(dim)
    allowed = rank[:, None] > rank[None, :]  # output i may see input j iff j comes earlier
    assert not (dep & ~allowed).any(), "MADE output depends on a later (or its own) input"
    assert torch.equal(dep, allowed), "MADE misses an allowed dependency"
    assert torch.equal(made.jacobian_mask(), allowed)
    if context_dim:  # the context reaches every output block, the first one included
        jc = jacobian(lambda cc: made(x, cc), c)
        per_out = torch.stack([jc[b, :, :, b, :] for b in range(4)]).abs().amax(dim=(0, 2, 3))
        assert (per_out > 0).all()


def test_made_rejects_a_bad_order():
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 2, order=[0, 0, 1])


def test_made_context_mismatch_is_a_clear_error():
    made = MADE(3, 2, context_dim=2)
    with pytest.raises(ValueError, match="context"):
        made(torch.randn(4, 3))


# ------------------------------------------------------------- pass counts
def _count_made_calls(transform):
    """Counts MADE evaluations: full passes and single-block passes (the sequential inverse)."""
    calls = []
    for m in transform.modules():
        if isinstance(m, MADE):
            m.register_forward_hook(lambda *a: calls.append(1))
            block = m.forward_block
            m.forward_block = lambda *a, _block=block: calls.append(1) or _block(*a)
    return calls


def test_maf_density_is_one_pass_and_sampling_is_dim_passes_iaf_the_reverse():
    dim = 5
    maf = _flow("maf", dim, transforms=1)
    iaf = _flow("iaf", dim, transforms=1)
    x = torch.randn(8, dim, dtype=F64)
    for flow, density_passes, sampling_passes in ((maf, 1, dim), (iaf, dim, 1)):
        calls = _count_made_calls(flow)
        flow.log_prob(x)
        assert len(calls) == density_passes
        calls.clear()
        flow.sample(8)
        assert len(calls) == sampling_passes
    # both directions are exact
    with torch.no_grad():
        z, ld = iaf.transform(x)
        x2, ld2 = iaf.transform.inverse(z)
    assert (x2 - x).abs().max() < 1e-12 and (ld + ld2).abs().max() < 1e-12


@pytest.mark.parametrize("name,extra", NUMERICAL[:2] + NUMERICAL[3:])
def test_numerical_sampling_evaluates_the_conditioner_once_per_dimension(name, extra):
    dim = 4
    flow = _flow(name, dim, **extra)
    calls = _count_made_calls(flow)
    flow.sample(16)
    assert len(calls) == dim * SMALL["transforms"]


# --------------------------------------------------------- numerical inverse
@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("name,extra", NUMERICAL)
def test_numerical_inverse_is_accurate_on_minus_10_to_10(name, extra, context_dim):
    dim = 3
    flow = _flow(name, dim, context_dim, **extra)
    g = torch.Generator().manual_seed(4)
    v = 20 * torch.rand(256, dim, generator=g, dtype=F64) - 10
    c = torch.randn(256, context_dim, generator=g, dtype=F64) if context_dim else None
    with torch.no_grad():
        z, ld = flow.transform(v, c)
        x, ld2 = flow.transform.inverse(z, c)
        assert (x - v).abs().max().item() < 1e-5
        assert (ld + ld2).abs().max().item() < 1e-5
        # noise in [-10, 10] -> data -> noise.  DDSF's tails are so flat (plateaus of its sigmoid
        # mixtures, compounded over two layers) that noise at +-5 already lands at |x| ~ 1e11 and
        # at +-10 at |x| ~ 1e13, where float64 runs out of digits; it is checked on [-4, 4].
        v = 0.4 * v if extra.get("dense") else v
        x3, ld3 = flow.transform.inverse(v, c)
        z3, ld4 = flow.transform(x3, c)
    assert (z3 - v).abs().max().item() < 1e-5
    assert (ld3 + ld4).abs().max().item() < 1e-5


@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("name,extra", NUMERICAL)
def test_samples_carry_the_density_evaluated_directly(name, extra, context_dim):
    flow = _flow(name, 3, context_dim, **extra)
    c = torch.randn(5, context_dim, dtype=F64) if context_dim else None
    xs, lp = flow.rsample_and_log_prob(64, c)
    with torch.no_grad():
        direct = flow.log_prob(xs, c)
    assert torch.isfinite(lp).all()
    assert (direct - lp).abs().max().item() < 1e-8


@pytest.mark.parametrize("name,extra", NUMERICAL)
def test_far_roots_are_found_not_clamped(name, extra):
    """Noise far in the tails maps to data whose density is exact (the bracket expands)."""
    flow = _flow(name, 2, **extra)
    z = torch.tensor([[40.0, -40.0], [-200.0, 120.0], [7.5, 0.0]], dtype=F64)
    if extra.get("dense"):  # DDSF's flat tails send these beyond float64's range of accuracy (see above)
        z = torch.tensor([[4.0, -4.0], [-3.5, 3.0], [2.5, 0.0]], dtype=F64)
    with torch.no_grad():
        x, _ = flow.transform.inverse(z)
        z2, _ = flow.transform(x)
    assert x.abs().max().item() > 10  # beyond a clamped bracket
    assert (z2 - z).abs().max().item() < 1e-6 * 200


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("dense", [False, True])
def test_naf_is_finite_on_minus_50_to_50(dense, dtype):
    flow = _flow("naf", 3, dense=dense, std=1.0).to(dtype).train()
    v = torch.linspace(-50, 50, 101, dtype=dtype)
    x = torch.stack([v, v.flip(0), torch.roll(v, 17)], dim=1).requires_grad_(True)
    z, ld = flow.transform(x)
    lp = flow.log_prob(x)
    assert torch.isfinite(z).all() and torch.isfinite(ld).all() and torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)
    # and the transformer alone, with extreme pseudo-parameters
    t = DeepSigmoid(8, 2 if dense else 1)
    params = 10 * torch.randn(101, t.num_params, dtype=dtype)
    y, logd = t.forward(v, params)
    assert torch.isfinite(y).all() and torch.isfinite(logd).all()


def test_inversion_errors_are_clear():
    y = torch.tensor([0.5, 3.0], dtype=F64)
    with pytest.raises(InversionError, match="bracket"):  # tanh is not onto R: 3 has no preimage
        invert_monotone(lambda v: (torch.tanh(v), torch.log1p(-torch.tanh(v) ** 2)), y, max_expansions=20)
    cube = lambda v: (v ** 3 + v, torch.log(3 * v * v + 1))  # noqa: E731
    with pytest.raises(InversionError, match="did not converge"):
        invert_monotone(cube, torch.tensor([1e6], dtype=F64), max_iter=2)
    with pytest.raises(InversionError, match="non-finite"):
        invert_monotone(cube, torch.tensor([float("nan")], dtype=F64))
    with pytest.raises(ValueError, match="tolerance"):
        invert_monotone(cube, y, tol=0.0)
    x, _ = invert_monotone(cube, torch.tensor([1e6], dtype=F64))
    assert abs(x.item() ** 3 + x.item() - 1e6) < 1e-6


def test_initial_guess_and_cheap_log_derivative_give_the_same_inverse():
    """``x0`` only moves the start and ``log_derivative`` only replaces ``fn(x)[1]``: same root, same log-det."""
    a = torch.tensor([0.5, 2.0, 1.0], dtype=F64, requires_grad=True)
    y = torch.tensor([30.0, -1.0, 0.2], dtype=F64)
    cube = lambda v: (v ** 3 + a * v, torch.log(3 * v * v + a))  # noqa: E731
    calls = []
    log_d = lambda v: calls.append(1) or torch.log(3 * v * v + a)  # noqa: E731
    x_ref, ld_ref = invert_monotone(cube, y)
    x, ld = invert_monotone(cube, y, x0=torch.full_like(y, -50.0), log_derivative=log_d)
    assert torch.allclose(x, x_ref, atol=1e-10) and torch.allclose(ld, ld_ref, atol=1e-10) and calls
    assert torch.allclose(x ** 3 + a * x, y, atol=1e-9)
    (ga,) = torch.autograd.grad(x.sum(), a)  # the implicit gradient still flows with a custom log_derivative
    assert torch.allclose(ga, -x.detach() / (3 * x.detach() ** 2 + a.detach()), atol=1e-9)
    with pytest.raises(ValueError, match="initial guess"):
        invert_monotone(cube, y, x0=torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="initial guess"):
        invert_monotone(cube, y, x0=torch.full_like(y, float("nan")))


def test_grid_start_finds_the_same_roots_inside_and_outside_the_grid():
    """A grid start brackets each root in one batched evaluation; roots beyond the grid are still found."""
    a = torch.tensor([0.5, 2.0, 1.0, 1e-3, 3.0], dtype=F64, requires_grad=True)
    y = torch.tensor([30.0, -1.0, 0.2, 6.0, -1e4], dtype=F64)  # the last two roots lie far outside [-3, 3]
    cube = lambda v: (v ** 3 + a * v, torch.log(3 * v * v + a))  # noqa: E731
    grid = torch.linspace(-3.0, 3.0, 13, dtype=F64)
    x_ref, ld_ref = invert_monotone(cube, y)
    x, ld = invert_monotone(cube, y, grid=grid)
    assert torch.allclose(x, x_ref, atol=1e-9) and torch.allclose(ld, ld_ref, atol=1e-9)
    (ga,) = torch.autograd.grad(x.sum(), a)
    assert torch.allclose(ga, -x.detach() / (3 * x.detach() ** 2 + a.detach()), atol=1e-8)
    with pytest.raises(ValueError, match="increasing"):
        invert_monotone(cube, y, grid=grid.flip(0))
    with pytest.raises(ValueError, match="not both"):
        invert_monotone(cube, y, grid=grid, x0=y)


def test_far_roots_take_few_evaluations():
    """A flat map (slope 1e-3, the DSF's floor) puts the root near 6e3: relative capped steps reach it fast."""
    calls = []
    flat = lambda v: calls.append(1) or (1e-3 * v - 6.0, torch.full_like(v, math.log(1e-3)))  # noqa: E731
    x, _ = invert_monotone(flat, torch.tensor([0.2], dtype=F64))
    assert abs(x.item() - 6200.0) < 1e-6
    assert len(calls) <= 10, len(calls)  # doubling absolute steps from 1 needed 15


def test_naf_policy_like_inverse_uses_its_grid_for_small_batches():
    """DeepSigmoid starts small batches from its grid (fewer evaluations) and large ones from ``y``: same roots."""
    from flowrl.transforms import naf as naf_module

    torch.manual_seed(0)
    dsf = DeepSigmoid(hidden=8)
    params = 3 * torch.randn(8, dsf.num_params, dtype=F64)
    y = torch.randn(8, dtype=F64) * 3
    counts = {}
    for name, limit in (("grid", 256), ("plain", 0)):
        calls = []
        naf_module.GRID_MAX_VALUES, saved = limit, naf_module.GRID_MAX_VALUES
        try:
            apply = dsf._apply
            dsf._apply = lambda v, p, apply=apply: calls.append(1) or apply(v, p)
            x, ld = dsf.inverse(y, params)
        finally:
            naf_module.GRID_MAX_VALUES = saved
            del dsf._apply
        counts[name] = len(calls)
        fx, logd = dsf.forward(x, params)
        assert torch.allclose(fx, y, atol=1e-8) and torch.allclose(ld, -logd, atol=1e-8)
    assert counts["grid"] < counts["plain"], counts


def test_no_grad_inverse_reuses_its_last_evaluation_for_the_log_det():
    """Without autograd the log-det comes from the solve's last evaluation: one map call fewer, same values."""
    torch.manual_seed(1)
    dsf = DeepSigmoid(hidden=8, min_slope=0.1)
    params = 2 * torch.randn(64, dsf.num_params)
    y = torch.randn(64) * 4
    calls = []
    apply = dsf._apply
    dsf._apply = lambda v, p: calls.append(1) or apply(v, p)
    try:
        with torch.no_grad():
            x_fast, ld_fast = dsf.inverse(y, params)
        fast_calls, calls[:] = len(calls), []
        with torch.enable_grad():
            x_ref, ld_ref = dsf.inverse(y, params.requires_grad_())
        ref_calls = len(calls)
    finally:
        del dsf._apply
    assert fast_calls == ref_calls - 2, (fast_calls, ref_calls)  # no differentiable step, no final log-det
    assert torch.allclose(x_fast, x_ref.detach(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(ld_fast, ld_ref.detach(), atol=1e-5)
    fx, logd = dsf.forward(x_fast, params.detach())
    assert torch.allclose(fx, y, atol=1e-4) and torch.allclose(ld_fast, -logd, atol=1e-5)


def test_implicit_gradient_of_the_inverse_is_exact():
    """``x = f^{-1}(y; a)`` for ``f = x^3 + a x``: ``dx/dy = 1 / f'``, ``dx/da = -x / f'``."""
    a = torch.tensor([0.5, 2.0, 1.0], dtype=F64, requires_grad=True)
    y = torch.tensor([3.0, -1.0, 0.2], dtype=F64, requires_grad=True)
    x, log_dx = invert_monotone(lambda v: (v ** 3 + a * v, torch.log(3 * v * v + a)), y)
    fp = 3 * x.detach() ** 2 + a.detach()
    gy, ga = torch.autograd.grad(x.sum(), (y, a))
    assert torch.allclose(gy, 1 / fp, atol=1e-10) and torch.allclose(ga, -x.detach() / fp, atol=1e-10)
    assert torch.allclose(log_dx, -torch.log(fp), atol=1e-12)


@pytest.mark.parametrize("name,extra", NUMERICAL)
def test_rsample_gradients_match_finite_differences(name, extra):
    """Gradients of a sampled point w.r.t. the parameters (implicit differentiation) are exact."""
    flow = _flow(name, 2, 1, **extra)
    z = torch.randn(3, 2, dtype=F64)
    c = torch.randn(3, 1, dtype=F64)
    params = [p for p in flow.parameters() if p.requires_grad]
    p0 = params[0]

    def sample_stat():
        x, ld = flow.transform.inverse(z, c)
        return (x * torch.tensor([1.0, -0.7], dtype=F64)).sum() + ld.sum()

    grad = torch.autograd.grad(sample_stat(), p0)[0].flatten()
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(p0.shape, generator=g, dtype=F64)
    eps = 1e-5
    with torch.no_grad():
        p0.add_(eps * direction)
        up = sample_stat()
        p0.sub_(2 * eps * direction)
        down = sample_stat()
        p0.add_(eps * direction)
    fd = (up - down) / (2 * eps)
    assert abs(fd.item() - (grad @ direction.flatten()).item()) < 1e-5 * max(1.0, abs(fd.item()))


# --------------------------------------------------------------- components
def test_clenshaw_curtis_integrates_polynomials_and_smooth_functions():
    s, w = clenshaw_curtis(16)
    assert abs(w.sum().item() - 2) < 1e-14
    for k in range(17):
        exact = 0.0 if k % 2 else 2.0 / (k + 1)
        assert abs((w * s ** k).sum().item() - exact) < 1e-13
    assert abs((w * torch.exp(s)).sum().item() - (math.e - 1 / math.e)) < 1e-14
    with pytest.raises(ValueError, match="even"):
        clenshaw_curtis(7)


def test_umnn_derivative_is_its_integrand_and_gradients_flow_through_the_quadrature():
    torch.manual_seed(0)
    t = UnconstrainedMonotone(signal=3, hidden_features=(16,), nodes=32).to(F64)
    perturb(t, std=0.5)
    x = torch.linspace(-4, 4, 9, dtype=F64, requires_grad=True)
    params = torch.randn(9, 4, dtype=F64, requires_grad=True)
    y, log_g = t.forward(x, params)
    dy = torch.autograd.grad(y.sum(), x, create_graph=True)[0]
    assert torch.allclose(dy.log(), log_g, atol=1e-7)  # quadrature error only
    y.sum().backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.parameters())


def test_sos_is_the_closed_form_integral_of_a_sum_of_squares():
    t = SumOfSquaresPolynomial(polynomials=2, degree=2, bound=5.0, eps=1e-3)
    params = torch.randn(t.num_params, dtype=F64)
    coeffs = params[:6].reshape(2, 3) + torch.tensor([1 / math.sqrt(2), 0, 0], dtype=F64)
    x = torch.tensor([-7.0, -2.0, 0.0, 1.5, 4.9, 9.0], dtype=F64)
    y, logd = t.forward(x, params.expand(6, -1))

    def integrand(s):  # in the polynomial's variable s = t / bound, clamped
        s = s.clamp(-1, 1)
        p = coeffs[:, 0:1] + coeffs[:, 1:2] * s + coeffs[:, 2:3] * s * s
        return (p * p).sum(0) + 1e-3

    for xi, yi, li in zip(x, y, logd):
        grid = torch.linspace(0, xi.item(), 20001, dtype=F64)
        vals = integrand(grid / 5.0)
        integral = torch.trapezoid(vals, grid)
        assert abs(params[-1].item() + integral.item() - yi.item()) < 1e-5
        assert abs(math.log(vals[-1].item()) - li.item()) < 1e-12


@pytest.mark.parametrize("layers", [1, 2])
def test_naf_sigmoids_start_distinct_so_training_can_tell_them_apart(layers):
    """Zero pseudo-parameters (a zero-initialised MADE) must not give k identical sigmoids: those get
    identical gradients and stay identical, and the DSF is an affine map for ever."""
    k = 4
    t = DeepSigmoid(k, layers)
    x = torch.linspace(-3, 3, 64, dtype=F64)
    params = torch.zeros(64, t.num_params, dtype=F64, requires_grad=True)
    y, logd = t.forward(x, params)
    grad = torch.autograd.grad((0.5 * y * y - logd).sum(), params)[0].sum(0)  # a Gaussian NLL
    shifts = grad[k:2 * k]  # layer 1: slopes (k), shifts (k), then mixing logits (n, k)
    assert (shifts[:, None] - shifts[None, :]).abs().add(torch.eye(k, dtype=F64)).min() > 1e-6
    if layers == 2:  # DDSF: the k outputs of the hidden layer differ too (distinct mixing rows)
        rows = grad[2 * k:2 * k + k * k].reshape(k, k)
        assert (rows[:, None] - rows[None, :]).abs().sum(-1).add(torch.eye(k, dtype=F64)).min() > 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_naf_mixing_product_matches_logsumexp_even_with_vanishing_weights(dtype):
    """The fast ``log(W e^t)`` falls back to the exact logsumexp where tiny weights make the product underflow."""
    from flowrl.transforms.naf import _log_mix

    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(64, 6, 5, generator=g, dtype=F64)
    logits[:8] *= 200  # saturated rows: most weights underflow to 0 (in float64 too)
    log_w = torch.log_softmax(logits, -1).to(dtype)
    t = (30 * torch.randn(64, 5, 3, generator=g, dtype=F64)).to(dtype)
    got = _log_mix(log_w.exp(), log_w, t)
    want = torch.logsumexp(t.unsqueeze(-3) + log_w.unsqueeze(-1), dim=-2)
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() < (1e-4 if dtype == torch.float32 else 1e-12)


def test_bnaf_first_layer_units_start_distinct():
    """A one-input row is normalised to weight 1, so zero biases would make every unit of a block tanh(x_i)."""
    from flowrl.transforms.bnaf import BlockNAF

    t = BlockNAF(2, hidden_features=(8, 8))
    weight, _ = t._layer(0)
    pre = (weight @ torch.tensor([0.3, -0.2]) + t.biases[0]).detach().reshape(2, 8)
    for block in pre:
        assert block.unique().numel() == 8


def test_ddsf_option_builds_dense_transformers():
    flow = flowrl.build_flow("naf", 2, dense=True, dense_layers=3, hidden=4, transforms=1)
    layer = flow.transform.transforms[0]
    assert isinstance(layer, MaskedAutoregressive) and layer.bijection.layers == 3
    assert not flow.transform.analytic_inverse


# ------------------------------------------------------------------ fitting
NAMED = ["maf", "iaf", "nsf-ar", "naf", "bnaf", "sos", "umnn"]
FIT_STEPS, FIT_WARMUP, FIT_BATCH, FIT_LR = 2000, 100, 256, 5e-3
FIT_ARCH = {  # per-family architecture; the training budget below is the same for every flow
    # affine transformers bend two-moons only by composition: 8 layers of alternating order
    "maf": dict(transforms=8, hidden_features=(32, 32)),
    "iaf": dict(transforms=8, hidden_features=(32, 32)),
    # the flexible transformers need only two layers (one per order)
    "nsf-ar": dict(transforms=2, hidden_features=(32, 32)),
    "naf": dict(transforms=2, hidden_features=(32, 32)),
    "sos": dict(transforms=2, hidden_features=(32, 32)),
    # Block-NAF has no conditioner: its widths are hidden units per dimension
    "bnaf": dict(transforms=2, hidden_features=(16, 16)),
    # a smaller integrand and 16 quadrature intervals keep UMNN's cost near the others'
    "umnn": dict(transforms=2, hidden_features=(32, 32), integrand_features=(32, 32), nodes=16),
}


def _warmup_cosine(step: int) -> float:
    """Learning-rate factor: linear warm-up over ``FIT_WARMUP`` steps, then cosine to 0 at ``FIT_STEPS``."""
    if step < FIT_WARMUP:
        return (step + 1) / FIT_WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - FIT_WARMUP) / (FIT_STEPS - FIT_WARMUP)))


@pytest.mark.slow
def test_every_named_flow_fits_two_moons_within_a_tenth_of_a_nat_of_the_best():
    """Same budget for every flow: 2000 Adam steps (lr 5e-3, 100 warm-up, cosine), batch 256."""
    train, test = two_moons(4096, seed=0), two_moons(4096, seed=1)
    results = {}
    for name in NAMED:
        torch.manual_seed(0)
        flow = flowrl.build_flow(name, 2, **FIT_ARCH[name])
        opt = torch.optim.Adam(flow.parameters(), lr=FIT_LR)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine)
        g = torch.Generator().manual_seed(0)
        for _ in range(FIT_STEPS):
            idx = torch.randint(0, len(train), (FIT_BATCH,), generator=g)
            loss = -flow.log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            results[name] = -flow.log_prob(test).mean().item()
    best = min(results.values())
    print("\ntest NLL on two-moons (nats), best %.3f" % best)
    for name, nll in results.items():
        print(f"  {name:7s} {nll:.3f}  (+{nll - best:.3f})")
    assert all(math.isfinite(v) for v in results.values()), results
    assert all(v - best < 0.1 for v in results.values()), results


def test_numerical_families_declare_their_inverse_numerical():
    for name in ["naf", "bnaf", "sos", "umnn"]:
        assert not flowrl.build_flow(name, 2, transforms=1).transform.analytic_inverse, name
    for name in ["maf", "iaf", "nsf-ar"]:
        assert flowrl.build_flow(name, 2, transforms=1).transform.analytic_inverse, name
