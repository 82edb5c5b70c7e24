"""Experiment configuration: YAML files validated into typed objects (pydantic v2).

A config names the environment, the algorithm, the policy (``gaussian`` or a
``flow`` action distribution), an optional ``novelty`` bonus and the run's
bookkeeping.  Unknown keys and bad values raise :class:`ConfigError` naming
the key (``algo.name: Input should be 'sac', 'ppo', 'a2c' or 'dqn'``).  Any key can
be overridden from the command line with ``key=value``, nested keys with
dots (``env.kwargs.max_episode_steps=100``); values are parsed as YAML.

A config file may start from another: ``base: demo.yaml`` (a path relative to
the file) reads that config first and merges this file's keys into it,
mapping by mapping (a list or scalar replaces; ``null`` replaces too, so
``novelty: null`` turns the bonus off), so a task config states only what
differs from the agent it builds on.  A file that names another ``env.id``
does not inherit the base's ``env.kwargs``, ``env.wrappers`` or
``env.packages`` (they belong to the base's environment).
"""

from __future__ import annotations

import copy
import os
import re
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .novelty.options import NoveltyOptions, format_errors

__all__ = [
    "ConfigError", "EnvConfig", "AlgoConfig", "RunConfig", "EvalConfig", "TrainConfig",
    "load_config", "read_config", "merge_configs",
    "parse_overrides", "apply_overrides", "config_from_dict", "save_config", "wrapper_spec",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def wrapper_spec(item: Any) -> tuple[str, dict[str, Any]]:
    """``(import path, kwargs)`` of one ``env.wrappers`` entry: ``"a.B"``, ``{"a.B": None}`` or ``{"a.B": {k: v}}``.

    ``ValueError`` for anything else.
    """
    if isinstance(item, str):
        path, kwargs = item, None
    elif isinstance(item, dict) and len(item) == 1:
        path, kwargs = next(iter(item.items()))
    else:
        raise ValueError(f"a wrapper is an import path or a one-key mapping {{path: kwargs}}, got {item!r}")
    if not isinstance(path, str) or not _DOTTED.fullmatch(path):
        raise ValueError(f"a wrapper path is module.Class (e.g. gymnasium.wrappers.FlattenObservation), got {path!r}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"the keyword arguments of {path} must be a mapping, got {kwargs!r}")
    return path, dict(kwargs or {})


def _wrapper_item(item: Any) -> Any:
    wrapper_spec(item)
    return item


def _module_name(name: str) -> str:
    if not _MODULE.fullmatch(name):
        raise ValueError(f"a package is an importable module name (e.g. gymnasium_robotics), got {name!r}")
    return name


class EnvConfig(_Strict):
    """Which environment to train on (built by :mod:`agents.run.env_builder`)."""

    id: str = Field(description="gymnasium id, e.g. flowrl/PointMaze-UMaze-v0, or module:EnvId "
                                "(gymnasium_robotics:PointMaze_UMaze-v3) to import the module first")
    packages: list[Annotated[str, AfterValidator(_module_name)]] = Field(
        default_factory=list, description="modules imported before gym.make, which register their envs "
                                          "(e.g. [gymnasium_robotics, minigrid])")
    wrappers: list[Annotated[Any, AfterValidator(_wrapper_item)]] = Field(
        default_factory=list, description="wrapper classes applied in order to each env before vectorisation: "
                                          "import paths, or one-key mappings {path: kwargs}")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of gym.make")
    n_envs: int = Field(1, ge=1, description="number of environments in the vectorised env")
    normalize_obs: bool = Field(
        False, description="show the agent VecNormalize-d observations (running mean/std, saved with the "
                           "model); a novelty bonus models the raw ones either way")


class AlgoConfig(_Strict):
    """The SB3 algorithm and its constructor arguments."""

    name: Literal["sac", "ppo", "a2c", "dqn"] = Field("sac", description="the SB3 algorithm")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="SB3 constructor arguments")
    learning_rate_end: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="decay the learning rate linearly from kwargs.learning_rate (or the algorithm's default) "
                    "to this value over total_timesteps; null keeps it constant")


class RunConfig(_Strict):
    """Where and how the run is recorded."""

    out_dir: str = Field("runs", description="parent folder of run directories")
    name: Optional[str] = Field(None, description="run directory name (default: <config>-s<seed>-<date>-<time>)")
    checkpoint_every: int = Field(5000, ge=1, description="env steps between atomic checkpoints")
    log_every: int = Field(1000, ge=1, description="env steps between rows of metrics.csv")
    progress_bar: bool = Field(True, description="show a progress bar while training")
    plots: bool = Field(True, description="draw learning curves, coverage and density maps at the end")
    tensorboard: bool = Field(False, description="write TensorBoard logs (wandb gets the scalars directly either way)")
    verbose: int = Field(0, ge=0, le=2, description="SB3's verbosity (0, 1 or 2)")


class EvalConfig(_Strict):
    """Evaluation of the final policy (also used by ``flowrl eval``)."""

    episodes: int = Field(10, ge=1, description="episodes per evaluation")
    deterministic: bool = Field(True, description="evaluate the policy's deterministic action")
    every: Optional[int] = Field(None, ge=1, description="env steps between evaluations of the live policy "
                                 "during training (logged as eval/success_rate); null: only at the end")


class TrainConfig(_Strict):
    """One training run (see ``configs/*.yaml`` for documented examples)."""

    env: EnvConfig = Field(description="the environment")
    algo: AlgoConfig = Field(default_factory=AlgoConfig, description="the algorithm")
    policy: Literal["gaussian", "flow"] = Field(
        "gaussian", description="gaussian: SB3's default policy; flow: a flow action distribution (flow, flow_kwargs)")
    flow: str = Field("realnvp", description="flow of the policy when policy=flow (flowrl.available_flows())")
    flow_kwargs: dict[str, Any] = Field(default_factory=dict, description="options of the policy's flow")
    policy_kwargs: dict[str, Any] = Field(default_factory=dict, description="other SB3 policy_kwargs")
    novelty: Optional[NoveltyOptions] = Field(None, description="novelty bonus options (agents.novelty); null = off")
    total_timesteps: int = Field(10_000, ge=1, description="environment steps of the run (all envs together)")
    seed: int = Field(0, ge=0, description="seed of the run (envs, networks, bonus)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: Optional[int] = Field(
        1, ge=1, description="PyTorch threads of flowrl train/eval, sweep trials and the demo (one is fastest "
                             "for MLP-sized agents, see agents.run.threads); null: PyTorch's default (one per "
                             "core); an OMP_NUM_THREADS in the environment wins")
    wandb: bool = Field(False, description="log to Weights & Biases (works with WANDB_MODE=offline)")
    wandb_project: str = Field("flowrl", description="wandb project of the run")
    wandb_group: Optional[str] = Field(None, description="wandb group of the run (flowrl sweep: the sweep's name)")
    run: RunConfig = Field(default_factory=RunConfig, description="where and how the run is recorded")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation of the policy")
    resume: Optional[str] = Field(None, description="run directory to continue from its last checkpoint")

    @model_validator(mode="after")
    def _critics_for_sac_only(self) -> "TrainConfig":
        """``novelty.critics`` are SAC's: another algorithm drops the default section and rejects a given one."""
        novelty = self.novelty
        if novelty is None or novelty.critics is None or self.algo.name == "sac":
            return self
        if "critics" in novelty.model_fields_set:
            raise ValueError(f"novelty.critics: SAC only, but algo.name is {self.algo.name} (one critic); "
                             "set novelty.critics to null")
        novelty.critics = None
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("flow")
    @classmethod
    def _flow(cls, v: str) -> str:
        import flowrl

        if v not in flowrl.available_flows():
            raise ValueError(f"unknown flow {v!r}; available: {', '.join(flowrl.available_flows())}")
        return v


def _format(err: ValidationError) -> str:
    return "invalid config: " + (format_errors(err) or "<root>: invalid")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict; raises :class:`ConfigError` naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def parse_value(text: str) -> Any:
    """Parse an override's value: ints and floats (``1e-3`` too), else YAML (``true``, ``[64, 64]``, ``null``)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "seed=3"]`` -> ``{"a.b": 1, "seed": 3}``; raises :class:`ConfigError` on malformed items."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
            raise ConfigError(f"override {item!r} is not of the form key=value (nested keys: a.b=value)")
        out[key] = parse_value(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with dotted ``overrides`` set (intermediate mappings are created)."""
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"cannot set {dotted!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def read_yaml(path: str) -> dict[str, Any]:
    """The mapping stored in a YAML file (``ConfigError`` if missing or not a mapping)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys to values")
    return data


def merge_configs(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merge key by key, any other value (``null`` too) replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: Keys of ``env`` that describe one environment: a config naming another ``env.id`` does not inherit them.
_ENV_SPECIFIC = ("kwargs", "wrappers", "packages")


def read_config(path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The training config stored at ``path`` with its ``base:`` chain merged in (:func:`merge_configs`).

    ``base`` is a path relative to the file's folder (or absolute); a missing
    base or a cycle raises :class:`ConfigError` naming the files.
    """
    real = os.path.realpath(path)
    if real in _seen:
        raise ConfigError(f"base: {path!r} inherits from itself ({' -> '.join(_seen + (real,))})")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"base: a path to the config {path!r} builds on, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    if not os.path.isfile(base_path):
        raise ConfigError(f"base: {base!r} (from {path!r}) does not exist")
    inherited = read_config(base_path, _seen + (real,))
    env, base_env = data.get("env"), inherited.get("env")
    if isinstance(env, dict) and isinstance(base_env, dict) and env.get("id", base_env.get("id")) != base_env.get("id"):
        inherited["env"] = {k: v for k, v in base_env.items() if k not in _ENV_SPECIFIC}
    return merge_configs(inherited, data)


def load_config(path: str, overrides: Optional[list[str] | dict[str, Any]] = None) -> TrainConfig:
    """Load ``path`` (YAML, with its ``base:`` chain), apply ``key=value`` overrides, validate."""
    data = read_config(path)
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        data = apply_overrides(data, overrides)
    return config_from_dict(data)


def save_config(cfg: TrainConfig, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
    os.replace(tmp, path)
