"""``flowrl report``: aggregate statistics of a sweep over seeds, with confidence intervals and curves.

Per configuration (grid point) of a sweep folder (:mod:`agents.sweep`):

* mean and interquartile mean of the final evaluation success rate and
  return over seeds; IQM = mean of the middle 50 % of the scores
  (``scipy.stats.trim_mean(x, 0.25)``), robust to a few outlier seeds;
* 95 % stratified percentile-bootstrap confidence intervals: the runs of
  each task (stratum) are resampled with replacement, the statistic is
  recomputed on every resample and the interval is its 2.5 and 97.5
  percentiles (``scipy.stats.bootstrap``, ``method="percentile"``; one
  sample per task, resampled independently).  A sweep configuration has one
  task, so this is the bootstrap over seeds;
* the step of the first training success (median over the seeds that had one);
* the seeds that found the goal (a training episode succeeded) and the seeds
  that solved it and held it: every evaluation in the last 20 % of the budget
  (``evaluations.csv`` of ``eval.every``, and the final one) at >= 0.9;
* ``curves.png``: rolling success and return against env steps, mean over
  seeds with a 95 % bootstrap band, one colour per configuration;

and the best configuration (highest success IQM, ties broken by return
IQM).  The Markdown table goes to stdout and ``report.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy import stats

from ..config import ConfigError

#: "Solved and held": success >= HELD_SUCCESS at every evaluation in the last HELD_TAIL of the budget.
HELD_SUCCESS, HELD_TAIL = 0.9, 0.2

__all__ = ["iqm", "interval_estimate", "Run", "read_runs", "summarize", "markdown", "plot_curves", "write_report"]


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: ``trim_mean(x, 0.25)``, the mean of the scores between the quartiles."""
    return stats.trim_mean(scores, 0.25, axis=axis)


def interval_estimate(
    scores: np.ndarray, statistic: Callable[..., np.ndarray], reps: int = 2000, confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and stratified percentile-bootstrap interval of ``statistic`` over ``scores``.

    ``scores``: ``(runs,)`` or ``(runs, tasks)``; each task's runs are
    resampled independently, then ``statistic(all scores, axis=-1)``.  The
    interval is ``(nan, nan)`` when a task has fewer than two runs.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    point = float(statistic(scores.reshape(-1), axis=-1))
    if scores.shape[0] < 2:
        return point, float("nan"), float("nan")

    def pooled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(np.concatenate(samples, axis=axis), axis=axis)

    res = stats.bootstrap(tuple(scores.T), pooled, n_resamples=reps, confidence_level=confidence,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


@dataclass
class Run:
    """One finished trial of a sweep: its configuration, seed, figures and learning curve."""

    run_dir: str
    point: dict
    seed: int
    summary: dict
    curve: dict = field(default_factory=dict)
    evaluations: dict = field(default_factory=dict)  # evaluations.csv's columns (eval.every), if any

    def held(self, threshold: float = HELD_SUCCESS, tail: float = HELD_TAIL) -> bool:
        """Whether every evaluation in the last ``tail`` of the budget reached ``threshold`` (the final one too)."""
        budget = float(self.summary["timesteps"])
        steps = np.asarray(self.evaluations.get("timesteps", []), dtype=np.float64)
        rates = np.asarray(self.evaluations.get("success_rate", []), dtype=np.float64)
        late = rates[steps >= (1.0 - tail) * budget]
        return bool((late >= threshold).all()) and float(self.summary["eval_success_rate"]) >= threshold

    @property
    def key(self) -> str:
        return json.dumps(self.point, sort_keys=True)


def read_runs(sweep_dir: str) -> tuple[list[Run], list[str]]:
    """The finished runs of a sweep folder and the run directories that did not finish."""
    from ..run.callbacks import EVALUATIONS_CSV
    from ..run.plots import read_csv
    from .tune import RUNS, TRIAL_FILE

    root = os.path.join(sweep_dir, RUNS)
    if not os.path.isdir(root):
        raise ConfigError(f"{sweep_dir!r} is not a sweep folder (no {RUNS}/)")
    runs, unfinished = [], []
    for name in sorted(os.listdir(root)):
        run_dir = os.path.join(root, name)
        trial, summary = os.path.join(run_dir, TRIAL_FILE), os.path.join(run_dir, "summary.json")
        if not os.path.isfile(trial):
            continue
        if not os.path.isfile(summary):
            unfinished.append(run_dir)
            continue
        with open(trial) as f:
            info = json.load(f)
        with open(summary) as f:
            figures = json.load(f)
        metrics, evaluations = os.path.join(run_dir, "metrics.csv"), os.path.join(run_dir, EVALUATIONS_CSV)
        curve = read_csv(metrics) if os.path.isfile(metrics) else {}
        evals = read_csv(evaluations) if os.path.isfile(evaluations) else {}
        runs.append(Run(run_dir, info["point"], int(info["seed"]), figures, curve, evals))
    return runs, unfinished


def _label(point: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in point.items()) or "base"


def summarize(runs: list[Run], reps: int = 2000, seed: int = 0) -> list[dict]:
    """One row per configuration: seeds, (point, lo, hi) of success/return mean and IQM, first success."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    rows = []
    for members in groups.values():
        members.sort(key=lambda r: r.seed)
        row = {"config": _label(members[0].point), "point": members[0].point, "seeds": [r.seed for r in members],
               "runs": [r.run_dir for r in members]}
        for name, metric in (("success", "eval_success_rate"), ("return", "eval_return_mean")):
            scores = np.array([r.summary[metric] for r in members], dtype=np.float64)
            row[f"{name}_mean"] = interval_estimate(scores, _mean, reps, seed=seed)
            row[f"{name}_iqm"] = interval_estimate(scores, iqm, reps, seed=seed)
        firsts = [r.summary.get("first_success_step") for r in members]
        reached = [f for f in firsts if f is not None]
        row["first_success"] = (float(np.median(reached)) if reached else None, len(reached), len(members))
        row["held"] = sum(r.held() for r in members)
        rows.append(row)
    return rows


def best(rows: list[dict]) -> Optional[dict]:
    """The row with the highest success IQM (ties: return IQM)."""
    return max(rows, key=lambda r: (r["success_iqm"][0], r["return_iqm"][0])) if rows else None


def _ci(estimate: tuple[float, float, float]) -> str:
    point, lo, hi = estimate
    return f"{point:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else f"{point:.2f} [n/a]"


def markdown(rows: list[dict]) -> str:
    """The Markdown table of :func:`summarize`'s rows."""
    lines = ["| configuration | seeds | found the goal | solved and held | first success: median step "
             "| success mean [95% CI] | success IQM [95% CI] | return mean [95% CI] | return IQM [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step, k, n = r["first_success"]
        first = f"{step:,.0f}" if step is not None else "-"
        lines.append(f"| {r['config']} | {n} | {k}/{n} | {r['held']}/{n} | {first} | {_ci(r['success_mean'])} "
                     f"| {_ci(r['success_iqm'])} | {_ci(r['return_mean'])} | {_ci(r['return_iqm'])} |")
    return "\n".join(lines)


def _curves(members: list[Run], column: str, steps: np.ndarray) -> np.ndarray:
    out = []
    for run in members:
        t, y = run.curve.get("timesteps"), run.curve.get(column)
        if t is None or y is None:
            continue
        ok = np.isfinite(t) & np.isfinite(y)
        if ok.any():
            out.append(np.interp(steps, t[ok], y[ok]))
    return np.array(out)


def plot_curves(runs: list[Run], path: str, reps: int = 1000, seed: int = 0) -> Optional[str]:
    """Rolling success and return (``metrics.csv``) per configuration: mean over seeds, 95 % bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    spans = [(float(np.nanmin(r.curve["timesteps"])), float(np.nanmax(r.curve["timesteps"])))
             for r in runs if len(r.curve.get("timesteps", [])) > 0]
    if not spans:
        return None
    steps = np.linspace(min(a for a, _ in spans), max(b for _, b in spans), 100)  # no extrapolation before row 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for members, color in zip(groups.values(), plt.cm.tab10.colors * 10):
        for ax, column in zip(axes, ("success_rate", "return_mean")):
            ys = _curves(members, column, steps)
            if len(ys) == 0:
                continue
            ax.plot(steps, ys.mean(axis=0), color=color, label=f"{_label(members[0].point)} ({len(ys)} seeds)")
            if len(ys) >= 2:
                ci = stats.bootstrap((ys,), np.mean, axis=0, n_resamples=reps, method="percentile",
                                     rng=np.random.default_rng(seed)).confidence_interval
                ax.fill_between(steps, ci.low, ci.high, color=color, alpha=0.2, linewidth=0)
    for ax, title in zip(axes, ("success rate (rolling)", "episode return (rolling)")):
        ax.set_xlabel("env steps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def provenance(sweep_dir: str) -> str:
    """One line: the sweep's commit, the hash of its resolved settings (base config, overrides, grid, seeds)."""
    from ..run.provenance import config_hash
    from .spec import read_sweep

    spec = read_sweep(sweep_dir)
    settings = {"base_config": spec.base_config, "overrides": spec.overrides, "seeds": spec.seeds,
                "grid": {k: v if isinstance(v, list) else v.model_dump() for k, v in spec.grid.items()}}
    overrides = ", ".join(f"{k}={v}" for k, v in spec.overrides.items()) or "none"
    return (f"Code: commit `{spec.commit or 'not recorded'}`; settings hash `{config_hash(settings)}` "
            f"(base `{os.path.basename(spec.base)}`, overrides: {overrides}).")


def write_report(sweep_dir: str, reps: int = 2000, seed: int = 0) -> str:
    """Compute the sweep's statistics, write ``report.md`` and ``curves.png`` in it; returns the Markdown."""
    runs, unfinished = read_runs(sweep_dir)
    if not runs:
        raise ConfigError(f"{sweep_dir!r} has no finished run yet")
    rows = summarize(runs, reps, seed)
    top = best(rows)
    png = plot_curves(runs, os.path.join(sweep_dir, "curves.png"), seed=seed)
    text = [f"# Sweep {os.path.basename(os.path.abspath(sweep_dir))}", "", provenance(sweep_dir), "",
            f"{len(rows)} configurations, {len(runs)} finished runs"
            + (f", {len(unfinished)} unfinished" if unfinished else "")
            + f". Found the goal: a training episode succeeded; solved and held: every evaluation in the last "
              f"{HELD_TAIL:.0%} of the budget at >= {HELD_SUCCESS} (evaluations.csv and the final one). Success "
              f"and return: final evaluation of each run (summary.json); 95 % stratified percentile-bootstrap "
              f"intervals over seeds ({reps} resamples, seed {seed}); IQM = mean of the middle 50 % of seeds.", "",
            markdown(rows), "",
            f"Best configuration (highest success IQM, then return IQM): **{top['config']}**", ""]
    if png:
        text += ["![learning curves](curves.png)", ""]
    out = "\n".join(text)
    with open(os.path.join(sweep_dir, "report.md"), "w") as f:
        f.write(out)
    return out
