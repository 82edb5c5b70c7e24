"""Sparse-reward versions of standard tasks: reward only when a threshold is crossed.

``SparseReward(env, threshold, mode="step")`` pays ``1`` on every step whose
original reward is ``>= threshold`` and ``0`` otherwise;
``mode="return"`` pays ``1`` once, on the step where the episode's
cumulative original return first reaches ``threshold``.  With
``terminate=True`` the episode ends at the first payment.  The original
reward is kept in ``info["dense_reward"]`` and ``info["is_success"]`` says
whether the threshold was crossed on this step.
"""

from __future__ import annotations

import gymnasium as gym

__all__ = ["SparseReward", "make_sparse"]


class SparseReward(gym.Wrapper):
    """Replace the reward by ``1[threshold crossed]`` (see module docstring)."""

    def __init__(self, env: gym.Env, threshold: float, mode: str = "step", terminate: bool = False):
        super().__init__(env)
        if mode not in ("step", "return"):
            raise ValueError(f"mode must be 'step' or 'return', got {mode!r}")
        self.threshold = float(threshold)
        self.mode = mode
        self.terminate = bool(terminate)
        self._return = 0.0
        self._paid = False

    def reset(self, **kwargs):
        self._return, self._paid = 0.0, False
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["dense_reward"] = float(reward)
        self._return += float(reward)
        if self.mode == "step":
            hit = float(reward) >= self.threshold
        else:
            hit = not self._paid and self._return >= self.threshold
            self._paid = self._paid or hit
        info["is_success"] = bool(hit)
        return obs, float(hit), terminated or (self.terminate and hit), truncated, info


def make_sparse(env_id: str, threshold: float, mode: str = "step", terminate: bool = False, **kwargs) -> gym.Env:
    """``SparseReward(gym.make(env_id, **kwargs), threshold, mode, terminate)``."""
    return SparseReward(gym.make(env_id, **kwargs), threshold, mode, terminate)
