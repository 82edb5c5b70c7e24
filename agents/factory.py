"""Agents from configs, and the training run behind ``flowrl train``.

:func:`build_model` turns a :class:`agents.config.TrainConfig` into an SB3
algorithm (SAC, PPO, A2C or DQN): ``policy: gaussian`` uses SB3's ``MlpPolicy`` (``MultiInputPolicy``
for Dict observations); ``policy: flow``
uses :class:`agents.policies.FlowSACPolicy` (SAC) or
:class:`agents.policies.FlowActorCriticPolicy` (PPO/A2C) with
``policy_kwargs = {flow, flow_kwargs, **policy_kwargs}``; a ``novelty``
section goes to :func:`agents.novelty.attach_novelty`, which returns the
updated constructor arguments and the callbacks to pass to ``learn``.

:func:`train` runs one experiment in a run directory::

    runs/<name>/
      config.yaml        resolved config
      episodes.csv       one row per finished episode
      metrics.csv        rolling metrics every run.log_every steps
      progress*.csv      SB3's logger scalars (losses, novelty statistics)
      checkpoints/       atomic checkpoints (latest -> step_<N>/)
      final_model.zip    the trained agent
      vecnormalize.pkl   observation statistics (env.normalize_obs; also in each checkpoint)
      coverage.npz       visitation counts
      summary.json       final figures (success, coverage, wall time)
      *.png              pictures (see agents.plots)
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HumanOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
)
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import envs  # noqa: F401  (registers the flowrl/ environments)
from envs.coverage import CoverageTracker, maze_tracker
from envs.deep_sea import DeepSea

from .callbacks import (
    MetricsCallback,
    PeriodicCheckpoint,
    PeriodicEvaluation,
    ProgressBar,
    latest_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from .action_spaces import check_action_space
from .config import ConfigError, TrainConfig, config_from_dict, read_yaml, save_config
from .env_builder import env_factory, make_single_env
from .novelty import IntrinsicCriticSAC, attach_novelty, find_novelty, novelty_density, observation_dim
from .policies import FlowActorCriticPolicy, FlowSACPolicy
from .schedule import LinearSchedule
from .resume import STATE_FILE, RestoreCallback, read_training_state, restore_training_state, save_training_state, \
    truncate_csvs
from .threads import torch_threads

__all__ = [
    "ALGORITHMS", "resolve_device", "make_env", "build_model", "coverage_tracker", "train", "TrainResult",
    "load_run", "load_obs_normalizer", "evaluate", "novelty_density_fn", "algorithm_class",
]

#: The VecNormalize statistics, saved beside each model file (final model and checkpoints).
OBS_STATS_FILE = "vecnormalize.pkl"

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO, "a2c": A2C, "dqn": DQN}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; a CUDA request without CUDA is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    return device


def make_env(cfg: TrainConfig, seed: Optional[int] = None) -> VecEnv:
    """The vectorised, Monitor-wrapped training env of ``cfg`` (seeded with ``seed``).

    Each env is ``gym.make(env.id, **env.kwargs)`` with ``env.wrappers`` after
    importing ``env.packages`` (:func:`agents.env_builder.env_factory`).

    With ``env.normalize_obs`` it is wrapped in ``VecNormalize`` (observations
    only, fresh statistics; :func:`train` restores every layer when it resumes).

    Example:
        >>> from agents.config import TrainConfig
        >>> env = make_env(TrainConfig(env=dict(id="flowrl/PointMaze-v0", n_envs=2)))
        >>> env.num_envs, env.observation_space.shape
        (2, (2,))
    """
    env = make_vec_env(env_factory(cfg.env), n_envs=cfg.env.n_envs, seed=cfg.seed if seed is None else seed,
                       env_kwargs=dict(cfg.env.kwargs))
    return VecNormalize(env, norm_obs=True, norm_reward=False) if cfg.env.normalize_obs else env


def algorithm_class(cfg: TrainConfig) -> type[BaseAlgorithm]:
    """The SB3 class of ``algo.name``; SAC with ``novelty.critics`` (the default) is :class:`IntrinsicCriticSAC`."""
    algo_class = ALGORITHMS[cfg.algo.name]
    if algo_class is SAC and cfg.novelty is not None and cfg.novelty.critics is not None:
        return IntrinsicCriticSAC
    return algo_class


def _policy(cfg: TrainConfig, algo_class: type[BaseAlgorithm], env: VecEnv) -> tuple[Any, dict]:
    """The policy class (or SB3 alias) and its ``policy_kwargs``; ``ConfigError`` for an action space it cannot act in.

    Dict observations: SB3's ``MultiInputPolicy`` for ``gaussian``; the flow
    policies pick SB3's ``CombinedExtractor`` themselves.
    """
    kwargs = dict(cfg.policy_kwargs)
    check_action_space(cfg, algo_class, env.action_space)
    if cfg.policy == "gaussian":
        return ("MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy"), kwargs
    kwargs.update(flow=cfg.flow, flow_kwargs=dict(cfg.flow_kwargs))
    return (FlowSACPolicy if issubclass(algo_class, SAC) else FlowActorCriticPolicy), kwargs


def _attach_novelty(cfg: TrainConfig, algo_class, algo_kwargs: dict, env: VecEnv) -> tuple[dict, list[BaseCallback]]:
    if not cfg.novelty:
        return algo_kwargs, []
    try:
        return attach_novelty(algo_class, algo_kwargs, env, cfg.novelty)
    except ValueError as err:
        raise ConfigError(f"novelty: {err}") from None


def build_model(
    cfg: TrainConfig, env: VecEnv, device: Optional[str] = None
) -> tuple[BaseAlgorithm, list[BaseCallback]]:
    """The SB3 algorithm of ``cfg`` on ``env`` and the extra callbacks its novelty bonus needs."""
    algo_class = algorithm_class(cfg)
    policy, policy_kwargs = _policy(cfg, algo_class, env)
    kwargs = dict(cfg.algo.kwargs)
    for reserved in ("policy", "env", "seed", "device", "policy_kwargs", "tensorboard_log"):
        if reserved in kwargs:
            raise ConfigError(f"algo.kwargs.{reserved}: set it with the top-level key instead")
    if cfg.algo.learning_rate_end is not None:
        kwargs["learning_rate"] = _linear_learning_rate(algo_class, kwargs.get("learning_rate"),
                                                        cfg.algo.learning_rate_end)
    kwargs, callbacks = _attach_novelty(cfg, algo_class, kwargs, env)
    try:
        model = algo_class(
            policy, env, seed=cfg.seed, device=device or resolve_device(cfg.device),
            policy_kwargs=policy_kwargs or None, **kwargs,
        )
    except TypeError as err:
        raise ConfigError(f"algo.kwargs: {err}") from None
    return model, list(callbacks)


def _linear_learning_rate(algo_class, start: Any, end: float) -> LinearSchedule:
    """From ``start`` (the algorithm's default learning rate when ``None``) to ``end`` over the run.

    Why (``algo.learning_rate_end``): an exploring agent needs a fast critic while
    the bonus moves, but once it reaches the goal a constant high rate keeps
    moving the deterministic policy; on the demo maze it flipped between solving
    and pressing into a wall from one evaluation to the next until the rate decayed.
    """
    if start is None:
        start = inspect.signature(algo_class.__init__).parameters["learning_rate"].default
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not start > 0:
        raise ConfigError(f"algo.learning_rate_end: needs a positive number as algo.kwargs.learning_rate, got {start!r}")
    return LinearSchedule(float(start), end)


def coverage_tracker(env: VecEnv) -> Optional[CoverageTracker]:
    """A maze-shaped tracker when the env is a maze, else a 20x20 grid over the first two features of a finite
    vector observation box (none for other spaces)."""
    base = env.envs[0].unwrapped if hasattr(env, "envs") else None
    if base is not None and hasattr(base, "layout") and hasattr(base, "extent"):
        return maze_tracker(base)
    if isinstance(base, DeepSea):
        return CoverageTracker((0, base.size, 0, base.size), base.size)
    space = env.observation_space
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.shape[0] >= 2 and np.all(np.isfinite(space.low[:2])) \
            and np.all(np.isfinite(space.high[:2])):
        return CoverageTracker((space.low[0], space.high[0], space.low[1], space.high[1]), 20)
    return None


def _first_two_features(obs: np.ndarray) -> np.ndarray:
    """The coverage tracker's default projection: the first two features of each observation."""
    return np.asarray(obs).reshape(len(obs), -1)[:, :2]


def novelty_density_fn(model: BaseAlgorithm) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """``f(obs (N, d)) -> log-density (N,)`` of the model's novelty density (``None`` without one)."""
    try:
        bonus = find_novelty(model)
        novelty_density(bonus, np.zeros((1, observation_dim(model.observation_space, bonus.options.obs_key)),
                                        dtype=np.float32))
    except ValueError:  # no bonus, or one without a density (RND)
        return None
    return lambda obs: np.asarray(novelty_density(bonus, np.asarray(obs, dtype=np.float32)), dtype=np.float64)


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, the model and the final figures."""

    run_dir: str
    model: BaseAlgorithm
    summary: dict


def _new_run_dir(cfg: TrainConfig, config_name: str) -> str:
    name = cfg.run.name or f"{config_name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = os.path.join(cfg.run.out_dir, name)
    base, k = path, 1
    while os.path.exists(path):
        path, k = f"{base}-{k}", k + 1
    os.makedirs(path)
    return path


class WandbOutputFormat(KVWriter):
    """SB3 logger output that sends every numeric scalar to a wandb run at SB3's step.

    wandb's SB3 integration forwards SB3's scalars only by syncing TensorBoard
    event files, which wandb-core polls in the background and (0.31) does not
    drain when the run finishes, so the last rows of a run, or all rows of a
    short one, can be lost.  Logging through the SB3 logger itself is
    synchronous: every dumped row reaches the run.
    """

    def __init__(self, run: Any):
        self.run = run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        row = {k: float(v) for k, v in key_values.items()
               if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
        if row:
            self.run.log(row, step=int(step))

    def close(self) -> None:
        pass


def _logger(run_dir: str, cfg: TrainConfig, csv_name: str, wandb_run: Any = None) -> Logger:
    formats: list[KVWriter] = [CSVOutputFormat(os.path.join(run_dir, csv_name))]
    if cfg.run.tensorboard:
        formats.append(TensorBoardOutputFormat(os.path.join(run_dir, "tensorboard")))
    if wandb_run is not None:
        formats.append(WandbOutputFormat(wandb_run))
    if cfg.run.verbose:
        formats.append(HumanOutputFormat(sys.stdout))
    return Logger(run_dir, formats)


def _start_wandb(cfg: TrainConfig, run_dir: str):
    import wandb
    from wandb.integration.sb3 import WandbCallback

    id_file = os.path.join(run_dir, "wandb_id.txt")
    run_id = open(id_file).read().strip() if os.path.exists(id_file) else None
    # SB3's scalars go to the run through WandbOutputFormat (synchronous), not through
    # sync_tensorboard, whose background reader can miss the last rows of a run.
    run = wandb.init(
        project=cfg.wandb_project, name=os.path.basename(run_dir), dir=run_dir, id=run_id, resume="allow",
        group=cfg.wandb_group,
        config=cfg.model_dump(mode="json"),
    )
    with open(id_file, "w") as f:
        f.write(run.id)
    return run, WandbCallback(verbose=0)


@dataclass
class _Run:
    """Everything one training run holds between :func:`_setup` and :func:`_finish`."""

    cfg: TrainConfig
    run_dir: str
    device: str
    env: VecEnv
    model: BaseAlgorithm
    novelty_callbacks: list[BaseCallback]
    tracker: Optional[CoverageTracker]
    normalizer: Optional[VecNormalize]
    metrics: MetricsCallback
    callbacks: list[BaseCallback]  # wandb's
    restore: Optional[RestoreCallback]  # when resuming
    wandb_run: Any
    t_start: float

    def checkpoint(self) -> str:
        """Write one checkpoint of the run (model, buffer, training state, statistics, coverage)."""
        m = self.metrics
        extra = {"episodes": m.episodes, "successes": m.successes, "first_success": m.first_success}
        arrays = {"coverage_counts": self.tracker.counts} if self.tracker is not None else None
        resumable = [*self.novelty_callbacks, self.metrics]
        files: dict[str, Callable[[str], None]] = {
            STATE_FILE: lambda path: save_training_state(path, self.model, resumable, self.run_dir)}
        if self.normalizer is not None:
            files[OBS_STATS_FILE] = self.normalizer.save
        return save_checkpoint(self.model, os.path.join(self.run_dir, "checkpoints"), extra, arrays,
                               extra_files=files)


def train(
    cfg: TrainConfig, config_name: str = "run", on_model: Optional[Callable] = None,
    progress_desc: Optional[str] = None, progress_position: int = 0, callbacks: Sequence[BaseCallback] = (),
) -> TrainResult:
    """Train ``cfg`` in a new run directory, or continue ``cfg.resume`` exactly; returns the run and its figures.

    Runs with ``cfg.threads`` torch threads (:func:`agents.threads.torch_threads`); ``callbacks`` are
    passed to ``learn`` after the run's own (e.g. :class:`agents.health.HealthCallback`).
    """
    with torch_threads(cfg.threads):
        run = _setup(cfg, config_name)
        run.callbacks.extend(callbacks)
        if on_model is not None:
            on_model(run.model)
        _learn(run, progress_desc, progress_position)
        return _finish(run)


def _setup(cfg: TrainConfig, config_name: str) -> _Run:
    """A new run directory with a fresh agent, or ``cfg.resume``'s with the agent of its last good checkpoint."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    set_random_seed(cfg.seed)
    ckpt, state = None, None
    if cfg.resume:
        ckpt = latest_checkpoint(os.path.join(cfg.resume, "checkpoints"))
        if ckpt is None:
            raise ConfigError(f"resume: no complete checkpoint in {cfg.resume!r}")
        try:
            state = read_training_state(ckpt)
        except ValueError as err:
            raise ConfigError(f"resume: {err}") from None
        run_dir = cfg.resume
        truncate_csvs(run_dir, state["csv_lines"])  # rows a killed process wrote after the checkpoint
    else:
        run_dir = _new_run_dir(cfg, config_name)
    save_config(cfg.model_copy(update={"resume": None}), os.path.join(run_dir, "config.yaml"))

    env = make_env(cfg)
    wandb_run, callbacks = None, []
    if cfg.wandb:
        wandb_run, wandb_cb = _start_wandb(cfg, run_dir)
        callbacks.append(wandb_cb)
    model, novelty_callbacks = build_model(cfg, env, device)
    tracker = coverage_tracker(env)
    if ckpt is not None and state is not None:
        model, novelty_callbacks = _resume(cfg, model, ckpt, state, env, device, tracker)
    csv_name = "progress.csv" if ckpt is None else f"progress-{model.num_timesteps:010d}.csv"
    model.set_logger(_logger(run_dir, cfg, csv_name, wandb_run))
    metrics = MetricsCallback(run_dir, tracker, _first_two_features, cfg.run.log_every)
    restore = RestoreCallback(state, [*novelty_callbacks, metrics]) if state is not None else None
    return _Run(cfg, run_dir, device, env, model, novelty_callbacks, tracker,
                env if isinstance(env, VecNormalize) else None, metrics, callbacks, restore, wandb_run, t_start)


def _resume(cfg: TrainConfig, model: BaseAlgorithm, ckpt: str, state: dict, env: VecEnv, device: str,
            tracker: Optional[CoverageTracker]) -> tuple[BaseAlgorithm, list[BaseCallback]]:
    """The checkpoint's agent on ``env``, with the env's layers as they were (:mod:`agents.resume`)."""
    model = _restore(model, ckpt, env, device, tracker)
    try:
        restore_training_state(model, state)
    except ValueError as err:
        raise ConfigError(f"resume: {err}") from None
    novelty_callbacks: list[BaseCallback] = []
    if cfg.novelty:
        from .novelty import novelty_callbacks as restored_novelty_callbacks

        novelty_callbacks = restored_novelty_callbacks(model)  # the bonus saved with the model
    return model, novelty_callbacks


def _learn(run: _Run, progress_desc: Optional[str], progress_position: int) -> None:
    """``learn`` up to ``total_timesteps`` with the run's callbacks, then flush SB3's logger."""
    cfg, model = run.cfg, run.model
    remaining = cfg.total_timesteps - model.num_timesteps
    bar = [ProgressBar(cfg.total_timesteps, progress_desc or os.path.basename(run.run_dir), progress_position)] \
        if cfg.run.progress_bar else []
    if remaining > 0:
        # novelty first: it writes info["intrinsic_reward"], which the metrics read; the restoring one
        # last: it puts back the others' counters after their own start, then the RNG states
        model.learn(
            remaining,
            callback=[*run.novelty_callbacks, run.metrics, PeriodicCheckpoint(run.checkpoint, cfg.run.checkpoint_every),
                      *_evaluations(run), *run.callbacks, *bar, *([run.restore] if run.restore is not None else [])],
            reset_num_timesteps=not cfg.resume,
        )
    model.logger.dump(model.num_timesteps)  # flush the last scalars (SB3 dumps only every log_interval)
    model.logger.close()


def _evaluations(run: _Run) -> list[BaseCallback]:
    """The periodic evaluation of ``eval.every`` (none without it), on the run's evaluation episodes."""
    cfg = run.cfg
    if cfg.eval.every is None:
        return []
    normalize = run.normalizer.normalize_obs if run.normalizer is not None else None
    return [PeriodicEvaluation(lambda: evaluate_model(run.model, cfg, cfg.eval.episodes, cfg.eval.deterministic,
                                                      normalize=normalize), cfg.eval.every, run.run_dir)]


def _finish(run: _Run) -> TrainResult:
    """Final checkpoint, model, statistics, coverage, evaluation, summary and pictures."""
    cfg, model, run_dir, normalizer, tracker, metrics = run.cfg, run.model, run.run_dir, run.normalizer, \
        run.tracker, run.metrics
    run.checkpoint()
    tmp = os.path.join(run_dir, f".final_model_{os.getpid()}.zip")
    model.save(tmp)
    os.replace(tmp, os.path.join(run_dir, "final_model.zip"))
    if normalizer is not None:
        tmp = os.path.join(run_dir, f".{OBS_STATS_FILE}_{os.getpid()}")
        normalizer.save(tmp)
        os.replace(tmp, os.path.join(run_dir, OBS_STATS_FILE))
    if tracker is not None:
        np.savez(os.path.join(run_dir, "coverage.npz"), **tracker.state_dict())
    normalize = normalizer.normalize_obs if normalizer is not None else None
    eval_stats = evaluate_model(model, cfg, cfg.eval.episodes, cfg.eval.deterministic, normalize=normalize)
    summary = {
        "timesteps": int(model.num_timesteps), "episodes": metrics.episodes, "train_successes": metrics.successes,
        "first_success_step": metrics.first_success,
        "coverage": tracker.fraction if tracker is not None else None,
        "eval_success_rate": eval_stats["success_rate"], "eval_return_mean": eval_stats["return_mean"],
        "wall_time_s": round(time.perf_counter() - run.t_start, 1), "device": run.device,
    }
    write_json_atomic(os.path.join(run_dir, "summary.json"), summary)
    wandb_run = run.wandb_run
    if cfg.run.plots:
        from .plots import plot_run

        paths = plot_run(run_dir, model=model, env=run.env, tracker=tracker,
                         density=novelty_density_fn(model), normalize=normalize)
        if wandb_run is not None:
            import wandb

            images = {f"plots/{os.path.splitext(os.path.basename(p))[0]}": wandb.Image(p) for p in paths}
            wandb_run.log(images)
            wandb_run.summary.update(images)
    if wandb_run is not None:
        wandb_run.summary.update({k: v for k, v in summary.items() if v is not None})
        wandb_run.finish()
    run.env.close()
    return TrainResult(run_dir, model, summary)


def read_json(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def _restore(model: BaseAlgorithm, ckpt: str, env: VecEnv, device: str, tracker: Optional[CoverageTracker]):
    # force_reset=False keeps _last_obs: learn() then continues the episodes instead of resetting the env
    loaded = type(model).load(os.path.join(ckpt, "model.zip"), env=env, device=device, force_reset=False)
    buffer = os.path.join(ckpt, "replay_buffer.pkl")
    if isinstance(loaded, OffPolicyAlgorithm) and os.path.exists(buffer):
        loaded.load_replay_buffer(buffer)
        # The pickled buffer carries its own copy of a novelty bonus: keep one object, the one
        # model.save() writes (replay_buffer_kwargs), so that later checkpoints stay consistent.
        kept = (loaded.replay_buffer_kwargs or {}).get("novelty")
        if kept is not None and hasattr(loaded.replay_buffer, "novelty"):
            loaded.replay_buffer.novelty = kept
    arrays = os.path.join(ckpt, "arrays.npz")
    if tracker is not None and os.path.exists(arrays):
        with np.load(arrays) as data:
            if data["coverage_counts"].shape == tracker.counts.shape:
                tracker.counts[:] = data["coverage_counts"]
    return loaded


def _model_path(run_dir: str, checkpoint: bool) -> str:
    """``final_model.zip`` of a run, or the latest checkpoint's ``model.zip`` (asked for, or no final model)."""
    path = os.path.join(run_dir, "final_model.zip")
    if checkpoint or not os.path.exists(path):
        ckpt = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        if ckpt is None:
            raise ConfigError(f"{run_dir!r} has neither final_model.zip nor a checkpoint")
        path = os.path.join(ckpt, "model.zip")
    return path


def load_obs_normalizer(run_dir: str, checkpoint: bool = False) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """``obs -> normalised obs`` with the statistics saved beside the model :func:`load_run` loads.

    ``None`` for a run trained without ``env.normalize_obs``.
    """
    path = os.path.join(os.path.dirname(_model_path(run_dir, checkpoint)), OBS_STATS_FILE)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        stats = pickle.load(f)  # a VecNormalize without its env: normalize_obs needs only the statistics
    return stats.normalize_obs


def load_run(run_dir: str, checkpoint: bool = False) -> tuple[TrainConfig, BaseAlgorithm]:
    """The config and the final model (or the latest checkpoint) of a run directory."""
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(cfg_path):
        raise ConfigError(f"{run_dir!r} is not a run directory (no config.yaml)")
    cfg = config_from_dict(read_yaml(cfg_path))
    path = _model_path(run_dir, checkpoint)
    if cfg.policy == "flow":
        from . import policies  # noqa: F401  (the pickled policy class lives there)
    model = algorithm_class(cfg).load(path, device=resolve_device(cfg.device))
    return cfg, model


def evaluate_model(model: BaseAlgorithm, cfg: TrainConfig, episodes: int, deterministic: bool = True,
                   seed: int = 10_000, normalize: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> dict:
    """Run ``episodes`` episodes on a fresh env; success rate, mean return and length, coverage.

    ``normalize`` maps raw observations to what the model was trained on
    (:func:`load_obs_normalizer`); needed when ``cfg.env.normalize_obs``.
    """
    if cfg.env.normalize_obs and normalize is None:
        raise ConfigError(f"env.normalize_obs: the model was trained on normalised observations but their "
                          f"statistics are missing ({OBS_STATS_FILE} beside the model; load_obs_normalizer(run_dir))")
    env = make_single_env(cfg.env)
    returns, lengths, successes = [], [], []
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        done, ret, n, success = False, 0.0, 0, False
        while not done:
            action, _ = model.predict(obs if normalize is None else normalize(obs), deterministic=deterministic)
            obs, r, term, trunc, info = env.step(action)
            ret, n, done = ret + float(r), n + 1, term or trunc
            success = success or bool(info.get("is_success", False))
        returns.append(ret)
        lengths.append(n)
        successes.append(success)
    env.close()
    return {"episodes": episodes, "success_rate": float(np.mean(successes)), "return_mean": float(np.mean(returns)),
            "length_mean": float(np.mean(lengths))}


def evaluate(run_dir: str, episodes: Optional[int] = None, deterministic: Optional[bool] = None) -> dict:
    """Evaluate a run's final model; writes ``eval.json`` in the run directory and returns its content.

    Runs with the run config's ``threads`` (:func:`agents.threads.torch_threads`).
    """
    cfg, model = load_run(run_dir)
    with torch_threads(cfg.threads):
        stats = evaluate_model(model, cfg, episodes or cfg.eval.episodes,
                               cfg.eval.deterministic if deterministic is None else deterministic,
                               normalize=load_obs_normalizer(run_dir))
    write_json_atomic(os.path.join(run_dir, "eval.json"), stats)
    return stats
