"""An SB3 action distribution backed by a conditional normalizing flow.

The policy's latent features are the flow's context ``c``; an action is
``a = squash(g(z; c))`` with ``z`` from the flow's base distribution (standard
normal, or a diagonal Gaussian conditioned on ``c``), ``g`` the flow's
sampling direction and ``squash`` the tanh map into the action box
(:class:`flowrl.transforms.squash.SquashToBox`).  The log-density is exact:
``log pi(a | c) = log p_Z(z | c) - log|det dg/dz| - log|det dsquash/du|``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from torch import Tensor

import flowrl
from flowrl import Compose, Flow, Inverse, Transform
from flowrl.transforms.squash import SquashToBox

__all__ = ["FlowDistribution", "build_action_flow", "check_action_space", "DIRECTIONS", "BASES"]

#: ``"density"``: the flow's data->noise map scores actions (exact ``log_prob``
#: of any action; sampling by the flow's inverse).  ``"sample"``: the flow's
#: data->noise map is used as the *generator* (sampling and the log-density of
#: sampled actions in one cheap pass; ``log_prob`` of a given action goes
#: through the inverse, numerical for NAF-like flows).
DIRECTIONS = ("density", "sample")
BASES = ("normal", "conditional")


def check_action_space(action_space: spaces.Space, owner: str) -> spaces.Box:
    """Raise ``ValueError`` unless ``action_space`` is a bounded 1-D ``Box`` (what the tanh squash needs)."""
    if isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        raise ValueError(
            f"{owner} needs a continuous Box action space; {type(action_space).__name__} action spaces are "
            f"not supported (got {action_space}): use SB3's default policy for discrete actions"
        )
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"{owner} needs a Box action space, got {action_space}")
    if len(action_space.shape) != 1:
        raise ValueError(f"{owner} needs a flat Box action space of shape (D,), got shape {action_space.shape}")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(
            f"{owner} squashes actions into the action bounds with tanh and needs a bounded Box; got "
            f"low={action_space.low}, high={action_space.high} (wrap the env with bounds or rescale it)"
        )
    return action_space


def _check_flow_name(flow: str) -> None:
    if not isinstance(flow, str):
        raise ValueError(f"flow must be the name of a registered flow, got {flow!r}")
    if flow not in flowrl.available_flows():
        raise ValueError(
            f"unknown flow {flow!r} for the policy; available flows: {', '.join(flowrl.available_flows())}"
        )


def _implements(t: Transform, method: str) -> bool:
    return getattr(type(t), method) is not getattr(Transform, method)


def _check_both_directions(name: str, transform: Transform) -> None:
    """A policy samples actions and scores them: every sub-transform needs ``forward`` and ``inverse``."""
    for module in transform.modules():
        if isinstance(module, Transform):
            missing = [m for m in ("forward", "inverse") if not _implements(module, m)]
            if missing:
                raise ValueError(
                    f"flow {name!r} cannot be used as a policy: its {type(module).__name__} does not implement "
                    f"{' and '.join(missing)} (a policy needs both sampling and density)"
                )


def build_action_flow(
    flow: str,
    action_dim: int,
    context_dim: int,
    low: Sequence[float] | np.ndarray,
    high: Sequence[float] | np.ndarray,
    base: str = "normal",
    direction: str = "density",
    flow_kwargs: Optional[dict] = None,
) -> Flow:
    """A flowrl :class:`Flow` over actions in ``[low, high]``: ``Compose([SquashToBox, g])`` over the base.

    Built with ``validate_args=False`` (no finiteness checks in the hot path).
    """
    _check_flow_name(flow)
    if base not in BASES:
        raise ValueError(f"unknown base {base!r} for the policy flow; use one of {BASES}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use one of {DIRECTIONS}")
    if base == "conditional" and context_dim == 0:
        raise ValueError("base='conditional' needs policy features (context_dim > 0)")
    kwargs = dict(flow_kwargs or {})
    for reserved in ("context_dim", "base", "validate_args", "dim"):
        if reserved in kwargs:
            raise ValueError(f"flow_kwargs may not set {reserved!r}: the policy sets it")
    spec = flowrl.flow_spec(flow)
    if not spec.vector:
        raise ValueError(f"flow {flow!r} works on images only and cannot model a vector of actions")
    if action_dim < spec.min_dim:
        raise ValueError(
            f"flow {flow!r} needs at least {spec.min_dim} action dimensions, the action space has {action_dim}"
        )
    inner = flowrl.build_flow(flow, action_dim, context_dim, base=base, validate_args=False, **kwargs)
    transform, base_dist = inner.transform, inner.base
    _check_both_directions(flow, transform)
    if direction == "sample":
        transform = Inverse(transform)
    return Flow(Compose([SquashToBox(low, high), transform]), base_dist, context_dim, validate_args=False)


class FlowDistribution(Distribution):
    """SB3 ``Distribution`` whose actions come from a flow conditioned on the policy's latent features.

    Use :meth:`proba_distribution_net` once to build the flow (a module the
    policy must own), then :meth:`proba_distribution` with a batch of latent
    features before sampling or scoring.

    * ``log_prob(actions)``: exact log-density of given actions in the action
      box (boundary actions: see :class:`flowrl.transforms.squash.SquashToBox`).
    * ``sample()``: reparameterised samples (differentiable).
    * ``mode()``: a deterministic estimate of the pre-squash mode, squashed
      (``mode_candidates`` fixed candidates; 0: the base mode pushed through).
    * ``entropy()``: a Monte-Carlo estimate ``H ~ -(1/K) sum_k log pi(a_k | c)``
      with ``a_k = squash(g(z_k; c))`` drawn by reparameterisation, so its
      gradient reaches the flow and the features; ``K = entropy_samples``
      (``0``: return ``None`` and let SB3 fall back to ``-log_prob`` of the
      stored actions, cheaper but not the entropy's gradient).
    * ``actions_and_log_prob(deterministic)``: actions and their log-density
      from one sampling pass (what a PPO/A2C rollout step stores; the policy's
      ``forward`` calls it, so no second pass rescores the sample).
    * ``log_prob_from_params(latent)``: actions and their log-density from one
      reparameterised pass (what SAC's actor loss needs).

    With ``pre_squash=True`` the actions that :meth:`sample`, :meth:`mode` and
    :meth:`log_prob` handle are the flow's values ``u`` *before* the squash
    (``log pi(u | c) = log p_Z(z | c) - log|det dg/dz|``); the squash maps
    them into the box (``flow.transform.transforms[0].inverse``).  A policy-gradient ratio
    ``pi_new / pi_old`` is the same in both coordinates (the squash's Jacobian
    does not depend on the parameters), but ``u`` keeps it exact where float32
    ``tanh`` has rounded the action onto the boundary (``|u| > ~9``), which the
    box coordinates can only clamp (see :class:`flowrl.transforms.squash.SquashToBox`).
    :meth:`entropy` stays the entropy of the squashed action in the box.
    """

    def __init__(
        self,
        action_dim: int,
        flow: str = "realnvp",
        flow_kwargs: Optional[dict] = None,
        base: str = "normal",
        direction: str = "density",
        low: Optional[Sequence[float] | np.ndarray] = None,
        high: Optional[Sequence[float] | np.ndarray] = None,
        entropy_samples: int = 1,
        pre_squash: bool = False,
        mode_candidates: int = 64,
    ):
        super().__init__()
        _check_flow_name(flow)
        if base not in BASES:
            raise ValueError(f"unknown base {base!r} for the policy flow; use one of {BASES}")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; use one of {DIRECTIONS}")
        if int(entropy_samples) < 0:
            raise ValueError(f"entropy_samples must be >= 0, got {entropy_samples}")
        self.action_dim = int(action_dim)
        self.flow_name = flow
        self.flow_kwargs = dict(flow_kwargs or {})
        self.base = base
        self.direction = direction
        self.low = np.full(self.action_dim, -1.0, dtype=np.float32) if low is None else np.asarray(low, np.float32)
        self.high = np.full(self.action_dim, 1.0, dtype=np.float32) if high is None else np.asarray(high, np.float32)
        self.entropy_samples = int(entropy_samples)
        if int(mode_candidates) < 0:
            raise ValueError(f"mode_candidates must be >= 0, got {mode_candidates}")
        self.mode_candidates = int(mode_candidates)
        self.pre_squash = bool(pre_squash)
        self.flow: Optional[Flow] = None
        self._unsquashed: Optional[Flow] = None  # the flow without its squash (shares its modules)
        self.context: Optional[Tensor] = None

    # ------------------------------------------------------------ SB3 protocol
    def proba_distribution_net(self, latent_dim: int) -> Flow:
        """Build the flow conditioned on ``latent_dim`` features; the caller registers the returned module."""
        self.flow = build_action_flow(
            self.flow_name, self.action_dim, int(latent_dim), self.low, self.high,
            self.base, self.direction, self.flow_kwargs,
        )
        inner = self.flow.transform.transforms[1]
        self._unsquashed = Flow(inner, self.flow.base, int(latent_dim), validate_args=False)
        return self.flow

    def proba_distribution(self, latent: Tensor) -> "FlowDistribution":
        """Condition on a batch of latent features ``(B, latent_dim)``."""
        if self.flow is None:
            raise ValueError("call proba_distribution_net(latent_dim) before proba_distribution")
        self.context = latent
        return self

    def _ready(self) -> tuple[Flow, Tensor]:
        if self.flow is None or self.context is None:
            raise ValueError("FlowDistribution is not conditioned yet: call proba_distribution(latent) first")
        return self.flow, self.context

    def _action_flow(self) -> tuple[Flow, Tensor]:
        """The flow over the actions this distribution hands out: with or without the squash."""
        flow, ctx = self._ready()
        return (self._unsquashed, ctx) if self.pre_squash else (flow, ctx)  # type: ignore[return-value]

    def log_prob(self, actions: Tensor) -> Tensor:
        """Exact ``log pi(a | c)`` (``log pi(u | c)`` with ``pre_squash``) of given actions, shape ``(B,)``.

        Always one pass in the density direction; the log-density of a fresh
        sample comes with it from :meth:`actions_and_log_prob` instead.
        """
        flow, ctx = self._action_flow()
        return flow.log_prob(actions.reshape(-1, self.action_dim).to(ctx.dtype), ctx)

    def actions_and_log_prob(self, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """Actions ``(B, D)`` and their log-density ``(B,)``: what a rollout step stores.

        A sample and its log-density come from one sampling pass, except that
        a batch with a box action on the boundary is rescored in the density
        direction, so that the value matches what scoring the stored action
        later gives (SB3's PPO compares the two).  ``deterministic``: the
        :meth:`mode` and its :meth:`log_prob`.
        """
        if deterministic:
            actions = self.mode()
            return actions, self.log_prob(actions)
        flow, ctx = self._action_flow()
        samples, log_prob = flow.rsample_and_log_prob(1, ctx)
        actions = samples[0]
        if not self.pre_squash and bool(flow.transform.transforms[0].on_boundary(actions.detach()).any()):
            return actions, self.log_prob(actions)
        return actions, log_prob[0]

    def entropy(self) -> Optional[Tensor]:
        """Reparameterised Monte-Carlo entropy ``-(1/K) sum_k log pi(a_k | c)``, shape ``(B,)`` (see class doc)."""
        if self.entropy_samples == 0:
            return None
        flow, ctx = self._ready()
        _, log_prob = flow.rsample_and_log_prob(self.entropy_samples, ctx)
        return -log_prob.mean(dim=0)

    def sample(self) -> Tensor:
        """One reparameterised action per context row, ``(B, D)``."""
        flow, ctx = self._action_flow()
        return flow.rsample(1, ctx)[0]

    def mode(self) -> Tensor:
        """Deterministic action ``(B, D)``: the flow's mode estimate before the squash, then squashed.

        ``argmax_k log pi(u_k | c)`` over the base mode and ``mode_candidates``
        fixed base points (:meth:`flowrl.Flow.mode_estimate`), taken before the
        squash like SAC's Gaussian ``tanh(mean)`` (in the box the squashed
        density of a wide policy peaks at the boundary).
        """
        _, ctx = self._ready()
        return self._in_action_coordinates(self._unsquashed.mode_estimate(ctx, self.mode_candidates))  # type: ignore[union-attr]

    def candidate_actions(self) -> Tensor:
        """The fixed candidates :meth:`mode` chooses from, ``(mode_candidates + 1, B, D)``, in action coordinates.

        The flow's base mode and ``mode_candidates`` fixed base points pushed
        through the flow before the squash (:meth:`flowrl.Flow.fixed_candidates`),
        then squashed (unless ``pre_squash``): a deterministic set for another
        rule to choose from (:class:`agents.FlowSACPolicy`'s ``deterministic_rule``: ``"median"``, ``"critic"``).
        """
        _, ctx = self._ready()
        u, _ = self._unsquashed.fixed_candidates(ctx, self.mode_candidates)  # type: ignore[union-attr]
        return self._in_action_coordinates(u.reshape(-1, self.action_dim)).reshape(u.shape)

    def _in_action_coordinates(self, u: Tensor) -> Tensor:
        """Pre-squash values ``(N, D)`` as the actions this distribution hands out: squashed unless ``pre_squash``."""
        if self.pre_squash:
            return u
        flow, _ = self._ready()
        return flow.transform.transforms[0].inverse(u, None)[0]  # the elementwise squash needs no context

    def actions_from_params(self, latent: Tensor, deterministic: bool = False) -> Tensor:
        self.proba_distribution(latent)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised actions ``(B, D)`` and their log-density ``(B,)`` from one pass."""
        self.proba_distribution(latent)
        flow, ctx = self._action_flow()
        actions, log_prob = flow.rsample_and_log_prob(1, ctx)
        return actions[0], log_prob[0]
