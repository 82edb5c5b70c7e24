"""Residual Flows (Chen et al. 2019): a stack of contractive residual blocks."""

from __future__ import annotations

from typing import Any, Sequence

from ..core import Compose, Transform
from ..registry import register_flow, register_transform
from ..transforms.residual import ResidualBlock

# f64 round trip: fixed point to 1e-12 (relative step); log-det exact for D <= 8 in eval.
_TOLERANCE = 1e-7


@register_flow(
    "resflow",
    min_dim=1,
    test_kwargs=dict(transforms=2, hidden_features=(16,)),
    tolerance=_TOLERANCE,
)
def build_resflow(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 4,
    hidden_features: int | Sequence[int] = (64, 64),
    coeff: float = 0.97,
    **block_options: Any,
) -> Transform:
    """Residual Flow: ``transforms`` blocks ``x + g(x, c)`` with spectrally normalised LipSwish MLPs ``g``.

    ``block_options`` go to :class:`~flowrl.transforms.residual.ResidualBlock`
    (``logdet``, ``estimator``, ``n_probes``, ``neumann_grad``, ``grad_in_forward``,
    ``eval_tol``, ``inverse_tol``...).
    """
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")
    if len(shape) != 1:
        raise ValueError(f"resflow works on vectors; got shape {shape}")
    (dim,) = shape
    return Compose(
        [ResidualBlock(dim, context_dim, hidden_features, coeff, **block_options) for _ in range(transforms)]
    )


register_transform(
    "residual_block", lambda d, c: ResidualBlock(d, c, (16,)), tolerance=_TOLERANCE
)
