"""Sweeps on Ray Tune: sweep files are validated, trials are ordinary runs, crashes and interruptions recover,
and the report's statistics match hand-computed values."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from agents.cli import main
from agents.config import ConfigError
from agents.sweep.report import interval_estimate, iqm, write_report
from agents.sweep.spec import Resources, load_sweep, point_tag, trial_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A training config that runs 300 steps in a few seconds.
TINY = {
    "env": {"id": "flowrl/PointMaze-UMaze-v0", "kwargs": {"max_episode_steps": 50}},
    "algo": {"name": "sac", "kwargs": {"learning_starts": 100, "batch_size": 16, "buffer_size": 2000}},
    "policy": "gaussian", "policy_kwargs": {"net_arch": [16, 16]},
    "total_timesteps": 300, "device": "cpu",
    "run": {"checkpoint_every": 100, "log_every": 100, "plots": False}, "eval": {"episodes": 1},
}


def write_sweep(tmp_path, **fields) -> str:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(TINY))
    sweep = {"base": str(base), "seeds": [0, 1], "grid": {"algo.kwargs.learning_rate": [0.001, 0.0003]},
             "resources": {"cpus": 1}, "storage_path": str(tmp_path / "sweeps"), "name": "tiny", **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


# ------------------------------------------------------------ sweep files
def test_unknown_grid_key_fails_naming_it(tmp_path):
    path = write_sweep(tmp_path, grid={"algo.kwargs.learning_rate": [1e-3], "novelty.weight.betta": [1.0]})
    with pytest.raises(ConfigError, match=r"novelty\.weight\.betta: unknown key"):
        load_sweep(path)
    path = write_sweep(tmp_path, grid={"novelty.beta": [1.0]})  # the former flat key
    with pytest.raises(ConfigError, match=r"novelty: beta: moved to novelty\.weight\.beta"):
        load_sweep(path)
    path = write_sweep(tmp_path, grid={"envv.id": ["x"]})
    with pytest.raises(ConfigError, match="envv: unknown key"):
        load_sweep(path)


def test_bad_value_in_a_grid_fails_naming_the_point(tmp_path):
    path = write_sweep(tmp_path, grid={"algo.name": ["sac", "td3"]})
    with pytest.raises(ConfigError, match=r"algo.name.*grid point \{'algo.name': 'td3'\}"):
        load_sweep(path)


@pytest.mark.parametrize("fields, text", [
    ({"grid": {"seed": [1, 2]}}, "grid.seed: set by the sweep itself"),
    ({"grid": {"algo.kwargs.learning_rate": {"low": 1e-4, "high": 1e-3}}}, "a range needs a search"),
    ({"seeds": [0, 0]}, "seeds must be distinct"),
    ({"resources": {"cpus": 0}}, "resources.cpus"),
    ({"grdi": {}}, "grdi: unknown key"),
])
def test_bad_sweep_fields_are_named(tmp_path, fields, text):
    with pytest.raises(ConfigError, match=text):
        load_sweep(write_sweep(tmp_path, **fields))


def test_overrides_go_to_the_sweep_or_to_every_trial(tmp_path):
    spec = load_sweep(write_sweep(tmp_path), {"seeds": [3, 4, 5], "resources.cpus": 0.5, "total_timesteps": 123})
    assert spec.seeds == [3, 4, 5] and spec.resources.cpus == 0.5
    assert spec.overrides == {"total_timesteps": 123} and spec.base_config == TINY
    other = load_sweep(write_sweep(tmp_path), {"grid.novelty.weight.beta": [1.0, 2.0],
                                               "overrides.novelty.model.kind": "rnd"})
    assert other.grid == {"algo.kwargs.learning_rate": [0.001, 0.0003], "novelty.weight.beta": [1.0, 2.0]}
    assert other.overrides == {"novelty.model.kind": "rnd"}
    rnd = trial_config(other, {"novelty.weight.beta": 2.0}, 0, str(tmp_path / "runs"), "r").novelty
    assert rnd is not None and rnd.model.kind == "rnd" and rnd.weight.beta == 2.0
    cfg = trial_config(spec, {"algo.kwargs.learning_rate": 0.01}, 4, str(tmp_path / "runs"), "r")
    assert cfg.total_timesteps == 123 and cfg.seed == 4 and cfg.algo.kwargs["learning_rate"] == 0.01
    assert cfg.run.out_dir == str(tmp_path / "runs") and cfg.run.name == "r" and cfg.wandb_group is None
    auto = spec.model_copy(update={"overrides": {"device": "auto"}})
    assert trial_config(auto, {}, 0, "runs", "r").device == "cpu"  # no GPU reserved: none used
    gpu = auto.model_copy(update={"resources": Resources(cpus=1, gpus=0.25)})
    assert trial_config(gpu, {}, 0, "runs", "r").device == "auto"
    cfg = trial_config(spec.model_copy(update={"overrides": {"wandb": True}}), {}, 0, "runs", "r")
    assert cfg.wandb_group == "tiny"  # the trials of one sweep are one wandb group


def test_point_tags_are_folder_names():
    assert (point_tag({"novelty.model.kind": "flow", "novelty.weight.beta": 0.5})
            == "novelty.model.kind=flow_novelty.weight.beta=0.5")
    assert point_tag({"novelty": None}) == "novelty=none"
    assert point_tag({"novelty": {"model": {"kind": "rnd"}, "weight": {"beta": 2.0}}}) == "novelty=model-kind-rnd+weight-beta-2"
    assert point_tag({}) == "base"
    long = point_tag({"x": "a" * 200})
    assert len(long) == 80 and long != point_tag({"x": "a" * 201})


def test_shipped_sweeps_validate():
    for path in glob.glob(os.path.join(ROOT, "configs", "sweeps", "*.yaml")):
        spec = load_sweep(path)
        assert spec.seeds and spec.base_config


def test_wandb_group_reaches_wandb_init(tmp_path, monkeypatch):
    import wandb

    from agents.run.loggers import start_wandb

    seen = {}

    class FakeRun:
        id = "abc"

    def fake_init(**kwargs):
        seen.update(kwargs)
        return FakeRun()

    import wandb.integration.sb3 as sb3

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(sb3, "WandbCallback", lambda **kwargs: None)
    spec = load_sweep(write_sweep(tmp_path), {"wandb": True})
    start_wandb(trial_config(spec, {}, 0, "runs", "r"), str(tmp_path))
    assert seen["group"] == "tiny"


def test_a_sweep_records_its_commit_and_the_report_hashes_its_settings(tmp_path):
    from agents.run.provenance import code_commit, config_hash

    spec = load_sweep(write_sweep(tmp_path))
    assert spec.commit == code_commit() and spec.commit  # a git describe, or "unknown" outside a checkout
    with pytest.raises(ConfigError, match="commit: filled in by the sweep"):
        load_sweep(write_sweep(tmp_path, commit="abc"))
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1}) != config_hash({"a": 2})


# ------------------------------------------------------------ statistics
def test_point_estimates_by_hand():
    scores = np.array([0.0, 0.0, 0.3, 0.6, 1.0])
    assert interval_estimate(scores, lambda x, axis=-1: np.mean(x, axis=axis))[0] == pytest.approx(0.38)
    # 5 seeds: the lowest and the highest are cut, IQM = mean(0, 0.3, 0.6)
    assert iqm(scores) == pytest.approx(0.3)
    assert interval_estimate(scores, iqm)[0] == pytest.approx(0.3)
    assert iqm(np.array([5.0, 1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 2.5])) == pytest.approx(np.mean([2, 2.5, 3, 4]))


def test_bootstrap_intervals_by_hand():
    mean = lambda x, axis=-1: np.mean(x, axis=axis)  # noqa: E731
    # two seeds a < b: resampled means are a (1/4), (a+b)/2 (1/2), b (1/4): the 95 % interval is [a, b]
    assert interval_estimate(np.array([0.2, 0.8]), mean)[1:] == pytest.approx((0.2, 0.8))
    # three seeds: all-a and all-c resamples have probability 1/27 > 2.5 %: the interval is [a, c]
    assert interval_estimate(np.array([0.1, 0.4, 0.9]), mean)[1:] == pytest.approx((0.1, 0.9))
    # equal seeds: no spread; one seed: no interval
    assert interval_estimate(np.array([0.3, 0.3, 0.3]), iqm) == pytest.approx((0.3, 0.3, 0.3))
    point, lo, hi = interval_estimate(np.array([0.7]), mean)
    assert point == 0.7 and np.isnan(lo) and np.isnan(hi)


def test_solved_and_held_needs_every_late_evaluation_at_0_9():
    from agents.sweep.report import Run, markdown, summarize

    def run(seed: int, rates: list[float], final: float, first) -> Run:
        steps = [10_000 * (i + 1) for i in range(len(rates))]  # budget 100k: the last 20 % is >= 80k
        summary = {"timesteps": 100_000, "eval_success_rate": final, "eval_return_mean": final,
                   "first_success_step": first}
        return Run(f"r{seed}", {}, seed, summary, {}, {"timesteps": np.array(steps, float),
                                                       "success_rate": np.array(rates, float)})

    runs = [run(0, [0, 1, 0.2, 1, 1, 1, 1, 0.9, 1.0, 1.0], 1.0, 900),  # early dips do not count
            run(1, [1] * 8 + [0.8, 1.0], 1.0, 500),  # a dip at 90k: not held
            run(2, [1] * 10, 0.7, 700),  # the final evaluation counts too
            run(3, [0] * 10, 0.0, None)]  # never found it
    assert [r.held() for r in runs] == [True, False, False, False]
    (row,) = summarize(runs, reps=50)
    assert row["held"] == 1 and row["first_success"] == (700.0, 3, 4)
    assert "| 4 | 3/4 | 1/4 | 700 |" in markdown([row])


def test_stratified_bootstrap_against_numpy():
    """(runs, tasks) scores: each task's runs are resampled apart; compare with a plain numpy bootstrap."""
    rng = np.random.default_rng(1)
    scores = np.stack([rng.normal(0.0, 1.0, 6), rng.normal(5.0, 0.1, 6)], axis=1)  # two strata, 6 runs each
    _, lo, hi = interval_estimate(scores, iqm, reps=20_000)
    idx = rng.integers(0, 6, size=(20_000, 6, 2))
    resampled = np.take_along_axis(np.broadcast_to(scores, (20_000, 6, 2)), idx, axis=1).reshape(20_000, 12)
    ref_lo, ref_hi = np.percentile(iqm(resampled, axis=-1), [2.5, 97.5])
    # Monte-Carlo error of a 2.5 % quantile of 20k resamples: a few hundredths of the spread
    spread = ref_hi - ref_lo
    assert abs(lo - ref_lo) < 0.05 * spread and abs(hi - ref_hi) < 0.05 * spread
    # pooling the strata (not stratifying) would mix them: a wider interval
    pooled = scores.reshape(-1)[rng.integers(0, 12, size=(20_000, 12))]
    assert np.subtract(*np.percentile(iqm(pooled, axis=-1), [97.5, 2.5])) > 1.5 * spread


# ------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")  # a dependency: never skipped where the project is installed
    from agents.sweep.tune import _init_ray

    _init_ray(None)
    yield ray
    ray.shutdown()


def finished_runs(sweep_dir: str) -> list[str]:
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(sweep_dir, "runs", "*", "summary.json")))


@pytest.mark.xdist_group("ray")
def test_tiny_sweep_runs_every_trial_as_an_ordinary_run(tmp_path, local_ray, capsys):
    from agents.run import evaluate
    from agents.sweep import start_sweep

    result = start_sweep(write_sweep(tmp_path), verbose=0)
    assert result.complete and len(result.trials) == 4
    runs = finished_runs(result.sweep_dir)
    assert [os.path.basename(r) for r in runs] == [
        f"algo.kwargs.learning_rate={lr}-s{s}" for lr in ("0.0003", "0.001") for s in (0, 1)]
    for run in runs:
        summary = json.load(open(os.path.join(run, "summary.json")))
        trial = json.load(open(os.path.join(run, "trial.json")))
        cfg = yaml.safe_load(open(os.path.join(run, "config.yaml")))
        assert summary["timesteps"] == 300 and trial["attempt"] == 1
        assert cfg["seed"] == trial["seed"] and cfg["algo"]["kwargs"]["learning_rate"] == \
            trial["point"]["algo.kwargs.learning_rate"]
    assert evaluate(runs[0], episodes=1)["episodes"] == 1  # `flowrl eval` works on a trial
    assert main(["report", result.sweep_dir, "--reps", "200"]) == 0
    out = capsys.readouterr().out
    assert "| algo.kwargs.learning_rate=0.001 | 2 |" in out and "Best configuration" in out
    from agents.run.provenance import code_commit
    assert f"Code: commit `{code_commit()}`; settings hash `" in out  # the report names the code it measured
    assert os.path.exists(os.path.join(result.sweep_dir, "report.md"))
    assert os.path.getsize(os.path.join(result.sweep_dir, "curves.png")) > 0


@pytest.mark.xdist_group("ray")
def test_a_killed_trial_is_retried_from_its_checkpoint(tmp_path, local_ray):
    from agents.sweep import start_sweep

    path = write_sweep(tmp_path, seeds=[0], grid={}, overrides={"total_timesteps": 1200})
    run_dir = tmp_path / "sweeps" / "tiny" / "runs" / "base-s0"
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            trial = run_dir / "trial.json"
            if (run_dir / "checkpoints" / "latest").exists() and trial.exists():
                killed["pid"] = json.loads(trial.read_text())["pid"]
                os.kill(killed["pid"], signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = start_sweep(path, verbose=0)
    killer.join()
    assert killed, "the trial finished before it could be killed"
    assert result.complete
    trial = json.loads((run_dir / "trial.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert trial["attempt"] == 2 and trial["pid"] != killed["pid"]
    assert trial["start_step"] > 0  # continued from the checkpoint, not from scratch
    assert summary["timesteps"] == 1200
    assert glob.glob(str(run_dir / "progress-*.csv"))  # the resumed part of SB3's log


@pytest.mark.xdist_group("ray")
def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, local_ray):
    from agents.sweep import resume_sweep

    path = write_sweep(tmp_path, max_concurrent=1, overrides={"total_timesteps": 400})
    sweep_dir = str(tmp_path / "sweeps" / "tiny")
    env = {**os.environ, "PYTHONPATH": ROOT}
    driver = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "sweep", path, f"address={local_ray.get_runtime_context().gcs_address}"],
        cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not finished_runs(sweep_dir) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)  # Ray Tune saves the experiment and stops
    try:
        driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
    done = finished_runs(sweep_dir)
    assert 1 <= len(done) < 4, f"interrupted after {len(done)} of 4 trials"
    stamps = {r: (os.stat(os.path.join(r, "summary.json")).st_mtime_ns,
                  os.stat(os.path.join(r, "final_model.zip")).st_mtime_ns,
                  json.load(open(os.path.join(r, "trial.json")))["attempt"]) for r in done}
    result = resume_sweep(sweep_dir, verbose=0)
    assert result.complete and len(result.trials) == 4
    assert len(finished_runs(sweep_dir)) == 4
    for r, stamp in stamps.items():  # finished trials were neither trained nor evaluated again
        assert (os.stat(os.path.join(r, "summary.json")).st_mtime_ns,
                os.stat(os.path.join(r, "final_model.zip")).st_mtime_ns,
                json.load(open(os.path.join(r, "trial.json")))["attempt"]) == stamp


@pytest.mark.xdist_group("ray")
def test_optuna_search_runs_every_sample_once_per_seed(tmp_path, local_ray):
    from agents.sweep.report import read_runs, summarize
    from agents.sweep import start_sweep

    grid = {"algo.kwargs.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "algo.kwargs.batch_size": [16, 32]}
    path = write_sweep(tmp_path, grid=grid, search={"kind": "optuna", "metric": "eval_return_mean", "num_samples": 2})
    result = start_sweep(path, verbose=0)
    assert result.complete and len(result.trials) == 4
    runs, unfinished = read_runs(result.sweep_dir)
    assert len(runs) == 4 and not unfinished
    rows = summarize(runs, reps=100)
    assert len(rows) == 2 and all(sorted(r["seeds"]) == [0, 1] for r in rows)  # a sample, every seed
    for run in runs:
        lr = run.point["algo.kwargs.learning_rate"]
        assert 1e-4 <= lr <= 1e-2 and run.point["algo.kwargs.batch_size"] in (16, 32)
        assert yaml.safe_load(open(os.path.join(run.run_dir, "config.yaml")))["algo"]["kwargs"]["learning_rate"] == lr


def test_sweep_command_reports_bad_files(tmp_path, capsys):
    assert main(["sweep", write_sweep(tmp_path, grid={"algo.kwargs.learning_rate": [1e-3], "polcy": ["flow"]})]) == 2
    assert "polcy: unknown key" in capsys.readouterr().err
    assert main(["sweep"]) == 2
    assert main(["report", str(tmp_path)]) == 2
