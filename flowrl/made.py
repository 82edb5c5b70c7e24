"""MADE (Germain et al. 2015): a masked MLP whose outputs are autoregressive in its inputs.

Every input ``i`` gets a degree ``d(i)`` = its rank in ``order`` (1..D).  A
hidden unit of degree ``k`` sees inputs with ``d <= k``; an output block for
input ``i`` sees hidden units with ``k < d(i)``.  So output ``i`` depends on
exactly the inputs that come before ``i`` in ``order``:
``params_i = NN(x_{<i}, c)``.  The context ``c`` feeds every hidden unit and,
through an unmasked linear map, every output (so the first dimension in the
order is conditional too).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import as_hidden

__all__ = ["MADE", "MaskedLinear", "made_degrees"]


class MaskedLinear(nn.Linear):
    """``y = (W * M) x + b`` with a fixed binary mask ``M`` (a buffer)."""

    mask: Tensor

    def __init__(self, mask: Tensor, bias: bool = True):
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(dim: int, hidden: Sequence[int], order: Tensor) -> list[Tensor]:
    """Degrees of the input layer (``rank in order + 1``) and of each hidden layer.

    Hidden units cycle through ``1..D-1`` (so every degree is represented
    when a layer has at least ``D - 1`` units); for ``D = 1`` they get degree
    0 and see only the context.
    """
    degrees = [torch.empty(dim, dtype=torch.long)]
    degrees[0][order] = torch.arange(1, dim + 1)
    top = max(dim - 1, 0)
    for h in hidden:
        if top == 0:
            degrees.append(torch.zeros(h, dtype=torch.long))
        else:
            degrees.append(torch.arange(h) % top + 1)
    return degrees


class MADE(nn.Module):
    """Masked autoencoder: ``(B, D)`` inputs (and ``(B, C)`` context) to ``(B, D, P)`` outputs.

    Args:
        dim: number of autoregressive inputs ``D``.
        params_per_dim: outputs ``P`` per input dimension.
        context_dim: size of the optional context ``C``.
        hidden_features: hidden widths.
        order: a permutation of ``0..D-1``; ``order[k]`` is the ``k``-th
            dimension in the autoregressive order (default ``0, 1, ...``).
        activation: hidden nonlinearity.
        zero_last: start the output layer (and the context's direct map) at zero.
    """

    order: Tensor
    input_degrees: Tensor
    output_layer: MaskedLinear
    context_out: Optional[nn.Linear]

    def __init__(
        self,
        dim: int,
        params_per_dim: int,
        context_dim: int = 0,
        hidden_features: Sequence[int] | int = (64, 64),
        order: Optional[Sequence[int] | Tensor] = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_last: bool = True,
    ):
        super().__init__()
        if dim < 1 or params_per_dim < 1:
            raise ValueError(f"MADE needs dim >= 1 and params_per_dim >= 1, got {dim}, {params_per_dim}")
        order_t = torch.arange(dim) if order is None else torch.as_tensor(order, dtype=torch.long)
        if order_t.shape != (dim,) or not torch.equal(order_t.sort().values, torch.arange(dim)):
            raise ValueError(f"order must be a permutation of 0..{dim - 1}, got {order_t.tolist()}")
        hidden = as_hidden(hidden_features)
        self.dim, self.params_per_dim, self.context_dim = dim, params_per_dim, context_dim
        self.register_buffer("order", order_t)
        degrees = made_degrees(dim, hidden, order_t)
        self.register_buffer("input_degrees", degrees[0])

        layers: list[nn.Module] = []
        for k, h in enumerate(hidden):
            mask = degrees[k + 1][:, None] >= degrees[k][None, :]
            if k == 0 and context_dim:
                mask = torch.cat([mask, torch.ones(h, context_dim, dtype=torch.bool)], dim=1)
            layers += [MaskedLinear(mask), activation()]
        out_degrees = degrees[0].repeat_interleave(params_per_dim)
        last_mask = out_degrees[:, None] > degrees[-1][None, :]
        if not hidden and context_dim:
            last_mask = torch.cat([last_mask, torch.zeros(len(out_degrees), context_dim, dtype=torch.bool)], 1)
        last = MaskedLinear(last_mask)
        self.context_out = nn.Linear(context_dim, dim * params_per_dim, bias=False) if context_dim else None
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            if self.context_out is not None:
                nn.init.zeros_(self.context_out.weight)
        self.hidden_layers = nn.Sequential(*layers)
        self.output_layer = last

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Outputs ``(B, D, P)``; block ``[:, i]`` depends only on ``x[:, order[:rank(i)]]`` and ``c``."""
        if (context is None) != (self.context_dim == 0):
            raise ValueError(f"MADE built with context_dim={self.context_dim} got context={context is not None}")
        h = x if context is None else torch.cat([x, context.to(x.dtype)], dim=-1)
        out = self.output_layer(self.hidden_layers(h))
        if self.context_out is not None and context is not None:
            out = out + self.context_out(context.to(x.dtype))
        return out.reshape(x.shape[0], self.dim, self.params_per_dim)

    def forward_block(self, x: Tensor, context: Optional[Tensor], i: int) -> Tensor:
        """Outputs ``(B, P)`` of input dimension ``i`` only (what a sequential inverse needs)."""
        h = x if context is None else torch.cat([x, context.to(x.dtype)], dim=-1)
        h = self.hidden_layers(h)
        last, rows = self.output_layer, slice(i * self.params_per_dim, (i + 1) * self.params_per_dim)
        out = F.linear(h, last.weight[rows] * last.mask[rows], last.bias[rows])
        if self.context_out is not None and context is not None:
            out = out + F.linear(context.to(x.dtype), self.context_out.weight[rows])
        return out

    def jacobian_mask(self) -> Tensor:
        """``(D, D)`` boolean: ``True`` where output ``i`` may depend on input ``j`` (strictly earlier)."""
        d = self.input_degrees.cpu()
        return d[:, None] > d[None, :]
