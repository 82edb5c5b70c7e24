"""Gymnasium environments for exploration (registered under the ``flowrl/`` namespace).

Importing ``envs`` registers:

* ``flowrl/PointMaze-Open-v0``, ``flowrl/PointMaze-UMaze-v0``,
  ``flowrl/PointMaze-Rooms-v0``: the continuous point maze (:mod:`envs.maze`)
  on the shipped layouts; ``flowrl/PointMaze-v0`` takes any ``layout=``.
* ``flowrl/TwoModeBandit-v0``: a one-step bandit paying in two separated
  action regions (:mod:`envs.bandit`).
* ``flowrl/DeepSea-v0``: the discrete deep-sea chain (:mod:`envs.deep_sea`).
* ``flowrl/SparsePendulum-v0``, ``flowrl/SparseMountainCar-v0``: standard
  tasks with a thresholded reward (:mod:`envs.sparse`).

:mod:`envs.wrappers` holds wrappers for outside environments (``env.wrappers`` in a config).
"""

from gymnasium.envs.registration import register, registry

from .bandit import TwoModeBandit
from .coverage import CoverageTracker, CoverageWrapper, maze_tracker
from .deep_sea import DeepSea
from .layout import MazeLayout, available_layouts, load_layout
from .maze import PointMaze, render_maze
from .sparse import SparseReward, make_sparse
from .wrappers import ObservationBounds, SuccessInfo

__all__ = [
    "PointMaze", "render_maze", "MazeLayout", "load_layout", "available_layouts",
    "TwoModeBandit", "DeepSea", "SparseReward", "make_sparse",
    "CoverageTracker", "CoverageWrapper", "maze_tracker", "ENV_IDS", "SuccessInfo", "ObservationBounds",
]

_MAZES = {"Open": "open", "UMaze": "umaze", "Rooms": "rooms"}

ENV_IDS: list[str] = []


def _register(env_id: str, entry_point: str, **kwargs) -> None:
    ENV_IDS.append(env_id)
    if env_id not in registry:
        register(id=env_id, entry_point=entry_point, **kwargs)


# The mazes leave truncation to gymnasium's TimeLimit (200 steps unless
# ``gym.make(id, max_episode_steps=N)`` says otherwise): gym.make keeps that
# keyword for the wrapper and never passes it to the env.
_register("flowrl/PointMaze-v0", "envs.maze:PointMaze", max_episode_steps=200, kwargs={"max_episode_steps": None})
for _name, _layout in _MAZES.items():
    _register(f"flowrl/PointMaze-{_name}-v0", "envs.maze:PointMaze",
              max_episode_steps=200, kwargs={"layout": _layout, "max_episode_steps": None})
_register("flowrl/DeepSea-v0", "envs.deep_sea:DeepSea", kwargs={"size": 10})
_register(
    "flowrl/SparsePendulum-v0", "envs.sparse:make_sparse",
    kwargs={"env_id": "Pendulum-v1", "threshold": -0.05, "mode": "step"},
)
_register(
    "flowrl/SparseMountainCar-v0", "envs.sparse:make_sparse",
    kwargs={"env_id": "MountainCarContinuous-v0", "threshold": 50.0, "mode": "step"},
)
_register("flowrl/TwoModeBandit-v0", "envs.bandit:TwoModeBandit", kwargs={"dim": 2})
_register("flowrl/PixelPoint-v0", "envs.pixel_point:PixelPoint")  # image observations
