"""Sweep files: a base training config, overrides, seeds and a grid (or a search space), validated.

A sweep file (``configs/sweeps/*.yaml``)::

    base: configs/demo.yaml                 # any training config
    overrides: {total_timesteps: 3000}      # dotted keys, applied to every trial
    seeds: [0, 1, 2, 3, 4]
    grid: {novelty.model.kind: [flow, rnd], novelty.weight.beta: [0.5, 2.0]}
    search: null                            # or {kind: optuna, metric: eval_success_rate, mode: max, num_samples: 20}
    resources: {cpus: 1, gpus: 0}
    address: null                           # null: local Ray; auto or ray://HOST:PORT: an existing cluster
    storage_path: runs/sweeps

A *configuration* is one point of the grid (one value per grid key); a
*trial* is a configuration and a seed, trained by :func:`agents.run.train`
in its own run directory.  Every point is validated like a training config
before anything runs, so an unknown key fails at once, naming it.  With a
``search``, list values become categorical choices and ``{low, high, log,
integer}`` mappings ranges, sampled by Optuna; every sample is run once per
seed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import ConfigError, TrainConfig, apply_overrides, config_from_dict, read_config, read_yaml
from ..run.provenance import code_commit

__all__ = ["Range", "Resources", "Search", "SweepSpec", "load_sweep", "read_sweep", "trial_config", "grid_points",
           "point_tag", "SWEEP_FILE", "SWEEP_FIELDS"]

#: The resolved sweep, written in the sweep folder (a resumed sweep reads it back).
SWEEP_FILE = "sweep.yaml"
#: Keys a sweep sets itself in every trial: not allowed in ``grid`` or ``overrides``.
_RESERVED = ("seed", "resume", "run.out_dir", "run.name")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A range for a search: uniform (``log``: log-uniform) on ``[low, high]``, integers if ``integer``."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _order(self) -> "Range":
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got {self.low} and {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Resources(_Strict):
    """What one trial reserves on a Ray node (fractional GPUs share one device)."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)


class Search(_Strict):
    """An Optuna search through Ray Tune over the ``grid`` keys (each sample is run once per seed)."""

    kind: Literal["optuna"] = "optuna"
    metric: str = Field("eval_success_rate", description="a key of the trials' summary.json")
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(ge=1, description="configurations to sample")
    seed: int = Field(0, description="seed of Optuna's sampler")


class SweepSpec(_Strict):
    """A sweep (see the module docstring); ``name``, ``base_config`` and ``commit`` are filled in when it starts."""

    base: str = Field(description="the base training config (YAML)")
    overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    grid: dict[str, Union[list[Any], Range]] = Field(default_factory=dict)
    search: Optional[Search] = None
    resources: Resources = Field(default_factory=Resources)
    address: Optional[str] = Field(None, description="null: a local Ray; auto or ray://HOST:PORT: a cluster")
    storage_path: str = "runs/sweeps"
    name: Optional[str] = Field(None, description="the sweep folder under storage_path (default: <file>-<time>)")
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial (each from its last checkpoint)")
    max_concurrent: Optional[int] = Field(None, ge=1, description="at most this many trials at once")
    base_config: Optional[dict[str, Any]] = Field(None, description="the base config's content (filled in)")
    commit: Optional[str] = Field(None, description="the code's git commit when the sweep started (filled in)")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {v}")
        return v

    @model_validator(mode="after")
    def _keys(self) -> "SweepSpec":
        for where, keys in (("grid", self.grid), ("overrides", self.overrides)):
            for key in keys:
                if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
                    raise ValueError(f"{where}.{key}: not a dotted config key")
                if key in _RESERVED:
                    hint = " (use seeds:)" if key == "seed" else ""
                    raise ValueError(f"{where}.{key}: set by the sweep itself{hint}")
        for key, values in self.grid.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"grid.{key}: needs at least one value")
            if isinstance(values, Range) and self.search is None:
                raise ValueError(f"grid.{key}: a range needs a search (search: {{kind: optuna, ...}})")
        return self


def _error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{prefix}{key}: {msg}")
    return "invalid sweep: " + "; ".join(lines)


def _resolve_base(base: str, sweep_path: Optional[str]) -> str:
    if os.path.isabs(base) or os.path.exists(base) or sweep_path is None:
        return base
    beside = os.path.join(os.path.dirname(os.path.abspath(sweep_path)), base)
    return beside if os.path.exists(beside) else base


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every configuration of a grid sweep: the Cartesian product of the grid's values (``[{}]`` without a grid)."""
    keys = list(spec.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "+".join(f"{k}-{_format(v)}" for k, v in value.items()) or "empty"
    if isinstance(value, (list, tuple)):
        return "-".join(_format(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def point_tag(point: dict[str, Any]) -> str:
    """A folder-safe name of a configuration: ``novelty.model.kind=flow_seed=1`` (``base`` when empty)."""
    tag = "_".join(f"{k}={_format(v)}" for k, v in point.items()) or "base"
    tag = re.sub(r"[^A-Za-z0-9._=+-]", "", tag)
    if len(tag) > 80:
        tag = tag[:71] + "-" + hashlib.sha1(tag.encode()).hexdigest()[:8]
    return tag


def trial_config(spec: SweepSpec, point: dict[str, Any], seed: int, out_dir: str, name: str) -> TrainConfig:
    """The training config of one trial: base + overrides + the point, seeded, in ``out_dir/name``."""
    data = apply_overrides(spec.base_config or {}, spec.overrides)
    data = apply_overrides(data, point)
    data = apply_overrides(data, {"seed": seed, "run.out_dir": out_dir, "run.name": name, "resume": None})
    if data.get("device", "auto") == "auto" and spec.resources.gpus == 0:
        data["device"] = "cpu"  # a trial that reserved no GPU uses none
    data["run"]["progress_bar"] = False  # trials run in Ray workers: their bars would interleave
    if data.get("wandb"):
        data["wandb_group"] = data.get("wandb_group") or spec.name
    return config_from_dict(data)


def _check_points(spec: SweepSpec) -> None:
    """Validate every configuration (grid) or every value of every key (search) as a training config."""
    if spec.search is None:
        points = grid_points(spec)
    else:
        first = {k: (v[0] if isinstance(v, list) else v.low) for k, v in spec.grid.items()}
        points = [first]
        for key, values in spec.grid.items():
            for value in (values if isinstance(values, list) else [values.low, values.high]):
                points.append({**first, key: int(value) if isinstance(values, Range) and values.integer else value})
    for point in points:
        try:
            trial_config(spec, point, spec.seeds[0], "runs", "check")
        except ConfigError as err:
            where = f" (grid point {point})" if point else ""
            raise ConfigError(f"{err}{where}") from None


def load_sweep(path: str, overrides: Optional[dict[str, Any]] = None) -> SweepSpec:
    """Read a sweep file, apply ``overrides`` and validate it and every configuration it makes.

    An override whose first key is a sweep field (``seeds``, ``resources.cpus``,
    ``storage_path``, ``grid.novelty.weight.beta``, ...) sets that field; any other goes
    to the training config of every trial (``total_timesteps=500`` =
    ``overrides.total_timesteps=500``).
    The base config is read now and kept in ``base_config``; ``name`` defaults
    to ``<file stem>-<date>-<time>``.
    """
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head in ("grid", "overrides") and rest:  # their keys are dotted config keys: grid.novelty.weight.beta=[1, 2]
            head, key = head, rest
        elif head in SweepSpec.model_fields:
            data = apply_overrides(data, {key: value})
            continue
        else:
            head = "overrides"
        if not isinstance(data.setdefault(head, {}), dict):
            raise ConfigError(f"{head}: must be a mapping of dotted keys to values")
        data[head][key] = value
    for filled in ("base_config", "commit"):
        if filled in data:
            raise ConfigError(f"{filled}: filled in by the sweep when it starts")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_error(err)) from None
    base = _resolve_base(spec.base, path)
    name = spec.name or f"{os.path.splitext(os.path.basename(path))[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = spec.model_copy(update={"base": base, "base_config": read_config(base), "name": name,
                                   "commit": code_commit()})
    _check_points(spec)
    return spec


def read_sweep(sweep_dir: str) -> SweepSpec:
    """The resolved spec of a sweep folder (its ``sweep.yaml``)."""
    path = os.path.join(sweep_dir, SWEEP_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{sweep_dir!r} is not a sweep folder (no {SWEEP_FILE})")
    try:
        return SweepSpec.model_validate(read_yaml(path))
    except ValidationError as err:
        raise ConfigError(_error(err, f"{path}: ")) from None


def save_sweep(spec: SweepSpec, sweep_dir: str) -> None:
    """Write the resolved spec to ``sweep_dir/sweep.yaml`` (atomically)."""
    path = os.path.join(sweep_dir, SWEEP_FILE)
    with open(path + ".tmp", "w") as f:
        yaml.safe_dump(spec.model_dump(mode="json"), f, sort_keys=False)
    os.replace(path + ".tmp", path)


SWEEP_FIELDS = tuple(SweepSpec.model_fields)
