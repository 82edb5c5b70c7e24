"""Options of the novelty bonus: one validated model, used as the ``novelty:`` section of a run config.

Only the options of the *bonus* have defaults here (``kind``, ``beta``,
``form``, ``score``, ``update_every``, ...).  Every option of the density
model defaults to ``None``, which means "the library's default": the
constructors of :class:`flowrl.novelty.FlowPseudoCounter`,
:class:`flowrl.novelty_image.ImagePseudoCounter`, :class:`flowrl.rnd.RNDNovelty`
and :class:`flowrl.rnd_image.ImageRND` state those defaults once, and an agent
gets exactly the counter a library user gets.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flowrl.novelty import ESTIMATORS, KERNELS

__all__ = ["NoveltyOptions", "parse_options", "FORMS", "model_kwargs", "AGENT_FLOW_TRAINING"]

#: How an agent's flow counter on vector observations trains unless told otherwise: 32 samples per
#: observation in few, large minibatches (one step of 512 every 16 observations), a step size and a
#: parameter average that keep the lag of the counts, in observations, where the library's defaults
#: put it.  The library's defaults (one step of 128 per observation) fit offline streams of a few
#: thousand observations; an agent sees tens of thousands, and this costs a quarter of the time.
AGENT_FLOW_TRAINING: dict[str, Any] = {"batch_size": 512, "steps_per_observation": 1 / 16, "lr": 3e-3, "ema": 0.96}

FORMS = ("nonpositive", "positive", "centred")
_FLOW_ONLY = {"flow", "flow_kwargs", "estimator", "resolution", "cells", "kernel", "cell_samples", "smoothing", "ema",
              "image_levels"}
_RND_ONLY = {"hidden_features", "embedding_dim"}
#: Options passed to the density model's constructor when given (``None``: the library's default).
_MODEL_OPTIONS = ("lr", "batch_size", "steps_per_update", "steps_per_observation", "buffer_size", "seed")
_FLOW_OPTIONS = ("estimator", "resolution", "cells", "kernel", "cell_samples", "smoothing", "ema")


class NoveltyOptions(BaseModel):
    """Every option of the bonus.

    The bonus: ``kind`` (``"flow"`` pseudo-count or ``"rnd"``); ``beta``, its
    weight; ``beta_end``: if set, the weight goes linearly from ``beta`` to
    ``beta_end`` over the run (SB3's progress; ``None`` keeps it);
    ``success_window``: if set, the weight is further scaled by ``1 - s``, ``s``
    the share of the last ``success_window`` finished training episodes that
    succeeded (see :attr:`agents.novelty.bonus.NoveltyBonus.beta`);
    ``success_best``: ``s`` is the best share over any full window so far,
    so the weight only falls; ``success_hold``: once any full window's share
    reaches it, the weight is 0 for the rest of the run;
    ``intrinsic_critic``: SAC learns the intrinsic return with critics of
    its own and weights them by the current ``beta`` only in the actor's
    objective (:class:`agents.novelty.sac.IntrinsicCriticSAC`);
    ``return_bound`` (needs ``intrinsic_critic``): the extrinsic critic's
    targets are at least the discounted return a stored episode went on to
    get, where it terminated (self-imitation of what reached the goal); ``form``:
    ``"nonpositive"`` (default) gives ``beta * (b(x) - 1)``
    with ``b = 1 / sqrt(N + 1)`` in ``(0, 1]``, ``"positive"`` gives ``beta * b(x)``
    (see :class:`agents.novelty.bonus.NoveltyBonus` for why the default never
    rewards staying alive); ``score``: ``"next"`` scores the state an action
    leads to, ``"current"`` the state it was taken in; ``update_every``:
    environment steps (per env) between updates of the density model;
    ``staleness``: how many model updates a replayed state's cached bonus may
    lag behind the model (off-policy; ``0``: rescored whenever the model
    changed; see :mod:`agents.novelty.buffers`);
    ``obs_key``: the key of a Dict observation to count on; ``project``: the
    features to count on, a list of indices (or, from Python, a callable
    ``(batch, d) tensor -> (batch, k) tensor``); ``device``: of the density
    model, ``"auto"`` (default) = the agent's (the buffer SB3 builds for the
    agent moves it there; a bonus not attached to an agent stays on the CPU).

    The density model (``None``: the library's default, except the training of
    a flow counter on vectors, :data:`AGENT_FLOW_TRAINING`): ``flow``,
    ``flow_kwargs``, ``estimator``, ``resolution`` (a number or ``"auto"``),
    ``cells``, ``kernel``, ``cell_samples``, ``smoothing``, ``ema``, ``lr``,
    ``batch_size``, ``steps_per_update``, ``steps_per_observation``,
    ``buffer_size``, ``seed`` (see :class:`flowrl.novelty.FlowPseudoCounter`).
    Image observations (a 3-D ``Box``): ``image_size``, ``image_levels``,
    ``image_grey`` (see :class:`flowrl.novelty_image.ImagePseudoCounter`).  RND:
    ``hidden_features``, ``embedding_dim``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    kind: Literal["flow", "rnd"] = "flow"
    beta: float = Field(0.5, ge=0, allow_inf_nan=False)
    beta_end: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    success_window: Optional[int] = Field(None, ge=1)
    success_best: bool = False
    success_hold: Optional[float] = Field(None, gt=0, le=1)
    intrinsic_critic: bool = False
    return_bound: bool = False
    form: Literal["nonpositive", "positive", "centred"] = "nonpositive"
    score: Literal["next", "current"] = "next"
    update_every: int = Field(16, ge=1)
    staleness: int = Field(8, ge=0)
    obs_key: Optional[str] = None
    project: Optional[Union[list[int], Callable]] = None
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    seed: Optional[int] = None
    # the density model: None = the library's default
    flow: Optional[str] = None
    flow_kwargs: dict[str, Any] = Field(default_factory=dict)
    estimator: Optional[Literal[ESTIMATORS]] = None  # type: ignore[valid-type]  # a tuple of literals
    resolution: Optional[Union[float, Literal["auto"]]] = None
    cells: Optional[float] = Field(None, gt=1)
    kernel: Optional[Literal[KERNELS]] = None  # type: ignore[valid-type]
    cell_samples: Optional[int] = Field(None, ge=1)
    smoothing: Optional[float] = Field(None, ge=0)
    ema: Optional[float] = Field(None, ge=0, lt=1)
    lr: Optional[float] = Field(None, gt=0)
    batch_size: Optional[int] = Field(None, ge=1)
    steps_per_update: Optional[int] = Field(None, ge=0)
    steps_per_observation: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    buffer_size: Optional[int] = Field(None, ge=1)
    image_size: Union[int, tuple[int, int]] = (8, 8)
    image_levels: Optional[int] = Field(None, ge=2)
    image_grey: bool = True
    hidden_features: Union[int, tuple[int, ...]] = (64, 64)
    embedding_dim: int = Field(16, ge=1)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: Any) -> Any:
        if v is not None and v != "auto" and not v > 0:
            raise ValueError(f"must be a positive number or 'auto', got {v!r}")
        return v

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: Any) -> tuple[int, int]:
        size = (v, v) if isinstance(v, int) else tuple(v)
        if not all(s >= 1 for s in size):
            raise ValueError(f"must be an int or (h, w) of positive ints, got {v!r}")
        return size  # type: ignore[return-value]

    @field_validator("project")
    @classmethod
    def _project(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must list at least one feature index")
        return v

    @model_validator(mode="after")
    def _options_that_need_others(self) -> "NoveltyOptions":
        if self.success_best and self.success_window is None:
            raise ValueError("success_best needs success_window (the episodes each success share is taken over)")
        if self.success_hold is not None and self.success_window is None:
            raise ValueError("success_hold needs success_window (the episodes each success share is taken over)")
        if self.return_bound and not self.intrinsic_critic:
            raise ValueError("return_bound needs intrinsic_critic=true (it bounds the extrinsic critic's targets)")
        return self

    @model_validator(mode="after")
    def _kind_options(self) -> "NoveltyOptions":
        other = _FLOW_ONLY if self.kind == "rnd" else _RND_ONLY
        fields = type(self).model_fields
        misplaced = sorted(k for k in self.model_fields_set & other
                           if getattr(self, k) != fields[k].get_default(call_default_factory=True))
        if misplaced:
            raise ValueError(f"option(s) {misplaced} do not apply to kind={self.kind!r}")
        return self

    def as_dict(self) -> dict:
        """The options as a plain dict (what :func:`parse_options` reads back)."""
        return self.model_dump()


def model_kwargs(opts: NoveltyOptions, flow_options: bool = True, defaults: Optional[dict] = None) -> dict[str, Any]:
    """Constructor arguments of the density model: the options that were given, over ``defaults``."""
    names = _MODEL_OPTIONS + (_FLOW_OPTIONS if flow_options else ())
    out = dict(defaults or {})
    out.update({k: getattr(opts, k) for k in names if getattr(opts, k) is not None})
    if flow_options and opts.flow is not None:
        out["flow"] = opts.flow
    if flow_options and opts.flow_kwargs:
        out["flow_kwargs"] = dict(opts.flow_kwargs)
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
    """One line per error, ``key: reason`` (dotted keys under ``prefix``)."""
    lines = []
    for e in err.errors():
        key = ".".join([prefix, *(str(p) for p in e["loc"])] if prefix else [str(p) for p in e["loc"]]) or prefix
        msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(e["type"], e["msg"])
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)
