"""Threads: the config's ``threads`` is applied by train and eval, an explicit OMP_NUM_THREADS wins."""

from __future__ import annotations

import os

import pytest
import torch

from agents.run import evaluation as run_evaluate, training as run_train
from agents.config import load_config
from agents.run.threads import resolve_threads, torch_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAZE = os.path.join(ROOT, "configs", "maze_sac.yaml")


def test_the_config_value_applies_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(3) == 3 and resolve_threads(None) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads(3) == 2 and resolve_threads(None) == 2
    for bad in ("0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            resolve_threads(1)


def test_the_block_runs_with_the_threads_and_the_count_comes_back(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with torch_threads(before + 1) as n:
        assert n == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with torch_threads(None) as n:
        assert n == before


@pytest.mark.parametrize("omp, expected", [(None, 2), ("1", 1)])
def test_train_and_eval_apply_threads(tmp_path, monkeypatch, omp, expected):
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    cfg = load_config(MAZE, ["threads=2", "total_timesteps=20", f"run.out_dir={tmp_path}", "run.progress_bar=false",
                             "run.plots=false", "eval.episodes=1", "device=cpu", "env.kwargs.max_episode_steps=10",
                             "algo.kwargs.learning_starts=100"])
    seen = []
    real = run_evaluate.evaluate_model
    counting = lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1]  # noqa: E731
    monkeypatch.setattr(run_train, "evaluate_model", counting)
    monkeypatch.setattr(run_evaluate, "evaluate_model", counting)
    result = run_train.train(cfg, on_model=lambda m: seen.append(torch.get_num_threads()))
    run_evaluate.evaluate(result.run_dir, episodes=1)  # flowrl eval
    assert seen == [expected] * 3  # training, its final evaluation, flowrl eval
    assert torch.get_num_threads() == before
