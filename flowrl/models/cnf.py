"""FFJORD (Grathwohl et al. 2019): continuous normalizing flows solved with torchdiffeq."""

from __future__ import annotations

from typing import Any, Sequence

from ..core import Compose, Transform
from ..registry import register_flow
from ..transforms.cnf import CNF

# Test settings: dopri5 at rtol = atol = 1e-7 (f64); round trip, log-det and the
# autograd Jacobian of the discrete solution then agree to about 1e-5.
_TEST = dict(transforms=1, hidden_features=(16,), rtol=1e-7, atol=1e-7)
_TOLERANCE = 1e-4


@register_flow("ffjord", min_dim=1, test_kwargs=_TEST, tolerance=_TOLERANCE)
def build_ffjord(
    shape: tuple[int, ...],
    context_dim: int = 0,
    transforms: int = 1,
    hidden_features: int | Sequence[int] = (64, 64),
    **cnf_options: Any,
) -> Transform:
    """FFJORD: ``transforms`` continuous blocks ``dz/dt = f(z, t, c)`` (tanh MLP dynamics).

    ``cnf_options`` go to :class:`~flowrl.transforms.cnf.CNF`: ``T``, ``solver``,
    ``rtol``, ``atol``, ``step_size``, ``adjoint``, ``trace``, ``probe``,
    ``n_probes``, ``kinetic_reg``, ``jacobian_reg``...
    """
    if transforms < 1:
        raise ValueError(f"transforms must be >= 1, got {transforms}")
    if len(shape) != 1:
        raise ValueError(f"ffjord works on vectors; got shape {shape}")
    (dim,) = shape
    return Compose([CNF(dim, context_dim, hidden_features, **cnf_options) for _ in range(transforms)])
