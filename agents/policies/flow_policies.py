"""Flow policies for Stable-Baselines3: SAC (:class:`FlowSACPolicy`) and PPO/A2C (:class:`FlowActorCriticPolicy`).

Dict observations go through SB3's ``CombinedExtractor`` (as with SB3's
``MultiInputPolicy``) unless ``features_extractor_class`` is given.

Both take the same flow settings, all in ``policy_kwargs`` so that
``model.save()`` / ``SAC.load()`` / ``PPO.load()`` rebuild the same policy:

* ``flow``: a name from :func:`flowrl.available_flows` (``"realnvp"``, ``"naf"``, ...).
* ``flow_kwargs``: the flow's own options (e.g. ``dict(transforms=2, hidden_features=(64,))``).
* ``base``: ``"normal"`` (standard normal) or ``"conditional"`` (diagonal
  Gaussian whose mean and scale come from the policy's latent features).
* ``direction``: ``"density"``, ``"sample"`` or ``"auto"`` (see
  :data:`agents.policies.distributions.DIRECTIONS`).  SAC only scores its own samples,
  so ``"auto"`` puts a flow whose inverse is numerical (NAF) in the sampling
  direction (one pass, exact ``log_prob`` of the sample); PPO/A2C score stored
  actions, so ``"auto"`` keeps the density direction there (exact ``log_prob``,
  sampling by the library's numerical inverse).

Example::

    SAC(FlowSACPolicy, env, policy_kwargs=dict(flow="realnvp", flow_kwargs=dict(transforms=2)))
    PPO(FlowActorCriticPolicy, env, policy_kwargs=dict(flow="naf"))
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import CombinedExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import Actor, SACPolicy
from torch import Tensor

import flowrl

from .distributions import DIRECTIONS, FlowDistribution, _check_flow_name, check_action_space

__all__ = ["FlowActor", "FlowSACPolicy", "FlowActorCriticPolicy", "PPO_NAF_MIN_SLOPE", "DETERMINISTIC_RULES",
           "critic_value"]

#: NAF's slope floor in :class:`FlowActorCriticPolicy` unless ``flow_kwargs`` sets ``min_slope``.
PPO_NAF_MIN_SLOPE = 0.1

#: How :class:`FlowSACPolicy` picks its deterministic action among the flow's fixed candidates.
DETERMINISTIC_RULES = ("median", "density", "critic")


def _resolve_direction(flow: str, direction: str, scores_stored_actions: bool) -> str:
    if direction == "auto":
        if scores_stored_actions:
            return "density"
        return "sample" if flowrl.flow_spec(flow).numerical_inverse else "density"
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use 'auto' or one of {DIRECTIONS}")
    return direction


def _dict_extractor(observation_space: spaces.Space, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with SB3's ``CombinedExtractor`` for a Dict observation space unless an extractor is given.

    What SB3's ``MultiInputPolicy`` does: one flattening (or CNN) extractor per key, concatenated.
    """
    if isinstance(observation_space, spaces.Dict) and kwargs.get("features_extractor_class") is None:
        kwargs = {**kwargs, "features_extractor_class": CombinedExtractor}
    return kwargs


def _check_flow_settings(owner: str, action_space: spaces.Space, flow: str, use_sde: bool) -> None:
    check_action_space(action_space, owner)
    _check_flow_name(flow)
    if use_sde:
        raise ValueError(f"{owner} does not support use_sde=True: the flow is the exploration noise")


# --------------------------------------------------------------------- SAC
class FlowActor(Actor):
    """SAC actor whose action distribution is a flow conditioned on ``latent_pi``.

    Actions live in SAC's normalised box ``[-1, 1]^D`` (SB3 rescales them to the
    env's bounds); ``action_log_prob`` draws actions and their exact
    log-density from one reparameterised pass.
    """

    def __init__(
        self,
        *args: Any,
        flow: str = "realnvp",
        flow_kwargs: Optional[dict] = None,
        base: str = "normal",
        direction: str = "auto",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        # The Gaussian head built by Actor is replaced by the flow.
        del self.mu
        del self.log_std
        self.flow_name = flow
        self.flow_kwargs = dict(flow_kwargs or {})
        self.base = base
        self.direction = direction
        resolved = _resolve_direction(flow, direction, scores_stored_actions=False)
        action_dim = int(np.prod(self.action_space.shape))
        self.action_dist = FlowDistribution(  # type: ignore[assignment]
            action_dim, flow, self.flow_kwargs, base, resolved, low=-np.ones(action_dim), high=np.ones(action_dim)
        )
        latent_dim = self.net_arch[-1] if len(self.net_arch) > 0 else self.features_dim
        self.flow = self.action_dist.proba_distribution_net(latent_dim)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(flow=self.flow_name, flow_kwargs=self.flow_kwargs, base=self.base, direction=self.direction)
        return data

    def _latent(self, obs: PyTorchObs) -> Tensor:
        return self.latent_pi(self.extract_features(obs, self.features_extractor))

    def get_action_dist_params(self, obs: PyTorchObs):  # type: ignore[override]
        raise ValueError("a flow actor has no Gaussian parameters; use forward() or action_log_prob()")

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> Tensor:
        return self.action_dist.actions_from_params(self._latent(obs), deterministic=deterministic)

    def action_log_prob(self, obs: PyTorchObs) -> tuple[Tensor, Tensor]:
        return self.action_dist.log_prob_from_params(self._latent(obs))  # type: ignore[return-value]


class FlowSACPolicy(SACPolicy):
    """SAC policy with a flow actor; the critics, entropy target and temperature are SB3's unchanged.

    Extra ``policy_kwargs``: ``flow``, ``flow_kwargs``, ``base``, ``direction``
    (see the module doc) and ``deterministic_rule``, how the deterministic action
    (``predict(deterministic=True)``, evaluation) is chosen among the flow's fixed
    candidates (:meth:`agents.FlowDistribution.candidate_actions`):

    * ``"median"`` (default): the coordinate-wise median of the candidates, the
      policy's central action. A broad squashed density peaks at the box's
      boundary, so near a wall its mode can press into the wall and, the state
      not changing, stay there; the median does not follow the peak there;
    * ``"density"``: the mode estimate ``argmax_k log pi(a_k | s)``
      (:meth:`agents.FlowDistribution.mode`);
    * ``"critic"``: ``argmax_k min_j Q_j(s, a_k)``, the candidate the twin
      critics value most (:func:`critic_value`: extrinsic plus weighted
      intrinsic critics under :class:`agents.novelty.sac.IntrinsicCriticSAC`).
      A policy trained on a sparse reward can reach the goal in most of its
      stochastic episodes while the density's peak still presses into a wall
      on the way; the critic scores where the actions lead.
      Training is unchanged by any rule (SAC's updates use samples, never this choice).

    Example:
        >>> from stable_baselines3 import SAC
        >>> model = SAC(FlowSACPolicy, "Pendulum-v1", learning_starts=32, batch_size=32, device="cpu",
        ...             policy_kwargs=dict(flow="naf", flow_kwargs=dict(transforms=1, hidden_features=(16,))))
        >>> model.learn(48).policy.actor.action_dist.direction  # NAF: sampling and log-density in one pass
        'sample'
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *args: Any,
        flow: str = "realnvp",
        flow_kwargs: Optional[dict] = None,
        base: str = "normal",
        direction: str = "auto",
        deterministic_rule: str = "median",
        use_sde: bool = False,
        **kwargs: Any,
    ):
        _check_flow_settings("FlowSACPolicy", action_space, flow, use_sde)
        _resolve_direction(flow, direction, scores_stored_actions=False)
        if deterministic_rule not in DETERMINISTIC_RULES:
            raise ValueError(f"unknown deterministic_rule {deterministic_rule!r}; use one of {DETERMINISTIC_RULES}")
        self.deterministic_rule = deterministic_rule
        #: Set by IntrinsicCriticSAC: the critics' second half values the intrinsic reward, weighted by this.
        self.intrinsic_weight: Optional[float] = None
        # Read by make_actor(), which SACPolicy.__init__ calls through _build().
        self._flow_settings = dict(flow=flow, flow_kwargs=dict(flow_kwargs or {}), base=base, direction=direction)
        kwargs = _dict_extractor(observation_space, kwargs)
        super().__init__(observation_space, action_space, lr_schedule, *args, use_sde=False, **kwargs)

    def make_actor(self, features_extractor=None) -> FlowActor:  # type: ignore[override]
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return FlowActor(**actor_kwargs, **self._flow_settings).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.pop("use_sde", None)
        data.update(self._flow_settings, deterministic_rule=self.deterministic_rule)
        return data

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        if deterministic and self.deterministic_rule == "critic":
            return self._best_candidate_by_critic(observation)
        if deterministic and self.deterministic_rule == "median":
            return self._candidates(observation).median(dim=0).values  # per coordinate, one of the candidates' values
        return self.actor(observation, deterministic)

    def _candidates(self, obs: PyTorchObs) -> Tensor:
        """The actor's fixed candidate actions for ``obs``, ``(K, B, D)``."""
        dist = self.actor.action_dist
        dist.proba_distribution(self.actor._latent(obs))
        return dist.candidate_actions()

    def _best_candidate_by_critic(self, obs: PyTorchObs) -> Tensor:
        """``argmax_k min_j Q_j(s, a_k)`` over the actor's fixed candidates, ``(B, D)``."""
        candidates = self._candidates(obs)  # (K, B, D)
        k, b, d = candidates.shape
        tiled = {key: _tile(v, k) for key, v in obs.items()} if isinstance(obs, dict) else _tile(obs, k)
        q = critic_value(self.critic(tiled, candidates.reshape(k * b, d)), self.intrinsic_weight).reshape(k, b)
        return candidates[q.argmax(dim=0), torch.arange(b, device=candidates.device)]


def critic_value(q_values: Sequence[Tensor], intrinsic_weight: Optional[float] = None) -> Tensor:
    """``min_j Q_j``; with ``intrinsic_weight`` ``w``: ``min_j Q_e,j + w min_j Q_i,j``, shape ``(B,)``.

    The intrinsic critics are the second half of ``q_values``
    (:class:`agents.novelty.sac.IntrinsicCriticSAC`).
    """
    q = torch.cat(tuple(q_values), dim=1)
    if intrinsic_weight is None:
        return q.min(dim=1).values
    half = q.shape[1] // 2
    return q[:, :half].min(dim=1).values + intrinsic_weight * q[:, half:].min(dim=1).values


def _tile(x: Tensor, k: int) -> Tensor:
    """``k`` copies of a batch stacked along the first axis: row ``j * B + i`` is ``x[i]``."""
    return x.repeat(k, *([1] * (x.dim() - 1)))


# ------------------------------------------------------------- PPO and A2C
class FlowActorCriticPolicy(ActorCriticPolicy):
    """Actor-critic policy (PPO, A2C) with a flow action distribution over the env's action box.

    Actions are squashed straight into ``[low, high]`` (``squash_output`` stays
    off, so SB3's clipping is a no-op) and ``evaluate_actions`` scores stored
    actions exactly in the density direction.  ``entropy()`` is a reparameterised
    Monte-Carlo estimate with ``entropy_samples`` samples per state (``0``:
    return ``None`` and let SB3 use ``-log_prob`` of the stored actions).

    Cost: a rollout step is one sampling pass (:meth:`forward` keeps its
    log-density); a minibatch is one density pass over the stored actions plus,
    with ``entropy_samples=K > 0``, a sampling pass over ``K`` actions per state
    and its backward.  SB3's PPO computes ``ent_coef * entropy_loss`` even when
    ``ent_coef == 0``, so with ``ent_coef=0`` pass ``entropy_samples=0``: the
    loss and its gradient are unchanged and that pass is skipped (the logged
    ``entropy_loss`` then is SB3's ``-log_prob`` estimate).

    Stored actions (``store_pre_squash``, default ``True``): the rollout buffer
    holds the flow's value ``u`` before the tanh squash, and the env gets
    ``squash(u)`` through :meth:`unscale_action` (SB3 calls it on every action
    it sends to the env, and in ``predict``, when ``squash_output`` is true).
    PPO's ratio ``pi_new(u) / pi_old(u)`` equals the ratio of the box densities
    (the squash's Jacobian does not depend on the parameters), but in ``u``
    it stays exact for actions that float32 ``tanh`` rounds onto the boundary;
    box actions (``False``) score every such action at the clamped point
    ``|u| = 7.25``.  ``policy(obs)`` and ``evaluate_actions`` therefore see
    ``u``; ``predict`` returns box actions either way.

    NAF: ``flow_kwargs["min_slope"]`` defaults to :data:`PPO_NAF_MIN_SLOPE`
    (NAF's own default is 1e-3): a floor on every sigmoid's slope bounds how
    far a policy that saturates its action can push ``|u|`` into a flat tail,
    where a small change of the slope moves a stored action's log-density
    (and PPO's ratio) by a lot.  ``scripts/bench_policies.py`` measures both
    settings.

    Extra ``policy_kwargs``: ``flow``, ``flow_kwargs``, ``base``, ``direction``
    (see the module doc), ``entropy_samples``, ``store_pre_squash``.

    Example:
        >>> from stable_baselines3 import PPO
        >>> model = PPO(FlowActorCriticPolicy, "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, device="cpu",
        ...             policy_kwargs=dict(flow="realnvp", flow_kwargs=dict(transforms=2, hidden_features=(16,))))
        >>> model.learn(64).policy.action_dist.flow_name
        'realnvp'
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        flow: str = "realnvp",
        flow_kwargs: Optional[dict] = None,
        base: str = "normal",
        direction: str = "auto",
        entropy_samples: int = 1,
        store_pre_squash: bool = True,
        use_sde: bool = False,
        **kwargs: Any,
    ):
        _check_flow_settings("FlowActorCriticPolicy", action_space, flow, use_sde)
        _resolve_direction(flow, direction, scores_stored_actions=True)
        if int(entropy_samples) < 0:
            raise ValueError(f"entropy_samples must be >= 0, got {entropy_samples}")
        flow_kwargs = dict(flow_kwargs or {})
        if flow == "naf":
            flow_kwargs.setdefault("min_slope", PPO_NAF_MIN_SLOPE)
        # Read by _build(), which ActorCriticPolicy.__init__ calls.
        self._flow_settings = dict(
            flow=flow, flow_kwargs=flow_kwargs, base=base, direction=direction,
            entropy_samples=int(entropy_samples), store_pre_squash=bool(store_pre_squash),
        )
        kwargs = _dict_extractor(observation_space, kwargs)
        super().__init__(observation_space, action_space, lr_schedule, *args, use_sde=False, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        """SB3's build (features, value head, orthogonal init), then the Gaussian head is replaced by the flow."""
        super()._build(lr_schedule)
        del self.action_net
        del self.log_std
        s = self._flow_settings
        box = self.action_space
        assert isinstance(box, spaces.Box)
        self.action_dist = FlowDistribution(  # type: ignore[assignment]
            int(np.prod(box.shape)), s["flow"], s["flow_kwargs"], s["base"],
            _resolve_direction(s["flow"], s["direction"], scores_stored_actions=True),
            low=box.low, high=box.high, entropy_samples=s["entropy_samples"], pre_squash=s["store_pre_squash"],
        )
        # The flow starts at (near) the identity from its own zero-initialised output layers.
        self.action_net = self.action_dist.proba_distribution_net(self.mlp_extractor.latent_dim_pi)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    @property
    def squash_output(self) -> bool:  # type: ignore[override]
        """True with pre-squash actions: SB3 then maps every action through :meth:`unscale_action`."""
        return self._flow_settings["store_pre_squash"]

    def unscale_action(self, scaled_action: np.ndarray) -> np.ndarray:
        """Pre-squash actions ``u`` to the env's box: ``low + (high - low) (tanh(u) + 1) / 2``."""
        if not self._flow_settings["store_pre_squash"]:
            return super().unscale_action(scaled_action)
        low, high = self.action_space.low, self.action_space.high  # type: ignore[attr-defined]
        return (low + (high - low) * (np.tanh(scaled_action) + 1.0) / 2.0).astype(self.action_space.dtype)

    def forward(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """SB3's rollout step; actions and log-density from one pass (:meth:`FlowDistribution.actions_and_log_prob`)."""
        features = self.extract_features(obs)
        if self.share_features_extractor:
            latent_pi, latent_vf = self.mlp_extractor(features)
        else:
            pi_features, vf_features = features
            latent_pi = self.mlp_extractor.forward_actor(pi_features)
            latent_vf = self.mlp_extractor.forward_critic(vf_features)
        actions, log_prob = self._get_action_dist_from_latent(latent_pi).actions_and_log_prob(deterministic)
        return actions.reshape((-1, *self.action_space.shape)), self.value_net(latent_vf), log_prob  # type: ignore[misc]

    def _get_action_dist_from_latent(self, latent_pi: Tensor) -> FlowDistribution:  # type: ignore[override]
        return self.action_dist.proba_distribution(latent_pi)  # type: ignore[union-attr, return-value]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("use_sde", "squash_output", "full_std", "use_expln"):
            data.pop(key, None)
        data.update(self._flow_settings)
        return data
