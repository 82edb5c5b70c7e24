"""Autoregressive flows: MAF, IAF, autoregressive splines, NAF, Block-NAF, SOS, UMNN.

Each flow stacks ``transforms`` autoregressive layers whose orders alternate
between natural and reversed (a flow's later layers see the dimensions the
earlier ones conditioned on last).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..core import Compose, Inverse, Transform
from ..registry import register_flow, register_transform
from ..transforms.autoregressive import MaskedAutoregressive
from ..transforms.elementwise import Affine, ElementwiseBijection
from ..transforms.naf import DeepSigmoid

_SMALL = dict(transforms=2, hidden_features=(16,))


def _orders(dim: int, transforms: int) -> list[torch.Tensor]:
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")
    natural = torch.arange(dim)
    return [natural if i % 2 == 0 else natural.flip(0) for i in range(transforms)]


def _stack(
    shape: tuple[int, ...],
    context_dim: int,
    transforms: int,
    hidden_features: Sequence[int] | int,
    make_bijection: Callable[[], ElementwiseBijection],
    numerical_inverse: bool,
) -> Transform:
    (dim,) = shape
    return Compose([
        MaskedAutoregressive(dim, make_bijection(), context_dim, hidden_features, order, numerical_inverse)
        for order in _orders(dim, transforms)
    ])


@register_flow("maf", test_kwargs=_SMALL)
def build_maf(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 3,
    hidden_features: Sequence[int] | int = (64, 64),
    scale_bound: float = 3.0,
) -> Transform:
    """MAF (Papamakarios et al. 2017): affine autoregressive layers; density in one pass, sampling in D."""
    return _stack(shape, context_dim, transforms, hidden_features, lambda: Affine(scale_bound), False)


@register_flow("iaf", test_kwargs=_SMALL)
def build_iaf(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 3,
    hidden_features: Sequence[int] | int = (64, 64),
    scale_bound: float = 3.0,
) -> Transform:
    """IAF (Kingma et al. 2016): the MAF network put in the sampling direction (sampling in one pass, density in D)."""
    return Inverse(build_maf(shape, context_dim, transforms, hidden_features, scale_bound))


@register_flow("naf", test_kwargs=dict(transforms=2, hidden_features=(16,), hidden=4), numerical_inverse=True)
def build_naf(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 3,
    hidden_features: Sequence[int] | int = (64, 64),
    hidden: int = 16,
    dense: bool = False,
    dense_layers: int = 2,
    tol: float | None = None,
) -> Transform:
    """NAF (Huang et al. 2018): MADE-conditioned deep sigmoidal transformers (DSF; ``dense=True`` for DDSF).

    ``hidden``: sigmoids per transformer layer; ``dense_layers``: DDSF depth;
    ``tol``: tolerance of the numerical inverse.
    """
    layers = dense_layers if dense else 1
    return _stack(shape, context_dim, transforms, hidden_features, lambda: DeepSigmoid(hidden, layers, tol=tol), True)


def _made_layer(bijection: Callable[[], ElementwiseBijection], numerical: bool):
    def factory(dim: int, context_dim: int) -> Transform:
        order = torch.randperm(dim, generator=torch.Generator().manual_seed(dim))
        return MaskedAutoregressive(dim, bijection(), context_dim, (12, 12), order, numerical)

    return factory


register_transform("made_affine", _made_layer(lambda: Affine(), False))
register_transform("made_dsf", _made_layer(lambda: DeepSigmoid(4, 1), True))
register_transform("made_ddsf", _made_layer(lambda: DeepSigmoid(3, 2), True))
