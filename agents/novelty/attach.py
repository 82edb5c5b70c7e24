"""Wiring a novelty bonus into any SB3 algorithm, and reading its density model back."""

from __future__ import annotations

import inspect
from typing import Any, Optional

import numpy as np
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from flowrl.novelty import OnlineDensityModel

from .bonus import NoveltyBonus, image_max_value, observation_shape
from .buffers import (
    NoveltyDictReplayBuffer,
    NoveltyDictRolloutBuffer,
    NoveltyNStepReplayBuffer,
    NoveltyReplayBuffer,
    NoveltyRolloutBuffer,
)
from .callback import NoveltyCallback
from .options import NoveltyOptions, parse_options
from .sac import IntrinsicCriticSAC

__all__ = ["attach_novelty", "novelty_callbacks", "find_novelty", "novelty_density", "make_novelty_bonus"]


def make_novelty_bonus(
    observation_space: spaces.Space, novelty: Optional[dict | NoveltyOptions] = None
) -> NoveltyBonus:
    """A :class:`NoveltyBonus` for ``observation_space`` from a plain options dict.

    A 3-D ``Box`` (HWC or CHW frames, e.g. uint8 images) gets the image
    pseudo-counter (``kind="flow"`` only); its pixel range is ``[0, high]``.
    A goal-conditioned Dict space (keys ``observation``, ``achieved_goal``,
    ``desired_goal``) is counted on ``achieved_goal`` unless ``obs_key`` says
    otherwise; any other Dict space needs ``obs_key``.
    """
    opts = _with_obs_key(parse_options(novelty), observation_space)
    shape = observation_shape(observation_space, opts.obs_key)
    if len(shape) == 3:
        return NoveltyBonus(opts, shape, max_value=image_max_value(observation_space, opts.obs_key))
    return NoveltyBonus(opts, shape)


#: The keys of a goal-conditioned observation (gymnasium-robotics' GoalEnv): the bonus counts achieved goals.
GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")


def _with_obs_key(opts: NoveltyOptions, space: spaces.Space) -> NoveltyOptions:
    """``opts`` with ``obs_key="achieved_goal"`` for a goal-conditioned Dict space; ``ValueError`` for another Dict."""
    if not isinstance(space, spaces.Dict) or opts.obs_key is not None:
        return opts
    keys = list(space.spaces)
    if set(GOAL_KEYS) <= set(keys):
        return opts.model_copy(update={"obs_key": "achieved_goal"})
    raise ValueError(f"obs_key: the observation space is a Dict with keys {keys}; set obs_key to the key "
                     "whose values the bonus should count")


def attach_novelty(
    algo_class: type, algo_kwargs: dict, env: Any, novelty: dict | NoveltyOptions
) -> tuple[dict, list[BaseCallback]]:
    """Constructor kwargs and ``learn`` callbacks that give ``algo_class`` a novelty bonus.

    Off-policy algorithms get ``replay_buffer_class``/``replay_buffer_kwargs``,
    on-policy ones ``rollout_buffer_class``/``rollout_buffer_kwargs``; ``algo_kwargs``
    itself is not modified.  ``novelty`` holds the options of
    :class:`agents.novelty.options.NoveltyOptions`; unknown keys raise ``ValueError``.

    The bonus models the raw observations (it keeps its own normaliser), but
    the agent's networks see what the env gives them: wrap the env in
    ``VecNormalize(env, norm_reward=False)`` where observations are badly
    scaled (a policy needs thousands of Adam steps to learn to read a feature
    of scale 1e-2, bonus or not).

    SAC takes the bonus with separate intrinsic critics (``critics``, on by
    default) as :class:`IntrinsicCriticSAC`, or with ``critics=None`` as SB3's
    ``SAC``; on-policy algorithms get the weight-side options only.

    >>> from stable_baselines3 import PPO
    >>> import gymnasium as gym, envs
    >>> env = gym.make("flowrl/PointMaze-Open-v0")
    >>> kwargs, callbacks = attach_novelty(IntrinsicCriticSAC, {"learning_starts": 32}, env, {"weight": {"beta": 1.0}})
    >>> IntrinsicCriticSAC("MlpPolicy", env, device="cpu", **kwargs).learn(64, callback=callbacks)  # doctest: +ELLIPSIS
    <agents.novelty.sac.IntrinsicCriticSAC object at ...>
    >>> kwargs, callbacks = attach_novelty(PPO, {"n_steps": 64}, env, {"model": {"kind": "rnd"}})
    >>> PPO("MlpPolicy", env, device="cpu", **kwargs).learn(64, callback=callbacks)  # doctest: +ELLIPSIS
    <stable_baselines3.ppo.ppo.PPO object at ...>
    """
    if not isinstance(algo_class, type) or not issubclass(algo_class, BaseAlgorithm):
        raise ValueError(f"algo_class must be an SB3 algorithm class, got {algo_class!r}")
    space = env.observation_space
    bonus = make_novelty_bonus(space, _critics_for(algo_class, parse_options(novelty)))
    kwargs = dict(algo_kwargs)
    is_dict = isinstance(space, spaces.Dict)
    extra: dict[str, Any] = {}
    if issubclass(algo_class, OffPolicyAlgorithm):
        key, cls = "replay_buffer", (NoveltyDictReplayBuffer if is_dict else NoveltyReplayBuffer)
        n_steps = int(kwargs.pop("n_steps", 1))
        if n_steps > 1 and is_dict:
            raise ValueError("n_steps > 1 (n-step returns) needs Box observations: SB3 has no Dict n-step buffer")
        gamma = float(kwargs.get("gamma", _default_gamma(algo_class)))
        if n_steps > 1:  # SB3 hands n-step returns to its own buffer class; ours takes them as kwargs
            cls = NoveltyNStepReplayBuffer
            extra = {"n_steps": n_steps, "gamma": gamma}
        if bonus.options.critics is not None and bonus.options.critics.return_bound:
            extra["return_gamma"] = gamma
    elif issubclass(algo_class, OnPolicyAlgorithm):
        key, cls = "rollout_buffer", (NoveltyDictRolloutBuffer if is_dict else NoveltyRolloutBuffer)
    else:
        raise ValueError(f"{algo_class.__name__} is neither an on-policy nor an off-policy SB3 algorithm")
    given = kwargs.get(f"{key}_class")
    if given is not None and given is not cls:
        raise ValueError(f"{key}_class={given.__name__} is set; the novelty bonus needs its own {cls.__name__}")
    kwargs[f"{key}_class"] = cls
    kwargs[f"{key}_kwargs"] = {**dict(kwargs.get(f"{key}_kwargs") or {}), **extra, "novelty": bonus}
    return kwargs, [NoveltyCallback(bonus)]


def _critics_for(algo_class: type, opts: NoveltyOptions) -> NoveltyOptions:
    """``opts`` with ``critics`` as ``algo_class`` uses them (``None`` unless it is :class:`IntrinsicCriticSAC`).

    ``ValueError`` where they disagree: :class:`IntrinsicCriticSAC` without
    critics, SB3's SAC with them (the default), or critics set for another algorithm.
    """
    if issubclass(algo_class, IntrinsicCriticSAC):
        if opts.critics is None:
            raise ValueError("IntrinsicCriticSAC needs critics (its own section; None means one shared "
                             "critic, i.e. SB3's SAC)")
        return opts
    if opts.critics is None:
        return opts
    if issubclass(algo_class, SAC):
        raise ValueError("critics (on by default) need algo_class=IntrinsicCriticSAC (agents.novelty); "
                         "for SB3's SAC with one critic set critics=None")
    if "critics" in opts.model_fields_set:
        raise ValueError(f"critics: SAC only; {algo_class.__name__} has one critic (set critics=None)")
    return opts.model_copy(update={"critics": None})


def _default_gamma(algo_class: type) -> float:
    """The ``gamma`` default of the first class in the MRO whose constructor names it (subclasses may not)."""
    for cls in algo_class.__mro__:
        param = inspect.signature(cls).parameters.get("gamma") if cls is not object else None
        if param is not None and param.default is not inspect.Parameter.empty:
            return float(param.default)
    raise ValueError(f"{algo_class.__name__} has no default gamma: pass gamma in algo_kwargs")


def find_novelty(obj: Any) -> NoveltyBonus:
    """The :class:`NoveltyBonus` of an SB3 model, a :class:`NoveltyCallback`, a buffer or the bonus itself."""
    if isinstance(obj, NoveltyBonus):
        return obj
    if isinstance(obj, NoveltyCallback):
        return obj.bonus
    for attr in ("novelty",):
        if isinstance(getattr(obj, attr, None), NoveltyBonus):
            return getattr(obj, attr)
    if isinstance(obj, BaseAlgorithm):
        for name in ("replay_buffer", "rollout_buffer"):
            bonus = getattr(getattr(obj, name, None), "novelty", None)
            if isinstance(bonus, NoveltyBonus):
                return bonus
        for name in ("replay_buffer_kwargs", "rollout_buffer_kwargs"):
            bonus = (getattr(obj, name, None) or {}).get("novelty")
            if isinstance(bonus, NoveltyBonus):
                return bonus
    raise ValueError(f"{type(obj).__name__} carries no novelty bonus")


def novelty_callbacks(model: BaseAlgorithm) -> list[BaseCallback]:
    """The callbacks to resume training a loaded model with its restored novelty bonus."""
    return [NoveltyCallback(find_novelty(model))]


def novelty_density(model_or_callback: Any, points: Any, kind: str = "log_density") -> np.ndarray:
    """Evaluate the novelty model on raw observations ``points`` ``(N, obs_dim)`` or frames, shape ``(N,)``.

    ``kind``: ``"log_density"`` (``log rho`` of the flow in its normalised
    space; ``ValueError`` for RND), ``"pseudo_count"`` (flow only) or
    ``"bonus"`` (``beta * b(x)``, any kind).  Accepts what :func:`find_novelty`
    accepts, and also a bare :class:`flowrl.novelty.OnlineDensityModel`.
    """
    if isinstance(model_or_callback, OnlineDensityModel):
        model = model_or_callback
        x = np.asarray(points, dtype=np.float32)
        if kind == "log_density":
            return model.log_density(x).cpu().numpy()
        if kind == "pseudo_count":
            return model.pseudo_count(x).cpu().numpy()
        if kind == "bonus":
            return model.bonus(x).cpu().numpy()
        raise ValueError(f"kind must be 'log_density', 'pseudo_count' or 'bonus', got {kind!r}")
    bonus = find_novelty(model_or_callback)
    if kind == "log_density":
        return bonus.log_density(points)
    if kind == "pseudo_count":
        return bonus.pseudo_count(points)
    if kind == "bonus":
        return bonus.intrinsic(points).cpu().numpy()
    raise ValueError(f"kind must be 'log_density', 'pseudo_count' or 'bonus', got {kind!r}")
