"""Agents from configs: :func:`build_model` turns a :class:`agents.config.TrainConfig` into an SB3 algorithm.

SAC, PPO, A2C or DQN: ``policy: gaussian`` uses SB3's ``MlpPolicy``
(``MultiInputPolicy`` for Dict observations); ``policy: flow`` uses
:class:`agents.policies.FlowSACPolicy` (SAC) or
:class:`agents.policies.FlowActorCriticPolicy` (PPO/A2C) with
``policy_kwargs = {flow, flow_kwargs, **policy_kwargs}``; a ``novelty``
section goes to :func:`agents.novelty.attach_novelty`, which returns the
updated constructor arguments and the callbacks to pass to ``learn`` (SAC with
the default critics is :class:`agents.novelty.IntrinsicCriticSAC`).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import gymnasium as gym
import torch
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import envs  # noqa: F401  (registers the flowrl/ environments)

from ..config import ConfigError, TrainConfig
from ..novelty import IntrinsicCriticSAC, attach_novelty
from ..policies import FlowActorCriticPolicy, FlowSACPolicy
from ..schedule import LinearSchedule
from .action_spaces import check_action_space
from .env_builder import env_factory

__all__ = ["ALGORITHMS", "resolve_device", "make_env", "algorithm_class", "build_model"]

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO, "a2c": A2C, "dqn": DQN}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; a CUDA request without CUDA is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    return device


def make_env(cfg: TrainConfig, seed: Optional[int] = None) -> VecEnv:
    """The vectorised, Monitor-wrapped training env of ``cfg`` (seeded with ``seed``).

    Each env is ``gym.make(env.id, **env.kwargs)`` with ``env.wrappers`` after
    importing ``env.packages`` (:func:`agents.run.env_builder.env_factory`).

    With ``env.normalize_obs`` it is wrapped in ``VecNormalize`` (observations
    only, fresh statistics; :func:`train` restores every layer when it resumes).

    Example:
        >>> from agents.config import TrainConfig
        >>> env = make_env(TrainConfig(env=dict(id="flowrl/PointMaze-v0", n_envs=2)))
        >>> env.num_envs, env.observation_space.shape
        (2, (2,))
    """
    env = make_vec_env(env_factory(cfg.env), n_envs=cfg.env.n_envs, seed=cfg.seed if seed is None else seed,
                       env_kwargs=dict(cfg.env.kwargs))
    return VecNormalize(env, norm_obs=True, norm_reward=False) if cfg.env.normalize_obs else env


def algorithm_class(cfg: TrainConfig) -> type[BaseAlgorithm]:
    """The SB3 class of ``algo.name``; SAC with ``novelty.critics`` (the default) is :class:`IntrinsicCriticSAC`."""
    algo_class = ALGORITHMS[cfg.algo.name]
    if algo_class is SAC and cfg.novelty is not None and cfg.novelty.critics is not None:
        return IntrinsicCriticSAC
    return algo_class


def _policy(cfg: TrainConfig, algo_class: type[BaseAlgorithm], env: VecEnv) -> tuple[Any, dict]:
    """The policy class (or SB3 alias) and its ``policy_kwargs``; ``ConfigError`` for an action space it cannot act in.

    Dict observations: SB3's ``MultiInputPolicy`` for ``gaussian``; the flow
    policies pick SB3's ``CombinedExtractor`` themselves.
    """
    kwargs = dict(cfg.policy_kwargs)
    check_action_space(cfg, algo_class, env.action_space)
    if cfg.policy == "gaussian":
        return ("MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy"), kwargs
    kwargs.update(flow=cfg.flow, flow_kwargs=dict(cfg.flow_kwargs))
    return (FlowSACPolicy if issubclass(algo_class, SAC) else FlowActorCriticPolicy), kwargs


def _attach_novelty(cfg: TrainConfig, algo_class, algo_kwargs: dict, env: VecEnv) -> tuple[dict, list[BaseCallback]]:
    if not cfg.novelty:
        return algo_kwargs, []
    try:
        return attach_novelty(algo_class, algo_kwargs, env, cfg.novelty)
    except ValueError as err:
        raise ConfigError(f"novelty: {err}") from None


def build_model(
    cfg: TrainConfig, env: VecEnv, device: Optional[str] = None
) -> tuple[BaseAlgorithm, list[BaseCallback]]:
    """The SB3 algorithm of ``cfg`` on ``env`` and the extra callbacks its novelty bonus needs."""
    algo_class = algorithm_class(cfg)
    policy, policy_kwargs = _policy(cfg, algo_class, env)
    kwargs = dict(cfg.algo.kwargs)
    for reserved in ("policy", "env", "seed", "device", "policy_kwargs", "tensorboard_log"):
        if reserved in kwargs:
            raise ConfigError(f"algo.kwargs.{reserved}: set it with the top-level key instead")
    if cfg.algo.learning_rate_end is not None:
        kwargs["learning_rate"] = _linear_learning_rate(algo_class, kwargs.get("learning_rate"),
                                                        cfg.algo.learning_rate_end)
    kwargs, callbacks = _attach_novelty(cfg, algo_class, kwargs, env)
    try:
        model = algo_class(
            policy, env, seed=cfg.seed, device=device or resolve_device(cfg.device),
            policy_kwargs=policy_kwargs or None, **kwargs,
        )
    except TypeError as err:
        raise ConfigError(f"algo.kwargs: {err}") from None
    return model, list(callbacks)


def _linear_learning_rate(algo_class, start: Any, end: float) -> LinearSchedule:
    """From ``start`` (the algorithm's default learning rate when ``None``) to ``end`` over the run.

    Why (``algo.learning_rate_end``): an exploring agent needs a fast critic while
    the bonus moves, but once it reaches the goal a constant high rate keeps
    moving the deterministic policy; on the demo maze it flipped between solving
    and pressing into a wall from one evaluation to the next until the rate decayed.
    """
    if start is None:
        start = inspect.signature(algo_class.__init__).parameters["learning_rate"].default
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not start > 0:
        raise ConfigError("algo.learning_rate_end: needs a positive number as algo.kwargs.learning_rate, "
                          f"got {start!r}")
    return LinearSchedule(float(start), end)
