"""Determinant-identity flows: planar, radial and Sylvester (amortised with a context)."""

from __future__ import annotations

from typing import Optional, Sequence

from ..core import Compose, Inverse, Transform
from ..registry import register_flow, register_transform
from ..transforms.lowrank import PlanarMap, RadialMap, SylvesterMap

_SMALL = dict(transforms=2, hidden_features=(8,))


def _orient(maps: Sequence[Transform], closed_form: str) -> Transform:
    """Put the closed-form direction of each map on the sampling side (default) or the density side."""
    if closed_form == "sample":
        return Compose([Inverse(m) for m in reversed(maps)])
    if closed_form == "density":
        return Compose(maps)
    raise ValueError(f"closed_form must be 'sample' or 'density', got {closed_form!r}")


def _check(transforms: int) -> None:
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")


@register_flow("planar", test_kwargs=_SMALL)
def build_planar(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 8,
    hidden_features: Sequence[int] | int = (32,),
    closed_form: str = "sample",
) -> Transform:
    """Planar flow (Rezende & Mohamed 2015); amortised by a hypernetwork when ``context_dim > 0``.

    ``closed_form="sample"`` (default, variational-posterior use) makes
    sampling one pass and the density a bisection per layer;
    ``"density"`` swaps the two.
    """
    _check(transforms)
    (dim,) = shape
    return _orient([PlanarMap(dim, context_dim, hidden_features) for _ in range(transforms)], closed_form)


@register_flow("radial", test_kwargs=_SMALL)
def build_radial(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 8,
    hidden_features: Sequence[int] | int = (32,),
    closed_form: str = "sample",
) -> Transform:
    """Radial flow (Rezende & Mohamed 2015); both directions are closed-form."""
    _check(transforms)
    (dim,) = shape
    return _orient([RadialMap(dim, context_dim, hidden_features) for _ in range(transforms)], closed_form)


@register_flow("sylvester", test_kwargs=_SMALL)
def build_sylvester(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 4,
    hidden_features: Sequence[int] | int = (32,),
    variant: str = "orthogonal",
    rank: Optional[int] = None,
    reflections: int = 2,
    closed_form: str = "sample",
) -> Transform:
    """Sylvester flow (van den Berg et al. 2018), ``variant`` in orthogonal / householder / triangular.

    The triangular variant alternates the identity and the reversal as ``Q``.
    """
    _check(transforms)
    (dim,) = shape
    maps = [
        SylvesterMap(
            dim, context_dim, variant, rank, reflections, reverse=(i % 2 == 1), hidden_features=hidden_features
        )
        for i in range(transforms)
    ]
    return _orient(maps, closed_form)


register_transform("planar_map", lambda d, c: PlanarMap(d, c, (8,)))
register_transform("radial_map", lambda d, c: RadialMap(d, c, (8,)))
register_transform("sylvester_orthogonal", lambda d, c: SylvesterMap(d, c, "orthogonal", hidden_features=(8,)))
register_transform("sylvester_householder", lambda d, c: SylvesterMap(d, c, "householder", hidden_features=(8,)))
register_transform(
    "sylvester_triangular", lambda d, c: SylvesterMap(d, c, "triangular", reverse=True, hidden_features=(8,))
)
