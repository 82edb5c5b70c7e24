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
from ..transforms.bnaf import BlockNAF
from ..transforms.elementwise import Affine, ElementwiseBijection
from ..transforms.naf import DeepSigmoid
from ..transforms.permutations import ReversePermutation
from ..transforms.sos import SumOfSquaresPolynomial
from ..transforms.splines import RationalQuadraticSpline
from ..transforms.umnn import UnconstrainedMonotone

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
) -> Transform:
    (dim,) = shape
    return Compose([
        MaskedAutoregressive(dim, make_bijection(), context_dim, hidden_features, order)
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
    return _stack(shape, context_dim, transforms, hidden_features, lambda: Affine(scale_bound))


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


@register_flow("nsf-ar", test_kwargs=dict(transforms=2, hidden_features=(16,), bins=4))
def build_nsf_ar(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 3,
    hidden_features: Sequence[int] | int = (64, 64),
    bins: int = 8,
    bound: float = 5.0,
) -> Transform:
    """Autoregressive neural spline flow (Durkan et al. 2019): MADE-conditioned rational-quadratic splines.

    ``bins`` bins on ``[-bound, bound]``, identity outside; exact inverse in D passes.
    """
    return _stack(shape, context_dim, transforms, hidden_features,
                  lambda: RationalQuadraticSpline(bins, bound))


@register_flow("naf", test_kwargs=dict(transforms=2, hidden_features=(16,), hidden=4))
def build_naf(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 3,
    hidden_features: Sequence[int] | int = (64, 64),
    hidden: int = 16,
    dense: bool = False,
    dense_layers: int = 2,
    min_slope: float = 1e-3,
    tol: float | None = None,
) -> Transform:
    """NAF (Huang et al. 2018): MADE-conditioned deep sigmoidal transformers (DSF; ``dense=True`` for DDSF).

    ``hidden``: sigmoids per transformer layer; ``dense_layers``: DDSF depth;
    ``min_slope``: floor of every sigmoid's slope (the map's slope in its
    tails); ``tol``: tolerance of the numerical inverse.
    """
    layers = dense_layers if dense else 1
    return _stack(shape, context_dim, transforms, hidden_features,
                  lambda: DeepSigmoid(hidden, layers, min_slope=min_slope, tol=tol))


@register_flow("sos", test_kwargs=dict(transforms=2, hidden_features=(16,), polynomials=2, degree=2))
def build_sos(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 3,
    hidden_features: Sequence[int] | int = (64, 64),
    polynomials: int = 3,
    degree: int = 4,
    bound: float = 5.0,
    tol: float | None = None,
) -> Transform:
    """SOS polynomial flow (Jaini et al. 2019): MADE-conditioned sum-of-squares polynomial transformers.

    ``polynomials`` squares of degree ``degree`` on ``[-bound, bound]``, affine tails outside.
    """
    return _stack(shape, context_dim, transforms, hidden_features,
                  lambda: SumOfSquaresPolynomial(polynomials, degree, bound, tol=tol))


@register_flow("umnn", test_kwargs=dict(transforms=2, hidden_features=(16,), signal=4, integrand_features=(8, 8),
                                        nodes=16), tolerance=1e-5)
def build_umnn(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 3,
    hidden_features: Sequence[int] | int = (64, 64),
    signal: int = 16,
    integrand_features: Sequence[int] | int = (64, 64),
    nodes: int = 32,
    tol: float | None = None,
) -> Transform:
    """UMNN (Wehenkel & Louppe 2019): integrals of positive networks by Clenshaw-Curtis quadrature.

    ``signal``: embedding size per dimension; ``integrand_features``: widths
    of the integrand network; ``nodes``: quadrature intervals.
    """
    return _stack(shape, context_dim, transforms, hidden_features,
                  lambda: UnconstrainedMonotone(signal, integrand_features, nodes, tol))


@register_flow("bnaf", test_kwargs=dict(transforms=2, hidden_features=(4,)))
def build_bnaf(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 1,
    hidden_features: Sequence[int] | int = (16, 16),
    leak: float = 0.0,
    tol: float | None = None,
) -> Transform:
    """Block-NAF (De Cao et al. 2019): block-masked monotone networks, reversed between layers.

    ``hidden_features``: hidden units per dimension in each hidden layer.
    """
    (dim,) = shape
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")
    layers: list[Transform] = []
    for i in range(transforms):
        if i:
            layers.append(ReversePermutation(dim))
        layers.append(BlockNAF(dim, context_dim, hidden_features, leak, tol))
    return Compose(layers)


def _made_layer(bijection: Callable[[], ElementwiseBijection]):
    def factory(dim: int, context_dim: int) -> Transform:
        order = torch.randperm(dim, generator=torch.Generator().manual_seed(dim))
        return MaskedAutoregressive(dim, bijection(), context_dim, (12, 12), order)

    return factory


register_transform("made_affine", _made_layer(lambda: Affine()))
register_transform("made_rq_spline", _made_layer(lambda: RationalQuadraticSpline(4, 3.0)))
register_transform("made_dsf", _made_layer(lambda: DeepSigmoid(4, 1)))
register_transform("made_ddsf", _made_layer(lambda: DeepSigmoid(3, 2)))
register_transform("made_sos", _made_layer(lambda: SumOfSquaresPolynomial(2, 3, bound=3.0)))
register_transform("made_umnn", _made_layer(lambda: UnconstrainedMonotone(4, (8,), 16)), tolerance=1e-5)
register_transform("block_naf", lambda d, c: BlockNAF(d, c, (3, 3)))
