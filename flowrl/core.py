"""The transform protocol and its composition.

A transform ``f`` maps data ``x`` to noise ``z = f(x)`` and reports
``log|det df/dx|`` per batch row.  ``inverse`` maps noise back to data and
reports ``log|det df^{-1}/dz|`` (the negative of the forward log-det at the
matching point).  Transforms act on tensors of shape ``(batch, *event_shape)``;
:class:`flowrl.flow.Flow` flattens any extra leading dimensions.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Transform", "Compose", "Inverse"]


class Transform(nn.Module):
    """A bijection ``z = f(x; context)`` with its log absolute Jacobian determinant.

    Subclasses implement :meth:`forward` (data -> noise) and :meth:`inverse`
    (noise -> data), each returning ``(output, logabsdet)`` with ``logabsdet``
    of shape ``(batch,)``.

    Class attributes describe the transform to generic machinery:

    * ``analytic_inverse``: ``True`` when :meth:`inverse` is exact in closed
      form, ``False`` when it is found numerically (bisection, fixed point,
      ODE solve).  Memory-saving backprop refuses numerical inverses.
    """

    analytic_inverse: bool = True

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:  # noqa: D401
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def jacobian_mask(self, dim: int) -> Optional[Tensor]:
        """Declared zero pattern of ``dz/dx`` for a vector input of size ``dim``.

        Returns a ``(dim, dim)`` boolean tensor that is ``True`` where the
        Jacobian may be non-zero (row = output, column = input), or ``None``
        when no structure is declared.
        """
        return None


class Compose(Transform):
    """Composition ``f = f_K o ... o f_1``; ``log|det J_f| = sum_k log|det J_{f_k}|``.

    ``memory_saving=True`` trains with O(1) activation memory in depth: the
    backward pass rebuilds each block's input from its output with the exact
    inverse instead of storing it (see :mod:`flowrl.memory`).
    """

    def __init__(self, transforms: Iterable[Transform], memory_saving: bool = False):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        if len(self.transforms) == 0:
            raise ValueError("Compose needs at least one transform")
        self.memory_saving = False
        if memory_saving:
            self.enable_memory_saving()

    def enable_memory_saving(self, allow_numerical_inverse: bool = False) -> "Compose":
        """Switch this stack (and every stack nested in it) to memory-saving backprop.

        ``ValueError`` if a transform inverts numerically, unless ``allow_numerical_inverse``.
        """
        from .memory import enable

        enable(self, allow_numerical_inverse)
        return self

    @property
    def analytic_inverse(self) -> bool:  # type: ignore[override]
        return all(t.analytic_inverse for t in self.transforms)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if self.memory_saving:
            from .memory import memory_saving_call

            return memory_saving_call(self, x, context)
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ld = t(x, context)
            total = total + ld
        return x, total

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if self.memory_saving:
            from .memory import memory_saving_call

            return memory_saving_call(self, z, context, inverse=True)
        total = z.new_zeros(z.shape[0])
        for t in reversed(self.transforms):
            z, ld = t.inverse(z, context)
            total = total + ld
        return z, total

    def jacobian_mask(self, dim: int) -> Optional[Tensor]:
        mask = torch.eye(dim, dtype=torch.bool)
        for t in self.transforms:
            m = t.jacobian_mask(dim)
            if m is None:
                return None
            mask = (m.to(torch.int64) @ mask.to(torch.int64)) > 0
        return mask


class Inverse(Transform):
    """Swaps the directions of a transform: ``Inverse(f) = f^{-1}``.

    This is how the cheap direction is put where it is needed: a MAF (one
    pass for density) becomes an IAF (one pass for sampling).
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.base_transform = transform

    @property
    def analytic_inverse(self) -> bool:  # type: ignore[override]
        return self.base_transform.analytic_inverse

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.base_transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.base_transform(z, context)

    def jacobian_mask(self, dim: int) -> Optional[Tensor]:
        # The inverse of a (permuted) triangular map has the same pattern
        # closure; we only claim structure for strictly elementwise maps.
        m = self.base_transform.jacobian_mask(dim)
        if m is not None and bool((m == torch.eye(dim, dtype=torch.bool)).all()):
            return m
        return None


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def check_shape(x: Tensor, shape: Sequence[int], what: str = "input") -> None:
    """Raise ``ValueError`` unless ``x`` has trailing shape ``shape``."""
    n = len(shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n:]) != tuple(shape):
        raise ValueError(
            f"{what} has shape {tuple(x.shape)}, expected trailing dimensions {tuple(shape)}"
        )
