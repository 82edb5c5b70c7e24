"""Masked autoregressive layers: ``z_i = tau(x_i; theta_i(x_{<i}, c))`` with a MADE conditioner.

The density direction (``forward``, data -> noise) is one MADE pass.  The
sampling direction (``inverse``) takes ``D`` sequential passes: at step
``k`` the MADE is evaluated once on the partial ``x`` (its block for the
``k``-th dimension of the order depends only on the dimensions already
found) and only the scalar transformer ``tau`` of that dimension is
inverted, in closed form (affine, spline) or numerically (NAF, SOS, UMNN,
through :func:`flowrl.inversion.invert_monotone`).  Both directions are
exact; ``log|det J| = sum_i log|dtau/dx_i|`` (triangular Jacobian).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..core import Transform
from ..made import MADE
from .elementwise import ElementwiseBijection

__all__ = ["MaskedAutoregressive"]


class MaskedAutoregressive(Transform):
    """One autoregressive layer: a MADE conditioner and an elementwise transformer.

    Args:
        dim: number of features ``D``.
        bijection: the scalar transformer ``tau`` (an :class:`ElementwiseBijection`;
            one that is also an ``nn.Module`` is registered as a submodule).
        context_dim: size of the optional context.
        hidden_features: MADE hidden widths.
        order: autoregressive order (a permutation of ``0..D-1``).

    Its inverse is analytic exactly when ``tau``'s is (``bijection.analytic_inverse``).
    """

    made: MADE

    #: cost hint: ``inverse`` takes ``D`` sequential passes (memory-saving backprop stores this layer's input)
    sequential_inverse = True

    def __init__(
        self,
        dim: int,
        bijection: ElementwiseBijection,
        context_dim: int = 0,
        hidden_features: Sequence[int] | int = (64, 64),
        order: Optional[Sequence[int] | Tensor] = None,
    ):
        super().__init__()
        self.dim = int(dim)
        self.bijection = bijection
        self.made = MADE(dim, bijection.num_params, context_dim, hidden_features, order)

    @property
    def analytic_inverse(self) -> bool:
        return bool(self.bijection.analytic_inverse)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"autoregressive layer over {self.dim} features got input of shape {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        z, ld = self.bijection.forward(x, self.made(x, context))
        return z, ld.sum(dim=1)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        x = torch.zeros_like(z)
        total = z.new_zeros(z.shape[0])
        columns = torch.arange(self.dim, device=z.device)
        for i in self.made.order.tolist():  # the buffer (loaded with the state dict); one sync
            params = self.made.forward_block(x, context, i)
            x_i, ld_i = self.bijection.inverse(z[:, i], params)
            x = torch.where(columns == i, x_i.unsqueeze(1), x)
            total = total + ld_i
        return x, total

    def jacobian_mask(self, dim: int) -> Tensor:
        return self.made.jacobian_mask() | torch.eye(dim, dtype=torch.bool)
