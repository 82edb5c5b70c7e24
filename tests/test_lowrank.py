"""Planar, radial and Sylvester flows beyond the generic suite."""

import pytest
import torch

import flowrl
from flowrl.inversion import InversionError
from flowrl.transforms.lowrank import PlanarMap, RadialMap, SylvesterMap
from tolerances import assert_close_rounding


def _randomise(module, std=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("seed", range(5))
def test_planar_constraint_holds_for_any_parameters(seed):
    t = PlanarMap(4).double()
    _randomise(t, std=5.0, seed=seed)
    u, w, _ = t._uwb(1, None)
    assert (w * u).sum().item() > -1
    x = 10 * torch.randn(64, 4, dtype=torch.float64)
    y, ld = t(x)
    assert torch.isfinite(ld).all()
    assert torch.allclose(t.inverse(y)[0], x, atol=1e-9)


def test_radial_inverse_is_exact_at_and_near_its_centre():
    t = RadialMap(3).double()
    _randomise(t, std=1.0, seed=3)
    z0, _, _ = t._params(1, None)
    pts = torch.cat([z0, z0 + 1e-9, z0 + 1e3, torch.randn(5, 3, dtype=torch.float64)])
    y, ld = t(pts)
    x, ld2 = t.inverse(y)
    assert torch.allclose(x, pts, atol=1e-8) and torch.allclose(ld, -ld2, atol=1e-10)


@pytest.mark.parametrize("variant", ["orthogonal", "householder"])
def test_sylvester_q_has_orthonormal_columns(variant):
    t = SylvesterMap(5, variant=variant, rank=3).double()
    _randomise(t, std=1.0)
    q, r, rt, _ = t._unpack(2, None)
    eye = torch.eye(q.shape[-1], dtype=torch.float64)
    assert torch.allclose(q.transpose(1, 2) @ q, eye.expand_as(q.transpose(1, 2) @ q), atol=1e-10)
    prod = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(rt, dim1=-2, dim2=-1)
    assert (prod > -1).all()


def test_sylvester_rejects_bad_options():
    with pytest.raises(ValueError, match="variant"):
        SylvesterMap(3, variant="diagonal")
    with pytest.raises(ValueError, match="rank"):
        SylvesterMap(3, rank=4)


@pytest.mark.parametrize("name", ["planar", "radial", "sylvester"])
def test_amortised_parameters_depend_on_the_context(name):
    torch.manual_seed(0)
    flow = flowrl.build_flow(name, 2, context_dim=3, transforms=2, hidden_features=(8,)).double()
    _randomise(flow, std=0.5, seed=1)
    x = torch.randn(1, 2, dtype=torch.float64)
    a = flow.log_prob(x, torch.zeros(1, 3, dtype=torch.float64))
    b = flow.log_prob(x, torch.ones(1, 3, dtype=torch.float64))
    assert (a - b).abs().item() > 1e-6


@pytest.mark.parametrize("closed_form", ["sample", "density"])
def test_both_orientations_are_exact_and_inverse_of_each_other(closed_form):
    torch.manual_seed(0)
    flow = flowrl.build_flow("sylvester", 3, transforms=3, closed_form=closed_form, hidden_features=(8,)).double()
    _randomise(flow, std=0.5, seed=2)
    x = 3 * torch.randn(20, 3, dtype=torch.float64)
    z, ld = flow.transform(x)
    x2, ld2 = flow.transform.inverse(z)
    assert torch.allclose(x, x2, atol=1e-9) and torch.allclose(ld, -ld2, atol=1e-9)
    with pytest.raises(ValueError, match="closed_form"):
        flowrl.build_flow("planar", 2, closed_form="both")


def test_numerical_inverse_reports_failure_instead_of_returning_garbage():
    t = PlanarMap(2).double()
    with pytest.raises(InversionError):
        t.inverse(torch.tensor([[float("inf"), 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("tol", [1e-3, 1e-12])
def test_inverse_reaches_the_requested_tolerance(tol):
    t = SylvesterMap(3, tol=tol).double()
    _randomise(t, std=1.0, seed=4)
    x = 5 * torch.randn(50, 3, dtype=torch.float64)
    with torch.no_grad():
        y, _ = t(x)
        err = (t.inverse(y)[0] - x).abs().max().item()
    assert err < max(tol * 100, 1e-10)


@pytest.mark.parametrize("d, m", [(16, 16), (6, 3), (3, 3), (1, 1)])
def test_householder_q_is_lapacks_q_with_its_gradient(d, m):
    """The GPU path of the orthogonal Sylvester map computes the Q of ``torch.linalg.qr`` (same signs)."""
    from flowrl.transforms.lowrank import _householder_q

    g = torch.Generator().manual_seed(0)
    a = torch.eye(d, m, dtype=torch.float64) + 0.4 * torch.randn(8, d, m, generator=g, dtype=torch.float64)
    a[0] = -torch.eye(d, m, dtype=torch.float64)  # negative pivots, zero columns below them
    if d > 1:
        a[1, 1:, 0] = 0.0
    weights = torch.randn(d, m, generator=g, dtype=torch.float64)
    a1, a2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    q1, q2 = _householder_q(a1), torch.linalg.qr(a2).Q
    torch.testing.assert_close(q1, q2, rtol=0, atol=1e-12)
    (q1 * weights).sum().backward()
    (q2 * weights).sum().backward()
    torch.testing.assert_close(a1.grad[2:], a2.grad[2:], rtol=1e-9, atol=1e-9)  # generic rows: a smooth map


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_joint_newton_inverse_matches_the_coordinate_solve(dtype):
    """The accelerator path (batched Newton on the triangular system) inverts like the scalar solves."""
    from flowrl.transforms.lowrank import SylvesterMap

    torch.manual_seed(0)
    t = SylvesterMap(6, 3, "orthogonal", hidden_features=(8,)).to(dtype)
    _randomise(t, std=0.7, seed=5)
    x = 2 * torch.randn(300, 6, dtype=dtype)
    c = torch.randn(300, 3, dtype=dtype)
    with torch.no_grad():
        y, ld = t(x, c)
        t.solve_jointly = False
        x_seq, ld_seq = t.inverse(y, c)
        t.solve_jointly = True
        x_joint, ld_joint = t.inverse(y, c)
        y_joint, _ = t(x_joint, c)
        t.joint_newton_steps = 0  # nothing converges: every row falls back to the scalar solves
        x_fallback, _ = t.inverse(y, c)
    rt, ld_tol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 2e-3)  # the property suite's float32 bounds
    if dtype == torch.float64:
        torch.testing.assert_close(x_joint, x, rtol=0, atol=rt)
    else:  # in float32 x is only as exact as the map's conditioning allows (1.5e-4 off on an AVX-512 CPU for
        # both solvers alike); the solve is exact where it is posed: y is reproduced to float32 rounding
        assert_close_rounding(y_joint, y)
    torch.testing.assert_close(ld_joint, -ld, rtol=0, atol=ld_tol)
    torch.testing.assert_close(x_joint, x_seq, rtol=0, atol=rt)
    torch.testing.assert_close(x_fallback, x_seq, rtol=0, atol=0)


def test_planar_newton_start_inverts_like_the_plain_solve():
    """The accelerator path (plain Newton steps, then the safeguarded solve) gives the same inverse."""
    torch.manual_seed(0)
    t = PlanarMap(4, 2, hidden_features=(8,)).double()
    _randomise(t, std=1.0, seed=6)
    x = 3 * torch.randn(200, 4, dtype=torch.float64)
    c = torch.randn(200, 2, dtype=torch.float64)
    with torch.no_grad():
        y, ld = t(x, c)
        t.newton_start = False
        x_plain, ld_plain = t.inverse(y, c)
        t.newton_start = True
        x_newton, ld_newton = t.inverse(y, c)
    torch.testing.assert_close(x_newton, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(ld_newton, -ld, rtol=0, atol=1e-9)
    torch.testing.assert_close(x_newton, x_plain, rtol=0, atol=1e-9)
