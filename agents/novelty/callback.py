"""``NoveltyCallback``: feeds visited states to the novelty model, records the scored states,
and keeps intrinsic and extrinsic rewards apart in ``info`` and in the logger.

It adds ``info["intrinsic_reward"]`` (``beta * b(x)`` under the model at
collection time) and ``info["extrinsic_reward"]`` (the environment's raw
reward, before ``VecNormalize``) to every step's info, and
``info["intrinsic_return"]`` to the last step of each episode.  Steps are
scored in one batch when the model is about to change (every ``update_every``
steps), when an episode ends (so the episode's info is complete when the
other callbacks of that step read it), at checkpoints and at the end: the
model is the same for every step of a batch, so the rewards are exactly
those of scoring each step on its own, at a fraction of the cost.  It logs
``rollout/intrinsic_reward`` and
``rollout/extrinsic_reward`` (step means), ``rollout/intrinsic_ep_return`` and
``rollout/extrinsic_ep_return`` (episode sums), ``novelty/saturated`` (the
share of steps whose bonus is within 5 % of its largest value: states that
read as never seen; near 1 the bonus carries no information), ``novelty/loss`` and
``novelty/n_total``; off-policy agents also log ``train/intrinsic_reward``,
the mean bonus of the last minibatch they trained on.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from .bonus import NoveltyBonus

__all__ = ["NoveltyCallback", "episode_succeeded"]


def episode_succeeded(final_info: dict, extrinsic_return: float) -> bool:
    """``info["is_success"]`` of an episode's last step where the env reports it, else ``extrinsic_return > 0``."""
    if "is_success" in final_info:
        return bool(final_info["is_success"])
    return extrinsic_return > 0


def check_success_signal(final_info: dict, positive_steps: int, steps: int) -> None:
    """``ValueError`` naming the success fade when an episode without ``is_success`` was paid on most of its steps.

    There ``extrinsic return > 0`` (:func:`episode_succeeded`) is true of nearly every
    episode (CartPole's +1 per step), so success shares would mean nothing.
    """
    if "is_success" not in final_info and steps >= 10 and positive_steps > steps / 2:
        raise ValueError(
            "novelty.weight.success_window needs a success signal: this env reports no info['is_success'] and paid "
            f"a positive reward on {positive_steps} of an episode's {steps} steps, so 'return > 0' is no success; "
            "report is_success (env.wrappers: envs.wrappers.SuccessInfo) or set novelty.weight.success_window to null")


class NoveltyCallback(BaseCallback):
    """Drives a :class:`NoveltyBonus` during ``learn``; pass it with the agent's other callbacks."""

    def __init__(self, bonus: NoveltyBonus, verbose: int = 0):
        super().__init__(verbose)
        if not isinstance(bonus, NoveltyBonus):
            raise ValueError("NoveltyCallback needs a NoveltyBonus")
        self.bonus = bonus
        self._last_raw: Optional[np.ndarray] = None
        self._ep_intrinsic: Optional[np.ndarray] = None
        self._ep_extrinsic: Optional[np.ndarray] = None
        self._pending: list[tuple[np.ndarray, list[dict], float]] = []  # (scored states, infos, beta) per step
        self._ep_steps = np.zeros((2, 0), dtype=np.int64)

    # ------------------------------------------------------------ helpers
    def _vec_normalize(self):
        return self.model.get_vec_normalize_env()

    def _raw_current(self) -> np.ndarray:
        venv = self._vec_normalize()
        obs = venv.get_original_obs() if venv is not None else self.model._last_obs
        return self.bonus.select(obs)

    def _rollout_buffer(self):
        buf = getattr(self.model, "rollout_buffer", None)
        return buf if hasattr(buf, "record_scored") else None

    def _on_training_start(self) -> None:
        n_envs = self.training_env.num_envs
        self._last_raw = self._raw_current()
        if self._ep_intrinsic is None or len(self._ep_intrinsic) != n_envs:
            self._ep_intrinsic = np.zeros(n_envs)
            self._ep_extrinsic = np.zeros(n_envs)
        if self._ep_steps.shape[1] != n_envs:
            self._ep_steps = np.zeros((2, n_envs), dtype=np.int64)  # (steps, steps paid > 0) of each episode

    def resume_state(self) -> dict:
        """The episode sums and the last scored state (for :mod:`agents.run.resume`)."""
        self.score_pending()  # the same rewards as later: the model changes only after scoring
        return {"last_raw": self._last_raw, "ep_intrinsic": self._ep_intrinsic, "ep_extrinsic": self._ep_extrinsic,
                "ep_steps": self._ep_steps}

    def load_resume_state(self, state: dict) -> None:
        self._last_raw, self._ep_intrinsic, self._ep_extrinsic = (
            state["last_raw"], state["ep_intrinsic"], state["ep_extrinsic"])
        self._ep_steps = state.get("ep_steps", self._ep_steps)

    def _on_training_end(self) -> None:
        self.score_pending()
        self.bonus.flush()  # the model has seen every visited state when learn returns

    # -------------------------------------------------------------- step
    def _on_step(self) -> bool:
        venv = self._vec_normalize()
        new_obs = self.locals["new_obs"]
        dones = np.asarray(self.locals["dones"])
        infos = self.locals["infos"]
        raw_after = self.bonus.select(venv.get_original_obs() if venv is not None else new_obs)
        raw_next = raw_after.copy()  # the state each action led to: the terminal one at episode ends
        for i, done in enumerate(dones):
            term = infos[i].get("terminal_observation") if done else None
            if term is not None:
                if venv is not None:
                    term = venv.unnormalize_obs(term)
                raw_next[i] = self.bonus.select(term)[0]
        scored = raw_next if self.bonus.score == "next" else self._last_raw
        extrinsic = np.asarray(venv.get_original_reward() if venv is not None else self.locals["rewards"],
                               dtype=np.float64).reshape(-1)
        buf = self._rollout_buffer()
        if buf is not None:
            buf.record_scored(scored)
        for i, info in enumerate(infos):
            info["extrinsic_reward"] = float(extrinsic[i])
        self.logger.record_mean("rollout/extrinsic_reward", float(extrinsic.mean()))
        self._ep_extrinsic += extrinsic
        self._ep_steps += np.stack([np.ones_like(extrinsic), extrinsic > 0]).astype(np.int64)
        self._pending.append((scored, infos, self.bonus.beta))
        if dones.any() or self.bonus.update_due(env_steps=1):
            self.score_pending()
        for i in np.flatnonzero(dones):
            infos[i]["intrinsic_return"] = float(self._ep_intrinsic[i])
            self.logger.record_mean("rollout/intrinsic_ep_return", float(self._ep_intrinsic[i]))
            self.logger.record_mean("rollout/extrinsic_ep_return", float(self._ep_extrinsic[i]))
            if self.bonus.options.weight.success_window is not None:
                steps, paid = self._ep_steps[:, i]
                check_success_signal(infos[i], int(paid), int(steps))
            self.bonus.record_episode(episode_succeeded(infos[i], self._ep_extrinsic[i]))
            self._ep_intrinsic[i] = self._ep_extrinsic[i] = 0.0
            self._ep_steps[:, i] = 0
        self.logger.record("novelty/beta", self.bonus.beta)
        stats = self.bonus.observe(raw_next, env_steps=1)
        if stats:
            self.logger.record("novelty/loss", stats.get("loss", float("nan")))
            self.logger.record("novelty/n_total", float(self.bonus.model.n_total))
        last = getattr(getattr(self.model, "replay_buffer", None), "last_intrinsic", None)
        if last is not None:
            self.logger.record("train/intrinsic_reward", float(last.mean()))
        self._last_raw = raw_after
        return True

    def score_pending(self) -> None:
        """Score the steps collected since the last scoring, in one batch, and write their rewards.

        Each step keeps the weight ``beta`` it was collected with; the model has not
        changed since (scoring runs before every update).
        """
        if not self._pending:
            return
        states = np.concatenate([scored for scored, _, _ in self._pending])
        novelty = self.bonus.novelty(states).cpu().numpy().reshape(len(self._pending), -1)
        shaped = self.bonus.shaped(torch.as_tensor(novelty)).numpy()
        saturated = self.bonus.saturated(novelty)
        for (_, infos, beta), g, s, sat in zip(self._pending, novelty, shaped, saturated):
            intrinsic = beta * s
            for i, info in enumerate(infos):
                info["intrinsic_reward"] = float(intrinsic[i])
                info["novelty"] = float(g[i])
            self._ep_intrinsic += intrinsic
            self.logger.record_mean("rollout/intrinsic_reward", float(intrinsic.mean()))
            self.logger.record_mean("novelty/saturated", float(sat.mean()))
        self._pending.clear()
