"""PixelPoint: a point in a square room, observed only as a small greyscale image.

The agent is a ``dot x dot`` bright square on a dark ``side x side`` frame
(uint8, ``(side, side, 1)``, channels last as camera frames are; SB3
transposes it to channels first).  Actions in ``[-1, 1]^2`` move it by at
most ``speed`` pixels per step; it starts in the top-left corner and the
episode pays 1 and ends when it reaches the bottom-right corner (within
one pixel), else it is truncated after ``max_steps``.  A dot of 3 pixels
always covers a whole 2x2 block, so it stays visible in a frame
area-averaged by 2 and thresholded at half brightness.  The frame is the
whole observation, so a novelty bonus must count frames.
``info["position"]`` is the continuous ``(x, y)`` for coverage maps.
"""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["PixelPoint"]

_BACKGROUND, _DOT = 30, 220


class PixelPoint(gym.Env):
    """A point pushed by its action, seen as a ``(side, side, 1)`` uint8 frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, side: int = 16, dot: int = 3, speed: float = 1.0, max_steps: int = 100,
                 render_mode: Optional[str] = None):
        if side < 2 or not 1 <= dot <= side // 2:
            raise ValueError(f"need side >= 2 and 1 <= dot <= side // 2, got side={side}, dot={dot}")
        if not speed > 0 or max_steps < 1:
            raise ValueError(f"speed must be positive and max_steps >= 1, got {speed}, {max_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.side, self.dot, self.speed, self.max_steps = int(side), int(dot), float(speed), int(max_steps)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (self.side, self.side, 1), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2)
        self._t = 0

    def _frame(self) -> np.ndarray:
        img = np.full((self.side, self.side, 1), _BACKGROUND, np.uint8)
        x, y = (int(v) for v in np.floor(self._pos))
        img[y:y + self.dot, x:x + self.dot] = _DOT
        return img

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._pos = np.zeros(2)
        self._t = 0
        return self._frame(), {"position": self._pos.copy()}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._pos = np.clip(self._pos + self.speed * a, 0.0, self.side - self.dot)
        self._t += 1
        success = bool((self._pos >= self.side - self.dot - 1).all())
        info = {"position": self._pos.copy(), "is_success": success}
        return self._frame(), float(success), success, self._t >= self.max_steps and not success, info

    def render(self):
        if self.render_mode == "rgb_array":
            return np.repeat(self._frame(), 3, axis=2)
        return None
