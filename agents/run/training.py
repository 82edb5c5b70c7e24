"""The training run behind ``flowrl train``: :func:`train` runs one experiment in a run directory::

    runs/<name>/
      config.yaml        resolved config
      episodes.csv       one row per finished episode
      metrics.csv        rolling metrics every run.log_every steps
      evaluations.csv    the periodic evaluations (eval.every)
      progress*.csv      SB3's logger scalars (losses, novelty statistics)
      checkpoints/       atomic checkpoints (latest -> step_<N>/)
      final_model.zip    the trained agent
      vecnormalize.pkl   observation statistics (env.normalize_obs; also in each checkpoint)
      coverage.npz       visitation counts
      summary.json       final figures (success, coverage, wall time)
      *.png              pictures (see agents.run.plots)

``resume=RUN_DIR`` continues from the newest complete checkpoint exactly (:mod:`agents.run.resume`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from envs.coverage import CoverageTracker

from ..config import ConfigError, TrainConfig, save_config
from .build import build_model, make_env, resolve_device
from .callbacks import (
    MetricsCallback,
    PeriodicCheckpoint,
    PeriodicEvaluation,
    ProgressBar,
    latest_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from .coverage import coverage_tracker, first_two_features, novelty_density_fn
from .evaluation import OBS_STATS_FILE, evaluate_model
from .loggers import run_logger, start_wandb
from .resume import (
    STATE_FILE,
    RestoreCallback,
    read_training_state,
    restore_training_state,
    save_training_state,
    truncate_csvs,
)
from .threads import torch_threads

__all__ = ["train", "TrainResult"]

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

    Runs with ``cfg.threads`` torch threads (:func:`agents.run.threads.torch_threads`); ``callbacks`` are
    passed to ``learn`` after the run's own (e.g. :class:`agents.run.health.HealthCallback`).
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
        wandb_run, wandb_cb = start_wandb(cfg, run_dir)
        callbacks.append(wandb_cb)
    model, novelty_callbacks = build_model(cfg, env, device)
    tracker = coverage_tracker(env)
    if ckpt is not None and state is not None:
        model, novelty_callbacks = _resume(cfg, model, ckpt, state, env, device, tracker)
    csv_name = "progress.csv" if ckpt is None else f"progress-{model.num_timesteps:010d}.csv"
    model.set_logger(run_logger(run_dir, cfg, csv_name, wandb_run))
    metrics = MetricsCallback(run_dir, tracker, first_two_features, cfg.run.log_every)
    restore = RestoreCallback(state, [*novelty_callbacks, metrics]) if state is not None else None
    return _Run(cfg, run_dir, device, env, model, novelty_callbacks, tracker,
                env if isinstance(env, VecNormalize) else None, metrics, callbacks, restore, wandb_run, t_start)


def _resume(cfg: TrainConfig, model: BaseAlgorithm, ckpt: str, state: dict, env: VecEnv, device: str,
            tracker: Optional[CoverageTracker]) -> tuple[BaseAlgorithm, list[BaseCallback]]:
    """The checkpoint's agent on ``env``, with the env's layers as they were (:mod:`agents.run.resume`)."""
    model = _restore(model, ckpt, env, device, tracker)
    try:
        restore_training_state(model, state)
    except ValueError as err:
        raise ConfigError(f"resume: {err}") from None
    novelty_callbacks: list[BaseCallback] = []
    if cfg.novelty:
        from ..novelty import novelty_callbacks as restored_novelty_callbacks

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
