"""Options of the novelty bonus: the ``novelty:`` section of a run config, in four parts.

.. code-block:: yaml

    novelty:
      model:    {kind: flow, cells: 400}       # what measures novelty: flow | rnd, each with its own options
      weight:   {beta: 5.0, success_hold: 0.9}  # how much the intrinsic reward counts, and when it stops
      critics:  {return_bound: true}            # SAC only: separate intrinsic critics (null: one shared critic)
      update_every: 16                          # and how the bonus is fed and scored

The defaults are the project's agent (``configs/demo.yaml``): a flow
pseudo-counter, weight 5 faded by training success and held at 0 once 18 of
20 episodes succeed, and (for SAC) separate extrinsic and intrinsic critics
whose extrinsic targets are bounded below by the returns episodes got.
Options of the density model left at ``None`` mean "the library's default"
(the constructors of :class:`flowrl.novelty.FlowPseudoCounter`,
:class:`flowrl.novelty.image_counts.ImagePseudoCounter`, :class:`flowrl.novelty.rnd.RNDNovelty`
and :class:`flowrl.novelty.image_rnd.ImageRND`), except a flow counter on vectors,
which trains as :data:`AGENT_FLOW_COUNTER` says unless told otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flowrl.novelty import ESTIMATORS, KERNELS

__all__ = ["NoveltyOptions", "FlowModelOptions", "RNDModelOptions", "ImageOptions", "WeightOptions", "CriticOptions",
           "parse_options", "model_kwargs", "AGENT_FLOW_COUNTER", "FORMS"]

#: A flow counter on vector observations, in an agent, unless told otherwise: counts over the last 2,000
#: observations (a short window pushes the agent away from where it has just been) at 400 cells per
#: unit volume, trained on 32 samples per observation in few, large minibatches (one step of 512 every
#: 16 observations) with a step size and parameter average that keep the counts' lag where the
#: library's defaults put it.  The library's defaults fit offline streams of a
#: few thousand observations; an agent sees tens of thousands, and this costs a quarter of the time.
AGENT_FLOW_COUNTER: dict[str, Any] = {"buffer_size": 2000, "cells": 400.0, "batch_size": 512,
                                      "steps_per_observation": 1 / 16, "lr": 3e-3, "ema": 0.96}

FORMS = ("nonpositive", "positive", "centred")

#: Constructor options every density model takes (``None``: the library's default).
_COMMON = ("lr", "batch_size", "steps_per_update", "steps_per_observation", "buffer_size", "seed")
#: Constructor options of a flow counter on vectors only.
_FLOW_VECTOR = ("estimator", "resolution", "cells", "kernel", "cell_samples", "smoothing", "ema")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)


class ImageOptions(_Section):
    """How frames (a 3-D ``Box`` observation) are reduced before they are modelled."""

    size: Union[int, tuple[int, int]] = Field((8, 8), description="frames are downsampled to (h, w) (an int: square)")
    grey: bool = Field(True, description="average the channels into one")
    levels: Optional[int] = Field(None, ge=2, description="flow only: quantisation levels per pixel (None: the "
                                                            "library's default)")

    @field_validator("size")
    @classmethod
    def _size(cls, v: Any) -> tuple[int, int]:
        size = (v, v) if isinstance(v, int) else tuple(v)
        if len(size) != 2 or not all(s >= 1 for s in size):
            raise ValueError(f"must be an int or (h, w) of positive ints, got {v!r}")
        return size  # type: ignore[return-value]


class _ModelOptions(_Section):
    lr: Optional[float] = Field(None, gt=0, description="Adam step size of the model")
    batch_size: Optional[int] = Field(None, ge=1, description="observations per training step")
    steps_per_update: Optional[int] = Field(None, ge=0, description="training steps per update (fixed)")
    steps_per_observation: Optional[float] = Field(
        None, ge=0, allow_inf_nan=False, description="training steps per new observation (instead of the above)")
    buffer_size: Optional[int] = Field(None, ge=1, description="the last observations the model trains on")
    seed: Optional[int] = Field(None, description="seed of the model's initialisation and sampling")
    image: ImageOptions = Field(default_factory=ImageOptions, description="frames only")


class FlowModelOptions(_ModelOptions):
    """A flow pseudo-counter: ``N(x)`` from a flow density of recent observations (``FlowPseudoCounter``)."""

    kind: Literal["flow"] = Field("flow", description="a flow pseudo-counter")
    flow: Optional[str] = Field(None, description="the flow (flowrl.available_flows())")
    flow_kwargs: dict[str, Any] = Field(default_factory=dict, description="options of the flow")
    estimator: Optional[Literal[ESTIMATORS]] = Field(  # type: ignore[valid-type]  # a tuple of literals
        None, description="how a count is read from the density (flowrl.novelty.ESTIMATORS)")
    resolution: Optional[Union[float, Literal["auto"]]] = Field(None, description="cell width, or 'auto'")
    cells: Optional[float] = Field(None, gt=1, description="cells per unit volume of the normalised space")
    kernel: Optional[Literal[KERNELS]] = Field(None, description="shape of the training jitter: gaussian or box")  # type: ignore[valid-type]
    cell_samples: Optional[int] = Field(None, ge=1, description="points averaged over a cell")
    smoothing: Optional[float] = Field(None, ge=0, description="scale of the training jitter, in cells (0: none)")
    ema: Optional[float] = Field(None, ge=0, lt=1, description="parameter average of the scoring flow")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: Any) -> Any:
        if v is not None and v != "auto" and not v > 0:
            raise ValueError(f"must be a positive number or 'auto', got {v!r}")
        return v


class RNDModelOptions(_ModelOptions):
    """Random network distillation: novelty from a predictor's error on a random embedding (``RNDNovelty``)."""

    kind: Literal["rnd"] = Field(description="random network distillation")
    hidden_features: Union[int, tuple[int, ...]] = Field((64, 64), description="widths of both networks")
    embedding_dim: int = Field(16, ge=1, description="size of the random target embedding")

    @model_validator(mode="after")
    def _no_levels(self) -> "RNDModelOptions":
        if self.image.levels is not None:
            raise ValueError("image.levels: flow only (RND reads frames unquantised)")
        return self


def _default_kind(data: Any) -> Any:
    """A model mapping without ``kind`` is a flow counter."""
    if isinstance(data, dict) and "kind" not in data:
        return {**data, "kind": "flow"}
    return data


ModelOptions = Annotated[Union[FlowModelOptions, RNDModelOptions], Field(discriminator="kind")]


class WeightOptions(_Section):
    """How much the intrinsic reward counts: ``beta_t = beta (1 - s)``, 0 for good once held.

    ``s`` the success share of the last ``success_window`` training episodes
    (see :attr:`agents.novelty.bonus.NoveltyBonus.beta`).
    """

    beta: float = Field(5.0, ge=0, allow_inf_nan=False, description="the weight of the intrinsic reward")
    form: Literal["nonpositive", "positive", "centred"] = Field(
        "nonpositive", description="nonpositive: beta (g - 1), positive: beta g, centred: beta (g - mean g)")
    success_window: Optional[int] = Field(20, ge=1, description="fade the weight by the success share of this many "
                                                                "finished training episodes; null: no fade")
    success_hold: Optional[float] = Field(0.9, gt=0, le=1, description="once a full window's share reaches this, "
                                                                         "the weight is 0 for good; null: never")

    @model_validator(mode="after")
    def _window(self) -> "WeightOptions":
        if self.success_hold is not None and self.success_window is None:
            raise ValueError("success_hold needs success_window (the episodes each success share is taken over)")
        return self


class CriticOptions(_Section):
    """SAC's separate intrinsic critics (:class:`agents.novelty.sac.IntrinsicCriticSAC`).

    The actor maximises ``Q_e + beta_t Q_i - alpha log pi``: a change of the
    weight changes how two critics learnt all along are mixed, not their targets.
    """

    return_bound: bool = Field(True, description="extrinsic targets at least the discounted return a stored "
                                                 "episode went on to get, where it terminated")
    backup_entropy: bool = Field(False, description="keep SAC's -alpha log pi in the extrinsic targets")
    hold_ent_coef: Optional[float] = Field(0.01, gt=0, description="the temperature once the weight holds at 0 "
                                                                     "(learnt before); null: learnt throughout")


class NoveltyOptions(_Section):
    """Every option of the bonus, by section (see the module docstring).

    ``model``: the density model (:class:`FlowModelOptions` or
    :class:`RNDModelOptions`, chosen by ``kind``); ``weight``
    (:class:`WeightOptions`); ``critics`` (:class:`CriticOptions`, SAC only;
    ``None``: the intrinsic reward is added to SAC's one reward).  Then:
    ``score``: ``"next"`` scores the state an action leads to, ``"current"``
    the state it was taken in; ``update_every``: environment steps (per env)
    between updates of the model; ``staleness``: model updates a replayed
    state's cached bonus may lag behind (off-policy; ``0``: rescored whenever
    the model changed; see :mod:`agents.novelty.buffers`); ``obs_key``: the key
    of a Dict observation to count on (goal-conditioned spaces:
    ``achieved_goal``); ``project``: the features to count on, a list of indices
    (or, from Python, a callable ``(batch, d) -> (batch, k)``); ``device``: of
    the model, ``"auto"`` = the agent's.
    """

    model: ModelOptions = Field(default_factory=FlowModelOptions, description="the density model")
    weight: WeightOptions = Field(default_factory=WeightOptions, description="the weight of the intrinsic reward")
    critics: Optional[CriticOptions] = Field(default_factory=CriticOptions,
                                             description="SAC only: separate intrinsic critics; null: one critic")
    score: Literal["next", "current"] = Field(
        "next", description="next: score the state an action leads to; current: the state it was taken in")
    update_every: int = Field(16, ge=1, description="environment steps (per env) between updates of the model")
    staleness: int = Field(8, ge=0, description="model updates a replayed state's cached bonus may lag "
                                                 "behind (off-policy; 0: rescored whenever the model changed)")
    obs_key: Optional[str] = Field(None, description="the key of a Dict observation to count on "
                                                     "(goal-conditioned spaces: achieved_goal)")
    project: Optional[Union[list[int], Callable]] = Field(
        None, description="the features to count on: a list of indices (from Python: a callable)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="of the model; auto: the agent's")

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        misplaced = [k for k in data if k not in cls.model_fields and k in _MOVED]
        if misplaced:
            raise ValueError("; ".join(f"{k}: moved to novelty.{_MOVED[k]}" for k in misplaced))
        return {**data, "model": _default_kind(data["model"])} if "model" in data else data

    @field_validator("project")
    @classmethod
    def _project(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must list at least one feature index")
        return v

    def as_dict(self) -> dict:
        """The options as a plain dict (what :func:`parse_options` reads back)."""
        return self.model_dump()


#: Where the options of the former flat ``novelty:`` section live now (named in the error of a flat key).
_MOVED = {**{k: f"model.{k}" for k in (*_COMMON, *_FLOW_VECTOR, "kind", "flow", "flow_kwargs", "hidden_features",
                                        "embedding_dim")},
          **{k: f"weight.{k}" for k in WeightOptions.model_fields},
          "return_bound": "critics.return_bound", "intrinsic_critic": "critics (a section; null: one shared critic)",
          "image_size": "model.image.size", "image_levels": "model.image.levels", "image_grey": "model.image.grey"}


def model_kwargs(model: FlowModelOptions | RNDModelOptions, image: bool, defaults: Optional[dict] = None) -> dict:
    """Constructor arguments of the density model: the options that were given, over ``defaults``."""
    names = _COMMON + (_FLOW_VECTOR if model.kind == "flow" and not image else ())
    if model.kind == "flow" and image:
        names += ("estimator", "cell_samples", "ema")
    out = dict(defaults or {})
    out.update({k: getattr(model, k) for k in names if getattr(model, k) is not None})
    if isinstance(model, FlowModelOptions):
        if model.flow is not None:
            out["flow"] = model.flow
        if model.flow_kwargs:
            out["flow_kwargs"] = dict(model.flow_kwargs)
    return out


def parse_options(novelty: Optional[dict | NoveltyOptions]) -> NoveltyOptions:
    """Validate ``novelty``; unknown keys and bad values raise ``ValueError`` naming the key."""
    if isinstance(novelty, NoveltyOptions):
        return novelty
    if novelty is not None and not isinstance(novelty, dict):
        raise ValueError(f"novelty options must be a mapping, got {type(novelty).__name__}")
    try:
        return NoveltyOptions.model_validate(dict(novelty or {}))
    except ValidationError as err:
        raise ValueError(format_errors(err, "novelty")) from None


def format_errors(err: ValidationError, prefix: str = "") -> str:
    """One line per error, ``key: reason`` (dotted keys under ``prefix``; a union's tag is left out)."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        for i in range(len(loc) - 1):  # the union's tag: ("model", "rnd", "cells") -> model.cells
            if loc[i] == "model" and loc[i + 1] in ("flow", "rnd"):
                del loc[i + 1]
                break
        key = ".".join([prefix, *loc] if prefix else loc) or prefix
        msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(e["type"], e["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(f"{key}: {msg}" if key else msg)
    return "; ".join(lines)
