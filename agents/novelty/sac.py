"""``IntrinsicCriticSAC``: SAC with critics of its own for the intrinsic reward.

The actor maximises ``min_j Q_e,j(s, a) + beta_t min_j Q_i,j(s, a) - alpha log pi(a | s)``,
where ``Q_e`` is trained on the extrinsic reward and ``Q_i`` on the unweighted
intrinsic reward ``shaped(g(x))`` (:meth:`agents.novelty.bonus.NoveltyBonus.shaped`),
both with Bellman targets on the same minibatch.

Why: the bonus weight ``beta_t`` moves (the success fade lowers it as episodes
succeed, the hold sets it to 0).  With one critic, every move shifts its
targets, by tens where a step costs up to ``beta`` and the goal pays 1, and the
actor follows values that must be learnt again.  With two, a new weight only
changes how the actor mixes values learnt all along: once episodes reach the
goal it follows an extrinsic critic that has been fitting the sparse reward
from the first step.

The options of ``novelty.critics`` (:class:`agents.novelty.options.CriticOptions`)
serve that extrinsic critic:

* ``backup_entropy=False`` drops SAC's ``-alpha log pi(a'|s')`` from the extrinsic
  target, ``Q_e(s, a) = r + gamma Q_e(s', a')``: with a broad policy the soft
  target pays up to ``alpha |log pi| / (1 - gamma)`` for staying alive, against a
  goal worth 1 that ends the episode.
* ``hold_ent_coef``: the temperature is learnt while the agent explores and
  fixed at this value once the bonus holds: broad while searching, sharp
  enough afterwards that action gaps of ``(1 - gamma) gamma^k`` count.
* ``return_bound``: the extrinsic target is at least the discounted return a
  stored episode went on to get from that row, where it terminated
  (:class:`agents.novelty.buffers.SplitReplaySamples`): a route that reached the
  goal is worth what it paid from the first time (self-imitation).  A lower
  bound of the optimal value in a deterministic env; in a stochastic one it
  biases values towards lucky episodes.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from stable_baselines3 import SAC
from stable_baselines3.common.utils import polyak_update

from ..policies import critic_value
from .bonus import NoveltyBonus
from .options import CriticOptions

__all__ = ["IntrinsicCriticSAC"]


class IntrinsicCriticSAC(SAC):
    """SAC with ``n_critics`` extrinsic and ``n_critics`` intrinsic critics (the second half of the critic).

    Needs the replay buffer :func:`agents.novelty.attach_novelty` gives it (its
    samples keep the two rewards apart); ``backup_entropy``, ``hold_ent_coef``
    and ``return_bound`` come from the bonus's ``critics`` options (see the
    module docstring).  Logs ``train/extrinsic_q`` and ``train/intrinsic_q``
    (minibatch means of the critics' minima) beside SAC's losses, and with
    ``return_bound`` ``train/return_bound_used`` (the share of targets the
    bound raised).

    Example:
        >>> import gymnasium as gym, envs
        >>> from agents.novelty import attach_novelty
        >>> env = gym.make("flowrl/PointMaze-Open-v0")
        >>> kwargs, callbacks = attach_novelty(IntrinsicCriticSAC, {"learning_starts": 32}, env,
        ...                                    {"weight": {"beta": 1.0}})
        >>> model = IntrinsicCriticSAC("MlpPolicy", env, device="cpu", **kwargs)
        >>> len(model.learn(64, callback=callbacks).critic.q_networks)  # 2 extrinsic + 2 intrinsic
        4
    """

    def __init__(self, policy: Any, env: Any, *args: Any, policy_kwargs: Optional[dict] = None, **kwargs: Any):
        policy_kwargs = dict(policy_kwargs or {})
        policy_kwargs["n_critics"] = 2 * int(policy_kwargs.get("n_critics", 2))
        super().__init__(policy, env, *args, policy_kwargs=policy_kwargs, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._share_weight()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_target_pairs"]  # tensors listed for speed, rebuilt on demand

    @property
    def bonus(self) -> NoveltyBonus:
        """The novelty bonus of the replay buffer (``ValueError`` without one that keeps the rewards apart)."""
        bonus = getattr(self.replay_buffer, "novelty", None)
        if not isinstance(bonus, NoveltyBonus) or bonus.options.critics is None:
            raise ValueError("IntrinsicCriticSAC needs the replay buffer of attach_novelty(IntrinsicCriticSAC, ...) "
                             "with novelty critics")
        return bonus

    @property
    def critic_options(self) -> CriticOptions:
        """``novelty.critics`` of the bonus: ``backup_entropy``, ``hold_ent_coef``, ``return_bound``."""
        critics = self.bonus.options.critics
        assert critics is not None
        return critics

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
        hold = self.critic_options.hold_ent_coef
        if hold is not None and self.bonus.holding:
            return log_prob.new_tensor(hold)
        if self.ent_coef_optimizer is None or self.log_ent_coef is None:
            return self.ent_coef_tensor
        alpha = torch.exp(self.log_ent_coef.detach())
        loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
        self.ent_coef_optimizer.zero_grad()
        loss.backward()
        self.ent_coef_optimizer.step()
        logs["ent_coef_loss"].append(loss.detach())
        return alpha

    def _update_targets(self) -> None:
        """Polyak averaging of the target critics, ``theta' <- theta' + tau (theta - theta')``, in one kernel."""
        if getattr(self, "_target_pairs", (None,))[0] is not self.critic:  # listed once per critic
            self._target_pairs = (self.critic, list(self.critic.parameters()), list(self.critic_target.parameters()))
        _, params, targets = self._target_pairs
        with torch.no_grad():
            torch._foreach_lerp_(targets, params, self.tau)
        if self.batch_norm_stats:
            polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        self._update_learning_rate(optimizers + ([self.ent_coef_optimizer] if self.ent_coef_optimizer else []))
        beta = self._share_weight()
        backup_entropy = self.critic_options.backup_entropy
        # kept on the device and read once after the loop: no host synchronisation per minibatch
        logs: dict[str, list[torch.Tensor]] = {k: [] for k in ("ent_coef", "ent_coef_loss", "actor_loss",
                                                                 "critic_loss")}
        q_means: list[torch.Tensor] = []
        bound_used: list[torch.Tensor] = []
        for step in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = data.discounts if data.discounts is not None else self.gamma
            actions_pi, log_prob = self.actor.action_log_prob(data.observations)
            log_prob = log_prob.reshape(-1, 1)
            alpha = self._temperature(log_prob, logs)
            logs["ent_coef"].append(alpha.detach())

            with torch.no_grad():
                next_actions, next_log_prob = self.actor.action_log_prob(data.next_observations)
                q_next = torch.cat(self.critic_target(data.next_observations, next_actions), dim=1)
                half = q_next.shape[1] // 2
                carry = (1 - data.dones) * discounts
                soft_next = q_next[:, :half].min(dim=1, keepdim=True).values
                if backup_entropy:
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
            logs["critic_loss"].append(critic_loss.detach())  # type: ignore[union-attr]
            with torch.no_grad():
                q_means.append(torch.stack([torch.cat(q[:half], dim=1).min(dim=1).values.mean(),
                                            torch.cat(q[half:], dim=1).min(dim=1).values.mean()]))

            value_pi = critic_value(self.critic(data.observations, actions_pi), beta).reshape(-1, 1)
            actor_loss = (alpha * log_prob - value_pi).mean()
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            logs["actor_loss"].append(actor_loss.detach())

            if step % self.target_update_interval == 0:
                self._update_targets()

        means = {key: torch.stack(values).float().mean() for key, values in logs.items() if values}
        if q_means:
            means["extrinsic_q"], means["intrinsic_q"] = torch.stack(q_means).mean(dim=0)
        if bound_used:
            means["return_bound_used"] = torch.stack(bound_used).mean()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for key, value in zip(means, torch.stack(list(means.values())).tolist() if means else []):
            self.logger.record(f"train/{key}", value)
