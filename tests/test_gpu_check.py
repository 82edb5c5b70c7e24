"""``scripts/gpu_check.py`` stays runnable: its ``--smoke`` version on the CPU, and its failure exit."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import flowrl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def test_smoke_run_prints_the_three_tables_and_passes():
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "scripts/gpu_check.py", "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    for title in ("## 0. device tests", "### Table 1", "### Table 2", "### Table 3", "all checks passed"):
        assert title in text, title
    table1 = text[text.index("### Table 1"):text.index("### Table 2")]
    assert all(f"| {name} |" in table1 for name in flowrl.available_flows())
    assert "FAIL" not in table1
    table3 = text[text.index("### Table 3"):]
    for row in ("| sac | gaussian |", "| sac | flow (realnvp)+bonus |", "| ppo | flow (naf) |"):
        assert row in table3, row
    parts = text[text.index("## 4."):]
    for row in ("| sac | gaussian | none |", "| sac | flow | flow |"):
        assert row in parts, row


def test_a_failed_check_or_a_broken_flow_makes_the_exit_status_non_zero(monkeypatch, capsys):
    import gpu_check

    assert gpu_check.main(["--smoke", "--only", "flows", "--flows", "realnvp"]) == 0
    original = flowrl.Flow.log_prob
    monkeypatch.setattr(flowrl.Flow, "log_prob", lambda self, x, c=None: original(self, x, c) * torch.nan)
    assert gpu_check.main(["--smoke", "--only", "flows", "--flows", "realnvp"]) == 1
    monkeypatch.undo()
    assert gpu_check.main(["--smoke", "--only", "flows", "--flows", "realnvp", "no_such_flow"]) == 1
    assert "FAILED" in capsys.readouterr().out
