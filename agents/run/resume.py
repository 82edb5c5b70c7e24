"""Exact resume: what a training run needs to continue bit for bit, and checkpoint manifests.

A checkpoint folder (:func:`agents.run.callbacks.save_checkpoint`) holds SB3's
``model.zip`` (parameters, optimiser states, ``num_timesteps``, ``_n_updates``,
``_last_obs``, the episode-info buffers, the novelty bonus with its own
optimiser and generator), the replay buffer, and :data:`STATE_FILE`, written
by :func:`save_training_state`:

* the random number generators: torch, numpy's global one, Python's ``random``;
* every layer of the vectorised env (``VecNormalize`` statistics, the
  ``DummyVecEnv`` buffers and each env with all its wrappers: position, the
  ``TimeLimit`` step counter, ``Monitor``'s episode sums, ``np_random`` and the
  action space's RNG, which SB3 samples during ``learning_starts``);
* the SB3 logger's pending values (``record_mean`` accumulators);
* the callbacks' counters (episodes, rolling windows, the novelty callback's
  episode sums) through their ``resume_state`` / ``load_resume_state``;
* the number of lines of the run's CSV files, so that rows written after the
  checkpoint by a process that was then killed are dropped on resume.

:data:`MANIFEST` is written last, with the step and the SHA-256 of every file:
a folder whose manifest is missing or does not match is incomplete or corrupt
(:func:`check_checkpoint`).

Checkpoints are taken at the start of a rollout (:class:`agents.run.callbacks.PeriodicCheckpoint`):
there the previous transition is stored and its gradient steps are taken, so
SB3's loop state is consistent, and ``learn(reset_num_timesteps=False)`` goes on
without an ``env.reset()`` because ``_last_obs`` is restored.  On the CPU with the
same number of threads the resumed run then repeats the uninterrupted one exactly
(wall-clock columns aside).  Not covered: gSDE's noise matrices and PPO's
``time/iterations`` log counter (both restart with the resumed ``learn``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
from typing import Iterable, Optional

import cloudpickle
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

__all__ = [
    "STATE_FILE", "MANIFEST", "save_training_state", "read_training_state", "restore_training_state",
    "RestoreCallback", "write_manifest", "check_checkpoint", "truncate_csvs",
]

#: The training state beside ``model.zip`` in each checkpoint.
STATE_FILE = "training_state.pkl"
#: Written last in each checkpoint: ``{"step": N, "files": {name: {"bytes": n, "sha256": hex}}}``.
MANIFEST = "manifest.json"
_VERSION = 1
_CSV = re.compile(r"(episodes|metrics|evaluations|progress(-\d+)?)\.csv")


# ------------------------------------------------------------------ manifest
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> list[str]:
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(f for f in out if f != MANIFEST)


def write_manifest(folder: str, step: int) -> None:
    """Write ``folder/manifest.json`` (atomically) listing the size and SHA-256 of every other file."""
    files = {f: {"bytes": os.path.getsize(os.path.join(folder, f)), "sha256": _sha256(os.path.join(folder, f))}
             for f in _files(folder)}
    tmp = os.path.join(folder, f".{MANIFEST}.tmp")
    with open(tmp, "w") as fh:
        json.dump({"step": int(step), "files": files}, fh, indent=1)
    os.replace(tmp, os.path.join(folder, MANIFEST))


def check_checkpoint(folder: str) -> Optional[str]:
    """Why the checkpoint ``folder`` cannot be used (missing manifest, missing or altered file), or ``None``."""
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (incomplete)"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({err})"
    for name, meta in files.items():
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            return f"{name} is missing"
        if os.path.getsize(full) != meta["bytes"] or _sha256(full) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


# ------------------------------------------------------------------ pieces
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _env_layers(env: VecEnv) -> list[VecEnv]:
    layers = [env]
    while isinstance(layers[-1], VecEnvWrapper):
        layers.append(layers[-1].venv)
    if not isinstance(layers[-1], DummyVecEnv):
        raise ValueError(f"exact resume needs a DummyVecEnv at the bottom of the env, got {type(layers[-1]).__name__}")
    return layers


_NOT_ENV_STATE = ("venv", "class_attributes")  # links between the layers, and each class's members


def _env_state(env: VecEnv) -> list[tuple[str, dict]]:
    # The layers' __dict__s, not their pickles: VecNormalize.__getstate__ drops the running returns.
    return [(type(layer).__name__, {k: v for k, v in vars(layer).items() if k not in _NOT_ENV_STATE})
            for layer in _env_layers(env)]


def _set_env_state(env: VecEnv, state: list[tuple[str, dict]]) -> None:
    layers = _env_layers(env)
    mine, saved = [type(x).__name__ for x in layers], [name for name, _ in state]
    if mine != saved:
        raise ValueError(f"the checkpoint's env layers {saved} differ from this run's {mine} "
                         f"(was it trained with another env or env.normalize_obs?)")
    n_saved = len(state[-1][1].get("envs", ()))
    if n_saved != layers[-1].num_envs:
        raise ValueError(f"the checkpoint has {n_saved} envs, this run {layers[-1].num_envs} (env.n_envs)")
    for layer, (_, attrs) in zip(layers, state):
        vars(layer).update(attrs)  # one pickle: spaces shared between layers stay shared


def _logger_state(logger: Logger) -> dict:
    return {"values": dict(logger.name_to_value), "counts": dict(logger.name_to_count),
            "excluded": dict(logger.name_to_excluded)}


def _set_logger_state(logger: Logger, state: dict) -> None:
    for attr, key in (("name_to_value", "values"), ("name_to_count", "counts"), ("name_to_excluded", "excluded")):
        getattr(logger, attr).clear()
        getattr(logger, attr).update(state[key])


def _csv_lines(run_dir: str) -> dict[str, int]:
    out = {}
    for name in os.listdir(run_dir):
        if _CSV.fullmatch(name):
            with open(os.path.join(run_dir, name), "rb") as f:
                out[name] = f.read().count(b"\n")
    return out


def truncate_csvs(run_dir: str, lines: dict[str, int]) -> None:
    """Cut ``episodes.csv``, ``metrics.csv``, ``evaluations.csv`` and ``progress*.csv`` back to ``lines`` lines each.

    A CSV that did not exist at the checkpoint is removed (a later resume's ``progress-<step>.csv``).
    """
    for name in os.listdir(run_dir):
        if not _CSV.fullmatch(name):
            continue
        path = os.path.join(run_dir, name)
        if name not in lines:
            os.remove(path)
            continue
        with open(path, "rb") as f:
            data = f.read()
        end, n = 0, lines[name]
        for _ in range(n):
            end = data.index(b"\n", end) + 1
        if end != len(data):
            with open(path, "r+b") as f:
                f.truncate(end)


# ------------------------------------------------------------------ save / restore
def _env_of(model: BaseAlgorithm) -> VecEnv:
    if model.env is None:
        raise ValueError("the model has no env; exact resume saves and restores the training env")
    return model.env


def save_training_state(path: str, model: BaseAlgorithm, callbacks: Iterable[BaseCallback], run_dir: str) -> None:
    """Write what ``model.zip`` and the replay buffer leave out (see module docstring) to ``path``."""
    # The callbacks first: saving may settle what they still owe the logger (the novelty callback's scoring).
    callback_states = [(type(cb).__name__, cb.resume_state()) for cb in callbacks if hasattr(cb, "resume_state")]
    state = {
        "version": _VERSION,
        "num_timesteps": int(model.num_timesteps),
        "rng": _rng_state(),
        "env": _env_state(_env_of(model)),
        "logger": _logger_state(model.logger),
        "callbacks": callback_states,
        "csv_lines": _csv_lines(run_dir),
    }
    with open(path, "wb") as f:
        cloudpickle.dump(state, f)


def read_training_state(ckpt: str) -> dict:
    """The training state of checkpoint folder ``ckpt`` (``ValueError`` when it has none)."""
    path = os.path.join(ckpt, STATE_FILE)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {ckpt!r} has no {STATE_FILE}: it cannot be resumed exactly")
    with open(path, "rb") as f:
        state = pickle.load(f)
    if state.get("version") != _VERSION:
        raise ValueError(f"{path}: training state version {state.get('version')}, expected {_VERSION}")
    return state


def restore_training_state(model: BaseAlgorithm, state: dict) -> None:
    """Put the env layers back and share their spaces with ``model`` (as at construction).

    The model itself comes from ``model.zip`` and its replay buffer; the RNGs,
    logger and callbacks are restored when ``learn`` starts, by :class:`RestoreCallback`.
    """
    if int(state["num_timesteps"]) != int(model.num_timesteps):
        raise ValueError(f"training state of step {state['num_timesteps']} does not belong to the "
                         f"model of step {model.num_timesteps}")
    env = _env_of(model)
    _set_env_state(env, state["env"])
    model.observation_space = env.observation_space
    model.action_space = env.action_space  # SB3 samples it during learning_starts


class RestoreCallback(BaseCallback):
    """At ``learn``'s start (after the other callbacks' own start): callbacks, logger and RNG states.

    Pass it last: the callbacks it restores reset their counters in their own
    ``_on_training_start``, and nothing may draw random numbers after it before
    the first step.
    """

    def __init__(self, state: dict, callbacks: Iterable[BaseCallback]):
        super().__init__()
        self.state = state
        self.callbacks = [cb for cb in callbacks if hasattr(cb, "load_resume_state")]

    def _on_training_start(self) -> None:
        saved = list(self.state["callbacks"])
        mine = [type(cb).__name__ for cb in self.callbacks]
        if mine != [name for name, _ in saved]:
            raise ValueError(f"the checkpoint's callbacks {[n for n, _ in saved]} differ from this run's {mine}")
        for cb, (_, cb_state) in zip(self.callbacks, saved):
            cb.load_resume_state(cb_state)
        _set_logger_state(self.model.logger, self.state["logger"])
        _set_rng_state(self.state["rng"])

    def _on_step(self) -> bool:
        return True
