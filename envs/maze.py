"""A continuous 2-D point maze in pure numpy with a sparse goal reward.

The agent is a small square (half-size ``agent_radius``) in a maze of unit
cells read from an ASCII layout (:mod:`envs.layout`).  It starts at the
layout's ``S`` and the episode ends with reward 1 when its centre comes
within ``goal_radius`` of the centre of ``G``; every other step gives 0.

Controls (actions in ``[-1, 1]^2``):

* ``"velocity"``: the action is a velocity, ``p <- p + max_speed * a``;
* ``"position"``: the action is a target point of the maze's bounding box,
  ``target = (a + 1) / 2 * (width, height)``, and the agent moves straight
  towards it by at most ``max_speed`` per axis and step.

Both moves are executed with exact wall collision (see
:meth:`envs.layout.MazeLayout.move`).  Observations are the position scaled
to ``[-1, 1]^2``; ``info["position"]`` holds the position in cell units
(for coverage maps).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .layout import MazeLayout, load_layout

__all__ = ["PointMaze"]

_CONTROLS = ("velocity", "position")


class PointMaze(gym.Env):
    """Point maze with fixed start and goal, sparse reward and exact collision.

    Args:
        layout: shipped layout name (``"open"``, ``"umaze"``, ``"rooms"``), an
            ASCII map string with newlines, or a list of rows.
        control: ``"velocity"`` or ``"position"`` (see module docstring).
        max_speed: largest displacement per axis and step, in cells.
        max_episode_steps: episode length before truncation; ``None`` leaves
            truncation to a ``TimeLimit`` wrapper (how the registered ids run,
            so ``gym.make(id, max_episode_steps=N)`` sets the length).
        goal_radius: success distance to the goal centre, in cells.
        goal_reward: reward of the step that reaches the goal (every other step gives 0).
        agent_radius: half-size of the agent's square, in cells (< 0.5).
        start_noise: the start is drawn uniformly within this distance (per
            axis) of ``S``'s centre; 0 gives a fixed start.
        render_mode: ``None`` or ``"rgb_array"``.
        cell_pixels: size of a cell in rendered images.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        layout: str | list[str] = "umaze",
        control: str = "velocity",
        max_speed: float = 0.25,
        max_episode_steps: int | None = 200,
        goal_radius: float = 0.5,
        goal_reward: float = 1.0,
        agent_radius: float = 0.1,
        start_noise: float = 0.0,
        render_mode: Optional[str] = None,
        cell_pixels: int = 16,
    ):
        if control not in _CONTROLS:
            raise ValueError(f"control must be one of {_CONTROLS}, got {control!r}")
        if not 0 < max_speed:
            raise ValueError(f"max_speed must be positive, got {max_speed}")
        if not 0 <= agent_radius < 0.5:
            raise ValueError(f"agent_radius must be in [0, 0.5), got {agent_radius}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if goal_radius <= 0:
            raise ValueError(f"goal_radius must be positive, got {goal_radius}")
        if not 0 <= start_noise <= 0.5 - agent_radius:
            raise ValueError(f"start_noise must be in [0, 0.5 - agent_radius], got {start_noise}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.layout: MazeLayout = load_layout(layout)
        self.control = control
        self.max_speed = float(max_speed)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.goal_radius = float(goal_radius)
        self.goal_reward = float(goal_reward)
        self.agent_radius = float(agent_radius)
        self.start_noise = float(start_noise)
        self.render_mode = render_mode
        self.cell_pixels = int(cell_pixels)
        self._size = np.array([self.layout.width, self.layout.height], dtype=np.float64)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._x, self._y = self.layout.start
        self._t = 0

    # ---------------------------------------------------------------- helpers
    @property
    def position(self) -> np.ndarray:
        """The agent's centre ``(x, y)`` in cell units."""
        return np.array([self._x, self._y])

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` of the maze in cell units."""
        return 0.0, float(self.layout.width), 0.0, float(self.layout.height)

    def obs_to_position(self, obs: np.ndarray) -> np.ndarray:
        """Map observations ``(..., 2)`` in ``[-1, 1]`` back to positions in cell units."""
        return (np.asarray(obs, dtype=np.float64) + 1.0) * 0.5 * self._size

    def position_to_obs(self, position: np.ndarray) -> np.ndarray:
        """Map positions ``(..., 2)`` in cell units to observations in ``[-1, 1]``."""
        return (2.0 * np.asarray(position, dtype=np.float64) / self._size - 1.0).astype(np.float32)

    def _obs(self) -> np.ndarray:
        return np.array([2.0 * self._x / self._size[0] - 1.0, 2.0 * self._y / self._size[1] - 1.0], dtype=np.float32)

    def _at_goal(self) -> bool:
        gx, gy = self.layout.goal
        return (self._x - gx) ** 2 + (self._y - gy) ** 2 < self.goal_radius**2

    def _info(self, success: bool) -> dict[str, Any]:
        return {"position": self.position, "is_success": success}

    # -------------------------------------------------------------------- API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        x, y = self.layout.start
        if self.start_noise > 0:
            x, y = np.array([x, y]) + self.np_random.uniform(-self.start_noise, self.start_noise, size=2)
        self._x, self._y, self._t = float(x), float(y), 0
        return self._obs(), self._info(False)

    def step(self, action):
        try:
            ax, ay = float(action[0]), float(action[1])
        except (TypeError, IndexError):
            raise ValueError(f"action must hold 2 numbers, got {action!r}") from None
        if not (math.isfinite(ax) and math.isfinite(ay)):
            raise ValueError(f"action must be finite, got {action}")
        ax, ay = min(max(ax, -1.0), 1.0), min(max(ay, -1.0), 1.0)
        s = self.max_speed
        if self.control == "velocity":
            dx, dy = s * ax, s * ay
        else:
            tx, ty = (ax + 1.0) * 0.5 * self._size[0], (ay + 1.0) * 0.5 * self._size[1]
            dx, dy = min(max(tx - self._x, -s), s), min(max(ty - self._y, -s), s)
        self._x, self._y = self.layout.move(self._x, self._y, dx, dy, self.agent_radius)
        self._t += 1
        success = self._at_goal()
        limit = self.max_episode_steps
        truncated = limit is not None and self._t >= limit and not success
        return self._obs(), self.goal_reward if success else 0.0, success, truncated, self._info(success)

    def render(self) -> Optional[np.ndarray]:
        if self.render_mode != "rgb_array":
            return None
        return render_maze(self.layout, self.cell_pixels, agent=(self._x, self._y), goal_radius=self.goal_radius)


def render_maze(
    layout: MazeLayout, cell_pixels: int = 16, agent: Optional[tuple[float, float]] = None, goal_radius: float = 0.5
) -> np.ndarray:
    """RGB image ``(H * px, W * px, 3)`` of the maze: walls dark, goal green, agent red."""
    px = cell_pixels
    img = np.where(layout.walls[..., None], np.uint8(40), np.uint8(235)).astype(np.uint8)
    img = np.repeat(np.repeat(np.broadcast_to(img, (*layout.walls.shape, 3)), px, 0), px, 1).copy()
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    cx, cy = (xs + 0.5) / px, (ys + 0.5) / px
    gx, gy = layout.goal
    img[(cx - gx) ** 2 + (cy - gy) ** 2 < goal_radius**2] = (60, 170, 60)
    if agent is not None:
        r = max(0.15, 1.5 / px)
        img[(cx - agent[0]) ** 2 + (cy - agent[1]) ** 2 < r**2] = (210, 40, 40)
    return img
