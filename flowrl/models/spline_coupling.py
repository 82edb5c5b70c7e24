"""Spline couplings on vectors: ``csf`` (cubic-spline flow) and ``nsf`` (neural spline flow).

Each layer is a :class:`~flowrl.transforms.coupling.Coupling` whose
elementwise map is a monotone spline on ``[-bound, bound]`` with identity
tails (:mod:`flowrl.transforms.splines`).
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..core import Compose, Transform
from ..registry import register_flow, register_transform
from ..transforms.coupling import Coupling, alternating_mask
from ..transforms.elementwise import ElementwiseBijection
from ..transforms.permutations import RandomPermutation
from ..transforms.splines import CubicSpline, RationalQuadraticSpline

# bound=3 puts the interval edges at values the generic suite probes (TAIL_VALUES holds +-3).
_SMALL = dict(transforms=2, hidden_features=(16,), bins=4, bound=3.0)


def _spline_couplings(
    dim: int,
    context_dim: int,
    transforms: int,
    hidden_features: Sequence[int] | int,
    make_spline: Callable[[], ElementwiseBijection],
    permutation: str,
    seed: int | None,
) -> Transform:
    """``transforms`` spline couplings; halves alternate, or are mixed by fixed random permutations."""
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")
    if permutation not in ("alternate", "random"):
        raise ValueError(f"unknown permutation {permutation!r}; use 'alternate' or 'random'")
    layers: list[Transform] = []
    for i in range(transforms):
        # In 1-D alternating_mask leaves no half to condition on: each layer is a
        # spline whose parameters come from the context (or are learned constants).
        parity = i % 2 if permutation == "alternate" else 0
        layers.append(Coupling(alternating_mask(dim, parity), make_spline(), context_dim, hidden_features))
        if permutation == "random" and i < transforms - 1 and dim > 1:
            layers.append(RandomPermutation(dim, seed=None if seed is None else seed + i))
    return Compose(layers)


@register_flow("nsf", min_dim=1, test_kwargs=_SMALL)
def build_nsf(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 4,
    hidden_features: Sequence[int] | int = (64, 64),
    bins: int = 8,
    bound: float = 5.0,
    permutation: str = "alternate",
    seed: int | None = None,
) -> Transform:
    """Neural spline flow (Durkan et al. 2019): rational-quadratic spline couplings with identity tails.

    ``bins`` spline bins on ``[-bound, bound]``; ``permutation``:
    ``"alternate"`` (alternating halves) or ``"random"`` (a fixed random
    permutation between layers, drawn from ``seed``).
    """
    (dim,) = shape
    return _spline_couplings(
        dim, context_dim, transforms, hidden_features,
        lambda: RationalQuadraticSpline(bins=bins, bound=bound), permutation, seed,
    )


@register_flow("csf", min_dim=1, test_kwargs=_SMALL)
def build_csf(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 4,
    hidden_features: Sequence[int] | int = (64, 64),
    bins: int = 8,
    bound: float = 5.0,
    permutation: str = "alternate",
    seed: int | None = None,
) -> Transform:
    """Cubic-spline flow (Durkan et al. 2019): monotone cubic spline couplings with identity tails.

    ``bins`` (>= 2) spline bins on ``[-bound, bound]``; ``permutation``:
    ``"alternate"`` or ``"random"`` (drawn from ``seed``), as for ``nsf``.
    """
    (dim,) = shape
    return _spline_couplings(
        dim, context_dim, transforms, hidden_features,
        lambda: CubicSpline(bins=bins, bound=bound), permutation, seed,
    )


register_transform(
    "rq_spline_coupling",
    lambda d, c: Coupling(alternating_mask(d, 1), RationalQuadraticSpline(bins=4, bound=3.0), c, (16,)),
)
register_transform(
    "cubic_spline_coupling",
    lambda d, c: Coupling(alternating_mask(d, 1), CubicSpline(bins=4, bound=3.0), c, (16,)),
)
