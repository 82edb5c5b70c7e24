"""Observation streams with known visit counts, for the pseudo-count calibration tests and benchmarks."""

from __future__ import annotations

import math

import numpy as np

from envs.maze import PointMaze

#: 16 states visited 1..200 times (geometric spacing, duplicates merged).
CLUSTER_COUNTS = np.unique(np.round(np.geomspace(1, 200, 16)).astype(int))


def cluster_stream(seed: int, counts=CLUSTER_COUNTS, dim: int = 2, spread: float = 0.01):
    """``(centres (K, dim), shuffled stream, counts)``: centre ``k`` visited ``counts[k]`` times, jitter ``spread``."""
    g = np.random.default_rng(seed)
    k = len(counts)
    side = math.ceil(k ** (1 / dim))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, side)] * dim, indexing="ij"), -1).reshape(-1, dim)
    centres = grid[g.permutation(len(grid))[:k]]
    idx = g.permutation(np.repeat(np.arange(k), counts))
    stream = centres[idx] + spread * g.standard_normal((len(idx), dim))
    return centres.astype(np.float32), stream.astype(np.float32), np.asarray(counts)


def maze_walk(seed: int, n: int = 2000, layout: str = "umaze"):
    """``(cell centres (K, 2), positions (n, 2), visits per cell (K,))`` of a random walk with momentum."""
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
