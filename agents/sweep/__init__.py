"""Many seeds and configurations: sweep files (:mod:`agents.sweep.spec`), run on Ray Tune
(:mod:`agents.sweep.tune`, every trial an ordinary run directory), and their statistics
(:mod:`agents.sweep.report`); ``flowrl sweep`` and ``flowrl report`` (:mod:`agents.sweep.cli`).
"""

from .report import read_runs, summarize, write_report
from .spec import SweepSpec, grid_points, load_sweep, point_tag, read_sweep, trial_config
from .tune import RUNS, TRIAL_FILE, SweepResult, resume_sweep, run_trial, start_sweep

__all__ = [
    "SweepSpec", "load_sweep", "read_sweep", "trial_config", "grid_points", "point_tag",
    "start_sweep", "resume_sweep", "run_trial", "SweepResult", "RUNS", "TRIAL_FILE",
    "read_runs", "summarize", "write_report",
]
