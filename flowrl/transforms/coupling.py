"""Block coupling on vectors (NICE, RealNVP, spline couplings).

``z_A = x_A``, ``z_B = tau(x_B; theta(x_A, c))``: the identity half ``A``
parameterises an elementwise bijection ``tau`` of the other half ``B``, so
the Jacobian is block triangular and
``log|det J| = sum_{i in B} log|dtau/dx_i|``.  The context ``c`` is
concatenated to the conditioner's input.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..core import Transform
from ..nn import MLP, cat_context
from .elementwise import ElementwiseBijection

__all__ = ["Coupling", "alternating_mask"]


def alternating_mask(dim: int, parity: int) -> Tensor:
    """Boolean mask of the identity half: ``True`` at positions ``i`` with ``i % 2 == parity``.

    For ``dim == 1`` there is nothing to split: the mask is all ``False``
    and the coupling becomes an elementwise map whose parameters come from
    the context alone (or are learned constants without a context).
    """
    if dim == 1:
        return torch.zeros(1, dtype=torch.bool)
    return (torch.arange(dim) % 2) == parity


class Coupling(Transform):
    """Coupling layer ``z_B = tau(x_B; NN(x_A, c))`` over vectors of size ``len(mask)``.

    Args:
        mask: boolean ``(D,)``, ``True`` on the identity half ``A``.
        bijection: the elementwise map ``tau`` (e.g. :class:`Affine`, a spline).
        context_dim: size of the optional context.
        hidden_features: conditioner widths.
        conditioner: replaces the default MLP; maps ``(|A| + context_dim)`` to
            ``|B| * bijection.num_params``.
    """

    identity_idx: Tensor
    transform_idx: Tensor
    conditioner: nn.Module

    def __init__(
        self,
        mask: Tensor,
        bijection: ElementwiseBijection,
        context_dim: int = 0,
        hidden_features: Sequence[int] | int = (64, 64),
        conditioner: Optional[nn.Module] = None,
    ):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        self.dim = int(mask.numel())
        self.register_buffer("identity_idx", torch.nonzero(mask).flatten())
        self.register_buffer("transform_idx", torch.nonzero(~mask).flatten())
        if len(self.transform_idx) == 0:
            raise ValueError("coupling mask leaves no dimension to transform")
        self.bijection = bijection
        n_in = len(self.identity_idx) + context_dim
        n_out = len(self.transform_idx) * bijection.num_params
        if conditioner is None:
            if n_in == 0:
                conditioner = _ConstantParams(n_out)
            else:
                conditioner = MLP(n_in, n_out, hidden_features, zero_last=True)
        self.conditioner = conditioner
        self.context_dim = context_dim

    @property
    def analytic_inverse(self) -> bool:
        """Exact when ``tau``'s inverse is (``bijection.analytic_inverse``)."""
        return bool(self.bijection.analytic_inverse)

    def _params(self, x: Tensor, context: Optional[Tensor]) -> Tensor:
        inp = cat_context(x.index_select(1, self.identity_idx), context)
        out = self.conditioner(inp)
        return out.reshape(x.shape[0], len(self.transform_idx), self.bijection.num_params)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"coupling over {self.dim} features got input of shape {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        params = self._params(x, context)
        y_b, ld = self.bijection.forward(x.index_select(1, self.transform_idx), params)
        return x.index_copy(1, self.transform_idx, y_b), ld.sum(dim=1)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        params = self._params(z, context)
        x_b, ld = self.bijection.inverse(z.index_select(1, self.transform_idx), params)
        return z.index_copy(1, self.transform_idx, x_b), ld.sum(dim=1)

    def jacobian_mask(self, dim: int) -> Tensor:
        m = torch.eye(dim, dtype=torch.bool)
        tr, idn = self.transform_idx.cpu(), self.identity_idx.cpu()
        m[tr.unsqueeze(1), idn.unsqueeze(0)] = True
        return m


class _ConstantParams(nn.Module):
    """A learned constant used as conditioner output when there is no input."""

    def __init__(self, n_out: int):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.value.expand(x.shape[0], -1)
