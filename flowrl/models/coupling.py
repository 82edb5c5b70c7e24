"""Block-coupling flows on vectors: NICE and RealNVP (RealNVP also on images)."""

from __future__ import annotations

from typing import Optional, Sequence

from ..core import Compose, Transform
from ..nn import as_hidden
from ..registry import register_flow, register_transform
from ..transforms.coupling import Coupling, alternating_mask
from ..transforms.elementwise import Additive, Affine, Scaling
from ..transforms.permutations import RandomPermutation, ReversePermutation

_SMALL = dict(transforms=2, hidden_features=(16,))


def _check_layers(transforms: int) -> None:
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")


@register_flow("nice", test_kwargs=_SMALL)
def build_nice(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 4,
    hidden_features: Sequence[int] | int = (64, 64),
) -> Transform:
    """NICE (Dinh et al. 2014): additive couplings with alternating halves, then a diagonal scaling."""
    _check_layers(transforms)
    (dim,) = shape
    layers: list[Transform] = [
        Coupling(alternating_mask(dim, i % 2), Additive(), context_dim, hidden_features)
        for i in range(transforms)
    ]
    layers.append(Scaling(dim))
    return Compose(layers)


@register_flow("realnvp", image=True, test_kwargs=_SMALL)
def build_realnvp(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 4,
    hidden_features: Sequence[int] | int = (64, 64),
    scale_bound: float = 3.0,
    permutation: str = "alternate",
    levels: Optional[int] = None,
) -> Transform:
    """RealNVP (Dinh et al. 2017): affine couplings with a bounded log-scale.

    ``permutation``: ``"alternate"`` (alternating masks), ``"reverse"`` or
    ``"random"`` (a fixed permutation between layers, half mask).

    Images ``(C, H, W)``: the multi-scale architecture of
    :func:`flowrl.models.glow.realnvp_image` with ``levels`` levels (default:
    as many as ``H`` and ``W`` allow, at most 3), ``transforms`` couplings
    per mask group and convolutional conditioners of widths
    ``hidden_features``; ``permutation`` must stay ``"alternate"``.
    """
    _check_layers(transforms)
    if len(shape) == 3:
        from .glow import default_levels, realnvp_image

        if permutation != "alternate":
            raise ValueError(f"realnvp on images alternates its masks; permutation={permutation!r} is for vectors")
        if levels is None:
            levels = default_levels(shape, squeeze_first=False)
        return realnvp_image(shape, context_dim, levels, transforms, as_hidden(hidden_features), scale_bound)
    if levels is not None:
        raise ValueError("realnvp on vectors does not take levels (an image option)")
    (dim,) = shape
    layers: list[Transform] = []
    for i in range(transforms):
        if permutation == "alternate":
            layers.append(Coupling(alternating_mask(dim, i % 2), Affine(scale_bound), context_dim, hidden_features))
        elif permutation in ("reverse", "random"):
            layers.append(Coupling(alternating_mask(dim, 0), Affine(scale_bound), context_dim, hidden_features))
            if i < transforms - 1:
                layers.append(ReversePermutation(dim) if permutation == "reverse" else RandomPermutation(dim))
        else:
            raise ValueError(f"unknown permutation {permutation!r}; use 'alternate', 'reverse' or 'random'")
    return Compose(layers)


register_transform("additive_coupling", lambda d, c: Coupling(alternating_mask(d, 0), Additive(), c, (16,)), min_dim=2)
register_transform("affine_coupling", lambda d, c: Coupling(alternating_mask(d, 1), Affine(), c, (16,)), min_dim=2)
register_transform("scaling", lambda d, c: Scaling(d))
register_transform("reverse_permutation", lambda d, c: ReversePermutation(d))
register_transform("random_permutation", lambda d, c: RandomPermutation(d, seed=0))
