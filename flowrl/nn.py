"""Neural building blocks shared by the flow families."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "as_hidden"]


def as_hidden(hidden_features: int | Sequence[int]) -> tuple[int, ...]:
    """Normalise ``hidden_features`` (an int or a sequence of ints) to a tuple."""
    if isinstance(hidden_features, int):
        return (hidden_features,)
    hidden = tuple(int(h) for h in hidden_features)
    if any(h <= 0 for h in hidden):
        raise ValueError(f"hidden_features must be positive, got {hidden_features}")
    return hidden


class MLP(nn.Sequential):
    """Multi-layer perceptron ``x -> W_L s(... s(W_1 x))``.

    With ``zero_last=True`` the output layer starts at zero so that a
    conditioner built from it makes its transform start at (or near) the
    identity.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.ReLU,
        zero_last: bool = True,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for h in as_hidden(hidden_features):
            layers += [nn.Linear(width, h), activation()]
            width = h
        last = nn.Linear(width, out_features)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return super().forward(x)


def cat_context(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate a context to a conditioner's input along the last dimension."""
    if context is None:
        return x
    return torch.cat([x, context.to(x.dtype)], dim=-1)
