"""Facts on the Transform protocol: stated once by each transform, read by the registry and memory saving."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import flowrl
from flowrl import Compose, Flow, Inverse, StandardNormal, Transform
from flowrl.core import Parts
from flowrl.memory import LiftedBlock, MemorySaving, flatten_blocks, memory_saving
from flowrl.registry import available_flows, flow_spec
from flowrl.transforms.autoregressive import MaskedAutoregressive
from flowrl.transforms.coupling import Coupling, alternating_mask
from flowrl.transforms.elementwise import Affine
from flowrl.transforms.glow import ActNorm
from flowrl.transforms.multiscale import FactorOut, Squeezed
from flowrl.transforms.naf import DeepSigmoid

from flow_cases import perturb

ROOT = Path(__file__).resolve().parents[1]


def _flowrl_imports(path: Path) -> set[str]:
    """Modules of the flowrl package that a source file imports (relative imports resolved to ``flowrl.*``)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("flowrl"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("flowrl"))
    return out


def test_core_knows_nothing_of_memory_and_memory_only_the_core():
    assert _flowrl_imports(ROOT / "flowrl" / "core.py") == set()
    assert _flowrl_imports(ROOT / "flowrl" / "memory.py") == {"flowrl.core"}


def test_defaults_of_a_single_step():
    t = Coupling(alternating_mask(4, 0), Affine(), 0, (8,))
    assert t.parts() is None
    assert t.analytic_inverse and not t.sequential_inverse and not t.sequential_forward
    assert not t.awaits_initialisation


def test_autoregressive_layer_states_its_facts_from_its_transformer():
    exact = MaskedAutoregressive(3, Affine(), 0, (8,))
    numerical = MaskedAutoregressive(3, DeepSigmoid(4, 1), 0, (8,))
    assert exact.analytic_inverse and not numerical.analytic_inverse
    assert exact.sequential_inverse and not exact.sequential_forward
    # wrappers derive the facts from their parts: Inverse swaps the sequential direction
    iaf = Inverse(Compose([exact, Inverse(Coupling(alternating_mask(3, 0), Affine(), 0, (8,)))]))
    assert iaf.sequential_forward and not iaf.sequential_inverse and iaf.analytic_inverse
    assert not Compose([exact, Inverse(numerical)]).analytic_inverse
    assert not Squeezed(Compose([Inverse(numerical)])).analytic_inverse


def test_awaits_initialisation_follows_actnorm_through_wrappers():
    flow = flowrl.build_flow("glow", (2, 4, 4), transforms=1, hidden_features=(8,))
    assert flow.transform.awaits_initialisation
    assert any(isinstance(m, ActNorm) for m in flow.modules())
    flow.log_prob(torch.randn(8, 2, 4, 4))
    assert not flow.transform.awaits_initialisation
    next(m for m in flow.modules() if isinstance(m, ActNorm)).reinitialize_on_next_batch()
    assert flow.transform.awaits_initialisation


@pytest.mark.parametrize("name", available_flows())
def test_registry_reads_numerical_inverse_from_the_built_transform(name):
    spec = flow_spec(name)
    state = torch.random.get_rng_state()
    declared = spec.numerical_inverse
    assert torch.equal(state, torch.random.get_rng_state()), "reading the fact moved the global random state"
    shape = (max(2, spec.min_dim),)
    assert declared == (not flowrl.build_flow(name, shape[0], 0, **spec.test_kwargs).transform.analytic_inverse)


def test_multiscale_wrappers_expose_their_parts():
    inner = Compose([Coupling(alternating_mask(8, 0), Affine(), 0, (8,))])
    parts = Squeezed(inner).parts(inverted=True)
    assert isinstance(parts, Parts) and parts.steps == [(inner, True)] and parts.around is not None
    assert FactorOut(inner, 4, 2).parts().steps == [(inner, False)]
    assert Inverse(inner).parts().steps == [(inner, True)]


class _Negated(Transform):
    """A wrapper unknown to flowrl.memory: ``-f(-x)``, exposing ``f`` with a frame (negation)."""

    def __init__(self, inner: Transform):
        super().__init__()
        self.inner = inner

    def parts(self, inverted: bool = False) -> Parts:
        return Parts([(self.inner, inverted)], self.around)

    def around(self, x, run):
        y, ld = run(-x)
        return -y, ld

    def forward(self, x, context=None):
        return self.around(x, lambda v: self.inner(v, context))

    def inverse(self, z, context=None):
        return self.around(z, lambda v: self.inner.inverse(v, context))


def test_a_new_wrapper_is_opened_by_memory_saving_without_edits():
    torch.manual_seed(0)
    layers = [Coupling(alternating_mask(4, i % 2), Affine(), 2, (8,)) for i in range(6)]
    perturb(torch.nn.ModuleList(layers), std=0.2)
    stack = Compose([layers[0], _Negated(Compose(layers[1:5])), layers[5]]).double()
    blocks = flatten_blocks(stack)
    assert len(blocks) == 6 and sum(isinstance(b, LiftedBlock) for b in blocks) == 4
    plain, saving = Flow(stack, StandardNormal(4), 2), Flow(memory_saving(stack), StandardNormal(4), 2)
    assert isinstance(saving.transform, MemorySaving)
    x, c = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    grads = []
    for flow in (plain, saving):
        flow.zero_grad(set_to_none=True)
        lp = flow.log_prob(x, c)
        lp.sum().backward()
        grads.append([p.grad.clone() for p in stack.parameters()])
    assert "MemorySaving" in type(saving.transform(x, c)[0].grad_fn).__name__
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
