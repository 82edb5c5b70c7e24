"""``flowrl sweep``: many seeds and configurations on Ray Tune, locally or on a cluster.

Ray Tune schedules the trials (one per configuration and seed, each
reserving ``resources``), retries crashed ones and records the experiment so
that an interrupted sweep can be resumed; this module only turns a sweep
file (:mod:`agents.sweep.spec`) into a Tune experiment.  Each trial calls
:func:`agents.run.train`, exactly what ``flowrl train`` runs, in an
ordinary run directory::

    <storage_path>/<name>/          the sweep folder (Ray's experiment folder)
      sweep.yaml                    the resolved sweep (base config included)
      runs/<point>-s<seed>/         one run directory per trial (+ trial.json)
      ray-<trial id>/, experiment_state-*.json, tuner.pkl   Ray's records

A retried trial continues its run directory from the last checkpoint
(``resume=``); a run that already wrote ``summary.json`` is reported, not
trained again.  With an address (``auto``, ``ray://HOST:PORT``) the sweep
runs on an existing cluster: flowrl must be installed on every node and
``storage_path`` must be a folder that every node sees (e.g. NFS).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, Optional

from ..config import ConfigError
from ..run.callbacks import latest_checkpoint, write_json_atomic
from .spec import SWEEP_FILE, SweepSpec, load_sweep, point_tag, read_sweep, save_sweep, trial_config

__all__ = ["start_sweep", "resume_sweep", "run_trial", "SweepResult", "RUNS", "TRIAL_FILE"]

#: Folder of the sweep that holds the trials' run directories.
RUNS = "runs"
#: Written in each trial's run directory: sweep, configuration, seed, attempt, process.
TRIAL_FILE = "trial.json"


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _numeric(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _point_and_seed(config: dict, spec: SweepSpec) -> tuple[dict, int]:
    point = {}
    for key, values in spec.grid.items():
        value = config[key]
        point[key] = int(round(value)) if getattr(values, "integer", False) else value
    seed = spec.seeds[config["__trial_index__"]] if spec.search is not None else config["seed"]
    return point, int(seed)


def run_trial(config: dict, spec: dict) -> None:
    """Ray Tune trainable: train one configuration and seed with :func:`agents.run.train`.

    The run directory is ``<sweep>/runs/<point>-s<seed>`` (plus the trial id
    in a search, where two samples may coincide).  A retry continues it from
    its latest checkpoint; a finished run is only reported.  Torch threads: the
    config's ``threads`` (applied by ``train``), unless the worker's environment
    sets ``OMP_NUM_THREADS`` (Ray sets it to the trial's CPUs), which wins.
    """
    from ray import tune

    from ..run import train

    sweep = SweepSpec.model_validate(spec)
    point, seed = _point_and_seed(config, sweep)
    trial_id = tune.get_context().get_trial_id()
    tag = point_tag(point)
    name = f"{tag}-s{seed}" + (f"-{trial_id}" if sweep.search is not None else "")
    sweep_dir = os.path.join(os.path.abspath(sweep.storage_path), sweep.name)
    run_dir = os.path.join(sweep_dir, RUNS, name)
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary_path):  # finished before the sweep was interrupted
        tune.report({**_numeric(_read_json(summary_path)), "run_dir": run_dir})
        return
    cfg = trial_config(sweep, point, seed, os.path.join(sweep_dir, RUNS), name)
    trial_path = os.path.join(run_dir, TRIAL_FILE)
    attempt = _read_json(trial_path)["attempt"] + 1 if os.path.exists(trial_path) else 1
    if latest_checkpoint(os.path.join(run_dir, "checkpoints")) is not None:
        cfg = cfg.model_copy(update={"resume": run_dir})  # what `flowrl train resume=RUN_DIR` does
    elif os.path.exists(run_dir):  # an attempt that died before its first checkpoint
        shutil.rmtree(run_dir)

    def record(model: Any) -> None:  # the run directory exists from here on
        import ray

        write_json_atomic(trial_path, {
            "sweep": sweep.name, "trial_id": trial_id, "tag": tag, "point": point, "seed": seed,
            "attempt": attempt, "start_step": int(model.num_timesteps), "pid": os.getpid(),
            "node": ray.util.get_node_ip_address(),
        })

    result = train(cfg, config_name=tag, on_model=record)
    tune.report({**_numeric(result.summary), "run_dir": run_dir})


def _ray_trial_dirname(trial: Any) -> str:
    return f"ray-{trial.trial_id}"


def _init_ray(address: Optional[str]) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address)
        return
    # local workers import the same flowrl as this process, wherever it comes from
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
    ray.init(include_dashboard=False)


def _trainable(spec: SweepSpec):
    from ray import tune

    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec.model_dump(mode="json")), resources)


def _param_space(spec: SweepSpec) -> dict:
    from ray import tune

    if spec.search is None:
        space = {key: tune.grid_search(values) for key, values in spec.grid.items()}
        space["seed"] = tune.grid_search(spec.seeds)
        return space
    space = {}
    for key, values in spec.grid.items():
        if isinstance(values, list):
            space[key] = tune.choice(values)
        elif values.integer:
            space[key] = (tune.lograndint if values.log else tune.randint)(int(values.low), int(values.high) + 1)
        else:
            space[key] = (tune.loguniform if values.log else tune.uniform)(values.low, values.high)
    return space


def _tune_config(spec: SweepSpec):
    from ray import tune

    if spec.search is None:
        return tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, trial_dirname_creator=_ray_trial_dirname,
                               reuse_actors=True)
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    search = spec.search
    # Repeater runs every sample once per seed and gives Optuna the mean over seeds
    searcher = Repeater(OptunaSearch(metric=search.metric, mode=search.mode, seed=search.seed),
                        repeat=len(spec.seeds), set_index=True)
    return tune.TuneConfig(search_alg=searcher, metric=search.metric, mode=search.mode,
                           num_samples=search.num_samples * len(spec.seeds), max_concurrent_trials=spec.max_concurrent,
                           trial_dirname_creator=_ray_trial_dirname, reuse_actors=True)


def _run_config(spec: SweepSpec, verbose: int):
    from ray import tune

    return tune.RunConfig(name=spec.name, storage_path=os.path.abspath(spec.storage_path), verbose=verbose,
                          failure_config=tune.FailureConfig(max_failures=spec.max_failures))


@dataclass
class SweepResult:
    """What a sweep ends with: its folder and one row per trial (Ray's status, run directory, figures)."""

    sweep_dir: str
    trials: list[dict]

    @property
    def complete(self) -> bool:
        return all(t["status"] == "TERMINATED" and t.get("run_dir") for t in self.trials)


def _collect(sweep_dir: str, grid: Any) -> SweepResult:
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        status = "ERROR" if result.error is not None else "TERMINATED" if metrics.get("run_dir") else "UNFINISHED"
        trials.append({"status": status, "config": {k: v for k, v in (result.config or {}).items()},
                       "run_dir": metrics.get("run_dir"), "eval_success_rate": metrics.get("eval_success_rate"),
                       "eval_return_mean": metrics.get("eval_return_mean"),
                       "error": None if result.error is None else str(result.error).splitlines()[0]})
    return SweepResult(sweep_dir, trials)


def start_sweep(path: str, overrides: Optional[dict[str, Any]] = None, verbose: int = 1) -> SweepResult:
    """Run the sweep file ``path`` (with ``key=value`` ``overrides``) to the end; see :func:`load_sweep`."""
    from ray import tune

    spec = load_sweep(path, overrides)
    # trials run with Ray's trial folder as working directory: every path they get is absolute
    spec = spec.model_copy(update={"storage_path": os.path.abspath(spec.storage_path)})
    sweep_dir = os.path.join(spec.storage_path, spec.name)
    if os.path.exists(os.path.join(sweep_dir, SWEEP_FILE)):
        raise ConfigError(f"the sweep {sweep_dir!r} exists: resume it with `flowrl sweep --resume {sweep_dir}` "
                          "or choose another name=")
    os.makedirs(os.path.join(sweep_dir, RUNS), exist_ok=True)
    save_sweep(spec, sweep_dir)
    _init_ray(spec.address)
    tuner = tune.Tuner(_trainable(spec), param_space=_param_space(spec), tune_config=_tune_config(spec),
                       run_config=_run_config(spec, verbose))
    return _collect(sweep_dir, tuner.fit())


def resume_sweep(sweep_dir: str, address: Optional[str] = None, verbose: int = 1) -> SweepResult:
    """Continue an interrupted sweep: finished trials are kept, the others run (from their checkpoints).

    Trials that failed for good (``max_failures`` spent) are tried again too.
    ``address`` overrides the Ray address recorded in the sweep.
    """
    from ray import tune

    sweep_dir = os.path.abspath(sweep_dir.rstrip("/"))
    spec = read_sweep(sweep_dir)
    # the sweep folder may have moved since it started: it is where it is now
    spec = spec.model_copy(update={"storage_path": os.path.dirname(sweep_dir), "name": os.path.basename(sweep_dir)})
    if address is not None:
        spec = spec.model_copy(update={"address": address})
    if not tune.Tuner.can_restore(sweep_dir):
        raise ConfigError(f"{sweep_dir!r} holds no Ray Tune experiment to resume")
    save_sweep(spec, sweep_dir)
    _init_ray(spec.address)
    tuner = tune.Tuner.restore(sweep_dir, trainable=_trainable(spec), resume_unfinished=True, resume_errored=True)
    return _collect(sweep_dir, tuner.fit())
