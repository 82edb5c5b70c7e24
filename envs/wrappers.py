"""Small wrappers that make outside environments readable by the agents, usable from ``env.wrappers``.

* :class:`SuccessInfo` sets ``info["is_success"]`` (what the metrics and the
  evaluation read) from another info key or from the reward;
* :class:`ObservationBounds` declares the real range of a ``Box`` observation
  whose space states a wider one (MiniGrid's symbolic grid holds indices up to 10
  in a ``[0, 255]`` uint8 box), so that a bonus that quantises by the bounds (the
  image pseudo-counter) sees distinct values, and SB3 does not take the grid
  for a picture to rescale by 255.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np

__all__ = ["SuccessInfo", "ObservationBounds"]


class SuccessInfo(gym.Wrapper):
    """``info["is_success"]`` on every step: ``bool(info[key])``, or ``reward > reward_above`` on a terminal step.

    Exactly one of ``key`` (e.g. ``"success"`` for Gymnasium-Robotics' mazes) and
    ``reward_above`` (e.g. ``0.0`` for MiniGrid, which pays a positive reward only
    when the goal is reached) is given.

    Example:
        >>> env = SuccessInfo(gym.make("CartPole-v1"), reward_above=0.5)
        >>> _ = env.reset(seed=0)
        >>> env.step(0)[-1]["is_success"]
        False
    """

    def __init__(self, env: gym.Env, key: Optional[str] = None, reward_above: Optional[float] = None):
        super().__init__(env)
        if (key is None) == (reward_above is None):
            raise ValueError("SuccessInfo needs exactly one of key and reward_above")
        self.key = key
        self.reward_above = None if reward_above is None else float(reward_above)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.key is not None:
            success = bool(info.get(self.key, False))
        else:
            success = bool(terminated) and float(reward) > float(self.reward_above)  # type: ignore[arg-type]
        return obs, reward, terminated, truncated, {**info, "is_success": success}


class ObservationBounds(gym.ObservationWrapper):
    """The same observations in a ``Box`` with bounds ``low``/``high`` (scalars or arrays; ``None`` keeps them).

    Observations are passed on unchanged (clipped into the new bounds with ``clip=True``).

    Example:
        >>> env = ObservationBounds(gym.make("CartPole-v1"), low=-5.0, high=5.0)
        >>> float(env.observation_space.high.max())
        5.0
    """

    def __init__(self, env: gym.Env, low: Any = None, high: Any = None, clip: bool = False):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"ObservationBounds needs a Box observation space, got {space}")
        new_low = space.low if low is None else np.broadcast_to(np.asarray(low, dtype=space.dtype), space.shape)
        new_high = space.high if high is None else np.broadcast_to(np.asarray(high, dtype=space.dtype), space.shape)
        if np.any(new_low > new_high):
            raise ValueError(f"ObservationBounds: low must not exceed high (low={low}, high={high})")
        self.clip = bool(clip)
        self.observation_space = gym.spaces.Box(new_low.copy(), new_high.copy(), space.shape, space.dtype)

    def observation(self, observation: Any) -> Any:
        if not self.clip:
            return observation
        space = self.observation_space
        return np.clip(observation, space.low, space.high).astype(space.dtype)  # type: ignore[attr-defined]
