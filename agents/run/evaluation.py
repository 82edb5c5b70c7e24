"""Loading a run directory's agent and evaluating it (``flowrl eval``)."""

from __future__ import annotations

import os
import pickle
from typing import Callable, Optional

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from ..config import ConfigError, TrainConfig, config_from_dict, read_yaml
from .build import algorithm_class, resolve_device
from .callbacks import latest_checkpoint, write_json_atomic
from .env_builder import make_single_env
from .threads import torch_threads

__all__ = ["OBS_STATS_FILE", "load_run", "load_obs_normalizer", "evaluate_model", "evaluate", "read_json"]

#: The VecNormalize statistics, saved beside each model file (final model and checkpoints).
OBS_STATS_FILE = "vecnormalize.pkl"


def read_json(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


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
        from .. import policies  # noqa: F401  (the pickled policy class lives there)
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

    Runs with the run config's ``threads`` (:func:`agents.run.threads.torch_threads`).
    """
    cfg, model = load_run(run_dir)
    with torch_threads(cfg.threads):
        stats = evaluate_model(model, cfg, episodes or cfg.eval.episodes,
                               cfg.eval.deterministic if deterministic is None else deterministic,
                               normalize=load_obs_normalizer(run_dir))
    write_json_atomic(os.path.join(run_dir, "eval.json"), stats)
    return stats
