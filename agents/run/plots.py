"""Pictures of a run, written as PNG files into its directory.

* ``learning_curves.png``: extrinsic and intrinsic episode return and
  success (from ``episodes.csv``; intrinsic only with a novelty bonus);
* ``coverage.png``: visitation heatmap (log scale) over the maze or grid;
* ``novelty_density.png``: the novelty model's log-density over the maze;
* ``policy_samples.png``: for 2-D action spaces, actions sampled from the
  policy at a few states (a flow policy can be multi-modal, a Gaussian not).
"""

from __future__ import annotations

import csv
import os
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from envs.coverage import CoverageTracker  # noqa: E402

__all__ = [
    "read_csv", "plot_learning_curves", "plot_coverage", "plot_density", "plot_policy_samples", "plot_run",
]


def read_csv(path: str) -> dict[str, np.ndarray]:
    """Columns of a CSV file as float arrays (empty cells are NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(key) or "nan"))
            except ValueError:
                vals.append(float("nan"))
        out[key] = np.array(vals)
    return out


def _rolling(x: np.ndarray, k: int) -> np.ndarray:
    if len(x) == 0:
        return x
    k = max(1, min(k, len(x)))
    c = np.cumsum(np.insert(x, 0, 0.0))
    out = np.empty(len(x))
    out[k - 1:] = (c[k:] - c[:-k]) / k
    out[: k - 1] = c[1:k] / np.arange(1, k)
    return out


def plot_learning_curves(run_dir: str) -> Optional[str]:
    """``learning_curves.png``: extrinsic and intrinsic episode return and success against env steps."""
    path = os.path.join(run_dir, "episodes.csv")
    episodes = read_csv(path) if os.path.exists(path) else {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    intrinsic = episodes.get("intrinsic_return") if episodes else None
    if episodes:
        t = episodes["timesteps"]
        for ax, values, color in [(axes[0], episodes["return"], "tab:blue"), (axes[2], intrinsic, "tab:purple")]:
            if values is None or not np.isfinite(values).any():
                continue
            ok = np.isfinite(values)
            ax.plot(t[ok], values[ok], ".", ms=2, alpha=0.3, color=color)
            ax.plot(t[ok], _rolling(values[ok], 20), color=color, label="rolling mean (20)")
            ax.legend(loc="best", fontsize=8)
        axes[1].plot(t, _rolling(episodes["success"], 20), color="tab:green")
        axes[1].set_ylim(-0.05, 1.05)
    if intrinsic is None or not np.isfinite(intrinsic).any():
        axes[2].text(0.5, 0.5, "no intrinsic reward\n(no novelty bonus)", ha="center", va="center",
                     transform=axes[2].transAxes)
    axes[0].set(title="extrinsic episode return", xlabel="env steps")
    axes[1].set(title="success rate (last 20 episodes)", xlabel="env steps")
    axes[2].set(title="intrinsic episode return (novelty bonus)", xlabel="env steps")
    out = os.path.join(run_dir, "learning_curves.png")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _walls(ax, env) -> None:
    if env is None or not hasattr(env, "layout"):
        return
    w = env.layout.walls.astype(float)
    masked = np.ma.masked_where(w == 0, w)
    ax.imshow(masked, extent=env.extent[:2] + env.extent[2:][::-1], cmap="gray_r", vmin=0, vmax=1.5,
              interpolation="nearest", alpha=0.9)
    gx, gy = env.layout.goal
    sx, sy = env.layout.start
    ax.plot([sx], [sy], "o", color="white", mec="black", ms=7, label="start")
    ax.plot([gx], [gy], "*", color="lime", mec="black", ms=12, label="goal")


def plot_coverage(run_dir: str, tracker: CoverageTracker, env=None, title: str = "") -> str:
    """``coverage.png``: log visitation counts over the tracker's grid (row 0 on top), walls overlaid."""
    fig, ax = plt.subplots(figsize=(5, 5))
    heat = np.log10(1 + tracker.heatmap())
    x0, x1, y0, y1 = tracker.extent
    im = ax.imshow(heat, extent=(x0, x1, y1, y0), cmap="viridis", interpolation="nearest")
    _walls(ax, env)
    fig.colorbar(im, ax=ax, fraction=0.046, label="log10(1 + visits)")
    ax.set(title=title or f"coverage {tracker.fraction:.0%} of {int(tracker.valid.sum())} cells")
    out = os.path.join(run_dir, "coverage.png")
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_density(run_dir: str, env, density: Callable[[np.ndarray], np.ndarray], resolution: int = 8) -> Optional[str]:
    """``novelty_density.png``: ``density(obs) -> log p`` over the free space of a maze."""
    if env is None or not hasattr(env, "position_to_obs"):
        return None
    x0, x1, y0, y1 = env.extent
    nx, ny = int((x1 - x0) * resolution), int((y1 - y0) * resolution)
    xs = x0 + (np.arange(nx) + 0.5) / resolution
    ys = y0 + (np.arange(ny) + 0.5) / resolution
    pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    logp = np.asarray(density(env.position_to_obs(pts)), dtype=np.float64).reshape(ny, nx)
    walls = env.layout.walls[np.floor(pts[:, 1]).astype(int), np.floor(pts[:, 0]).astype(int)].reshape(ny, nx)
    logp[walls] = np.nan
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = np.nanpercentile(logp, [5, 100])  # a few far-off points can reach -1e3: clip the colour scale
    im = ax.imshow(logp, extent=(x0, x1, y1, y0), cmap="magma", interpolation="nearest", vmin=lo, vmax=hi)
    _walls(ax, env)
    fig.colorbar(im, ax=ax, fraction=0.046, label="log density of observations")
    ax.set(title="novelty model density (low = novel)")
    out = os.path.join(run_dir, "novelty_density.png")
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out


def _probe_states(env, k: int = 4) -> np.ndarray:
    """A few free cell centres along the maze (start first), as positions."""
    free = np.argwhere(~env.layout.walls)  # (row, col)
    centres = free[:, ::-1] + 0.5
    sx, sy = env.layout.start
    order = np.argsort(np.hypot(centres[:, 0] - sx, centres[:, 1] - sy))
    picks = order[np.linspace(0, len(order) - 1, k).astype(int)]
    return centres[picks]


def plot_policy_samples(run_dir: str, model, env, n: int = 300, normalize: Optional[Callable] = None) -> Optional[str]:
    """``policy_samples.png``: ``n`` stochastic actions at a few states, for 2-D Box action spaces (and Box states).

    ``normalize`` maps raw observations to the model's inputs (``env.normalize_obs`` runs).
    """
    space = model.action_space
    if getattr(space, "shape", None) != (2,):
        return None
    if env is not None and hasattr(env, "layout"):
        positions = _probe_states(env)
        states = env.position_to_obs(positions)
        labels = [f"({x:.1f}, {y:.1f})" for x, y in positions]
    elif not hasattr(model.observation_space, "low"):  # a Dict observation space: no box to draw states from
        return None
    else:
        low, high = model.observation_space.low, model.observation_space.high
        rng = np.random.default_rng(0)
        states = rng.uniform(np.maximum(low, -1), np.minimum(high, 1), size=(4, *low.shape)).astype(np.float32)
        labels = [f"state {i}" for i in range(len(states))]
    fig, axes = plt.subplots(1, len(states), figsize=(3.2 * len(states), 3.2))
    for ax, s, label in zip(np.atleast_1d(axes), states, labels):
        obs = np.repeat(np.asarray(s, dtype=np.float32)[None], n, 0)
        actions, _ = model.predict(obs if normalize is None else normalize(obs), deterministic=False)
        ax.scatter(actions[:, 0], actions[:, 1], s=3, alpha=0.4)
        ax.set(xlim=(space.low[0], space.high[0]), ylim=(space.low[1], space.high[1]), title=f"state {label}",
               xlabel="action x", aspect="equal")
    np.atleast_1d(axes)[0].set_ylabel("action y")
    fig.suptitle("policy samples (action distribution at a few states)")
    fig.tight_layout()
    out = os.path.join(run_dir, "policy_samples.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_run(run_dir: str, model=None, env=None, tracker: Optional[CoverageTracker] = None,
             density: Optional[Callable] = None, normalize: Optional[Callable] = None) -> list[str]:
    """Every picture that can be made from what is given or saved in ``run_dir``; returns their paths.

    ``normalize``: raw observations -> the model's inputs, for a model trained with ``env.normalize_obs``.
    """
    base = None
    if env is not None:
        base = env.envs[0].unwrapped if hasattr(env, "envs") else getattr(env, "unwrapped", env)
    if tracker is None and os.path.exists(os.path.join(run_dir, "coverage.npz")):
        with np.load(os.path.join(run_dir, "coverage.npz")) as data:
            tracker = CoverageTracker.from_state_dict({k: data[k] for k in data.files})
    paths = [plot_learning_curves(run_dir)]
    if tracker is not None:
        paths.append(plot_coverage(run_dir, tracker, base))
    if density is not None:
        paths.append(plot_density(run_dir, base, density))
    if model is not None:
        paths.append(plot_policy_samples(run_dir, model, base, normalize=normalize))
    return [p for p in paths if p]
