"""Coverage of a 2-D projection of the visited states: visited cells, fraction, heatmap.

A :class:`CoverageTracker` divides a box ``[x_min, x_max] x [y_min, y_max]``
into ``bins = (nx, ny)`` cells and counts the points it is given
(positions, or any user projection of observations to 2-D).  The coverage
fraction is ``#visited valid cells / #valid cells``, where an optional
``valid`` mask (e.g. the free cells of a maze) excludes unreachable cells.
:class:`CoverageWrapper` feeds a tracker from an environment's
``info["position"]`` or from ``projection(obs)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np

__all__ = ["CoverageTracker", "CoverageWrapper", "maze_tracker"]


class CoverageTracker:
    """Visitation counts on a regular grid; ``counts[iy, ix]`` (row = y, column = x).

    Args:
        extent: ``(x_min, x_max, y_min, y_max)``.
        bins: number of cells ``(nx, ny)`` (an int gives a square grid).
        valid: optional boolean ``(ny, nx)`` mask of the cells that count
            towards the fraction.
    """

    def __init__(
        self,
        extent: Sequence[float],
        bins: int | Sequence[int],
        valid: Optional[np.ndarray] = None,
    ):
        x0, x1, y0, y1 = (float(v) for v in extent)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"extent must satisfy x_min < x_max and y_min < y_max, got {tuple(extent)}")
        nx, ny = (bins, bins) if isinstance(bins, int) else (int(bins[0]), int(bins[1]))
        if nx < 1 or ny < 1:
            raise ValueError(f"bins must be positive, got {bins}")
        self.extent = (x0, x1, y0, y1)
        self.bins = (nx, ny)
        self.counts = np.zeros((ny, nx), dtype=np.int64)
        if valid is None:
            valid = np.ones((ny, nx), dtype=bool)
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (ny, nx):
            raise ValueError(f"valid mask has shape {valid.shape}, expected {(ny, nx)}")
        if not valid.any():
            raise ValueError("valid mask has no valid cell")
        self.valid = valid

    def cell_of(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell indices ``(ix, iy)`` of points ``(N, 2)``; points outside are clipped to the border cells."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        x0, x1, y0, y1 = self.extent
        nx, ny = self.bins
        ix = np.clip(np.floor((p[:, 0] - x0) / (x1 - x0) * nx), 0, nx - 1).astype(np.int64)
        iy = np.clip(np.floor((p[:, 1] - y0) / (y1 - y0) * ny), 0, ny - 1).astype(np.int64)
        return ix, iy

    def update(self, points: np.ndarray) -> None:
        """Count each point ``(N, 2)`` (or a single ``(2,)``) in its cell."""
        ix, iy = self.cell_of(points)
        np.add.at(self.counts, (iy, ix), 1)

    @property
    def visited(self) -> int:
        """Number of valid cells visited at least once."""
        return int(((self.counts > 0) & self.valid).sum())

    @property
    def fraction(self) -> float:
        """Coverage fraction: visited valid cells over valid cells."""
        return self.visited / int(self.valid.sum())

    def heatmap(self) -> np.ndarray:
        """Visitation counts ``(ny, nx)`` as floats, NaN on invalid cells (for plotting)."""
        out = self.counts.astype(np.float64)
        out[~self.valid] = np.nan
        return out

    def reset(self) -> None:
        self.counts[:] = 0

    def state_dict(self) -> dict:
        return {"extent": self.extent, "bins": self.bins, "counts": self.counts.copy(), "valid": self.valid.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CoverageTracker":
        t = cls(state["extent"], state["bins"], state["valid"])
        t.counts[:] = state["counts"]
        return t


def maze_tracker(env: gym.Env, cells_per_unit: int = 1) -> CoverageTracker:
    """A tracker over a maze (anything with ``layout.walls`` and ``extent``): valid = free cells."""
    base: Any = env.unwrapped  # any env with these attributes, not a class of ours
    walls = np.asarray(base.layout.walls)
    k = int(cells_per_unit)
    valid = np.repeat(np.repeat(~walls, k, 0), k, 1)
    return CoverageTracker(base.extent, (walls.shape[1] * k, walls.shape[0] * k), valid)


class CoverageWrapper(gym.Wrapper):
    """Update ``tracker`` at every reset and step; adds ``info["coverage"]`` (the current fraction).

    Points come from ``info["position"]`` unless ``projection(obs) -> (2,)`` is given.
    """

    def __init__(
        self,
        env: gym.Env,
        tracker: CoverageTracker,
        projection: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ):
        super().__init__(env)
        self.tracker = tracker
        self.projection = projection

    def _point(self, obs, info) -> np.ndarray:
        if self.projection is not None:
            return np.asarray(self.projection(obs), dtype=np.float64)
        if "position" not in info:
            raise ValueError("CoverageWrapper needs info['position'] or a projection of the observation")
        return np.asarray(info["position"], dtype=np.float64)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.tracker.update(self._point(obs, info))
        return obs, {**info, "coverage": self.tracker.fraction}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.tracker.update(self._point(obs, info))
        return obs, reward, terminated, truncated, {**info, "coverage": self.tracker.fraction}
