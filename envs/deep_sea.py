"""Deep Sea (Osband et al. 2019): a discrete exploration chain that dithering cannot solve.

An ``N x N`` grid; the agent starts in the top-left cell and descends one
row per step, moving one column left or right.  Which of the two actions
means "right" is drawn once per cell from ``mapping_seed`` (fixed for the
environment's lifetime, so it must be learned).  Moving right costs
``0.01 / N``; the episode ends after exactly ``N - 1`` steps, on the bottom
row, and pays 1 if the agent lands in the bottom-right cell (which takes
``N - 1`` right moves in a row: a uniformly random policy finds it with
probability ``2^-(N-1)``).

Observations are ``(row, column) / (N - 1)`` in ``[0, 1]^2`` (default) or a
one-hot ``N * N`` vector; ``info["position"]`` is the cell centre
``(column + 0.5, row + 0.5)`` for coverage maps.
"""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["DeepSea"]


class DeepSea(gym.Env):
    """Deep Sea of size ``size`` with an action mapping fixed by ``mapping_seed``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self, size: int = 10, mapping_seed: int = 0, observation: str = "coords", render_mode: Optional[str] = None
    ):
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if observation not in ("coords", "onehot"):
            raise ValueError(f"observation must be 'coords' or 'onehot', got {observation!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.size = int(size)
        self.observation = observation
        self.render_mode = render_mode
        self.right_action = np.random.default_rng(mapping_seed).integers(0, 2, size=(size, size))
        self.action_space = spaces.Discrete(2)
        if observation == "coords":
            self.observation_space = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        else:
            self.observation_space = spaces.Box(0.0, 1.0, shape=(size * size,), dtype=np.float32)
        self._row = self._col = 0

    def _obs(self) -> np.ndarray:
        if self.observation == "coords":
            return np.array([self._row, self._col], dtype=np.float32) / (self.size - 1)
        out = np.zeros(self.size * self.size, dtype=np.float32)
        out[self._row * self.size + self._col] = 1.0
        return out

    def _info(self, success: bool) -> dict:
        return {"position": np.array([self._col + 0.5, self._row + 0.5]), "is_success": success}

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._row = self._col = 0
        return self._obs(), self._info(False)

    def step(self, action):
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action must be 0 or 1, got {action}")
        right = int(action) == self.right_action[self._row, self._col]
        reward = -0.01 / self.size if right else 0.0
        self._col = min(self._col + 1, self.size - 1) if right else max(self._col - 1, 0)
        self._row += 1
        terminated = self._row == self.size - 1
        success = terminated and self._col == self.size - 1
        if success:
            reward += 1.0
        return self._obs(), reward, terminated, False, self._info(success)

    def render(self) -> Optional[np.ndarray]:
        if self.render_mode != "rgb_array":
            return None
        img = np.full((self.size, self.size, 3), 235, dtype=np.uint8)
        img[self.size - 1, self.size - 1] = (60, 170, 60)
        img[self._row, self._col] = (210, 40, 40)
        return np.repeat(np.repeat(img, 12, 0), 12, 1)
