"""``HealthCallback``: a long run's vital signs, finite numbers and flat memory.

Every step it checks that the rewards (extrinsic, and intrinsic when a novelty
callback set them) are finite; every ``every`` steps it checks every tensor of
the agent (policy, optimisers' states, the novelty model and its counts), every
scalar waiting in SB3's logger (losses, entropy coefficient, novelty loss) and
samples the process's resident memory (RSS).  The first non-finite value stops
training (``learn`` returns) and is kept in :attr:`HealthCallback.problems`.
"""

from __future__ import annotations

import math
import os
import resource
from typing import Any, Iterator

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["HealthCallback", "rss_mb"]


def rss_mb() -> float:
    """Resident memory of this process in MiB (``/proc/self/statm``; else the peak from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _tensors(tree: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}.{i}")


class HealthCallback(BaseCallback):
    """Finite rewards every step; finite tensors and logged scalars and an RSS sample every ``every`` steps.

    :attr:`rss`: ``[(num_timesteps, MiB), ...]``; :attr:`problems`: what was not finite, where.
    """

    def __init__(self, every: int = 1000):
        super().__init__()
        self.every = int(every)
        self.rss: list[tuple[int, float]] = []
        self.problems: list[str] = []
        self.checks = 0
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps
        self.rss.append((self.num_timesteps, rss_mb()))

    def _on_step(self) -> bool:
        rewards = np.asarray(self.locals.get("rewards", []), dtype=np.float64)
        if not np.isfinite(rewards).all():
            self.problems.append(f"step {self.num_timesteps}: reward {rewards.tolist()}")
        for info in self.locals.get("infos", []):
            value = info.get("intrinsic_reward")
            if value is not None and not math.isfinite(value):
                self.problems.append(f"step {self.num_timesteps}: intrinsic reward {value}")
        if self.num_timesteps - self._last >= self.every:
            self._last = self.num_timesteps
            self.check()
            self.rss.append((self.num_timesteps, rss_mb()))
        return not self.problems

    def _on_training_end(self) -> None:
        self.check()
        self.rss.append((self.num_timesteps, rss_mb()))

    def check(self) -> None:
        """Look at every tensor of the agent and every scalar in the logger; record what is not finite."""
        self.checks += 1
        from ..novelty import find_novelty

        trees: dict[str, Any] = dict(self.model.get_parameters())  # policy and optimiser states
        try:
            trees["novelty"] = find_novelty(self.model).model.state_dict()  # with its counts and optimiser
        except ValueError:  # no novelty bonus
            pass
        for name, tensor in (item for key, tree in trees.items() for item in _tensors(tree, key)):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                self.problems.append(f"step {self.num_timesteps}: {name} is not finite")
        for key, value in self.model.logger.name_to_value.items():
            if isinstance(value, (int, float, np.floating)) and not math.isfinite(float(value)):
                self.problems.append(f"step {self.num_timesteps}: logged {key} = {value}")
