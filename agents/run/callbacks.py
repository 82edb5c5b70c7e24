"""Training callbacks: episode and coverage metrics, atomic checkpoints.

* :class:`MetricsCallback` appends one row per finished episode to
  ``episodes.csv`` (return, length, success) and one row every
  ``log_every`` steps to ``metrics.csv`` (rolling return and success,
  coverage, steps/s); the episode's intrinsic return is
  ``info["intrinsic_return"]``, set on an episode's last step by a novelty
  callback that runs before it (empty without a bonus);
  it also feeds a :class:`envs.CoverageTracker` from
  ``info["position"]`` (or a projection of the observation).
* :class:`PeriodicCheckpoint` writes ``checkpoints/step_<N>/`` through a
  temporary folder and ``os.replace``, with a manifest of checksums written
  last (:mod:`agents.run.resume`), then points ``checkpoints/latest`` at it:
  a crash mid-write leaves the last good checkpoint untouched, and
  :func:`latest_checkpoint` skips (with a warning) a newest checkpoint that is
  incomplete or corrupt.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
import warnings
from collections import deque
from typing import Any, Callable, Optional

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from envs.coverage import CoverageTracker

from .resume import check_checkpoint, write_manifest

__all__ = [
    "MetricsCallback", "PeriodicCheckpoint", "ProgressBar", "save_checkpoint", "latest_checkpoint",
    "write_json_atomic", "EPISODE_FIELDS", "METRIC_FIELDS",
]

EPISODE_FIELDS = ["timesteps", "episode", "return", "intrinsic_return", "length", "success", "wall_time"]
EVALUATIONS_CSV = "evaluations.csv"
EVALUATION_FIELDS = ["timesteps", "success_rate", "return_mean"]
_STEP = re.compile(r"step_\d+")  # checkpoint folders
METRIC_FIELDS = ["timesteps", "episodes", "return_mean", "success_rate", "successes", "coverage", "steps_per_s"]


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace``."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


class _CsvAppender:
    """Append rows to a CSV file, writing the header when the file is new."""

    def __init__(self, path: str, fields: list[str]):
        self.path, self.fields = path, fields
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=fields, extrasaction="ignore")
        if new:
            self._writer.writeheader()

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricsCallback(BaseCallback):
    """Episode rows, periodic metric rows and coverage (see module docstring).

    Args:
        run_dir: where ``episodes.csv`` and ``metrics.csv`` are appended.
        tracker: coverage tracker fed every step (``None``: no coverage).
        projection: maps a batch of observations ``(n_envs, obs_dim)`` to
            2-D points when the env gives no ``info["position"]``.
        log_every: env steps between rows of ``metrics.csv``.
        window: number of recent episodes in the rolling means.
    """

    def __init__(
        self,
        run_dir: str,
        tracker: Optional[CoverageTracker] = None,
        projection: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        log_every: int = 1000,
        window: int = 20,
        episodes_so_far: int = 0,
        successes_so_far: int = 0,
    ):
        super().__init__()
        self.run_dir = run_dir
        self.tracker = tracker
        self.projection = projection
        self.log_every = int(log_every)
        self.recent_returns: deque = deque(maxlen=window)
        self.recent_success: deque = deque(maxlen=window)
        self.episodes = int(episodes_so_far)
        self.successes = int(successes_so_far)
        self.first_success: Optional[int] = None
        self._last_log = 0
        self._t0 = time.perf_counter()
        self._steps0 = 0

    def _on_training_start(self) -> None:
        self._episodes_csv = _CsvAppender(os.path.join(self.run_dir, "episodes.csv"), EPISODE_FIELDS)
        self._metrics_csv = _CsvAppender(os.path.join(self.run_dir, "metrics.csv"), METRIC_FIELDS)
        self._t0, self._steps0 = time.perf_counter(), self.num_timesteps
        self._last_log = self.num_timesteps

    def _points(self, infos: list[dict], new_obs: Any) -> Optional[np.ndarray]:
        if infos and all("position" in i for i in infos):
            # With auto-reset the reported position of a finished episode is its last one.
            return np.stack([np.asarray(i["position"], dtype=np.float64) for i in infos])
        if self.projection is not None and new_obs is not None:
            return np.asarray(self.projection(np.asarray(new_obs)), dtype=np.float64)
        return None

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        if self.tracker is not None:
            normalizer = self.model.get_vec_normalize_env()  # coverage is over the raw observations
            new_obs = normalizer.get_original_obs() if normalizer is not None else self.locals.get("new_obs")
            pts = self._points(infos, new_obs)
            if pts is not None:
                self.tracker.update(pts)
        for info in infos:
            ep = info.get("episode")
            if ep is None:
                continue
            intrinsic = info.get("intrinsic_return", "")
            self.episodes += 1
            success = bool(info.get("is_success", False))
            self.successes += int(success)
            if success and self.first_success is None:
                self.first_success = self.num_timesteps
            self.recent_returns.append(float(ep["r"]))
            self.recent_success.append(float(success))
            self._episodes_csv.write(
                dict(timesteps=self.num_timesteps, episode=self.episodes, **{"return": float(ep["r"])},
                     intrinsic_return=intrinsic,
                     length=int(ep["l"]), success=int(success), wall_time=round(float(ep["t"]), 3))
            )
        if self.num_timesteps - self._last_log >= self.log_every:
            self._write_metrics()
        return True

    def summary(self) -> dict:
        """The current metrics as a dict (also the row format of ``metrics.csv``)."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        return dict(
            timesteps=self.num_timesteps,
            episodes=self.episodes,
            return_mean=float(np.mean(self.recent_returns)) if self.recent_returns else float("nan"),
            success_rate=float(np.mean(self.recent_success)) if self.recent_success else 0.0,
            successes=self.successes,
            coverage=self.tracker.fraction if self.tracker is not None else float("nan"),
            steps_per_s=round((self.num_timesteps - self._steps0) / elapsed, 2),
        )

    def resume_state(self) -> dict:
        """Counters, rolling windows and the schedule of metric rows (for :mod:`agents.run.resume`)."""
        return dict(episodes=self.episodes, successes=self.successes, first_success=self.first_success,
                    recent_returns=list(self.recent_returns), recent_success=list(self.recent_success),
                    last_log=self._last_log)

    def load_resume_state(self, state: dict) -> None:
        self.episodes, self.successes = int(state["episodes"]), int(state["successes"])
        self.first_success = state["first_success"]
        self.recent_returns = deque(state["recent_returns"], maxlen=self.recent_returns.maxlen)
        self.recent_success = deque(state["recent_success"], maxlen=self.recent_success.maxlen)
        self._last_log = int(state["last_log"])

    def _write_metrics(self) -> None:
        row = self.summary()
        self._metrics_csv.write(row)
        self._last_log = self.num_timesteps
        self.logger.record("flowrl/coverage", row["coverage"])
        self.logger.record("flowrl/successes", row["successes"])

    def _on_training_end(self) -> None:
        if self.num_timesteps != self._last_log:
            self._write_metrics()
        self._episodes_csv.close()
        self._metrics_csv.close()


def save_checkpoint(
    model: BaseAlgorithm, ckpt_root: str, extra: Optional[dict] = None, extra_arrays: Optional[dict] = None,
    save_replay_buffer: bool = True, keep: int = 2, extra_files: Optional[dict[str, Callable[[str], None]]] = None,
) -> str:
    """Write ``ckpt_root/step_<N>`` atomically and point ``ckpt_root/latest`` at it; returns its path.

    The folder holds ``model.zip``, the replay buffer (off-policy, when
    asked), ``state.json`` (``extra``), ``arrays.npz`` (``extra_arrays``),
    one file per ``extra_files`` item (``name -> writer(path)``) and, written
    last, ``manifest.json`` (step and checksums, :func:`agents.run.resume.write_manifest`).
    Only the ``keep`` most recent checkpoints are kept.
    """
    os.makedirs(ckpt_root, exist_ok=True)
    name = f"step_{model.num_timesteps:010d}"
    final = os.path.join(ckpt_root, name)
    tmp = os.path.join(ckpt_root, f".tmp_{name}_{os.getpid()}")
    for stale in os.listdir(ckpt_root):  # half-written folders of this one or of a killed process
        if stale.startswith(".tmp_step_"):
            shutil.rmtree(os.path.join(ckpt_root, stale), ignore_errors=True)
    os.makedirs(tmp)
    model.save(os.path.join(tmp, "model.zip"))
    if save_replay_buffer and isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        model.save_replay_buffer(os.path.join(tmp, "replay_buffer.pkl"))
    write_json_atomic(os.path.join(tmp, "state.json"), {"num_timesteps": model.num_timesteps, **(extra or {})})
    if extra_arrays:
        np.savez(os.path.join(tmp, "arrays.npz"), **extra_arrays)
    for file_name, write in (extra_files or {}).items():
        write(os.path.join(tmp, file_name))
    write_manifest(tmp, model.num_timesteps)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = os.path.join(ckpt_root, f".latest_{os.getpid()}")
    with open(pointer_tmp, "w") as f:
        f.write(name)
    os.replace(pointer_tmp, os.path.join(ckpt_root, "latest"))
    old = sorted(d for d in os.listdir(ckpt_root) if _STEP.fullmatch(d))
    for d in old[:-keep] if keep > 0 else []:
        if d != name:
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: str) -> Optional[str]:
    """The newest complete checkpoint folder in ``ckpt_root``, or ``None`` when there is none.

    A newer folder whose manifest is missing or does not match its files
    (:func:`agents.run.resume.check_checkpoint`) is skipped with a ``UserWarning`` naming it.
    """
    if not os.path.isdir(ckpt_root):
        return None
    for name in sorted((d for d in os.listdir(ckpt_root) if _STEP.fullmatch(d)), reverse=True):
        path = os.path.join(ckpt_root, name)
        problem = check_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"checkpoint {path} is unusable: {problem}; falling back to the one before it", stacklevel=2)
    return None


class PeriodicCheckpoint(BaseCallback):
    """Call ``save()`` (a closure that writes one checkpoint) every ``every`` env steps.

    The checkpoint falls due in ``_on_step`` and is written at the start of the
    next rollout: there the last transition is stored and its gradient steps are
    taken, the one point of SB3's loop from which a resumed ``learn`` continues exactly.
    """

    def __init__(self, save: Callable[[], str], every: int):
        super().__init__()
        self.save = save
        self.every = int(every)
        self._last = 0
        self._due = False

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps
        self._due = False

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.every:
            self._due = True
        return True

    def _on_rollout_start(self) -> None:
        if self._due:
            self.save()
            self._last = self.num_timesteps
            self._due = False


class PeriodicEvaluation(BaseCallback):
    """Evaluate the live policy every ``every`` env steps; log ``eval/success_rate``, ``eval/return_mean``.

    With a ``run_dir`` each evaluation is also a row of its ``evaluations.csv``.

    ``evaluate()`` runs the episodes and returns :func:`agents.run.evaluate_model`'s dict.
    A policy can reach the goal in every training episode and lose it a thousand steps later;
    one evaluation at the end does not show that, a curve does.
    """

    def __init__(self, evaluate: Callable[[], dict], every: int, run_dir: Optional[str] = None):
        super().__init__()
        self.evaluate = evaluate
        self.every = int(every)
        self._next = self.every
        self.run_dir = run_dir
        self._csv: Optional[_CsvAppender] = None

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every
        if self.run_dir is not None:
            self._csv = _CsvAppender(os.path.join(self.run_dir, EVALUATIONS_CSV), EVALUATION_FIELDS)

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every + 1) * self.every
            stats = self.evaluate()
            self.logger.record("eval/success_rate", stats["success_rate"])
            self.logger.record("eval/return_mean", stats["return_mean"])
            if self._csv is not None:
                self._csv.write(dict(timesteps=self.num_timesteps, **stats))
        return True

    def _on_training_end(self) -> None:
        if self._csv is not None:
            self._csv.close()


class ProgressBar(BaseCallback):
    """A plain ``tqdm`` progress bar over env steps (``desc`` and ``position`` allow parallel runs)."""

    def __init__(self, total: int, desc: str = "train", position: int = 0):
        super().__init__()
        self.total, self.desc, self.position = int(total), desc, int(position)
        self._bar = None

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self.total, initial=self.num_timesteps, desc=self.desc, position=self.position,
                         unit="step", dynamic_ncols=True, leave=True, mininterval=1.0)

    def _on_step(self) -> bool:
        self._bar.update(self.num_timesteps - self._bar.n)
        return True

    def _on_training_end(self) -> None:
        self._bar.close()
