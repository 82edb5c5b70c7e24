"""Observation streams with known visit counts, and how well pseudo-counts agree with them.

Shared by the pseudo-count tests and ``scripts/bench_pseudocounts.py`` (which
puts this folder on its path): benchmark helpers, not part of the library.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

#: 16 states visited 1..200 times (geometric spacing, duplicates merged).
CLUSTER_COUNTS = np.unique(np.round(np.geomspace(1, 200, 16)).astype(int))


def count_agreement(true_counts: Any, pseudo_counts: Any) -> tuple[float, float]:
    """(Spearman rank correlation, slope of the least-squares fit of ``log N_hat`` on ``log N``).

    Ties get their average rank (0 when either side is constant).  A good
    estimator has Spearman near 1 and a slope near 1 (below: it saturates;
    above: it explodes).
    """
    n = np.asarray(true_counts, dtype=np.float64).ravel()
    m = np.asarray(pseudo_counts, dtype=np.float64).ravel()
    if n.shape != m.shape or n.size < 3:
        raise ValueError("need two arrays of the same length >= 3")
    if (n <= 0).any() or (m <= 0).any():
        raise ValueError("counts must be positive")
    constant = (n == n[0]).all() or (m == m[0]).all()
    spearman = 0.0 if constant else float(spearmanr(n, m)[0])
    slope = float(np.polyfit(np.log(n), np.log(m), 1)[0])
    return spearman, slope


def cluster_stream(
    counts: Sequence[int] = CLUSTER_COUNTS, dim: int = 2, spread: float = 0.01, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Exact-count benchmark: ``(centres (K, dim), shuffled stream (sum(counts), dim))``.

    ``K = len(counts)`` cluster centres on a grid in ``[-1, 1]^dim`` (random
    order), and a stream where centre ``k`` appears ``counts[k]`` times with
    Gaussian jitter of std ``spread``, shuffled.
    """
    g = torch.Generator().manual_seed(seed)
    k = len(counts)
    side = math.ceil(k ** (1.0 / dim))
    axes = [torch.linspace(-1.0, 1.0, side)] * dim
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, dim)
    centres = grid[torch.randperm(grid.shape[0], generator=g)[:k]]
    idx = torch.repeat_interleave(torch.arange(k), torch.as_tensor(list(counts)))
    idx = idx[torch.randperm(idx.numel(), generator=g)]
    stream = centres[idx] + spread * torch.randn(idx.numel(), dim, generator=g)
    return centres, stream


def cluster_visits(seed: int, counts: Sequence[int] = CLUSTER_COUNTS, dim: int = 2,
                   spread: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centres (K, dim), shuffled stream, counts)`` as float32 arrays: the calibration tests' clusters.

    The layout of :func:`cluster_stream` (centre ``k`` visited ``counts[k]`` times, jitter
    ``spread``) drawn with numpy's generator: the stream the calibration thresholds were set on.
    """
    g = np.random.default_rng(seed)
    k = len(counts)
    side = math.ceil(k ** (1 / dim))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, side)] * dim, indexing="ij"), -1).reshape(-1, dim)
    centres = grid[g.permutation(len(grid))[:k]]
    idx = g.permutation(np.repeat(np.arange(k), counts))
    stream = centres[idx] + spread * g.standard_normal((len(idx), dim))
    return centres.astype(np.float32), stream.astype(np.float32), np.asarray(counts)


def point_image_stream(
    counts: Sequence[int], side: int = 16, channels: int = 1, block: int = 2, seed: int = 0,
    noise: float = 8.0, unseen: int = 0,
) -> tuple[Tensor, Tensor]:
    """Exact-count benchmark for images: ``(frames (K + unseen, C, side, side), shuffled uint8 stream)``.

    Frame ``k`` is a dark background with a bright ``block x block`` square at
    one of ``K + unseen`` distinct grid positions (``K = len(counts)``); the
    stream holds frame ``k < K`` ``counts[k]`` times, with uniform pixel noise
    of amplitude ``noise`` (in ``[0, 255]``, small enough to stay in the same
    quantisation cell at 8 levels), shuffled; the last ``unseen`` frames never
    appear in it.
    """
    g = torch.Generator().manual_seed(seed)
    cells = side // block
    k = len(counts) + int(unseen)
    if k > cells * cells:
        raise ValueError(f"{k} positions do not fit in a {side}x{side} frame with {block}x{block} blocks")
    pos = torch.randperm(cells * cells, generator=g)[:k]
    frames = torch.full((k, channels, side, side), 40.0)
    for i, p in enumerate(pos.tolist()):
        r, c = divmod(p, cells)
        frames[i, :, r * block:(r + 1) * block, c * block:(c + 1) * block] = 200.0
    idx = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(list(counts)))
    idx = idx[torch.randperm(idx.numel(), generator=g)]
    stream = frames[idx] + noise * (torch.rand(idx.numel(), channels, side, side, generator=g) - 0.5)
    return frames.to(torch.uint8), stream.round().clamp(0, 255).to(torch.uint8)


def maze_walk(seed: int, n: int = 2000, layout: str = "umaze") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cell centres (K, 2), positions (n, 2), visits per cell (K,))`` of a random walk with momentum."""
    from envs.maze import PointMaze  # the environments (and gymnasium) only when a maze is walked

    env = PointMaze(layout, max_episode_steps=10**9)
    env.reset(seed=seed)
    g = np.random.default_rng(seed)
    action, positions = np.zeros(2), []
    for _ in range(n):
        action = np.clip(0.8 * action + 0.6 * g.standard_normal(2), -1, 1)
        positions.append(env.step(action.astype(np.float32))[4]["position"].copy())
    pos = np.asarray(positions, dtype=np.float32)
    cells, visits = np.unique(np.floor(pos).astype(int), axis=0, return_counts=True)
    return (cells + 0.5).astype(np.float32), pos, visits


def with_redundant_features(x: np.ndarray) -> np.ndarray:
    """``x`` with a constant feature and an affine copy of its first feature appended."""
    return np.concatenate([x, np.full((len(x), 1), 3.0, np.float32), 2 * x[:, :1] + 1], axis=1)
