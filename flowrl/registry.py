"""The one registry of ready-made flows and of individual transforms.

Families register a *builder* ``builder(shape, context_dim, **kwargs) ->
Transform``; :func:`build_flow` wraps the transform in a :class:`Flow` over
the chosen base distribution.  The generic property suite in ``tests/`` runs
every registered flow and transform through the same checks, using the
small ``test_kwargs`` each registration declares.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Literal, Optional, Sequence

import torch

from .core import Transform
from .distributions import BaseDistribution, ConditionalDiagonalNormal, StandardNormal
from .flow import Flow
from .memory import MemorySaving

__all__ = [
    "FlowSpec",
    "register_flow",
    "build_flow",
    "available_flows",
    "flow_spec",
    "TransformSpec",
    "register_transform",
    "available_transforms",
    "transform_spec",
]


@dataclass(frozen=True)
class FlowSpec:
    """What the registry knows of a named flow.

    ``image``: accepts an image shape ``(C, H, W)``; ``min_dim``: smallest
    vector dimension it supports; ``test_kwargs``: small settings for the
    test suite; ``tolerance``: a looser round-trip tolerance for numerically
    inverted flows (float64); ``slow``: its property tests are slow.
    """

    name: str
    builder: Callable[..., Transform]
    description: str
    image: bool = False
    vector: bool = True
    min_dim: int = 1
    test_kwargs: dict = field(default_factory=dict)
    tolerance: Optional[float] = None
    slow: bool = False

    @cached_property
    def numerical_inverse(self) -> bool:
        """Whether one direction of the flow (built with ``test_kwargs``) is a numerical solve.

        Read from the built transform's ``analytic_inverse`` (the transforms
        state it; nothing is declared here); the global random state is left
        as it was.  For a flow built with other options, read
        ``flow.transform.analytic_inverse``.
        """
        shape = (max(2, self.min_dim),) if self.vector else (2, 4, 4)
        with torch.random.fork_rng(devices=[]):
            transform = self.builder(shape, 0, **self.test_kwargs)
        return not transform.analytic_inverse


_FLOWS: dict[str, FlowSpec] = {}


def register_flow(
    name: str,
    *,
    description: str = "",
    image: bool = False,
    vector: bool = True,
    min_dim: int = 1,
    test_kwargs: Optional[dict] = None,
    tolerance: Optional[float] = None,
    slow: bool = False,
) -> Callable[[Callable[..., Transform]], Callable[..., Transform]]:
    """Decorator that registers ``builder(shape, context_dim, **kwargs) -> Transform`` under ``name``."""

    def decorator(builder: Callable[..., Transform]) -> Callable[..., Transform]:
        if name in _FLOWS:
            raise ValueError(f"flow {name!r} is already registered")
        doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
        _FLOWS[name] = FlowSpec(name, builder, doc, image, vector, min_dim, dict(test_kwargs or {}), tolerance, slow)
        return builder

    return decorator


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (registers every family on import)


def available_flows() -> list[str]:
    """Names accepted by :func:`build_flow`, sorted."""
    _ensure_loaded()
    return sorted(_FLOWS)


def flow_spec(name: str) -> FlowSpec:
    """The :class:`FlowSpec` registered under ``name``."""
    _ensure_loaded()
    if name not in _FLOWS:
        raise ValueError(f"unknown flow {name!r}; available flows: {', '.join(sorted(_FLOWS))}")
    return _FLOWS[name]


def _check_kwargs(fn: Callable[..., Any], kwargs: dict, what: str) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in ("shape", "context_dim")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"{what} got unknown keyword argument(s) {unknown}; accepted: {sorted(allowed)}"
        )


def build_flow(
    name: str,
    dim: int | Sequence[int],
    context_dim: int = 0,
    *,
    base: str = "normal",
    base_hidden_features: Sequence[int] | int = (64,),
    validate_args: Optional[bool] = None,
    memory_saving: bool | Literal["strict"] = False,
    **kwargs: Any,
) -> Flow:
    """Build the registered flow ``name`` over vectors of size ``dim`` (or images of shape ``dim``).

    Args:
        name: one of :func:`available_flows`.
        dim: event size ``D`` or an image shape ``(C, H, W)``.
        context_dim: size of the conditioning vector (0 for an unconditional flow).
        base: ``"normal"`` (standard normal) or ``"conditional"`` (diagonal
            Gaussian whose mean and scale come from the context).
        base_hidden_features: hidden widths of the conditional base's network.
        validate_args: check inputs for shape and finiteness (default: global setting).
        memory_saving: train with O(1) activation memory in depth by rebuilding
            activations from outputs in backward (:mod:`flowrl.memory`);
            ``ValueError`` for flows whose inverse is numerical.  ``True`` keeps
            the inputs of autoregressive (MAF/IAF) layers instead of rebuilding
            them in ``D`` passes; ``"strict"`` rebuilds those too (saved memory
            independent of depth for every exact flow, slower backward).
        **kwargs: the family's own options; ``transforms`` (number of layers)
            and ``hidden_features`` (hidden widths) are shared by most.

    Example:
        >>> import torch, flowrl
        >>> flow = flowrl.build_flow("realnvp", 2, context_dim=3, transforms=2, hidden_features=(16,))
        >>> c = torch.randn(5, 3)
        >>> flow.log_prob(torch.randn(5, 2), c).shape
        torch.Size([5])
        >>> x, log_p = flow.rsample_and_log_prob(4, c)  # 4 samples per context row, one pass
        >>> x.shape, log_p.shape
        (torch.Size([4, 5, 2]), torch.Size([4, 5]))
    """
    spec = flow_spec(name)
    shape = (int(dim),) if isinstance(dim, int) else tuple(int(d) for d in dim)
    if any(d <= 0 for d in shape):
        raise ValueError(f"dim must be positive, got {dim}")
    if len(shape) == 1:
        if not spec.vector:
            raise ValueError(f"flow {name!r} needs an image shape (C, H, W), got dim={dim}")
        if shape[0] < spec.min_dim:
            raise ValueError(f"flow {name!r} needs dim >= {spec.min_dim}, got {shape[0]}")
    elif len(shape) == 3:
        if not spec.image:
            raise ValueError(f"flow {name!r} does not support image shapes; got dim={dim}")
    else:
        raise ValueError(f"dim must be an int or a (C, H, W) tuple, got {dim}")
    if context_dim < 0:
        raise ValueError(f"context_dim must be >= 0, got {context_dim}")
    _check_kwargs(spec.builder, kwargs, f"flow {name!r}")
    if memory_saving not in (False, True, "strict"):
        raise ValueError(f"memory_saving must be False, True or 'strict', got {memory_saving!r}")
    transform = spec.builder(shape, context_dim, **kwargs)
    if memory_saving:
        if not transform.analytic_inverse:
            raise ValueError(
                f"flow {name!r} inverts numerically; memory-saving backprop needs exact inverses "
                "(see flowrl.memory.memory_saving(..., allow_numerical_inverse=True) to opt in)"
            )
        transform = MemorySaving(transform, strict=memory_saving == "strict")
    base_dist: BaseDistribution
    if base == "normal":
        base_dist = StandardNormal(shape)
    elif base == "conditional":
        if context_dim == 0:
            raise ValueError("base='conditional' needs context_dim > 0")
        base_dist = ConditionalDiagonalNormal(shape, context_dim, base_hidden_features)
    else:
        raise ValueError(f"unknown base {base!r}; use 'normal' or 'conditional'")
    return Flow(transform, base_dist, context_dim=context_dim, validate_args=validate_args)


# --------------------------------------------------------------- transforms
@dataclass(frozen=True)
class TransformSpec:
    """A single transform exposed to the generic property suite.

    ``factory(dim, context_dim) -> Transform`` builds a small instance.
    """

    name: str
    factory: Callable[[int, int], Transform]
    min_dim: int = 1
    tolerance: Optional[float] = None


_TRANSFORMS: dict[str, TransformSpec] = {}


def register_transform(
    name: str, factory: Callable[[int, int], Transform], *, min_dim: int = 1, tolerance: Optional[float] = None
) -> None:
    """Register a small-instance factory of a single transform for the property suite."""
    if name in _TRANSFORMS:
        raise ValueError(f"transform {name!r} is already registered")
    _TRANSFORMS[name] = TransformSpec(name, factory, min_dim, tolerance)


def available_transforms() -> list[str]:
    """Names of the individually registered transforms, sorted."""
    _ensure_loaded()
    return sorted(_TRANSFORMS)


def transform_spec(name: str) -> TransformSpec:
    """The :class:`TransformSpec` registered under ``name``."""
    _ensure_loaded()
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; available: {', '.join(sorted(_TRANSFORMS))}")
    return _TRANSFORMS[name]
