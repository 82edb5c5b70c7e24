"""The generic property suite: every registered flow and transform, same checks.

Cases come from :func:`tests.flow_cases.all_cases`, so a family registered
later is checked here without a line of new test code.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flow_cases import all_cases, perturb, two_moons

CASES = all_cases()
VECTOR = [c for c in CASES if c.vector]
IMAGE = [c for c in CASES if c.image]
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
CONTEXTS = [pytest.param(0, id="noctx"), pytest.param(2, id="ctx")]
IMAGE_SHAPE = (2, 4, 4)


def _params(cases, slow_marks=False):
    out = []
    for c in cases:
        marks = [pytest.mark.slow] if (slow_marks and c.slow) else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def _context(rows: int, context_dim: int, dtype, seed: int = 3, device="cpu"):
    if context_dim == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, context_dim, generator=g, dtype=torch.float64).to(device, dtype)


def _ready(case, dim, context_dim, dtype, seed=0, device="cpu"):
    """A perturbed (non-identity) flow in eval mode on ``device``, initialised on one batch."""
    flow = case.build(dim, context_dim, dtype, seed=seed).to(device)
    perturb(flow)
    with torch.no_grad():  # data-dependent initialisations (ActNorm) happen here
        x0 = torch.randn(16, *flow.shape, dtype=dtype).to(device)
        flow.log_prob(x0, _context(16, context_dim, dtype, device=device))
    flow.eval()
    return flow


def _dim(case, dim=3):
    return max(dim, case.min_dim)


def _backward(flow, loss):
    """Backpropagate ``loss`` unless the flow has no parameters at all (permutations)."""
    if any(p.requires_grad for p in flow.parameters()):
        loss.backward()
        return True
    assert not loss.requires_grad
    return False


def _assert_all_parameters_have_gradients(flow):
    missing = [n for n, p in flow.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in flow.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _params(VECTOR))
def test_inverse_of_forward_is_identity(case, dtype, context_dim, batch, device):
    dim = _dim(case)
    flow = _ready(case, dim, context_dim, dtype, device=device)
    rt, ld_tol = case.tolerances(dtype)
    x = torch.randn(batch, dim, dtype=dtype).to(device)
    c = _context(batch, context_dim, dtype, device=device)
    with torch.no_grad():
        z, ld = flow.transform(x, c)
        x2, ld2 = flow.transform.inverse(z, c)
    assert z.shape == x.shape and ld.shape == (batch,) and ld2.shape == (batch,)
    assert (x2 - x).abs().max().item() < rt
    assert (ld + ld2).abs().max().item() < ld_tol
    with torch.no_grad():  # the other direction: noise -> data -> noise
        x3, ld3 = flow.transform.inverse(x, c)
        z3, ld4 = flow.transform(x3, c)
    assert (z3 - x).abs().max().item() < rt
    assert (ld3 + ld4).abs().max().item() < ld_tol


# -------------------------------------------------------------------- log-dets
def _blocks(jac, batch, dim):
    return jac.reshape(batch, dim, batch, dim)


@pytest.mark.parametrize(
    "dtype,dim",
    [pytest.param(torch.float64, 3, id="f64-d3"), pytest.param(torch.float64, 5, id="f64-d5"),
     pytest.param(torch.float32, 3, id="f32-d3")],
)
@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("case", _params(VECTOR))
def test_logdet_matches_autograd_jacobian(case, dtype, dim, context_dim):
    dim = _dim(case, dim)
    flow = _ready(case, dim, context_dim, dtype)
    _, ld_tol = case.tolerances(dtype)
    batch = 3
    x = torch.randn(batch, dim, dtype=dtype)
    c = _context(batch, context_dim, dtype)
    for direction in ("forward", "inverse"):
        fn = flow.transform if direction == "forward" else flow.transform.inverse
        with torch.no_grad():
            _, ld = fn(x, c)
        jac = jacobian(lambda v: fn(v, c)[0], x)
        blocks = _blocks(jac, batch, dim)
        for b in range(batch):
            sign, logabs = torch.linalg.slogdet(blocks[b, :, b, :].double())
            assert sign != 0
            assert abs(logabs.item() - ld[b].item()) < ld_tol, (direction, b, logabs.item(), ld[b].item())


@pytest.mark.parametrize("case", _params(VECTOR))
def test_jacobian_zero_pattern(case):
    """No cross-talk between batch rows, and zeros wherever the transform declares them."""
    dim = _dim(case, 4)
    flow = _ready(case, dim, 0, torch.float64)
    batch = 3
    x = torch.randn(batch, dim, dtype=torch.float64)
    blocks = _blocks(jacobian(lambda v: flow.transform(v)[0], x), batch, dim)
    for a in range(batch):
        for b in range(batch):
            if a != b:
                assert blocks[a, :, b, :].abs().max().item() < 1e-10, "batch rows interact"
    mask = flow.transform.jacobian_mask(dim)
    if mask is not None:
        outside = blocks[0, :, 0, :][~mask]
        assert outside.numel() == 0 or outside.abs().max().item() < 1e-10, "declared zero pattern violated"


# ------------------------------------------------------- density normalisation
def _train_a_few_steps(flow, data, context_dim, steps=25, lr=1e-2):
    flow.train()
    params = list(flow.parameters())
    if not params:  # parameter-free transforms (permutations) have nothing to train
        flow.eval()
        return
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (256,), generator=g)
        c = _context(256, context_dim, data.dtype, seed=int(torch.randint(0, 10**6, (1,), generator=g)))
        loss = -flow.log_prob(data[idx], c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()


@torch.no_grad()
def _grid_log_prob(flow, pts, c0, chunk=8192):
    out = []
    for i in range(0, len(pts), chunk):
        out.append(flow.log_prob(pts[i:i + chunk], c0))
    return torch.cat(out)


@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _params([c for c in VECTOR if c.min_dim <= 2], slow_marks=True))
def test_density_integrates_to_one_2d_and_samples_match(case, dtype, context_dim):
    torch.manual_seed(0)
    flow = case.build(2, context_dim, dtype)
    _train_a_few_steps(flow, two_moons(2048, dtype=dtype), context_dim)
    c0 = _context(1, context_dim, dtype, seed=11)
    h = 0.05
    axis = torch.arange(-7.0, 7.0 + h / 2, h, dtype=dtype)
    pts = torch.cartesian_prod(axis, axis)
    lp = _grid_log_prob(flow, pts, c0)
    assert torch.isfinite(lp).all()
    p = lp.double().exp()
    mass = p.sum().item() * h * h
    assert abs(mass - 1.0) < 1e-2, f"density integrates to {mass}"
    # samples' statistics agree with the density they claim
    n = 4000
    with torch.no_grad():
        xs = flow.sample(n, c0).reshape(n, 2).double()
    grid_mean = (pts.double() * p[:, None]).sum(0) * h * h / mass
    se = xs.std(0) / math.sqrt(n)
    assert ((xs.mean(0) - grid_mean).abs() < 5 * se + 0.02).all(), (xs.mean(0), grid_mean)


@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("case", _params([c for c in VECTOR if c.min_dim <= 1], slow_marks=True))
def test_density_integrates_to_one_1d(case, context_dim):
    dtype = torch.float64
    torch.manual_seed(0)
    flow = case.build(1, context_dim, dtype)
    _train_a_few_steps(flow, two_moons(2048, dtype=dtype)[:, :1], context_dim)
    c0 = _context(1, context_dim, dtype, seed=11)
    h = 0.005
    pts = torch.arange(-12.0, 12.0 + h / 2, h, dtype=dtype)[:, None]
    p = _grid_log_prob(flow, pts, c0).exp()
    assert abs(p.sum().item() * h - 1.0) < 1e-2


# ----------------------------------------------------------- sampling direction
@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _params(VECTOR))
def test_rsample_and_log_prob_agree_and_carry_gradients(case, dtype, context_dim, n, device):
    dim = _dim(case)
    flow = _ready(case, dim, context_dim, dtype, device=device)
    _, ld_tol = case.tolerances(dtype)
    c = _context(3, context_dim, dtype, device=device)
    x, lp = flow.rsample_and_log_prob(n, c)
    lead = (n, 3) if context_dim else (n,)
    assert x.shape == (*lead, dim) and lp.shape == lead
    with torch.no_grad():
        direct = flow.log_prob(x, c)
    assert (direct - lp).abs().max().item() < 10 * ld_tol
    _backward(flow, x.sum() + lp.sum())
    _assert_all_parameters_have_gradients(flow)


@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("case", _params(VECTOR))
def test_log_prob_gives_every_parameter_a_gradient(case, context_dim, device):
    flow = _ready(case, _dim(case), context_dim, torch.float32, device=device)
    flow.train()
    x = torch.randn(8, flow.shape[0]).to(device)
    _backward(flow, flow.log_prob(x, _context(8, context_dim, torch.float32, device=device)).sum())
    _assert_all_parameters_have_gradients(flow)


# ----------------------------------------------------------------- numerics
TAIL_VALUES = [-50.0, -5.0, -3.0, -1e-3, 0.0, 3.0, 5.0, 50.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _params(VECTOR))
def test_tails_and_interval_edges_stay_finite(case, dtype, device):
    dim = _dim(case)
    flow = _ready(case, dim, 0, dtype, device=device)
    flow.train()
    v = TAIL_VALUES
    x = torch.tensor([[v[i], v[(i + 3) % 8], v[(i + 5) % 8]][:dim] + [0.5] * (dim - 3) for i in range(8)], dtype=dtype,
                     device=device)
    x.requires_grad_(True)
    z, ld = flow.transform(x)
    lp = flow.log_prob(x)
    assert torch.isfinite(z).all() and torch.isfinite(ld).all() and torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(x.grad).all()
    _assert_all_parameters_have_gradients(flow)
    with torch.no_grad():
        xi, ldi = flow.transform.inverse(x.detach())
    assert torch.isfinite(xi).all() and torch.isfinite(ldi).all()


# -------------------------------------------------------------- persistence
@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("case", _params(CASES))
def test_state_dict_round_trip(case, context_dim):
    shape = IMAGE_SHAPE if not case.vector else (_dim(case),)
    dim = shape if len(shape) == 3 else shape[0]
    a = _ready(case, dim, context_dim, torch.float64, seed=0)
    b = case.build(dim, context_dim, torch.float64, seed=123)
    b.load_state_dict(a.state_dict())
    b.eval()
    x = 3 * torch.randn(5, *shape, dtype=torch.float64) + 1  # other data: no re-initialisation
    c = _context(5, context_dim, torch.float64, seed=7)
    with torch.no_grad():
        assert torch.allclose(a.log_prob(x, c), b.log_prob(x, c), atol=1e-10, rtol=0)
        torch.manual_seed(5)
        sa = a.sample(2, c)
        torch.manual_seed(5)
        sb = b.sample(2, c)
    assert torch.allclose(sa, sb, atol=1e-8, rtol=0)


# -------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("case", _params(CASES))
def test_bad_inputs_raise_clear_errors(case):
    shape = IMAGE_SHAPE if not case.vector else (_dim(case),)
    dim = shape if len(shape) == 3 else shape[0]
    cond = case.build(dim, 2, torch.float32)
    uncond = case.build(dim, 0, torch.float32)
    x = torch.randn(4, *shape)
    wrong = torch.randn(4, *shape[:-1], shape[-1] + 1)
    with pytest.raises(ValueError, match="shape"):
        uncond.log_prob(wrong)
    with pytest.raises(ValueError, match="no context"):
        cond.log_prob(x)
    with pytest.raises(ValueError, match="no context"):
        cond.sample(2)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.log_prob(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="last dimension"):
        cond.log_prob(x, torch.randn(4, 3))
    bad = x.clone()
    bad.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        uncond.log_prob(bad)


# ------------------------------------------------------------------ images
@pytest.mark.parametrize("context_dim", CONTEXTS)
@pytest.mark.parametrize("case", _params(IMAGE))
def test_image_flows_invert_and_match_jacobian(case, context_dim):
    dtype = torch.float64
    flow = _ready(case, IMAGE_SHAPE, context_dim, dtype)
    rt, ld_tol = case.tolerances(dtype)
    x = torch.randn(2, *IMAGE_SHAPE, dtype=dtype)
    c = _context(2, context_dim, dtype)
    with torch.no_grad():
        z, ld = flow.transform(x, c)
        x2, ld2 = flow.transform.inverse(z, c)
    assert (x2 - x).abs().max().item() < rt and (ld + ld2).abs().max().item() < ld_tol
    d = math.prod(IMAGE_SHAPE)
    jac = jacobian(lambda v: flow.transform(v, c)[0], x).reshape(2, d, 2, d)
    for b in range(2):
        assert abs(torch.linalg.slogdet(jac[b, :, b, :])[1].item() - ld[b].item()) < ld_tol
    assert jac[0, :, 1, :].abs().max().item() < 1e-10
    xs, lp = flow.rsample_and_log_prob(3, c)
    assert xs.shape == ((3, 2, *IMAGE_SHAPE) if context_dim else (3, *IMAGE_SHAPE))
    with torch.no_grad():
        assert (flow.log_prob(xs, c) - lp).abs().max().item() < 10 * ld_tol
    _backward(flow, lp.sum() + xs.sum())
    _assert_all_parameters_have_gradients(flow)
