"""Options of the novelty bonus: a plain dict in, validated settings out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from flowrl.novelty import ESTIMATORS

__all__ = ["NoveltyOptions", "parse_options"]

_FLOW_ONLY = {"flow", "flow_kwargs", "estimator", "resolution", "cell_samples", "smoothing", "ema",
              "image_levels"}
_RND_ONLY = {"hidden_features", "embedding_dim"}


@dataclass
class NoveltyOptions:
    """Every option of the bonus, with its default.

    ``kind``: ``"flow"`` (flow pseudo-count) or ``"rnd"``; ``beta``: weight of
    the intrinsic reward; ``score``: ``"next"`` scores the state an action
    leads to, ``"current"`` the state it was taken in; ``update_every``:
    environment steps (per env) between updates of the density model, each
    taking ``steps_per_update`` Adam steps of size ``lr`` on ``batch_size``
    observations from a buffer of the last ``buffer_size``; ``obs_key``: the
    key of a Dict observation to model; ``device``: of the density model,
    ``"auto"`` (default) = the agent's (the buffer SB3 builds for the agent
    moves it there; a bonus not attached to an agent stays on the CPU).
    Flow options: ``flow``, ``flow_kwargs`` (size), ``estimator``,
    ``resolution``, ``cell_samples``, ``smoothing``, ``ema`` (see
    :class:`flowrl.novelty.FlowPseudoCounter`).  The agent's default flow is
    ``realnvp``, not the counter's ``nsf``: the spline flow counts better
    (``scripts/bench_pseudocounts.py``) but its training step costs about ten
    times more here, which every environment step pays; pass
    ``{"flow": "nsf", "resolution": 0.4}`` to trade speed for counts.  RND options:
    ``hidden_features``, ``embedding_dim``.

    Image observations (a 3-D ``Box``): ``flow`` defaults to ``"glow"``
    (``"realnvp"`` also models images); frames are area-averaged to
    ``image_size`` ``(h, w)``, made grey if ``image_grey`` and quantised to
    ``image_levels`` levels (see :class:`flowrl.novelty_image.ImagePseudoCounter`);
    ``resolution`` and ``smoothing`` do not apply (the cell is a quantisation level);
    an empty ``flow_kwargs`` means the counter's small glow and ``cell_samples``
    defaults to 64.  Scoring dominates the cost for off-policy agents (every
    minibatch is scored): the counter evaluates each *distinct* quantised
    frame once, ``distinct * cell_samples`` flow evaluations, and memoises
    the values until its next update, so repeated frames cost almost nothing.
    With ``kind="rnd"`` frames go to :class:`flowrl.rnd_image.ImageRND`
    (area-averaged to ``image_size``, grey if ``image_grey``; ``hidden_features``
    are then the channels of its strided convolutions).
    """

    kind: str = "flow"
    beta: float = 0.5
    score: str = "next"
    update_every: int = 16
    steps_per_update: int = 8
    lr: float = 1e-3
    batch_size: int = 128
    buffer_size: int = 100_000
    obs_key: Optional[str] = None
    device: str = "auto"
    seed: Optional[int] = None
    flow: Optional[str] = None  # "realnvp" for vectors, "glow" for images
    flow_kwargs: dict = field(default_factory=dict)
    estimator: str = "cell"
    resolution: float = 0.2
    cell_samples: Optional[int] = None  # 8 for vectors, 64 for images
    smoothing: float = 1.0
    ema: float = 0.99
    image_size: Any = (8, 8)
    image_levels: int = 2
    image_grey: bool = True
    hidden_features: Any = (64, 64)
    embedding_dim: int = 16

    def as_dict(self) -> dict:
        return asdict(self)


def parse_options(novelty: Optional[dict]) -> NoveltyOptions:
    """Validate ``novelty`` (unknown or misplaced keys and bad values raise ``ValueError``)."""
    given = dict(novelty or {})
    known = {f.name for f in fields(NoveltyOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown novelty option(s) {unknown}; accepted: {sorted(known)}")
    opts = NoveltyOptions(**given)
    if opts.kind not in ("flow", "rnd"):
        raise ValueError(f"novelty kind must be 'flow' or 'rnd', got {opts.kind!r}")
    misplaced = sorted(set(given) & (_FLOW_ONLY if opts.kind == "rnd" else _RND_ONLY))
    if misplaced:
        raise ValueError(f"novelty option(s) {misplaced} do not apply to kind={opts.kind!r}")
    if opts.score not in ("next", "current"):
        raise ValueError(f"novelty score must be 'next' or 'current', got {opts.score!r}")
    if opts.estimator not in ESTIMATORS:
        raise ValueError(f"novelty estimator must be one of {ESTIMATORS}, got {opts.estimator!r}")
    for name in ("beta",):
        if not getattr(opts, name) >= 0:
            raise ValueError(f"novelty {name} must be >= 0, got {getattr(opts, name)}")
    for name in ("update_every", "batch_size", "buffer_size", "lr"):
        if not getattr(opts, name) > 0:
            raise ValueError(f"novelty {name} must be positive, got {getattr(opts, name)}")
    if opts.steps_per_update < 0:
        raise ValueError(f"novelty steps_per_update must be >= 0, got {opts.steps_per_update}")
    size = (opts.image_size,) * 2 if isinstance(opts.image_size, int) else tuple(opts.image_size)
    if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise ValueError(f"novelty image_size must be an int or (h, w) of positive ints, got {opts.image_size!r}")
    opts.image_size = size
    if opts.cell_samples is not None and not (isinstance(opts.cell_samples, int) and opts.cell_samples >= 1):
        raise ValueError(f"novelty cell_samples must be a positive int, got {opts.cell_samples!r}")
    if not isinstance(opts.image_levels, int) or opts.image_levels < 2:
        raise ValueError(f"novelty image_levels must be an int >= 2, got {opts.image_levels!r}")
    if not isinstance(opts.flow_kwargs, dict):
        raise ValueError(f"novelty flow_kwargs must be a dict, got {type(opts.flow_kwargs).__name__}")
    return opts
