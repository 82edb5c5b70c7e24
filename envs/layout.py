"""ASCII maze layouts and exact axis-swept collision against their wall cells.

A layout is a grid of unit cells: ``#`` wall, ``.`` free, ``S`` start,
``G`` goal (start and goal cells are free).  Positions are ``(x, y)`` with
``x`` the column coordinate and ``y`` the row coordinate (row 0 on top), so
cell ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``; outside the grid is wall.

The agent is an axis-aligned square of half-size ``m``.  A move
``(dx, dy)`` is executed as a sweep along x, then a sweep along y; each
sweep stops ``gap`` before the first wall cell the square would enter, so
the square never overlaps a wall at any point of the executed path
(no tunnelling, whatever the step length, and no cutting of diagonal gaps).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MazeLayout", "load_layout", "available_layouts", "LAYOUT_DIR"]

LAYOUT_DIR = os.path.join(os.path.dirname(__file__), "layouts")
_GAP = 1e-6  # distance kept from a wall after a blocked sweep


def available_layouts() -> list[str]:
    """Names of the shipped layouts (files ``envs/layouts/<name>.txt``)."""
    return sorted(f[:-4] for f in os.listdir(LAYOUT_DIR) if f.endswith(".txt"))


@dataclass(frozen=True)
class MazeLayout:
    """Wall grid ``walls[r, c]`` with start and goal cell centres ``(x, y)``."""

    name: str
    walls: np.ndarray
    start: tuple[float, float]
    goal: tuple[float, float]
    _wall_rows: list[list[bool]] = field(init=False, repr=False, compare=False)

    @property
    def height(self) -> int:
        return int(self.walls.shape[0])

    @property
    def width(self) -> int:
        return int(self.walls.shape[1])

    @property
    def free_cells(self) -> int:
        return int((~self.walls).sum())

    def is_wall(self, row: int, col: int) -> bool:
        """Whether cell ``(row, col)`` is a wall; cells off the grid are walls."""
        if row < 0 or col < 0 or row >= self.height or col >= self.width:
            return True
        return bool(self._wall_rows[row][col])

    def __post_init__(self) -> None:
        # Python lists of bools: indexing them is several times faster than numpy scalars.
        object.__setattr__(self, "_wall_rows", self.walls.tolist())

    def box_is_free(self, x: float, y: float, half: float) -> bool:
        """Whether the open square of half-size ``half`` centred at ``(x, y)`` overlaps no wall."""
        for r in range(math.floor(y - half), math.ceil(y + half)):
            for c in range(math.floor(x - half), math.ceil(x + half)):
                if self.is_wall(r, c):
                    return False
        return True

    @staticmethod
    def _inside_one_cell(x: float, y: float, half: float) -> bool:
        return math.floor(x - half) == math.floor(x + half) and math.floor(y - half) == math.floor(y + half)

    def _sweep(self, along: float, delta: float, half: float, wall) -> float:
        """New coordinate after moving ``along`` by ``delta``; ``wall(k)`` tests line ``k`` of cells."""
        if delta > 0:
            k = math.ceil(along + half)
            while k < along + delta + half:
                if wall(k):
                    return max(along, k - half - _GAP)
                k += 1
        elif delta < 0:
            k = math.floor(along - half) - 1
            while k + 1 > along + delta - half:
                if wall(k):
                    return min(along, k + 1 + half + _GAP)
                k -= 1
        return along + delta

    def move(self, x: float, y: float, dx: float, dy: float, half: float) -> tuple[float, float]:
        """Sweep the square along x then along y, stopping at walls; returns the new centre."""
        if self._inside_one_cell(x + dx, y + dy, half) and self._inside_one_cell(x, y, half) \
                and math.floor(x) == math.floor(x + dx) and math.floor(y) == math.floor(y + dy):
            return x + dx, y + dy  # both squares inside the same (free) cell: nothing to hit
        if dx != 0.0:
            rows = range(math.floor(y - half), math.ceil(y + half))
            x = self._sweep(x, dx, half, lambda c: any(self.is_wall(r, c) for r in rows))
        if dy != 0.0:
            cols = range(math.floor(x - half), math.ceil(x + half))
            y = self._sweep(y, dy, half, lambda r: any(self.is_wall(r, c) for c in cols))
        return x, y


def _parse(name: str, text: str) -> MazeLayout:
    lines = [ln.rstrip() for ln in text.strip("\n").splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"layout {name!r} is empty")
    width = max(len(ln) for ln in lines)
    walls = np.ones((len(lines), width), dtype=bool)
    start = goal = None
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            if ch not in "#.SG ":
                raise ValueError(f"layout {name!r}: unknown character {ch!r} at row {r}, column {c}")
            walls[r, c] = ch in "# "
            if ch == "S":
                if start is not None:
                    raise ValueError(f"layout {name!r} has more than one start 'S'")
                start = (c + 0.5, r + 0.5)
            if ch == "G":
                if goal is not None:
                    raise ValueError(f"layout {name!r} has more than one goal 'G'")
                goal = (c + 0.5, r + 0.5)
    if start is None or goal is None:
        raise ValueError(f"layout {name!r} needs exactly one start 'S' and one goal 'G'")
    return MazeLayout(name, walls, start, goal)


def load_layout(layout: str | list[str]) -> MazeLayout:
    """A shipped layout by name, or an ASCII map given as a string with newlines or a list of rows."""
    if isinstance(layout, (list, tuple)):
        return _parse("custom", "\n".join(layout))
    if "\n" in layout:
        return _parse("custom", layout)
    path = os.path.join(LAYOUT_DIR, f"{layout}.txt")
    if not os.path.exists(path):
        raise ValueError(f"unknown maze layout {layout!r}; shipped layouts: {', '.join(available_layouts())}")
    with open(path) as f:
        return _parse(layout, f.read())
