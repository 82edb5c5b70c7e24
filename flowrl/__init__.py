"""flowrl: a normalizing-flow library in pure PyTorch.

``build_flow(name, dim, context_dim)`` gives a ready-made :class:`Flow`;
``available_flows()`` lists the names.  Transforms live in
``flowrl.transforms`` (one module per family), base distributions in
``flowrl.distributions``.
"""

from .core import Compose, Inverse, Transform
from .distributions import ConditionalDiagonalNormal, StandardNormal
from .flow import Flow, set_validation, validation_enabled
from .registry import available_flows, available_transforms, build_flow, flow_spec, register_flow

__all__ = [
    "Transform",
    "Compose",
    "Inverse",
    "Flow",
    "StandardNormal",
    "ConditionalDiagonalNormal",
    "build_flow",
    "available_flows",
    "available_transforms",
    "flow_spec",
    "register_flow",
    "set_validation",
    "validation_enabled",
]
__version__ = "0.1.0"
