"""Glow (vectors and images) and the multi-scale image RealNVP.

Image architectures are built recursively, one level at a time; every level
maps ``(C, H, W)`` to the same shape (see :mod:`flowrl.transforms.multiscale`):

* Glow level: ``Squeezed([ActNorm, 1x1 conv, channel coupling] * K + [FactorOut(next level)])``.
* RealNVP level: ``checkerboard couplings * K + Squeezed(channel couplings * K + [FactorOut(next level)])``;
  the last level has checkerboard couplings only.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..core import Compose, Transform
from ..nn import as_hidden
from ..registry import register_flow, register_transform
from ..transforms.coupling import Coupling, alternating_mask
from ..transforms.elementwise import Affine
from ..transforms.glow import ActNorm, InvConv1x1, LUInvConv1x1, LULinear
from ..transforms.image_coupling import ImageAffineCoupling, channel_mask, checkerboard_mask
from ..transforms.multiscale import FactorOut, Squeezed

__all__ = ["build_glow", "glow_image", "realnvp_image", "default_levels"]

_MAX_DEFAULT_LEVELS = 3


def default_levels(shape: Sequence[int], squeeze_first: bool) -> int:
    """Largest level count ``<= 3`` that the image's height and width allow.

    Glow squeezes at the start of every level (``H, W`` divisible by
    ``2^L``); RealNVP squeezes between levels (``2^(L-1)``) and keeps at
    least a 2x2 image for its last checkerboard couplings.
    """
    _, h, w = shape
    best = 0
    for levels in range(1, _MAX_DEFAULT_LEVELS + 1):
        squeezes = levels if squeeze_first else levels - 1
        f = 2 ** squeezes
        if h % f or w % f:
            break
        if not squeeze_first and (h // f) * (w // f) < 4 and levels > 1:
            break
        best = levels
    return best


def _check_levels(shape: Sequence[int], levels: int, squeezes: int, name: str) -> None:
    _, h, w = shape
    if levels < 1:
        raise ValueError(f"{name}: levels must be >= 1, got {levels}")
    f = 2 ** squeezes
    if h % f or w % f:
        raise ValueError(
            f"{name} with {levels} level(s) needs height and width divisible by {f}, got H={h}, W={w}"
        )


def _image_hidden(hidden_channels: Optional[Sequence[int] | int], hidden_features, default=(64, 64)):
    if hidden_channels is not None:
        return (hidden_channels, hidden_channels) if isinstance(hidden_channels, int) else as_hidden(hidden_channels)
    return as_hidden(hidden_features) if hidden_features is not None else default


# ------------------------------------------------------------------- glow
def glow_image(
    shape: Sequence[int],
    context_dim: int,
    levels: int,
    steps_per_level: int,
    hidden_channels: Sequence[int],
    scale_bound: float = 3.0,
    lu: bool = True,
) -> Transform:
    """Multi-scale Glow on images ``(C, H, W)``: ``levels`` x (squeeze, ``steps_per_level`` steps, split)."""
    _check_levels(shape, levels, levels, "glow")
    if steps_per_level < 1:
        raise ValueError(f"glow: steps_per_level must be >= 1, got {steps_per_level}")
    c, h, w = shape
    sq = (4 * c, h // 2, w // 2)
    conv = LUInvConv1x1 if lu else InvConv1x1
    layers: list[Transform] = []
    for _ in range(steps_per_level):
        layers += [
            ActNorm(sq[0]),
            conv(sq[0]),
            ImageAffineCoupling(channel_mask(sq, 0), context_dim, hidden_channels, scale_bound),
        ]
    if levels > 1:
        inner = glow_image((2 * c, *sq[1:]), context_dim, levels - 1, steps_per_level, hidden_channels, scale_bound, lu)
        layers.append(FactorOut(inner, sq[0], 2 * c))
    return Squeezed(Compose(layers))


def _glow_vector(dim: int, context_dim: int, steps: int, hidden_features, scale_bound: float) -> Transform:
    layers: list[Transform] = []
    for i in range(steps):
        layers += [
            ActNorm(dim),
            LULinear(dim),
            Coupling(alternating_mask(dim, i % 2), Affine(scale_bound), context_dim, hidden_features),
        ]
    return Compose(layers)


@register_flow("glow", image=True, min_dim=2, test_kwargs=dict(transforms=2, hidden_features=(16,)))
def build_glow(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 4,
    hidden_features: Optional[Sequence[int] | int] = None,
    scale_bound: float = 3.0,
    lu: bool = True,
    levels: Optional[int] = None,
    steps_per_level: Optional[int] = None,
    hidden_channels: Optional[Sequence[int] | int] = None,
) -> Transform:
    """Glow (Kingma & Dhariwal 2018): steps of ActNorm, invertible 1x1 conv and affine coupling.

    Vectors ``(D,)``: ``transforms`` steps of ActNorm, LU-decomposed linear
    layer and an MLP affine coupling of widths ``hidden_features`` (default
    ``(64, 64)``); ``levels``, ``steps_per_level``, ``hidden_channels`` are
    image options and raise ``ValueError`` here.

    Images ``(C, H, W)``: multi-scale Glow with ``levels`` levels (default:
    as many as ``H`` and ``W`` allow, at most 3; ``H`` and ``W`` must be
    divisible by ``2^levels``), ``steps_per_level`` steps per level (default
    ``transforms``) and conditioner convolutions of widths
    ``hidden_channels`` (an int ``h`` means ``(h, h)``; default
    ``hidden_features``, else ``(64, 64)``).  ``lu=False`` uses the plain
    1x1 convolution instead of the LU-decomposed one (images only).
    """
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")
    if len(shape) == 1:
        image_only = dict(levels=levels, steps_per_level=steps_per_level, hidden_channels=hidden_channels)
        given = sorted(k for k, v in image_only.items() if v is not None)
        if given:
            raise ValueError(f"glow on vectors does not take the image option(s) {given}")
        hidden = hidden_features if hidden_features is not None else (64, 64)
        return _glow_vector(shape[0], context_dim, transforms, hidden, scale_bound)
    if levels is None:
        levels = default_levels(shape, squeeze_first=True)
        if levels == 0:
            raise ValueError(f"glow needs even image height and width, got H={shape[1]}, W={shape[2]}")
    steps = transforms if steps_per_level is None else steps_per_level
    hidden = _image_hidden(hidden_channels, hidden_features)
    return glow_image(shape, context_dim, levels, steps, hidden, scale_bound, lu)


# ---------------------------------------------------------------- realnvp
def realnvp_image(
    shape: Sequence[int],
    context_dim: int,
    levels: int,
    couplings: int,
    hidden_channels: Sequence[int],
    scale_bound: float = 3.0,
) -> Transform:
    """Multi-scale RealNVP on images (Dinh et al. 2017), ``couplings`` affine couplings per mask group.

    Each level but the last: checkerboard couplings, squeeze, channel
    couplings, factor out half of the channels.  The last level:
    checkerboard couplings (channel couplings on a 1x1 image).
    """
    _check_levels(shape, levels, levels - 1, "realnvp")
    if couplings < 1:
        raise ValueError(f"realnvp: transforms must be >= 1, got {couplings}")
    c, h, w = shape
    if levels == 1:
        mask = channel_mask if h * w == 1 else checkerboard_mask
        if h * w == 1 and c < 2:
            raise ValueError(f"realnvp cannot couple a single value; got image shape {tuple(shape)}")
        return Compose(
            [
                ImageAffineCoupling(mask(shape, i % 2), context_dim, hidden_channels, scale_bound)
                for i in range(couplings)
            ]
        )
    layers: list[Transform] = [
        ImageAffineCoupling(checkerboard_mask(shape, i % 2), context_dim, hidden_channels, scale_bound)
        for i in range(couplings)
    ]
    sq = (4 * c, h // 2, w // 2)
    inner: list[Transform] = [
        ImageAffineCoupling(channel_mask(sq, i % 2), context_dim, hidden_channels, scale_bound)
        for i in range(couplings)
    ]
    rest = realnvp_image((2 * c, *sq[1:]), context_dim, levels - 1, couplings, hidden_channels, scale_bound)
    inner.append(FactorOut(rest, sq[0], 2 * c))
    layers.append(Squeezed(Compose(inner)))
    return Compose(layers)


# ------------------------------------------------------ single transforms
register_transform("actnorm", lambda d, c: ActNorm(d))
register_transform("lu_linear", lambda d, c: LULinear(d))
register_transform("invconv1x1", lambda d, c: InvConv1x1(d))
