"""One training run: build the agent from a config, train it in a run directory, resume it, evaluate it.

:mod:`agents.run.build` (config -> SB3 algorithm), :mod:`agents.run.training` (the run
directory, checkpoints, logging, pictures), :mod:`agents.run.resume` (exact resume),
:mod:`agents.run.evaluation` (loading and evaluating a run's agent), and what they use:
callbacks, loggers, plots, coverage, health checks, thread settings, provenance.
"""

from .build import ALGORITHMS, algorithm_class, build_model, make_env, resolve_device
from .coverage import coverage_tracker, novelty_density_fn
from .evaluation import OBS_STATS_FILE, evaluate, evaluate_model, load_obs_normalizer, load_run, read_json
from .training import TrainResult, train

__all__ = [
    "ALGORITHMS", "algorithm_class", "build_model", "make_env", "resolve_device", "coverage_tracker",
    "novelty_density_fn", "OBS_STATS_FILE", "evaluate", "evaluate_model", "load_obs_normalizer", "load_run",
    "read_json", "TrainResult", "train",
]
