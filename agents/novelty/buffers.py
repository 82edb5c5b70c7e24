"""SB3 buffers that add the intrinsic reward with the *current* novelty model.

* Off-policy (:class:`NoveltyReplayBuffer`, :class:`NoveltyDictReplayBuffer`):
  a sampled minibatch carries the bonus of the *current* model, up to a
  bounded lag: each stored state's novelty is cached with the model version
  (:attr:`NoveltyBonus.version`, one per model update) that scored it, and a
  drawn state is rescored when its score is more than ``staleness`` versions
  old (``0``: whenever the model changed since).  Minibatches are drawn
  :data:`DRAW_AHEAD` at a time and the stale scores of a whole block are renewed
  in one batch, so a minibatch's bonus is mostly a gather, and the counts follow
  the model instead of freezing at insertion.  The
  buffer holds raw observations (SB3 stores them un-normalised under
  ``VecNormalize``), the bonus is computed on those and added *after*
  ``VecNormalize``'s reward scaling: it is never scaled away.
* On-policy (:class:`NoveltyRolloutBuffer`, :class:`NoveltyDictRolloutBuffer`):
  the callback records the raw scored state of every step; the bonus is
  added to the rewards inside ``compute_returns_and_advantage``, before the
  advantages and returns are computed.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from stable_baselines3.common.buffers import (
    DictReplayBuffer,
    DictRolloutBuffer,
    NStepReplayBuffer,
    ReplayBuffer,
    RolloutBuffer,
)
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from .bonus import NoveltyBonus

__all__ = [
    "NoveltyReplayBuffer", "NoveltyNStepReplayBuffer", "NoveltyDictReplayBuffer", "NoveltyRolloutBuffer",
    "NoveltyDictRolloutBuffer", "SplitReplaySamples",
]

#: Minibatches drawn at once by the replay buffers: one model call renews the stale scores of all of them
#: (a call costs ~1 ms of fixed overhead on a CPU, a state ~2 us). The agent's model changes every
#: 16 env steps, about as many minibatches; a row written after its block was drawn waits for the next block.
DRAW_AHEAD = 16

_MISSING_CALLBACK = ("the novelty model has never been updated: pass the callbacks returned by "
                     "attach_novelty (or novelty_callbacks(model)) to model.learn(callback=...)")


def _check_bonus(novelty: Optional[NoveltyBonus]) -> NoveltyBonus:
    if not isinstance(novelty, NoveltyBonus):
        raise ValueError("novelty buffers need novelty=NoveltyBonus(...) in their kwargs (see attach_novelty)")
    return novelty


class SplitReplaySamples(NamedTuple):
    """SB3's replay samples (extrinsic ``rewards``) plus the unweighted ``intrinsic_rewards`` of the same rows.

    What the buffers return with ``intrinsic_critic`` (:class:`agents.novelty.sac.IntrinsicCriticSAC`);
    for n-step samples both are discounted sums over the same window.  ``return_bounds``
    (``critics.return_bound``): the discounted extrinsic return each row's episode went on to get
    where that episode terminated, ``-inf`` where it did not (yet).
    """

    observations: Any
    actions: torch.Tensor
    next_observations: Any
    dones: torch.Tensor
    rewards: torch.Tensor
    discounts: Optional[torch.Tensor]
    intrinsic_rewards: torch.Tensor
    return_bounds: Optional[torch.Tensor] = None


class _ReplayScoring:
    """Adds ``beta * b(x)`` of the sampled raw states to the sampled rewards."""

    novelty: NoveltyBonus

    def __init__(self, *args, novelty: Optional[NoveltyBonus] = None, return_gamma: Optional[float] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]  # the SB3 buffer next in the MRO
        self.novelty = _check_bonus(novelty)
        self.novelty.follow(self.device)
        # g(x) of each stored (row, env)'s scored state, and the model version that scored it (-1: none yet)
        self.novelty_cache = torch.zeros((self.buffer_size, self.n_envs), device=self.device)
        self.novelty_version = np.full((self.buffer_size, self.n_envs), -1, dtype=np.int64)
        self._drawn: list[tuple[np.ndarray, np.ndarray]] = []  # minibatches drawn ahead, (rows, envs), last first
        self.last_draw: Optional[tuple[np.ndarray, np.ndarray]] = None  # (rows, envs) of the last minibatch
        self.last_intrinsic: Optional[torch.Tensor] = None
        self._model_updated = False
        self.episode_returns: Optional[np.ndarray] = None  # return_bound: see _track_returns
        critics = self.novelty.options.critics
        if critics is not None and critics.return_bound:
            if return_gamma is None:
                raise ValueError("return_bound needs return_gamma (the discount of the episode returns)")
            self.return_gamma = float(return_gamma)
            self.episode_returns = np.full((self.buffer_size, self.n_envs), -np.inf, dtype=np.float32)
            self._episode_length = np.zeros(self.n_envs, dtype=np.int64)

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        row = self.pos
        # the row's scored state changes (and, sharing observations, its neighbours')
        near = (row + np.arange(-1, 2)) % self.buffer_size if getattr(self, "optimize_memory_usage", False) else row
        self.novelty_version[near] = -1
        super().add(obs, next_obs, action, reward, done, infos)  # type: ignore[misc]
        if self.episode_returns is not None:
            self._track_returns(row, np.asarray(done, dtype=bool).reshape(self.n_envs), infos)

    def _track_returns(self, row: int, done: np.ndarray, infos: list[dict]) -> None:
        """When an episode terminates, store ``G_t = sum_k gamma^(k-t) r_k`` for each of its rows.

        Only terminated episodes (not time-limit truncations) whose rows are all
        still stored: their ``G_t`` is a return the agent actually got from
        ``(s_t, a_t)`` to the end, so in a deterministic env the optimal value is
        at least ``G_t``.  Rows are ``-inf`` (no bound) until then and again
        once overwritten.
        """
        assert self.episode_returns is not None
        self.episode_returns[row] = -np.inf
        self._episode_length += 1
        for env in np.flatnonzero(done):
            length = int(self._episode_length[env])
            self._episode_length[env] = 0
            truncated = bool(infos[env].get("TimeLimit.truncated", False))
            if truncated or length > self.buffer_size:
                continue
            rows = (row - np.arange(length)) % self.buffer_size  # newest first
            g = 0.0
            for r, reward in zip(rows, self.rewards[rows, env].astype(np.float64)):
                g = float(reward) + self.return_gamma * g
                self.episode_returns[r, env] = g

    def _return_bounds(self, batch_inds: np.ndarray, env_inds: np.ndarray,
                       env: Optional[VecNormalize]) -> Optional[torch.Tensor]:
        """``(batch, 1)`` stored returns of the rows (reward-normalised like the rewards), ``-inf`` where unknown."""
        if self.episode_returns is None:
            return None
        bounds = self.episode_returns[batch_inds, env_inds].reshape(-1, 1).copy()
        known = np.isfinite(bounds)
        bounds[known] = self._normalize_reward(bounds[known], env)
        return self.to_torch(bounds)

    def _raw_states(self, batch_inds: np.ndarray, env_inds: np.ndarray):
        """The raw states scored for rows ``(batch_inds, env_inds)``: each one's next state (or itself)."""

        def pick(store, inds):
            if isinstance(store, dict):
                return {k: v[inds, env_inds] for k, v in store.items()}
            return store[inds, env_inds]

        if self.novelty.score == "current":
            return pick(self.observations, batch_inds)
        if getattr(self, "optimize_memory_usage", False):
            return pick(self.observations, (batch_inds + 1) % self.buffer_size)
        return pick(self.next_observations, batch_inds)

    def sample(self, batch_size: int, env: Optional[VecNormalize] = None):
        """SB3's uniform draw of ``batch_size`` (row, env) pairs with their bonus, from a block drawn ahead.

        :data:`DRAW_AHEAD` minibatches are drawn at once and their scores more than
        ``staleness // 2`` model updates old renewed in one batch; a minibatch whose
        scores went stale since (more than ``staleness`` updates, or its row
        overwritten) is rescored when used.
        """
        if getattr(self, "optimize_memory_usage", False):  # the row being written changes: draw when used
            return super().sample(batch_size, env)  # type: ignore[misc]
        drawn = getattr(self, "_drawn", [])
        if not drawn or len(drawn[-1][0]) != batch_size:
            n = DRAW_AHEAD * batch_size
            rows = np.random.randint(0, self.buffer_size if self.full else self.pos, size=n)
            envs = np.random.randint(0, self.n_envs, size=n)
            # renewing what is older than half the bound, the block can span staleness / 2 model updates
            self._renew(*self._scored_pairs(rows, envs), within=self.novelty.options.staleness // 2)
            drawn = list(zip(np.split(rows, DRAW_AHEAD), np.split(envs, DRAW_AHEAD)))[::-1]
        self._drawn = drawn
        batch_inds, env_inds = drawn.pop()
        return self._get_samples(batch_inds, env, env_inds=env_inds)

    def _env_columns(self, batch_inds: np.ndarray, env_inds: Optional[np.ndarray]) -> np.ndarray:
        """``env_inds``, or one env column per row drawn as SB3 does; kept as :attr:`last_draw` with the rows."""
        if env_inds is None:
            env_inds = np.random.randint(0, high=self.n_envs, size=batch_inds.shape)
        self.last_draw = (batch_inds, env_inds)
        return env_inds

    def _scored_pairs(self, batch_inds: np.ndarray, env_inds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (row, env) pairs whose scores the minibatch of ``(batch_inds, env_inds)`` reads."""
        return batch_inds, env_inds

    def _renew(self, rows: np.ndarray, cols: np.ndarray, within: Optional[int] = None) -> None:
        """Score, in one batch, the pairs ``(rows, cols)`` whose cached score is missing or more than ``within``
        (default: ``staleness``) model updates old."""
        version = self.novelty.version
        staleness = self.novelty.options.staleness if within is None else within
        if self.novelty_cache.device != torch.device(self.device):  # a buffer loaded onto another device
            self.novelty_cache = self.novelty_cache.to(self.device)
        stamps = self.novelty_version[rows, cols]
        stale = (stamps < 0) | (version - stamps > staleness)
        todo = np.unique(rows[stale] * self.n_envs + cols[stale])
        if todo.size:
            r, c = np.divmod(todo, self.n_envs)
            g = self.novelty.novelty(self._raw_states(r, c))
            index = (torch.as_tensor(r, device=self.device), torch.as_tensor(c, device=self.device))
            self.novelty_cache[index] = g.to(self.novelty_cache.device, self.novelty_cache.dtype)
            self.novelty_version[r, c] = version

    def _novelty_of(self, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
        """``g(x)`` of the scored states of ``(rows, cols)`` (on the buffer's device), at most ``staleness`` old."""
        self._renew(rows, cols)
        return self.novelty_cache[torch.as_tensor(rows, device=self.device), torch.as_tensor(cols, device=self.device)]

    def _get_samples(self, batch_inds: np.ndarray, env: Optional[VecNormalize] = None,
                     env_inds: Optional[np.ndarray] = None):
        """SB3's minibatch of rows ``batch_inds`` plus the bonus of exactly those rows.

        The env columns ``env_inds`` (drawn here when not given, as SB3 does) give both
        the sample and the bonus (:meth:`_gather` builds SB3's samples from the same
        ``(row, column)`` pairs), so nothing depends on how SB3 consumes its random numbers.
        """
        self._require_updates()
        env_inds = self._env_columns(batch_inds, env_inds)
        samples = self._gather(batch_inds, env_inds, env)
        shaped = self.novelty.shaped(self._novelty_of(batch_inds, env_inds))
        shaped = shaped.to(samples.rewards.device, samples.rewards.dtype).reshape(-1, 1)
        return self._with_bonus(samples, shaped, bounds=self._return_bounds(batch_inds, env_inds, env))

    def _with_bonus(self, samples, shaped: torch.Tensor, per_step: Optional[torch.Tensor] = None,
                    bounds: Optional[torch.Tensor] = None):
        """``samples`` with the bonus ``beta * shaped`` added to the rewards, or kept apart.

        With ``critics`` the rewards stay extrinsic and the unweighted
        ``shaped`` rewards travel beside them (:class:`SplitReplaySamples`), with
        the rows' ``bounds`` (``critics.return_bound``).
        :attr:`last_intrinsic` (logged) is ``beta`` times ``per_step`` (the
        per-step rewards behind n-step sums), or times ``shaped``.
        """
        beta = self.novelty.beta
        self.last_intrinsic = beta * (shaped if per_step is None else per_step)
        if self.novelty.options.critics is not None:
            return SplitReplaySamples(*samples, intrinsic_rewards=shaped, return_bounds=bounds)
        return samples._replace(rewards=samples.rewards + beta * shaped)

    def _require_updates(self) -> None:
        """A clear error when the model is never updated (the callbacks were not passed to ``learn``)."""
        if not getattr(self, "_model_updated", False):  # read n_total (a device sync) only until the first update
            self._model_updated = float(self.novelty.model.n_total) > 0
            if not self._model_updated and self.size() > self.novelty.update_every:
                raise RuntimeError(_MISSING_CALLBACK)

    def _gather(self, batch_inds: np.ndarray, env_inds: np.ndarray, env: Optional[VecNormalize]):
        """SB3's samples of the rows ``(batch_inds, env_inds)``."""
        raise NotImplementedError

    def _dones(self, batch_inds: np.ndarray, env_inds: np.ndarray) -> np.ndarray:
        """``done`` flags without the time-limit truncations (SB3's ``handle_timeout_termination``)."""
        rows = (batch_inds, env_inds)
        return (self.dones[rows] * (1 - self.timeouts[rows])).reshape(-1, 1)


class NoveltyReplayBuffer(_ReplayScoring, ReplayBuffer):
    """``ReplayBuffer`` whose sampled rewards include the current novelty bonus."""

    def _gather(self, batch_inds: np.ndarray, env_inds: np.ndarray, env: Optional[VecNormalize]):
        next_rows = (batch_inds + 1) % self.buffer_size if self.optimize_memory_usage else batch_inds
        next_store = self.observations if self.optimize_memory_usage else self.next_observations
        data = (
            self._normalize_obs(self.observations[batch_inds, env_inds, :], env),
            self.actions[batch_inds, env_inds, :],
            self._normalize_obs(next_store[next_rows, env_inds, :], env),
            self._dones(batch_inds, env_inds),
            self._normalize_reward(self.rewards[batch_inds, env_inds].reshape(-1, 1), env),
        )
        return ReplayBufferSamples(*(self.to_torch(x) for x in data))


class NoveltyDictReplayBuffer(_ReplayScoring, DictReplayBuffer):
    """``DictReplayBuffer`` whose sampled rewards include the current novelty bonus (of ``obs_key``)."""

    def _gather(self, batch_inds: np.ndarray, env_inds: np.ndarray, env: Optional[VecNormalize]):
        def rows(store: dict) -> dict:
            normalised = self._normalize_obs({k: v[batch_inds, env_inds, :] for k, v in store.items()}, env)
            return {k: self.to_torch(v) for k, v in normalised.items()}  # type: ignore[union-attr]

        return DictReplayBufferSamples(
            observations=rows(self.observations),
            actions=self.to_torch(self.actions[batch_inds, env_inds]),
            next_observations=rows(self.next_observations),
            dones=self.to_torch(self._dones(batch_inds, env_inds)),
            rewards=self.to_torch(self._normalize_reward(self.rewards[batch_inds, env_inds].reshape(-1, 1), env)),
        )


class NoveltyNStepReplayBuffer(_ReplayScoring, NStepReplayBuffer):
    """SB3's n-step ``ReplayBuffer`` whose returns include the current bonus of every step.

    A sampled row ``t`` gives ``R = sum_{k<m} gamma^k (r_{t+k} + r_int(x_{t+k+1}))``
    and the bootstrap discount ``gamma^m``, where ``m <= n_steps`` stops at the
    first termination or truncation (as SB3's ``NStepReplayBuffer``); every
    bonus in the window comes from the current model, in one batch.
    """

    def _scored_pairs(self, batch_inds: np.ndarray, env_inds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every stored pair of the ``n_steps`` windows that start at ``(batch_inds, env_inds)``."""
        rows = (batch_inds[:, None] + np.arange(self.n_steps)[None]) % self.buffer_size
        cols = np.broadcast_to(env_inds[:, None], rows.shape)
        stored = rows < (self.buffer_size if self.full else self.pos)
        return rows[stored], cols[stored]

    def _get_samples(self, batch_inds: np.ndarray, env: Optional[VecNormalize] = None,
                     env_inds: Optional[np.ndarray] = None):
        self._require_updates()
        env_inds = self._env_columns(batch_inds, env_inds)
        newest = self.pos - 1  # its successor is not stored yet: the window must stop there
        saved = self.timeouts[newest].copy()
        self.timeouts[newest] = np.logical_or(saved, np.logical_not(self.dones[newest]))
        try:
            steps = np.arange(self.n_steps)
            rows = (batch_inds[:, None] + steps[None]) % self.buffer_size  # (batch, n)
            cols = np.broadcast_to(env_inds[:, None], rows.shape)
            ended = np.logical_or(self.dones[rows, cols], self.timeouts[rows, cols])
            stop = np.where(ended.any(axis=1), ended.argmax(axis=1), self.n_steps - 1)
            last = (batch_inds + stop) % self.buffer_size
            dones = (self.dones[last, env_inds] * (1 - self.timeouts[last, env_inds])).reshape(-1, 1)
        finally:
            self.timeouts[newest] = saved
        inside = steps[None] <= stop[:, None]  # (batch, n): the steps before the window stops
        rewards = self.to_torch(self._normalize_reward(self.rewards[rows, cols], env))
        mask = torch.as_tensor(inside, device=rewards.device)
        # positions of the steps inside, in row-major order as rows[inside]: index tensors made on the host, so
        # no boolean indexing (which makes the device report its count to the host) on the path of a minibatch
        flat = torch.as_tensor(np.flatnonzero(inside), device=rewards.device)
        shaped = torch.zeros_like(rewards)
        novelty = self._novelty_of(rows[inside], cols[inside])
        shaped.view(-1)[flat] = self.novelty.shaped(novelty).to(rewards.device, rewards.dtype)
        powers = self.gamma ** torch.arange(self.n_steps, device=rewards.device, dtype=rewards.dtype)
        samples = ReplayBufferSamples(
            observations=self.to_torch(self._normalize_obs(self.observations[batch_inds, env_inds], env)),
            actions=self.to_torch(self.actions[batch_inds, env_inds]),
            next_observations=self.to_torch(self._normalize_obs(self.next_observations[last, env_inds], env)),
            dones=self.to_torch(dones),
            rewards=(rewards * powers * mask).sum(dim=1, keepdim=True),
            discounts=self.gamma ** mask.sum(dim=1, keepdim=True).to(rewards.dtype),
        )
        return self._with_bonus(samples, (shaped * powers).sum(dim=1, keepdim=True), per_step=shaped.view(-1)[flat],
                                bounds=self._return_bounds(batch_inds, env_inds, env))


class _RolloutScoring:
    """Records the raw scored state of each step; adds the bonus before GAE."""

    novelty: NoveltyBonus

    def _init_scoring(self, novelty: Optional[NoveltyBonus]) -> None:
        self.novelty = _check_bonus(novelty)
        self.novelty.follow(self.device)
        # Frames keep the observation space's dtype (uint8 frames stay uint8 here).
        dtype = self.observation_space.dtype if novelty.is_image and self.observation_space.dtype == np.uint8 \
            else np.float32
        self.scored_obs = np.zeros((self.buffer_size, self.n_envs, *novelty.obs_shape), dtype=dtype)
        self.intrinsic_rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self._recorded = np.zeros(self.buffer_size, dtype=bool)
        self._bonus_added = False

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        if hasattr(self, "_recorded"):
            self._recorded[:] = False
            self.intrinsic_rewards[:] = 0.0
            self._bonus_added = False

    def record_scored(self, raw_obs) -> None:
        """Called by the callback before SB3 adds step ``pos``: the raw state to score for it."""
        if self.pos >= self.buffer_size:
            raise RuntimeError("rollout buffer is full; record_scored called once too often")
        self.scored_obs[self.pos] = self.novelty.select(raw_obs).reshape(self.n_envs, *self.novelty.obs_shape)
        self._recorded[self.pos] = True

    def compute_returns_and_advantage(self, last_values, dones) -> None:
        if not self._bonus_added:
            n = self.buffer_size if self.full else self.pos
            if n == 0 or not self._recorded[:n].all():
                raise RuntimeError("NoveltyRolloutBuffer: the scored states were not recorded; pass the callbacks "
                                   "returned by attach_novelty (or novelty_callbacks(model)) to model.learn")
            flat = self.scored_obs[:n].reshape(-1, *self.novelty.obs_shape)
            bonus = self.novelty.intrinsic(flat).cpu().numpy().reshape(n, self.n_envs)
            self.intrinsic_rewards[:n] = bonus
            self.rewards[:n] += bonus
            self._bonus_added = True
        super().compute_returns_and_advantage(last_values, dones)  # type: ignore[misc]


class NoveltyRolloutBuffer(_RolloutScoring, RolloutBuffer):
    """``RolloutBuffer`` that adds the novelty bonus to the rewards before computing advantages."""

    def __init__(self, *args, novelty: Optional[NoveltyBonus] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_scoring(novelty)


class NoveltyDictRolloutBuffer(_RolloutScoring, DictRolloutBuffer):
    """``DictRolloutBuffer`` that adds the novelty bonus (of ``obs_key``) before computing advantages."""

    def __init__(self, *args, novelty: Optional[NoveltyBonus] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_scoring(novelty)
