"""Which agent can act in which action space: a one-line :class:`ConfigError` before SB3 is asked."""

from __future__ import annotations

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.dqn import DQN
from stable_baselines3.sac import SAC

from ..config import ConfigError, TrainConfig

__all__ = ["check_action_space"]

_DISCRETE = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def check_action_space(cfg: TrainConfig, algo_class: type[BaseAlgorithm], space: spaces.Space) -> None:
    """``ConfigError`` unless ``cfg``'s algorithm and policy can act in ``space``.

    ``policy: flow`` is a density over a Box; SAC needs a Box, DQN a Discrete space;
    PPO and A2C with ``policy: gaussian`` take any space SB3 supports (Discrete: a categorical policy).
    """
    kind = "discrete actions" if isinstance(space, _DISCRETE) else "no Box actions"
    if cfg.policy == "flow" and not isinstance(space, spaces.Box):
        raise ConfigError(f"policy: flow needs a Box action space; {space} has {kind}, use policy: gaussian")
    if issubclass(algo_class, SAC) and not isinstance(space, spaces.Box):
        raise ConfigError(f"algo.name: {cfg.algo.name} needs a Box action space; {space} has {kind}, "
                          "use ppo or a2c")
    if issubclass(algo_class, DQN) and not isinstance(space, spaces.Discrete):
        raise ConfigError(f"algo.name: dqn needs a Discrete action space, got {space}; use sac, ppo or a2c")
