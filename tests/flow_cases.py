"""Cases for the generic property suite: every registered flow and transform.

A *case* is a small instance of a registered flow, or a single registered
transform wrapped in a :class:`flowrl.Flow` over a standard normal, built
with the registration's ``test_kwargs`` so that the whole suite stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import flowrl
from flowrl import Flow, StandardNormal
from flowrl.datasets import two_moons  # noqa: F401  (re-exported for the tests)
from flowrl.registry import available_flows, available_transforms, flow_spec, transform_spec


@dataclass(frozen=True)
class Case:
    kind: str  # "flow" or "transform"
    name: str
    min_dim: int
    tolerance: Optional[float]
    numerical_inverse: bool
    image: bool = False
    vector: bool = True
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.kind[0]}:{self.name}"

    def build(self, dim, context_dim: int = 0, dtype=torch.float64, seed: int = 0, **extra) -> Flow:
        torch.manual_seed(seed)
        if self.kind == "flow":
            spec = flow_spec(self.name)
            kwargs = {**spec.test_kwargs, **extra}
            flow = flowrl.build_flow(self.name, dim, context_dim, **kwargs)
        else:
            t = transform_spec(self.name).factory(dim, context_dim)
            flow = Flow(t, StandardNormal(dim), context_dim=context_dim)
        return flow.to(dtype)

    def tolerances(self, dtype) -> tuple[float, float]:
        """(round-trip max error, log-det max error) for this case and dtype."""
        if dtype == torch.float64:
            rt, ld = 1e-8, 1e-6
            if self.tolerance is not None:
                rt = ld = self.tolerance
        else:
            rt, ld = 1e-4, 2e-3
            if self.tolerance is not None:
                rt, ld = max(rt, self.tolerance), max(ld, self.tolerance)
        return rt, ld


def all_cases() -> list[Case]:
    cases = []
    for name in available_flows():
        s = flow_spec(name)
        cases.append(Case("flow", name, s.min_dim, s.tolerance, s.numerical_inverse, s.image, s.vector, s.slow))
    for name in available_transforms():
        s = transform_spec(name)
        cases.append(Case("transform", name, s.min_dim, s.tolerance, False))
    return cases


def perturb(module: torch.nn.Module, std: float = 0.15, seed: int = 1) -> None:
    """Move every parameter away from its (often identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
