"""Glow and the image flows: ActNorm, 1x1 convolutions, image couplings, squeeze / factor-out."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

import flowrl
from flowrl.core import Compose
from flowrl.transforms.glow import ActNorm, InvConv1x1, LUInvConv1x1, LULinear, random_rotation
from flowrl.transforms.image_coupling import ImageAffineCoupling, channel_mask, checkerboard_mask
from flowrl.transforms.multiscale import FactorOut, Squeeze, Squeezed, squeeze, unsqueeze

SHAPE = (2, 4, 4)
F64 = torch.float64


def _perturb(module, std=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _full_jacobian_logdets(fn, x):
    """``log|det dfn(x)_b / dx_b|`` per row from autograd, and the largest cross-row entry."""
    b, d = x.shape[0], math.prod(x.shape[1:])
    jac = jacobian(fn, x).reshape(b, d, b, d)
    lds = torch.stack([torch.linalg.slogdet(jac[i, :, i, :])[1] for i in range(b)])
    cross = max((jac[i, :, j, :].abs().max().item() for i in range(b) for j in range(b) if i != j), default=0.0)
    return lds, cross, jac


# ----------------------------------------------------------------- ActNorm
def test_actnorm_initialises_to_zero_mean_unit_variance_per_channel_on_images():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * torch.tensor([0.5, 2.0, 7.0])[None, :, None, None] + torch.tensor([1.0, -3.0, 10.0])[
        None, :, None, None
    ]
    an = ActNorm(3)
    assert not bool(an.initialized)
    z, ld = an(x)
    assert bool(an.initialized)
    per_channel = z.transpose(0, 1).reshape(3, -1)
    assert per_channel.mean(1).abs().max().item() < 1e-5
    assert (per_channel.std(1, unbiased=False) - 1).abs().max().item() < 1e-4
    std = x.transpose(0, 1).reshape(3, -1).std(1, unbiased=False)
    assert torch.allclose(ld, (-16 * torch.log(std).sum()).expand(8), atol=1e-4)


def test_actnorm_initialises_per_feature_on_vectors_and_not_again():
    torch.manual_seed(0)
    x = torch.randn(64, 5) * 3 + 2
    an = ActNorm(5)
    z, _ = an(x)
    assert z.mean(0).abs().max().item() < 1e-5
    assert (z.std(0, unbiased=False) - 1).abs().max().item() < 1e-4
    before = {k: v.clone() for k, v in an.state_dict().items()}
    an(torch.randn(64, 5) * 10 - 4)  # a second batch does not re-initialise
    for k, v in an.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_actnorm_on_one_vector_row_only_centres():
    an = ActNorm(3)
    z, ld = an(torch.tensor([[1.0, -2.0, 5.0]]))
    assert torch.allclose(z, torch.zeros(1, 3)) and torch.allclose(ld, torch.zeros(1))


def test_actnorm_first_used_in_sampling_direction_stays_identity():
    an = ActNorm(2)
    z = torch.randn(6, 2, 3, 3) * 5
    x, ld = an.inverse(z)
    assert bool(an.initialized)
    assert torch.equal(x, z) and torch.equal(ld, torch.zeros(6))
    an(torch.randn(6, 2, 3, 3) * 5 + 3)  # data no longer initialises
    assert torch.equal(an.bias.detach(), torch.zeros(2)) and torch.equal(an.log_scale.detach(), torch.zeros(2))


def test_actnorm_initialised_state_is_saved_and_loading_does_not_reinitialise():
    torch.manual_seed(0)
    a = flowrl.build_flow("glow", SHAPE, transforms=1, hidden_features=(8,))
    a.log_prob(torch.randn(16, *SHAPE) * 4 + 1)  # data-dependent initialisation
    keys = [k for k in a.state_dict() if k.endswith("initialized")]
    assert keys and all(bool(a.state_dict()[k]) for k in keys)
    torch.manual_seed(1)
    b = flowrl.build_flow("glow", SHAPE, transforms=1, hidden_features=(8,))
    b.load_state_dict(a.state_dict())
    other = torch.randn(7, *SHAPE) * 0.1 - 2  # very different statistics: a re-init would show
    with torch.no_grad():
        assert torch.allclose(a.log_prob(other), b.log_prob(other), atol=1e-5)
    for k in keys:
        assert torch.equal(a.state_dict()[k.replace("initialized", "bias")], b.state_dict()[k.replace("initialized", "bias")])


def test_actnorm_loading_an_uninitialised_state_or_a_reset_initialises_again():
    torch.manual_seed(0)
    fresh_state = ActNorm(2).state_dict()
    an = ActNorm(2)
    an(torch.randn(32, 2) * 3)
    an.load_state_dict(fresh_state)
    z, _ = an(torch.randn(32, 2) * 5 + 7)
    assert z.mean(0).abs().max().item() < 1e-5 and (z.std(0, unbiased=False) - 1).abs().max().item() < 1e-4
    an.reinitialize_on_next_batch()
    assert not bool(an.initialized)
    z, _ = an(torch.randn(32, 2) * 0.2 - 1)
    assert z.mean(0).abs().max().item() < 1e-5 and (z.std(0, unbiased=False) - 1).abs().max().item() < 1e-4


# ------------------------------------------------------- 1x1 convolutions
def test_random_rotation_is_a_rotation():
    q = random_rotation(5, dtype=F64)
    assert torch.allclose(q @ q.t(), torch.eye(5, dtype=F64), atol=1e-12)
    assert abs(torch.linalg.det(q).item() - 1.0) < 1e-10


@pytest.mark.parametrize("conv_cls", [InvConv1x1, LUInvConv1x1])
def test_conv1x1_logdet_is_hw_times_slogdet_and_matches_autograd(conv_cls):
    torch.manual_seed(0)
    conv = conv_cls(2).double()
    _perturb(conv)
    weight = conv.weight if conv_cls is InvConv1x1 else conv.weight()
    x = torch.randn(2, *SHAPE, dtype=F64)
    z, ld = conv(x)
    expected = 16 * torch.linalg.slogdet(weight)[1]
    assert torch.allclose(ld, expected.expand(2), atol=1e-10)
    lds, cross, _ = _full_jacobian_logdets(lambda v: conv(v)[0], x)
    assert torch.allclose(lds, ld.detach(), atol=1e-8) and cross < 1e-12
    x2, ld2 = conv.inverse(z)
    assert (x2 - x).abs().max().item() < 1e-10 and (ld + ld2).abs().max().item() < 1e-10


def test_lu_and_plain_1x1_conv_agree_on_the_same_weight():
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=F64)  # a general (not orthogonal) invertible matrix
    plain, lu = InvConv1x1(4, weight=w), LUInvConv1x1(4, weight=w)
    assert plain.weight.dtype == F64 and lu.log_s.dtype == F64
    assert torch.allclose(lu.weight(), w, atol=1e-12)
    x = torch.randn(3, 4, 2, 3, dtype=F64)
    (zp, ldp), (zl, ldl) = plain(x), lu(x)
    assert torch.allclose(zp, zl, atol=1e-12) and torch.allclose(ldp, ldl, atol=1e-10)
    (xp, lp), (xl, ll) = plain.inverse(x), lu.inverse(x)
    assert torch.allclose(xp, xl, atol=1e-10) and torch.allclose(lp, ll, atol=1e-10)


def test_lu_linear_on_vectors_matches_dense_matrix_and_rejects_images():
    torch.manual_seed(0)
    layer = LULinear(5).double()
    _perturb(layer)
    x = torch.randn(4, 5, dtype=F64)
    z, ld = layer(x)
    w = layer.weight()
    assert torch.allclose(z, x @ w.t(), atol=1e-12)
    assert torch.allclose(ld, torch.linalg.slogdet(w)[1].expand(4), atol=1e-10)
    x2, _ = layer.inverse(z)
    assert (x2 - x).abs().max().item() < 1e-10
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(2, 5, 2, 2, dtype=F64))


# --------------------------------------------------------- image couplings
def test_masks_split_pixels_and_channels():
    cb = checkerboard_mask((2, 3, 4), 0)
    assert cb.shape == (2, 3, 4) and cb.sum().item() == 12 and bool(cb[0, 0, 0]) and not bool(cb[1, 0, 1])
    assert torch.equal(checkerboard_mask((2, 3, 4), 1), ~cb)
    ch = channel_mask((4, 2, 2), 0)
    assert ch[:2].all() and not ch[2:].any()
    assert torch.equal(channel_mask((4, 2, 2), 1), ~ch)
    with pytest.raises(ValueError, match="2 channels"):
        channel_mask((1, 4, 4), 0)


@pytest.mark.parametrize("kind", ["checkerboard", "channel"])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_image_coupling_inverts_matches_jacobian_and_leaves_identity_part(kind, context_dim):
    torch.manual_seed(0)
    mask = (checkerboard_mask if kind == "checkerboard" else channel_mask)(SHAPE, 1)
    layer = ImageAffineCoupling(mask, context_dim, (8,)).double()
    x = torch.randn(2, *SHAPE, dtype=F64)
    c = torch.randn(2, context_dim, dtype=F64) if context_dim else None
    z0, ld0 = layer(x, c)  # zero-initialised last convolution: the identity
    assert torch.equal(z0, x) and torch.equal(ld0, torch.zeros(2, dtype=F64))
    _perturb(layer)
    z, ld = layer(x, c)
    assert torch.equal(z[:, mask], x[:, mask]) and not torch.allclose(z[:, ~mask], x[:, ~mask])
    x2, ld2 = layer.inverse(z, c)
    assert (x2 - x).abs().max().item() < 1e-12 and (ld + ld2).abs().max().item() < 1e-12
    lds, cross, jac = _full_jacobian_logdets(lambda v: layer(v, c)[0], x)
    assert torch.allclose(lds, ld.detach(), atol=1e-8) and cross < 1e-12
    flat = mask.flatten()  # identity outputs depend on their own input only
    block = jac[0, :, 0, :]
    assert torch.equal(block[flat][:, flat], torch.eye(int(flat.sum()), dtype=F64))
    assert block[flat][:, ~flat].abs().max().item() == 0.0
    if context_dim:  # the context changes the transformed part
        z_other, _ = layer(x, c + 1)
        assert not torch.allclose(z_other, z)


def test_channel_coupling_conditions_on_the_kept_channels_only():
    ch = ImageAffineCoupling(channel_mask((4, 2, 2), 0), 3, (8,))
    cb = ImageAffineCoupling(checkerboard_mask((4, 2, 2), 0), 3, (8,))
    assert ch.channel_split and not cb.channel_split
    assert ch.conditioner[0].in_channels == 2 + 3 and ch.conditioner[-1].out_channels == 2 * 2
    assert cb.conditioner[0].in_channels == 4 + 3 and cb.conditioner[-1].out_channels == 2 * 4


def test_image_coupling_rejects_bad_masks_and_shapes():
    with pytest.raises(ValueError, match="non-empty"):
        ImageAffineCoupling(torch.ones(2, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ImageAffineCoupling(torch.ones(4, dtype=torch.bool))
    layer = ImageAffineCoupling(checkerboard_mask(SHAPE, 0), 0, (4,))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(2, 2, 4, 6))


# ------------------------------------------------------ squeeze / factor-out
def test_squeeze_moves_2x2_blocks_to_channels_and_back():
    x = torch.arange(2 * 4 * 6, dtype=F64).reshape(1, 2, 4, 6)
    s = squeeze(x)
    assert s.shape == (1, 8, 2, 3)
    assert torch.equal(s[0, :4, 0, 0], torch.tensor([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))
    assert torch.equal(unsqueeze(s), x)
    z, ld = Squeeze()(x)
    assert torch.equal(z, s) and torch.equal(ld, torch.zeros(1, dtype=F64))


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 4, 5), (1, 1, 1)])
def test_squeeze_rejects_odd_height_or_width(shape):
    with pytest.raises(ValueError, match="even height and width"):
        squeeze(torch.randn(2, *shape))


def test_factor_out_transforms_only_the_kept_channels():
    torch.manual_seed(0)
    inner = ImageAffineCoupling(checkerboard_mask((2, 2, 2), 0), 0, (4,)).double()
    _perturb(inner)
    fo = FactorOut(inner, channels=8, keep=2)
    x = torch.randn(3, 8, 2, 2, dtype=F64)
    z, ld = fo(x)
    assert z.shape == x.shape and torch.equal(z[:, 2:], x[:, 2:])
    z_in, ld_in = inner(x[:, :2])
    assert torch.equal(z[:, :2], z_in) and torch.equal(ld, ld_in)
    x2, _ = fo.inverse(z)
    assert (x2 - x).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="channels"):
        fo(torch.randn(3, 4, 2, 2, dtype=F64))
    with pytest.raises(ValueError, match="keep"):
        FactorOut(inner, channels=2, keep=2)


def test_squeezed_inner_transform_keeps_the_outer_shape():
    torch.manual_seed(0)
    inner = Compose([ActNorm(8), LUInvConv1x1(8), ImageAffineCoupling(channel_mask((8, 2, 2), 0), 0, (4,))]).double()
    _perturb(inner)
    t = Squeezed(inner)
    x = torch.randn(2, *SHAPE, dtype=F64)
    t(x)  # ActNorm initialisation
    z, ld = t(x)
    assert z.shape == x.shape
    lds, cross, _ = _full_jacobian_logdets(lambda v: t(v)[0], x)
    assert torch.allclose(lds, ld.detach(), atol=1e-8) and cross < 1e-12
    assert (t.inverse(z)[0] - x).abs().max().item() < 1e-12


# -------------------------------------------------------------- image flows
IMAGE_FLOWS = [
    pytest.param("glow", {}, id="glow-lu"),
    pytest.param("glow", {"lu": False}, id="glow-plain"),
    pytest.param("glow", {"levels": 1, "steps_per_level": 2, "hidden_channels": 8}, id="glow-1level"),
    pytest.param("realnvp", {}, id="realnvp"),
    pytest.param("realnvp", {"levels": 1}, id="realnvp-1level"),
]


@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("name,kwargs", IMAGE_FLOWS)
def test_image_flows_invert_match_jacobian_and_sample_images(name, kwargs, context_dim):
    torch.manual_seed(0)
    kw = {"transforms": 2, "hidden_features": (8,), **kwargs}
    flow = flowrl.build_flow(name, SHAPE, context_dim, **kw).double()
    flow.log_prob(torch.randn(16, *SHAPE, dtype=F64) * 2 + 1, torch.randn(16, context_dim, dtype=F64) if context_dim else None)
    _perturb(flow, std=0.1)
    x = torch.randn(2, *SHAPE, dtype=F64)
    c = torch.randn(2, context_dim, dtype=F64) if context_dim else None
    with torch.no_grad():
        z, ld = flow.transform(x, c)
        x2, ld2 = flow.transform.inverse(z, c)
    assert z.shape == x.shape
    assert (x2 - x).abs().max().item() < 1e-10 and (ld + ld2).abs().max().item() < 1e-10
    lds, cross, _ = _full_jacobian_logdets(lambda v: flow.transform(v, c)[0], x)
    assert torch.allclose(lds, ld, atol=1e-7) and cross < 1e-12
    if context_dim:
        assert flow.sample(5, c).shape == (5, 2, *SHAPE)
    else:
        assert flow.sample(5).shape == (5, *SHAPE)


@pytest.mark.parametrize("name", ["glow", "realnvp"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 2)])
def test_image_flows_on_other_shapes(name, shape):
    torch.manual_seed(0)
    flow = flowrl.build_flow(name, shape, transforms=1, hidden_features=(4,))
    x = torch.randn(3, *shape)
    lp = flow.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    assert flow.sample(4).shape == (4, *shape)


def test_default_level_counts():
    from flowrl.models.glow import default_levels

    assert default_levels((3, 32, 32), squeeze_first=True) == 3
    assert default_levels((2, 4, 4), squeeze_first=True) == 2
    assert default_levels((1, 6, 6), squeeze_first=True) == 1
    assert default_levels((1, 5, 4), squeeze_first=True) == 0
    assert default_levels((1, 8, 8), squeeze_first=False) == 3
    assert default_levels((2, 4, 4), squeeze_first=False) == 2
    assert default_levels((1, 5, 5), squeeze_first=False) == 1


@pytest.mark.parametrize(
    "name,shape,kwargs,match",
    [
        ("glow", (2, 5, 4), {}, "even image height and width"),
        ("glow", (2, 4, 6), {"levels": 2}, "divisible by 4"),
        ("glow", (2, 4, 4), {"levels": 0}, "levels must be >= 1"),
        ("glow", (4,), {"levels": 2}, "image option"),
        ("glow", (4,), {"hidden_channels": 8}, "image option"),
        ("realnvp", (2, 5, 4), {"levels": 2}, "divisible by 2"),
        ("realnvp", (4,), {"levels": 2}, "image option"),
        ("realnvp", (2, 4, 4), {"permutation": "random"}, "alternates"),
        ("realnvp", (1, 1, 1), {}, "single value"),
    ],
)
def test_bad_image_shapes_and_options_raise(name, shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flowrl.build_flow(name, shape, **kwargs)


def test_image_flow_rejects_a_wrongly_shaped_image():
    flow = flowrl.build_flow("glow", SHAPE, transforms=1, hidden_features=(4,))
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(torch.randn(3, 2, 4, 6))
    with pytest.raises(ValueError, match="shape"):
        flow.transform(torch.randn(3, 3, 4, 4))


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_image_flow_learns_a_correlated_image_distribution(name):
    """A few Adam steps on images whose pixels are strongly correlated cut the NLL well below the init."""
    torch.manual_seed(0)
    base = torch.randn(512, 1, 1, 1)
    data = base.expand(512, 2, 4, 4) + 0.1 * torch.randn(512, *SHAPE)  # almost one degree of freedom
    flow = flowrl.build_flow(name, SHAPE, transforms=2, hidden_features=(16,))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        start = -flow.log_prob(data).mean().item()
    for step in range(60):
        idx = torch.randint(0, 512, (128,))
        loss = -flow.log_prob(data[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = -flow.log_prob(data).mean().item()
    assert end < start - 10.0, (start, end)
