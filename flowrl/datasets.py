"""Toy 2-D densities for examples, tests and benchmarks (pure torch, seeded)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["two_moons", "eight_gaussians", "TOY_DATASETS"]


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


def two_moons(
    n: int, seed: int | torch.Generator = 0, dtype: torch.dtype = torch.float32, noise: float = 0.1
) -> Tensor:
    """Two interleaved half circles (scaled by 1.5, roughly centred) plus Gaussian noise of std ``noise``."""
    g = _generator(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.5
    pts = pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return pts.to(dtype)


def eight_gaussians(
    n: int, seed: int | torch.Generator = 0, dtype: torch.dtype = torch.float32, std: float = 0.25
) -> Tensor:
    """A mixture of 8 Gaussians of std ``std`` with centres evenly spaced on a circle of radius 2."""
    g = _generator(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    ang = k.double() * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return (centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).to(dtype)


TOY_DATASETS = {"two-moons": two_moons, "8-gaussians": eight_gaussians}
