"""O(1)-memory backprop (flowrl.memory): same gradients as plain backprop, flat saved memory."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor

import flowrl
from flowrl import Compose, Flow, Inverse, StandardNormal, Transform
from flowrl.memory import (
    MemorySaving,
    SavedTensorMeter,
    check_invertible,
    flatten_blocks,
    memory_saving,
    reconstruction_drift,
)
from flowrl.registry import available_flows, flow_spec
from flowrl.transforms.coupling import Coupling, alternating_mask
from flowrl.transforms.elementwise import Affine
from flowrl.transforms.permutations import ReversePermutation

from flow_cases import all_cases, perturb

IMAGE_SHAPE = (2, 4, 4)
#: the families the issue names; each is tested if registered under one of these names
TARGETS = {"realnvp": ["realnvp"], "glow": ["glow"], "maf": ["maf"], "nsf": ["nsf", "neural_spline"]}


def _shapes(name: str) -> list[tuple[int, ...]]:
    """Vector and image shapes the flow supports (small)."""
    spec = flow_spec(name)
    return ([(max(4, spec.min_dim),)] if spec.vector else []) + ([IMAGE_SHAPE] if spec.image else [])


def _shape(name: str) -> tuple[int, ...]:
    return _shapes(name)[0]


def _target_cases() -> list:
    """The issue's families as registered: Glow on small images, the others on vectors."""
    have = set(available_flows())
    out = []
    for family, names in TARGETS.items():
        for name in (n for n in names if n in have):
            shape = IMAGE_SHAPE if family == "glow" else _shape(name)
            out.append(pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}"))
            break
    return out


def _context(rows: int, context_dim: int, dtype, seed: int = 3) -> Optional[Tensor]:
    if context_dim == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, context_dim, generator=g, dtype=torch.float64).to(dtype)


def _pair(name: str, shape, context_dim: int, dtype, std: float = 0.1, **kwargs) -> tuple[Flow, Flow]:
    """A perturbed, initialised plain flow and a memory-saving copy with the same state."""
    torch.manual_seed(0)
    kw = {**flow_spec(name).test_kwargs, **kwargs}
    dim = shape if len(shape) == 3 else shape[0]
    plain = flowrl.build_flow(name, dim, context_dim, **kw).to(dtype)
    perturb(plain, std=std)
    with torch.no_grad():  # data-dependent initialisation (ActNorm) happens here
        plain.log_prob(torch.randn(16, *shape, dtype=dtype), _context(16, context_dim, dtype))
    saving = flowrl.build_flow(name, dim, context_dim, memory_saving=True, **kw).to(dtype)
    saving.load_state_dict(plain.state_dict())
    return plain, saving


def _gradients(flow: Flow, direction: str, context_dim: int, dtype, batch: int = 6) -> dict[str, Tensor]:
    """Gradients of a random linear functional of ``log_prob`` (or of samples and their log-density)."""
    flow.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(7)
    c = _context(batch, context_dim, dtype)
    if c is not None:
        c = c.requires_grad_()
    grads = {}
    if direction == "density":
        x = torch.randn(batch, *flow.shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        w = torch.rand(batch, generator=g, dtype=torch.float64).to(dtype)
        (w * flow.log_prob(x, c)).sum().backward()
        grads["x"] = x.grad
    else:
        torch.manual_seed(11)
        xs, lp = flow.rsample_and_log_prob(2, c) if c is not None else flow.rsample_and_log_prob(batch)
        w = torch.randn(xs.shape, generator=g, dtype=torch.float64).to(dtype)
        ((w * xs).sum() + lp.sum()).backward()
    if c is not None:
        grads["context"] = c.grad
    for n, p in flow.named_parameters():
        if p.requires_grad:
            grads[n] = p.grad
    return grads


def _assert_close(plain: dict, saving: dict, dtype) -> None:
    assert plain.keys() == saving.keys()
    missing = [k for k, v in saving.items() if v is None and plain[k] is not None]
    assert not missing, f"memory-saving stack gave no gradient to {missing}"
    for k, a in plain.items():
        b = saving[k]
        if a is None:
            assert b is None or b.abs().max() == 0, k
            continue
        err = (a - b).abs().max().item()
        scale = a.abs().max().item()
        if dtype == torch.float64:
            assert err <= 1e-5 * max(1.0, scale), (k, err, scale)
        else:
            assert err <= 1e-3 * scale + 1e-6, (k, err, scale)


# ------------------------------------------------- gradients: the named families
@pytest.mark.parametrize("direction", ["density", "sampling"])
@pytest.mark.parametrize("context_dim", [pytest.param(0, id="noctx"), pytest.param(3, id="ctx")])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")])
@pytest.mark.parametrize("name,shape", _target_cases())
def test_gradients_match_plain_stack(name, shape, dtype, context_dim, direction):
    plain, saving = _pair(name, shape, context_dim, dtype)
    a = _gradients(plain, direction, context_dim, dtype)
    b = _gradients(saving, direction, context_dim, dtype)
    _assert_close(a, b, dtype)


def test_the_issue_families_are_registered():
    """RealNVP, Glow, MAF and NSF must all be covered by the gradient test above."""
    missing = [fam for fam, names in TARGETS.items() if not any(n in available_flows() for n in names)]
    assert not missing, f"families not registered (gradient test does not cover them): {missing}"


# ------------------------------------------------- gradients: every registered flow
def _every_flow():
    out = []
    for case in all_cases():
        if case.kind != "flow":
            continue
        marks = [pytest.mark.slow] if case.slow else []
        for shape in _shapes(case.name):
            out.append(pytest.param(case.name, shape, id=f"{case.name}-{'x'.join(map(str, shape))}", marks=marks))
    return out


@pytest.mark.parametrize("name,shape", _every_flow())
def test_every_exact_flow_matches_and_numerical_ones_are_refused(name, shape):
    spec = flow_spec(name)
    dim = shape if len(shape) == 3 else shape[0]
    probe = flowrl.build_flow(name, dim, 2, **spec.test_kwargs)
    assert spec.numerical_inverse == any(not b.analytic_inverse for b in flatten_blocks(probe.transform))
    if not probe.transform.analytic_inverse:
        with pytest.raises(ValueError, match="exact inverse"):
            flowrl.build_flow(name, dim, 2, memory_saving=True, **spec.test_kwargs)
        return
    plain, saving = _pair(name, shape, 2, torch.float64)
    for direction in ("density", "sampling"):
        _assert_close(_gradients(plain, direction, 2, torch.float64), _gradients(saving, direction, 2, torch.float64),
                      torch.float64)


# ------------------------------------------------------------ memory vs depth
def _saved_bytes(depth: int, saving: bool, direction: str = "density") -> int:
    torch.manual_seed(0)
    flow = flowrl.build_flow("realnvp", 8, 2, transforms=depth, hidden_features=(16,), memory_saving=saving)
    c = torch.randn(64, 2)
    with SavedTensorMeter() as meter:
        if direction == "density":
            loss = -flow.log_prob(torch.randn(64, 8), c).mean()
        else:
            xs, lp = flow.rsample_and_log_prob(1, c)
            loss = (xs ** 2).sum() + lp.sum()
    loss.backward()  # the graph is usable
    assert all(p.grad is not None for p in flow.parameters())
    return meter.bytes


@pytest.mark.parametrize("direction", ["density", "sampling"])
def test_saved_memory_is_flat_in_depth_while_plain_grows_linearly(direction):
    saving = {d: _saved_bytes(d, True, direction) for d in (4, 64)}
    assert abs(saving[64] - saving[4]) <= 0.1 * saving[4], saving
    plain = {d: _saved_bytes(d, False, direction) for d in (4, 16, 64)}
    assert plain[64] > 10 * plain[4], plain
    slope_small, slope_large = (plain[16] - plain[4]) / 12, (plain[64] - plain[16]) / 48
    assert abs(slope_large - slope_small) <= 0.1 * slope_small, plain  # linear growth
    assert saving[64] < plain[4], (saving, plain)


def test_glow_saved_memory_is_flat_in_depth():
    name = "glow"
    if name not in available_flows():
        pytest.fail("glow is not registered")  # reported as a failure, not skipped
    spec = flow_spec(name)
    sizes = {}
    for key, extra in (("small", {}), ("deep", _deeper(spec.test_kwargs))):
        _, flow = _pair(name, IMAGE_SHAPE, 0, torch.float32, **extra)
        with SavedTensorMeter() as meter:
            loss = -flow.log_prob(torch.randn(8, *IMAGE_SHAPE)).mean()
        loss.backward()
        sizes[key] = meter.bytes
    assert abs(sizes["deep"] - sizes["small"]) <= 0.1 * sizes["small"], sizes


def _deeper(test_kwargs: dict) -> dict:
    """The registered small settings with four times as many steps per level."""
    for key in ("steps", "depth", "transforms", "steps_per_level"):
        if key in test_kwargs:
            return {key: 4 * int(test_kwargs[key])}
    raise AssertionError(f"cannot find the depth argument in {test_kwargs}")


# ------------------------------------------------------------ modes and refusals
class _Bisected(Transform):
    """An elementwise map whose inverse is declared numerical."""

    analytic_inverse = False

    def forward(self, x, context=None):
        return x * 2.0, x.new_full((x.shape[0],), x.shape[1] * 0.6931471805599453)

    def inverse(self, z, context=None):
        return z / 2.0, z.new_full((z.shape[0],), -z.shape[1] * 0.6931471805599453)


def _coupling_stack(depth: int = 3, dim: int = 4, context_dim: int = 0, std: float = 0.15) -> list[Transform]:
    torch.manual_seed(0)
    layers = [Coupling(alternating_mask(dim, i % 2), Affine(), context_dim, (8,)) for i in range(depth)]
    perturb(torch.nn.ModuleList(layers), std=std)
    return layers


def test_numerical_inverse_is_refused_unless_opted_in():
    with pytest.raises(ValueError, match="_Bisected.*allow_numerical_inverse"):
        memory_saving(Compose(_coupling_stack() + [_Bisected()]))
    with pytest.raises(ValueError, match="exact inverse"):
        memory_saving(Inverse(Compose([_Bisected()])))
    stack = memory_saving(Compose(_coupling_stack() + [_Bisected()]), allow_numerical_inverse=True)
    x = torch.randn(5, 4, requires_grad=True)
    z, ld = stack(x)
    (z.sum() + ld.sum()).backward()
    assert torch.isfinite(x.grad).all() and isinstance(stack, MemorySaving)
    check_invertible(Compose(_coupling_stack()))  # exact stacks pass silently


def test_no_grad_runs_the_plain_stack():
    stack = memory_saving(Compose(_coupling_stack()))
    x = torch.randn(5, 4)
    with torch.no_grad():
        z, ld = stack(x)
    assert z.grad_fn is None
    z2, ld2 = stack(x)
    assert type(z2.grad_fn).__name__ == "_MemorySavingStackBackward"
    assert torch.equal(z, z2.detach()) and torch.equal(ld, ld2.detach())
    for p in stack.parameters():
        p.requires_grad_(False)
    assert stack(x)[0].grad_fn is None  # nothing to differentiate: plain stack


def test_double_backward_is_refused():
    stack = memory_saving(Compose(_coupling_stack()))
    x = torch.randn(5, 4, requires_grad=True)
    z, ld = stack(x)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad((z ** 2).sum() + ld.sum(), x, create_graph=True)


def test_optimiser_steps_match_plain_training():
    torch.manual_seed(0)
    a = flowrl.build_flow("realnvp", 4, 2, transforms=3, hidden_features=(16,), permutation="reverse").double()
    b = flowrl.build_flow("realnvp", 4, 2, transforms=3, hidden_features=(16,), permutation="reverse",
                          memory_saving=True).double()
    b.load_state_dict(a.state_dict())
    opts = [torch.optim.Adam(f.parameters(), lr=1e-2) for f in (a, b)]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(32, 4, generator=g, dtype=torch.float64)
        c = torch.randn(32, 2, generator=g, dtype=torch.float64)
        for f, opt in zip((a, b), opts):
            opt.zero_grad()
            (-f.log_prob(x, c).mean()).backward()
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-9, rtol=0), n
    assert any((p - q0).abs().max() > 1e-3 for p, q0 in zip(a.parameters(), _fresh_params()))


def _fresh_params():
    torch.manual_seed(0)
    f = flowrl.build_flow("realnvp", 4, 2, transforms=3, hidden_features=(16,), permutation="reverse").double()
    return [p.detach() for p in f.parameters()]


def test_nested_compose_and_inverse_are_flattened_in_application_order():
    layers = _coupling_stack(4, context_dim=2)
    inner = Compose(layers[1:3])
    stack = Compose([layers[0], Inverse(inner), ReversePermutation(4), layers[3]])
    blocks = flatten_blocks(stack)
    assert [(b.module, b.inverted) for b in blocks] == [
        (layers[0], False), (layers[2], True), (layers[1], True), (stack.transforms[2], False), (layers[3], False)
    ]
    assert [b.module for b in flatten_blocks(stack, inverted=True)] == [b.module for b in reversed(blocks)]
    plain = Flow(stack, StandardNormal(4), context_dim=2).double()
    saving = Flow(memory_saving(Compose(list(stack.transforms))), StandardNormal(4), context_dim=2).double()
    for direction in ("density", "sampling"):
        _assert_close(_gradients(plain, direction, 2, torch.float64),
                      _gradients(saving, direction, 2, torch.float64), torch.float64)


def test_build_flow_keeps_the_state_dict_layout():
    torch.manual_seed(0)
    a = flowrl.build_flow("realnvp", 4, transforms=2, hidden_features=(8,))
    b = flowrl.build_flow("realnvp", 4, transforms=2, hidden_features=(8,), memory_saving=True)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert isinstance(b.transform, MemorySaving) and not isinstance(a.transform, MemorySaving)
    b.load_state_dict(a.state_dict())  # strict loads both ways
    a.load_state_dict(b.state_dict())
    single = memory_saving(ReversePermutation(4))  # a single step: no prefix either
    assert single.state_dict().keys() == ReversePermutation(4).state_dict().keys()


def test_float32_reconstruction_drift_stays_small_over_depth():
    torch.manual_seed(0)
    stack = Compose(_coupling_stack(depth=32, dim=6, context_dim=2, std=0.03))
    x, c = torch.randn(64, 6), torch.randn(64, 2)
    drift = reconstruction_drift(stack, x, c)
    assert drift.shape == (32,)
    assert drift.max().item() < 1e-4, drift
    assert drift[-1].item() > 0  # float32 round-off does accumulate: the measure is not vacuous
    inv = reconstruction_drift(stack, x, c, inverse=True)
    assert inv.max().item() < 1e-4, inv


def test_actnorm_initialising_call_behaves_like_the_plain_stack():
    shape = IMAGE_SHAPE if flow_spec("glow").image else (4,)
    flows = []
    for saving in (False, True):
        torch.manual_seed(0)
        flows.append(flowrl.build_flow("glow", shape, 0, transforms=2, hidden_features=(8,), memory_saving=saving))
    x = 2 * torch.randn(16, *shape) + 1
    grads = []
    for f in flows:  # first call with grad: ActNorm initialises from this batch
        lp = f.log_prob(x)
        lp.sum().backward()
        grads.append({n: p.grad.clone() for n, p in f.named_parameters()})
    for (n, a), b in zip(flows[0].state_dict().items(), flows[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n
    assert all(bool(m.initialized) for m in flows[1].modules() if hasattr(m, "initialized"))
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-3), n
    z, _ = flows[1].transform(x)  # initialised now: the memory-saving path runs
    assert "MemorySaving" in type(z.grad_fn).__name__ or "MemorySaving" in _graph_names(z)


def _graph_names(t: Tensor, limit: int = 50) -> str:
    names, frontier = [], [t.grad_fn]
    while frontier and len(names) < limit:
        fn = frontier.pop()
        if fn is None:
            continue
        names.append(type(fn).__name__)
        frontier += [f for f, _ in fn.next_functions]
    return " ".join(names)


def test_backward_recomputes_under_the_forward_autocast_state():
    torch.manual_seed(0)
    flow = flowrl.build_flow("realnvp", 8, 2, transforms=3, hidden_features=(16,), memory_saving=True)
    perturb(flow, std=0.05)
    dtypes = []
    linear = next(m for m in flow.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    x, c = torch.randn(16, 8), torch.randn(16, 2)
    with torch.autocast("cpu", torch.bfloat16):
        loss = -flow.log_prob(x, c).mean()
    n_forward = len(dtypes)
    loss.backward()  # outside the autocast block, as in a usual AMP loop
    assert n_forward >= 1 and len(dtypes) > n_forward
    assert set(dtypes) == {torch.bfloat16}, dtypes
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters())


@pytest.mark.parametrize("name,shape", [("realnvp", (4,)), ("glow", IMAGE_SHAPE)])
def test_memory_saving_on_the_device_matches_the_cpu_plain_stack(name, shape, device):
    plain, saving = _pair(name, shape, 2, torch.float64)
    saving.to(device)
    x = torch.randn(8, *shape, dtype=torch.float64)
    c = torch.randn(8, 2, dtype=torch.float64)
    for flow, dev in ((plain, "cpu"), (saving, device)):
        flow.zero_grad(set_to_none=True)
        flow.log_prob(x.to(dev), c.to(dev)).sum().backward()
    for (n, p), q in zip(plain.named_parameters(), saving.parameters()):
        assert q.grad.device.type == device.type
        assert torch.allclose(p.grad, q.grad.cpu(), atol=1e-8, rtol=1e-6), n


# ------------------------------------------------- mixed strategy: sequential reconstructions are not run
def _count_calls(monkeypatch, cls, name: str) -> dict:
    calls = {"n": 0}
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


@pytest.mark.parametrize("name,direction", [("maf", "density"), ("iaf", "sampling")])
def test_sequential_direction_is_never_run_to_rebuild_inputs(monkeypatch, name, direction):
    from flowrl.transforms.autoregressive import MaskedAutoregressive

    plain, saving = _pair(name, (4,), 2, torch.float64)
    assert any(b.keeps_input for b in flatten_blocks(saving.transform, inverted=direction == "sampling"))
    calls = _count_calls(monkeypatch, MaskedAutoregressive, "inverse")
    grads = _gradients(saving, direction, 2, torch.float64)
    assert calls["n"] == 0, "the D-pass inverse was run although the layer's input is stored"
    _assert_close(_gradients(plain, direction, 2, torch.float64), grads, torch.float64)


def _maf_saved_bytes(name: str, depth: int, saving: bool, direction: str, batch: int = 64, dim: int = 8) -> int:
    torch.manual_seed(0)
    flow = flowrl.build_flow(name, dim, 2, transforms=depth, hidden_features=(16,), memory_saving=saving)
    c = torch.randn(batch, 2)
    with SavedTensorMeter() as meter:
        if direction == "density":
            loss = -flow.log_prob(torch.randn(batch, dim), c).mean()
        else:
            xs, lp = flow.rsample_and_log_prob(1, c)
            loss = (xs ** 2).sum() + lp.sum()
    loss.backward()
    return meter.bytes


@pytest.mark.parametrize("name,direction", [("maf", "density"), ("iaf", "sampling")])
def test_kept_inputs_are_the_only_memory_that_grows_with_depth(name, direction):
    """Memory grows by one (batch, D) input per autoregressive layer, far below the plain stack's growth."""
    batch, dim = 64, 8
    saving = {d: _maf_saved_bytes(name, d, True, direction, batch, dim) for d in (2, 10)}
    plain = {d: _maf_saved_bytes(name, d, False, direction, batch, dim) for d in (2, 10)}
    per_layer = batch * dim * 4
    growth = (saving[10] - saving[2]) / 8
    assert abs(growth - per_layer) <= 0.1 * per_layer, (saving, per_layer)
    assert (plain[10] - plain[2]) / 8 > 5 * per_layer, plain


def _strict_pair(name: str, context_dim: int = 2) -> tuple[Flow, Flow]:
    kw = dict(flow_spec(name).test_kwargs, transforms=6)
    plain, _ = _pair(name, (4,), context_dim, torch.float64, **kw)
    strict = flowrl.build_flow(name, 4, context_dim, memory_saving="strict", **kw).double()
    strict.load_state_dict(plain.state_dict())
    return plain, strict


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("name,direction", [("maf", "density"), ("iaf", "sampling"), ("nsf-ar", "density")])
def test_strict_mode_rebuilds_autoregressive_inputs_with_the_same_gradients(monkeypatch, name, direction, steps):
    from flowrl.transforms.autoregressive import MaskedAutoregressive

    monkeypatch.setattr(flowrl.memory, "SEGMENT_STEPS", steps)
    plain, strict = _strict_pair(name)
    calls = _count_calls(monkeypatch, MaskedAutoregressive, "inverse")  # the D-pass direction rebuilds
    grads = _gradients(strict, direction, 2, torch.float64)
    assert calls["n"] == 6 - steps, "strict mode must rebuild every input but the stack's (first segment)"
    _assert_close(_gradients(plain, direction, 2, torch.float64), grads, torch.float64)


@pytest.mark.parametrize("name,direction", [("maf", "density"), ("iaf", "sampling")])
def test_strict_mode_saved_memory_is_flat_in_depth(name, direction):
    def saved(depth: int) -> int:
        torch.manual_seed(0)
        flow = flowrl.build_flow(name, 8, 2, transforms=depth, hidden_features=(16,), memory_saving="strict")
        c = torch.randn(64, 2)
        with SavedTensorMeter() as meter:
            if direction == "density":
                loss = -flow.log_prob(torch.randn(64, 8), c).mean()
            else:
                xs, lp = flow.rsample_and_log_prob(1, c)
                loss = (xs ** 2).sum() + lp.sum()
        loss.backward()
        return meter.bytes

    small, deep = saved(2), saved(10)
    assert abs(deep - small) <= 0.1 * small, (small, deep)
    assert deep < _maf_saved_bytes(name, 10, True, direction)  # below the mixed strategy's growth


def test_memory_saving_setting_is_checked():
    with pytest.raises(ValueError, match="memory_saving must be"):
        flowrl.build_flow("maf", 4, memory_saving="fast")


# ------------------------------------------------- recompute segments
class _ChannelAffine(Transform):
    """``y = x * exp(s_c) + t_c`` per channel of an image; ``log|det| = H W sum_c s_c``."""

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = torch.nn.Parameter(0.3 * torch.randn(channels))
        self.shift = torch.nn.Parameter(torch.randn(channels))

    def forward(self, x, context=None):
        s, t = self.log_scale.view(1, -1, 1, 1), self.shift.view(1, -1, 1, 1)
        return x * s.exp() + t, (self.log_scale.sum() * x.shape[2] * x.shape[3]).expand(x.shape[0])

    def inverse(self, z, context=None):
        s, t = self.log_scale.view(1, -1, 1, 1), self.shift.view(1, -1, 1, 1)
        return (z - t) * (-s).exp(), (-self.log_scale.sum() * z.shape[2] * z.shape[3]).expand(z.shape[0])


def test_segments_merge_shared_squeezes_and_slices():
    """Steps of one squeezed, factored-out level share its frames: squeeze and slice once per segment."""
    from flowrl.memory import LiftedBlock, SegmentBlock, merge_blocks, segment_blocks
    from flowrl.transforms.multiscale import FactorOut, Squeezed

    torch.manual_seed(0)
    layers = [_ChannelAffine(8) for _ in range(4)]
    level = Squeezed(FactorOut(Compose(layers), 16, 8))  # (4, 4, 4) squeezed to (16, 2, 2); 8 channels kept
    blocks = flatten_blocks(level)
    assert len(blocks) == 4 and all(isinstance(b, LiftedBlock) for b in blocks)
    merged = merge_blocks(blocks)
    assert isinstance(merged, LiftedBlock) and isinstance(merged.block, LiftedBlock)
    assert isinstance(merged.block.block, SegmentBlock) and len(merged.block.block.blocks) == 4
    x = torch.randn(5, 4, 4, 4)
    with torch.no_grad():
        y_ref, ld_ref = level(x)
        y, ld = merged.apply(x, None)
        x_back, _ = merged.reconstruct(y, None)
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(ld, ld_ref, atol=1e-5)
    assert torch.allclose(x_back, x, atol=1e-5)
    inner = flatten_blocks(Compose(layers))
    assert [len(s.blocks) if isinstance(s, SegmentBlock) else 1 for s in segment_blocks(inner * 3, 5)] == [5, 5, 2]
    with pytest.raises(ValueError, match="at least 1 step"):
        segment_blocks(inner, 0)


@pytest.mark.parametrize("steps", [1, 2, 3, 100])
def test_glow_gradients_match_for_every_segment_length(monkeypatch, steps):
    monkeypatch.setattr(flowrl.memory, "SEGMENT_STEPS", steps)
    plain, saving = _pair("glow", IMAGE_SHAPE, 0, torch.float64)
    for direction in ("density", "sampling"):
        _assert_close(_gradients(plain, direction, 0, torch.float64, batch=3),
                      _gradients(saving, direction, 0, torch.float64, batch=3), torch.float64)
