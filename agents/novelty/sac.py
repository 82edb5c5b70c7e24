"""``IntrinsicCriticSAC``: SAC with critics of its own for the intrinsic reward.

The actor maximises ``min_j Q_e,j(s, a) + beta_t min_j Q_i,j(s, a) - alpha log pi(a | s)``,
where ``Q_e`` is trained on the extrinsic reward (with SAC's entropy term
unless ``backup_entropy=False``) and ``Q_i`` on the unweighted intrinsic
reward ``shaped(g(x))`` (see :meth:`agents.novelty.bonus.NoveltyBonus.shaped`),
both with Bellman targets on the same minibatch.

Why: a replay buffer scores every sampled minibatch with the current bonus
weight.  When that weight moves (``success_window`` fades it as episodes
succeed, ``beta_end`` decays it), the targets of one shared critic move with
it: at ``beta = 5`` on a 200-step maze a step costs up to 5 and the goal
pays 1, so when the weight falls towards 0 the critic's values shift by tens
(on four rooms, its value of the start went from -72 to -12 and back) and
have to be learnt again, while the actor follows them.  With separate
critics a change of weight changes only how the actor mixes two values that
were learnt all along: once episodes reach the goal, the actor follows an
extrinsic critic that has been fitting the sparse reward from the first step.

Three more options serve the extrinsic critic once the goal has been reached:

* ``backup_entropy=False`` (a constructor argument, ``algo.kwargs.backup_entropy``)
  drops SAC's ``-alpha log pi(a'|s')`` from the extrinsic target: the critic
  learns the plain extrinsic return ``Q_e(s, a) = r + gamma Q_e(s', a')``,
  while the actor still maximises ``... - alpha log pi``.  Why: the soft target
  adds ``-alpha log pi`` for every step an episode goes on.  Where the policy
  is broad (``log pi < 0``) that is a reward for staying alive, worth up to
  ``alpha |log pi| / (1 - gamma)`` (on four rooms ``0.05 * 1.2 / 0.01 = 6``)
  against a goal worth 1 that ends the episode: the entropy term punishes
  success as a positive bonus would.
* ``hold_ent_coef`` (``algo.kwargs.hold_ent_coef``): the temperature is learnt
  (``ent_coef="auto"``) while the agent explores and fixed at this value once
  the bonus holds (``success_hold``): broad while searching, sharp enough to
  keep the route once found (see the fixed ``ent_coef`` below).
* ``return_bound`` (a novelty option) makes the extrinsic target at least the
  discounted return a stored episode actually went on to get from that row,
  where the episode terminated (:class:`agents.novelty.buffers.SplitReplaySamples`):
  a route that reached the goal is worth at least what it paid, from the
  first time (self-imitation), instead of after the 5-step returns have
  carried the goal back along it.  In a deterministic env this is a lower
  bound of the optimal value; in a stochastic one it biases values up
  towards lucky episodes.

Measured on four rooms (``docs/bench_exploration/``): with the intrinsic critic
alone the agent still lost a found route (0 of 2 seeds solved at 100k
steps).  Once ``success_hold`` sets the weight to 0 the actor follows the
extrinsic critic alone, and that critic decides: without the bound the
route was lost within 1,000 steps of the hold; with it but SAC's soft
target and learnt temperature, within 2,000-5,000 (the temperature, learnt
at the critic's decaying rate, stayed at 0.03-0.13 with ``log pi`` near -1);
with the bound, ``backup_entropy=False`` and a fixed ``ent_coef=0.01`` (sharp
enough that action gaps of ``(1 - gamma) gamma^k`` count) 5 of 5 seeds solved
it at 75k and at 100k steps and reached the goal in every training episode
of the last 10k (``configs/rooms_flow_sac.yaml``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import SAC
from stable_baselines3.common.utils import polyak_update

from ..policies import critic_value
from .bonus import NoveltyBonus

__all__ = ["IntrinsicCriticSAC"]


class IntrinsicCriticSAC(SAC):
    """SAC with ``n_critics`` extrinsic and ``n_critics`` intrinsic critics (the second half of the critic).

    Needs the replay buffer :func:`agents.novelty.attach_novelty` gives with
    ``intrinsic_critic=True`` (its samples keep the two rewards apart).
    ``backup_entropy=False``: no entropy term in the extrinsic target (see the
    module docstring).  Logs ``train/extrinsic_q`` and ``train/intrinsic_q``
    (minibatch means of the critics' minima) beside SAC's losses, and with
    ``return_bound`` ``train/return_bound_used`` (the share of targets the
    bound raised).

    Example:
        >>> import gymnasium as gym, envs
        >>> from agents.novelty import attach_novelty
        >>> env = gym.make("flowrl/PointMaze-Open-v0")
        >>> kwargs, callbacks = attach_novelty(IntrinsicCriticSAC, {"learning_starts": 32}, env,
        ...                                    {"beta": 1.0, "intrinsic_critic": True})
        >>> model = IntrinsicCriticSAC("MlpPolicy", env, device="cpu", **kwargs)
        >>> len(model.learn(64, callback=callbacks).critic.q_networks)  # 2 extrinsic + 2 intrinsic
        4
    """

    def __init__(self, policy: Any, env: Any, *args: Any, policy_kwargs: Optional[dict] = None,
                 backup_entropy: bool = True, hold_ent_coef: Optional[float] = None, **kwargs: Any):
        self.backup_entropy = bool(backup_entropy)
        if hold_ent_coef is not None and not hold_ent_coef > 0:
            raise ValueError(f"hold_ent_coef must be a positive number, got {hold_ent_coef!r}")
        self.hold_ent_coef = None if hold_ent_coef is None else float(hold_ent_coef)
        policy_kwargs = dict(policy_kwargs or {})
        policy_kwargs["n_critics"] = 2 * int(policy_kwargs.get("n_critics", 2))
        super().__init__(policy, env, *args, policy_kwargs=policy_kwargs, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._share_weight()

    @property
    def bonus(self) -> NoveltyBonus:
        """The novelty bonus of the replay buffer (``ValueError`` without one that keeps the rewards apart)."""
        bonus = getattr(self.replay_buffer, "novelty", None)
        if not isinstance(bonus, NoveltyBonus) or not bonus.options.intrinsic_critic:
            raise ValueError("IntrinsicCriticSAC needs the replay buffer of attach_novelty(..., novelty) with "
                             "novelty option intrinsic_critic=True")
        return bonus

    def _share_weight(self) -> float:
        """The bonus weight now; the policy gets it too (its ``deterministic_rule="critic"`` mixes the critics)."""
        beta = self.bonus.beta
        if hasattr(self.policy, "intrinsic_weight"):
            self.policy.intrinsic_weight = beta
        return beta

    def _temperature(self, log_prob: torch.Tensor, logs: dict) -> torch.Tensor:
        """SAC's ``alpha``; with a learnt one, one step of ``min -log_alpha (log pi + target entropy)``.

        With ``hold_ent_coef``, ``alpha`` is that constant once the bonus holds (``success_hold``).
        """
        if self.hold_ent_coef is not None and self.bonus.holding:
            return log_prob.new_tensor(self.hold_ent_coef)
        if self.ent_coef_optimizer is None or self.log_ent_coef is None:
            return self.ent_coef_tensor
        alpha = torch.exp(self.log_ent_coef.detach())
        loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
        self.ent_coef_optimizer.zero_grad()
        loss.backward()
        self.ent_coef_optimizer.step()
        logs["ent_coef_loss"].append(loss.item())
        return alpha

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        self._update_learning_rate(optimizers + ([self.ent_coef_optimizer] if self.ent_coef_optimizer else []))
        beta = self._share_weight()
        logs: dict[str, list[float]] = {k: [] for k in ("ent_coef", "ent_coef_loss", "actor_loss", "critic_loss")}
        q_means: list[torch.Tensor] = []
        bound_used: list[torch.Tensor] = []
        for step in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = data.discounts if data.discounts is not None else self.gamma
            actions_pi, log_prob = self.actor.action_log_prob(data.observations)
            log_prob = log_prob.reshape(-1, 1)
            alpha = self._temperature(log_prob, logs)
            logs["ent_coef"].append(alpha.item())

            with torch.no_grad():
                next_actions, next_log_prob = self.actor.action_log_prob(data.next_observations)
                q_next = torch.cat(self.critic_target(data.next_observations, next_actions), dim=1)
                half = q_next.shape[1] // 2
                carry = (1 - data.dones) * discounts
                soft_next = q_next[:, :half].min(dim=1, keepdim=True).values
                if self.backup_entropy:
                    soft_next = soft_next - alpha * next_log_prob.reshape(-1, 1)
                target_e = data.rewards + carry * soft_next
                target_i = data.intrinsic_rewards + carry * q_next[:, half:].min(dim=1, keepdim=True).values
                if data.return_bounds is not None:  # return_bound: at least what the stored episode got
                    bound_used.append((data.return_bounds > target_e).float().mean())
                    target_e = torch.maximum(target_e, data.return_bounds)
            q = self.critic(data.observations, data.actions)
            critic_loss = 0.5 * sum(F.mse_loss(q_j, target_e if j < half else target_i) for j, q_j in enumerate(q))
            self.critic.optimizer.zero_grad()
            critic_loss.backward()  # type: ignore[union-attr]
            self.critic.optimizer.step()
            logs["critic_loss"].append(critic_loss.item())  # type: ignore[union-attr]
            with torch.no_grad():  # kept on the device; read once after the loop (no sync per step)
                q_means.append(torch.stack([torch.cat(q[:half], dim=1).min(dim=1).values.mean(),
                                            torch.cat(q[half:], dim=1).min(dim=1).values.mean()]))

            value_pi = critic_value(self.critic(data.observations, actions_pi), beta).reshape(-1, 1)
            actor_loss = (alpha * log_prob - value_pi).mean()
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            logs["actor_loss"].append(actor_loss.item())

            if step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        if q_means:
            logs["extrinsic_q"], logs["intrinsic_q"] = torch.stack(q_means).T.tolist()
        if bound_used:
            logs["return_bound_used"] = torch.stack(bound_used).tolist()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for key, values in logs.items():
            if values:
                self.logger.record(f"train/{key}", float(np.mean(values)))
