"""Benchmark scripts that write pages: the page names the commit, the machine and the command."""

from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def test_agent_speed_page_names_the_commit_machine_and_command(tmp_path, capsys):
    import bench_agent_speed

    page = tmp_path / "results" / "agent_speed.md"
    bench_agent_speed.main(["--algos", "sac", "--policies", "gaussian", "--bonuses", "none", "flow",
                            "--steps", "1100", "--out", str(page)])
    text = page.read_text()
    assert "`python scripts/bench_agent_speed.py --algos sac --policies gaussian --bonuses none flow " \
           "--steps 1100 --out" in text
    assert re.search(r"at commit `[0-9a-f]{7,}(-dirty)?`", text), text[:400]
    assert f"{os.cpu_count()} CPUs" in text
    rows = [line for line in text.splitlines() if line.startswith("| sac |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["gaussian", "none"], ["gaussian", "flow"]]
    overhead = float(rows[1].split(" | ")[5])  # steps/s without the bonus / with it, from the same run
    assert overhead > 0
    assert capsys.readouterr().out.strip().endswith("same policy)."), "the table is printed too"
