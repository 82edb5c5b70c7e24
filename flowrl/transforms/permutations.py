"""Permutations of the feature dimension: ``z_i = x_{pi(i)}``, ``log|det| = 0``."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..core import Transform

__all__ = ["Permutation", "ReversePermutation", "RandomPermutation"]


class Permutation(Transform):
    """Fixed permutation of dimension 1: ``z = x[:, perm]``."""

    perm: Tensor
    inv_perm: Tensor

    def __init__(self, perm: Sequence[int] | Tensor):
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.dim() != 1 or not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError(f"not a permutation of 0..{len(perm) - 1}: {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != len(self.perm):
            raise ValueError(f"permutation of size {len(self.perm)} got input of shape {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        return z.index_select(1, self.inv_perm), z.new_zeros(z.shape[0])

    def jacobian_mask(self, dim: int) -> Tensor:
        m = torch.zeros(dim, dim, dtype=torch.bool)
        m[torch.arange(dim), self.perm.cpu()] = True
        return m


class ReversePermutation(Permutation):
    """Reverses the feature order: ``z_i = x_{D-1-i}``."""

    def __init__(self, dim: int):
        super().__init__(torch.arange(dim - 1, -1, -1))


class RandomPermutation(Permutation):
    """A fixed random permutation drawn once from ``seed`` (saved in the state dict)."""

    def __init__(self, dim: int, seed: Optional[int] = None):
        g = torch.Generator()
        if seed is not None:
            g.manual_seed(seed)
        else:
            g.seed()
        super().__init__(torch.randperm(dim, generator=g))
