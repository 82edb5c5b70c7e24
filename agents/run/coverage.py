"""Where the agent went: a coverage tracker for the training env, and the novelty model's density for maps."""

from __future__ import annotations

from typing import Callable, Optional

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from envs.coverage import CoverageTracker, maze_tracker
from envs.deep_sea import DeepSea

from ..novelty import find_novelty, novelty_density, observation_dim

__all__ = ["coverage_tracker", "first_two_features", "novelty_density_fn"]

def coverage_tracker(env: VecEnv) -> Optional[CoverageTracker]:
    """A maze-shaped tracker when the env is a maze, else a 20x20 grid over the first two features of a finite
    vector observation box (none for other spaces)."""
    base = env.envs[0].unwrapped if hasattr(env, "envs") else None
    if base is not None and hasattr(base, "layout") and hasattr(base, "extent"):
        return maze_tracker(base)
    if isinstance(base, DeepSea):
        return CoverageTracker((0, base.size, 0, base.size), base.size)
    space = env.observation_space
    vector = isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.shape[0] >= 2
    if vector and np.all(np.isfinite(space.low[:2])) and np.all(np.isfinite(space.high[:2])):
        return CoverageTracker((space.low[0], space.high[0], space.low[1], space.high[1]), 20)
    return None


def first_two_features(obs: np.ndarray) -> np.ndarray:
    """The coverage tracker's default projection: the first two features of each observation."""
    return np.asarray(obs).reshape(len(obs), -1)[:, :2]


def novelty_density_fn(model: BaseAlgorithm) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """``f(obs (N, d)) -> log-density (N,)`` of the model's novelty density (``None`` without one)."""
    try:
        bonus = find_novelty(model)
        novelty_density(bonus, np.zeros((1, observation_dim(model.observation_space, bonus.options.obs_key)),
                                        dtype=np.float32))
    except ValueError:  # no bonus, or one without a density (RND)
        return None
    return lambda obs: np.asarray(novelty_density(bonus, np.asarray(obs, dtype=np.float32)), dtype=np.float64)
