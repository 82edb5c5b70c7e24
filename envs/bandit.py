"""A one-step continuous bandit whose reward is high in two separated action regions.

``r(a) = max_k exp(-||a - m_k||^2 / (2 w^2))`` with modes ``m_{0,1} = -+ offset * (1, ..., 1)``
in the action box ``[-1, 1]^D``.  Both modes pay the same, so the
maximum-entropy optimal policy puts half its mass on each: a unimodal
(Gaussian) policy must pick one, a flow policy can cover both.
Registered as ``flowrl/TwoModeBandit-v0``.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["TwoModeBandit"]


class TwoModeBandit(gym.Env):
    """One step per episode; constant observation ``0``; reward peaks of height 1 at two modes.

    Args:
        dim: action dimension ``D``.
        offset: modes at ``-offset * 1`` and ``+offset * 1`` (``0 < offset < 1``).
        width: reward width ``w``; an action is *in* mode ``k`` when
            ``||a - m_k|| < 2 w`` (see :meth:`mode_of`).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, dim: int = 2, offset: float = 0.5, width: float = 0.15, render_mode: Optional[str] = None):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not 0.0 < offset < 1.0:
            raise ValueError(f"offset must be in (0, 1), got {offset}")
        if width <= 0.0:
            raise ValueError(f"width must be positive, got {width}")
        if 2 * width >= offset * np.sqrt(dim):
            raise ValueError(f"width={width} makes the two modes overlap (needs 2 * width < offset * sqrt(dim))")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r}; use None or 'rgb_array'")
        self.render_mode = render_mode
        self.last_action: Optional[np.ndarray] = None
        self.dim = int(dim)
        self.width = float(width)
        self.modes = np.stack([-offset * np.ones(dim), offset * np.ones(dim)]).astype(np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(dim,), dtype=np.float32)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reward(self, actions: np.ndarray) -> np.ndarray:
        """``max_k exp(-||a - m_k||^2 / (2 w^2))`` for actions of shape ``(..., D)``."""
        a = np.asarray(actions, dtype=np.float64)[..., None, :]
        sq = ((a - self.modes) ** 2).sum(axis=-1)
        return np.exp(-sq.min(axis=-1) / (2 * self.width**2))

    def mode_of(self, actions: np.ndarray) -> np.ndarray:
        """Index of the mode within ``2 w`` of each action, ``-1`` for none; shape ``actions.shape[:-1]``."""
        a = np.asarray(actions, dtype=np.float64)[..., None, :]
        dist = np.sqrt(((a - self.modes) ** 2).sum(axis=-1))
        nearest = dist.argmin(axis=-1)
        return np.where(dist.min(axis=-1) < 2 * self.width, nearest, -1)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float32).reshape(self.dim)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        action = np.clip(action, -1.0, 1.0)
        self.last_action = action
        reward = float(self.reward(action))
        info = {"mode": int(self.mode_of(action))}
        return np.zeros(1, dtype=np.float32), reward, True, False, info

    def render(self) -> Optional[np.ndarray]:
        """``rgb_array``: the reward over the first two action coordinates (green) and the last action (red)."""
        if self.render_mode != "rgb_array":
            return None
        n = 64
        axis = np.linspace(-1.0, 1.0, n)
        grid = np.zeros((n, n, self.dim))
        grid[..., 0] = axis[None, :]
        if self.dim > 1:
            grid[..., 1] = axis[::-1, None]
        img = np.zeros((n, n, 3), dtype=np.uint8)
        img[..., 1] = (255 * self.reward(grid)).astype(np.uint8)
        if self.last_action is not None:
            col = int(round((self.last_action[0] + 1) / 2 * (n - 1)))
            row = int(round((1 - self.last_action[1]) / 2 * (n - 1))) if self.dim > 1 else n // 2
            img[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] = (255, 0, 0)
        return img
