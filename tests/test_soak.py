"""Soak (slow): 100,000 env steps of SAC + RealNVP policy + flow bonus with a checkpoint every 10,000:
no NaN or inf anywhere, resident memory flat once the replay buffer is full.

``FLOWRL_SOAK_STEPS=5000 pytest -m slow tests/test_soak.py -s`` runs a short version
(its replay buffer then holds half the steps, so that it still fills and the flatness is checked).
"""

from __future__ import annotations

import csv
import math
import os

import pytest

from agents.config import load_config
from agents.run import train
from agents.run.health import HealthCallback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = int(os.environ.get("FLOWRL_SOAK_STEPS", "100000"))
RSS_GROWTH_MIB = 40.0  # after the buffer is full; a leak of 1 KiB per step over 50,000 steps is 49 MiB


@pytest.mark.slow
def test_long_run_stays_finite_with_flat_memory(tmp_path):
    items = [f"total_timesteps={STEPS}", f"run.checkpoint_every={max(STEPS // 10, 1)}", f"run.out_dir={tmp_path}",
             "run.name=soak", "run.progress_bar=false", "run.plots=false", "device=cpu", "threads=1"]
    if STEPS < 100_000:
        items.append(f"algo.kwargs.buffer_size={STEPS // 2}")
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"), items)
    assert cfg.policy == "flow" and cfg.novelty is not None and cfg.novelty.model.kind == "flow"
    health = HealthCallback(every=max(STEPS // 50, 100))
    result = train(cfg, callbacks=[health])
    print("\nstep, RSS MiB:", ", ".join(f"({s}, {mb:.1f})" for s, mb in health.rss))

    assert health.problems == [] and health.checks >= 50
    assert result.model.num_timesteps == STEPS
    for name in ("episodes.csv", "metrics.csv"):
        with open(os.path.join(result.run_dir, name)) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if value not in ("", "nan") or key in ("return", "length", "coverage"):
                        assert math.isfinite(float(value)), (name, key, row)
    assert all(math.isfinite(v) for v in result.summary.values() if isinstance(v, float))
    ckpts = sorted(os.listdir(os.path.join(result.run_dir, "checkpoints")))
    assert f"step_{STEPS:010d}" in ckpts

    buffer_size = int(cfg.algo.kwargs.get("buffer_size", 1_000_000))
    full = [mb for step, mb in health.rss if step >= buffer_size + STEPS // 20]  # a little after it filled
    assert len(full) >= 5, health.rss
    assert max(full) - full[0] < RSS_GROWTH_MIB, health.rss
