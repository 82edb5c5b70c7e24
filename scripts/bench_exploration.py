"""Exploration benchmark: does a novelty bonus let the agent *solve* sparse tasks, not only spread out?

For each task, bonus (flow pseudo-count, RND, none), policy (Gaussian, RealNVP
flow) and seed, the agent of ``--config`` (``configs/demo.yaml``: its algorithm,
vectorised envs, networks and novelty options, and on the point mazes its
``env.kwargs``: episode length, speed, start noise; RND keeps only the bonus's
options) trains on the task and the script records:
the first training step that reaches the goal, the deterministic evaluation
success at fixed budgets (``--budgets``, 10 episodes each), the coverage of the
visited states, the bonus saturation (share of steps whose bonus is within 5 %
of its largest value, i.e. novelty ``g(x) >= 0.95``: states that read as never seen) and env steps per
second, and the training success over the last 10k steps.  It prints one
Markdown table (mean over seeds, and how many seeds reach 0.9) and writes:

* ``OUT/runs.jsonl``: every run, with the config and overrides it ran with. A run
  already logged there with the same settings, steps and budgets is not run
  again, so a long benchmark can be resumed or extended seed by seed;
* ``OUT/table-NAME.md``: the table;
* ``OUT/success_curves-NAME.png``: evaluation success against steps with 95 %
  bootstrap confidence bands per method and task.

``NAME`` is the tasks, followed by whatever departs from the defaults (another
config, the ``--set`` overrides, a subset of methods), so a variant never
overwrites the default table (see ``output_name``).

The measured runs are kept in ``docs/bench_exploration/`` (``--out`` there adds to them).

Tasks: ``open``, ``umaze``, ``rooms`` (``flowrl/PointMaze-*``), ``mountaincar``
(``flowrl/SparseMountainCar-v0``, observations normalised for the agent) and
``robotics-umaze``: Gymnasium-Robotics' goal-conditioned ``PointMaze_UMaze-v3``
(a MuJoCo ball; Dict observation flattened to 8-D: achieved goal, desired goal,
position and velocity; fixed start and goal; the episode ends at the goal),
installed by ``make bench``.

    python scripts/bench_exploration.py --tasks umaze --steps 60000 --budgets 20000 40000 60000
    python scripts/bench_exploration.py --tasks robotics-umaze --methods flow/gaussian none/gaussian
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BONUSES = ("flow", "rnd", "none")
POLICIES = ("gaussian", "flow")
DEFAULT_METHODS = [f"{b}/{q}" for b in BONUSES for q in POLICIES]
TASKS = ("open", "umaze", "rooms", "mountaincar", "robotics-umaze")
# Gymnasium-Robotics' U-maze with the start (r) and the goal (g) fixed.
ROBOTICS_UMAZE = [[1, 1, 1, 1, 1], [1, "r", 0, 0, 1], [1, 1, 1, 0, 1], [1, "g", 0, 0, 1], [1, 1, 1, 1, 1]]


MAZE_DEFAULTS = {"max_episode_steps": 200, "max_speed": 0.25}


def make_env(task: str, maze_kwargs: dict | None = None):
    """One gymnasium env of ``task`` with ``info["is_success"]`` and a 2-D ``info["position"]`` where it has one.

    ``maze_kwargs`` (the config's ``env.kwargs``: episode length, speed, start noise) apply to the point mazes.
    """
    import gymnasium as gym

    import envs  # noqa: F401  (registers flowrl/ ids)

    if task in ("open", "umaze", "rooms"):
        name = {"open": "Open", "umaze": "UMaze", "rooms": "Rooms"}[task]
        return gym.make(f"flowrl/PointMaze-{name}-v0", **{**MAZE_DEFAULTS, **(maze_kwargs or {})})
    if task == "mountaincar":
        return gym.make("flowrl/SparseMountainCar-v0")
    if task == "robotics-umaze":
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
        env = gym.make("PointMaze_UMaze-v3", maze_map=ROBOTICS_UMAZE, continuing_task=False, max_episode_steps=300)
        return _RoboticsInfo(gym.wrappers.FlattenObservation(env))
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def _robotics_info_class():
    import gymnasium as gym

    class RoboticsInfo(gym.Wrapper):
        """``info["is_success"]`` and ``info["position"]`` (the achieved goal) for Gymnasium-Robotics mazes."""

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            info = dict(info, is_success=bool(info.get("success", False)), position=obs[:2].copy())
            return obs, reward, terminated, truncated, info

    return RoboticsInfo


def _RoboticsInfo(env):  # noqa: N802  (a class built on first use: gymnasium is imported lazily)
    return _robotics_info_class()(env)


def coverage_tracker(task: str, env):
    """A tracker of the visited 2-D positions (maze cells; a 20x20 grid otherwise)."""
    import numpy as np

    from envs.coverage import CoverageTracker, maze_tracker

    if task in ("open", "umaze", "rooms"):
        return maze_tracker(env)
    if task == "mountaincar":
        return CoverageTracker((-1.2, 0.6, -0.07, 0.07), 20)
    free = np.array([[c != 1 for c in row] for row in ROBOTICS_UMAZE])[::-1]  # row 0 of the map is the top
    return CoverageTracker((-2.5, 2.5, -2.5, 2.5), 5, valid=free)  # the 5x5 map of unit cells, centred


def method_overrides(bonus: str, policy: str) -> list[str]:
    """Config overrides that turn the base config's agent into ``bonus``/``policy``."""
    # RND replaces the model section only: the weight and critics of the config's agent stay
    novelty = {"flow": [], "rnd": ["novelty.model={kind: rnd}"], "none": ["novelty=null"]}[bonus]
    return [f"policy={policy}", *novelty]


def run_one(task: str, bonus: str, policy: str, seed: int, steps: int, budgets: list[int], config: str,
            overrides: list[str]) -> dict:
    """Train one agent of ``config`` (the demo's by default) on ``task``; return its figures."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.config import load_config
    from agents.factory import build_model

    cfg = load_config(config, [*overrides, *method_overrides(bonus, policy), f"seed={seed}", "device=cpu"])
    maze_kwargs = dict(cfg.env.kwargs)  # the config's maze settings (start noise, speed) carry to every layout
    env = make_vec_env(lambda: make_env(task, maze_kwargs), n_envs=cfg.env.n_envs, seed=seed)
    if task == "mountaincar":
        env = VecNormalize(env, norm_obs=True, norm_reward=False)
    eval_env = make_env(task, maze_kwargs)
    model, callbacks = build_model(cfg, env, device="cpu")
    tracker = coverage_tracker(task, eval_env)
    n_envs = env.num_envs

    def evaluate(episodes: int = 10) -> float:
        wins = 0
        for ep in range(episodes):
            obs, _ = eval_env.reset(seed=10_000 + ep)
            done, info = False, {}
            while not done:
                x = env.normalize_obs(obs) if isinstance(env, VecNormalize) else obs
                action, _ = model.predict(x, deterministic=True)
                obs, _, terminated, truncated, info = eval_env.step(action)
                done = terminated or truncated
            wins += bool(info.get("is_success", False))
        return wins / episodes

    class Record(BaseCallback):
        def __init__(self):
            super().__init__()
            self.evals: dict = {}
            self.saturated: list[float] = []
            self.ended: list[tuple[int, bool]] = []  # (env step, success) of every finished episode
            self.t_eval = 0.0
            self.pending = sorted(budgets)

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            for done, info in zip(self.locals["dones"], infos):
                if "position" in info:
                    tracker.update(np.asarray(info["position"], dtype=np.float64)[None])
                elif task == "mountaincar":
                    tracker.update(env.get_original_obs()[:, :2])
                if "novelty" in info:  # g(x) in (0, 1]: within 5 % of 1 reads as never seen
                    self.saturated.append(float(info["novelty"] >= 0.95))
                if done:
                    self.ended.append((self.num_timesteps, bool(info.get("is_success"))))
            while self.pending and self.num_timesteps >= self.pending[0]:  # n_envs steps at a time
                t = time.perf_counter()
                self.evals[self.pending.pop(0)] = evaluate()
                self.t_eval += time.perf_counter() - t  # evaluation time is not training time
            return True

    record = Record()
    t0 = time.perf_counter()
    model.learn(steps + n_envs - 1, callback=[*callbacks, record])
    wall = time.perf_counter() - t0 - record.t_eval
    tail = record.saturated[-10_000:]
    late = [ok for t, ok in record.ended if t > model.num_timesteps - 10_000]
    first = next((t for t, ok in record.ended if ok), None)
    return dict(task=task, bonus=bonus, policy=policy, seed=seed, steps=steps, first_success=first,
                train_successes=sum(ok for _, ok in record.ended), episodes=len(record.ended),
                train_success_last10k=float(np.mean(late)) if late else None,
                evals={str(k): v for k, v in record.evals.items()}, coverage=tracker.fraction,
                saturation=float(np.mean(tail)) if tail else None, steps_per_s=model.num_timesteps / wall)


def read_runs(path: str) -> list[dict]:
    """The runs logged in ``path`` (one JSON object a line); none if it does not exist yet."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_key(row: dict) -> tuple:
    """(task, bonus, policy, seed): which run of the grid a logged row is."""
    return row["task"], row["bonus"], row["policy"], row["seed"]


def output_name(tasks: list[str], config: str, overrides: list[str], methods: list[str], tag: str = "") -> str:
    """The file stem of a table and figure: the tasks, then each departure from the default grid, then ``tag``.

    E.g. ``robotics-umaze`` for the default command, ``robotics-umaze_novelty.beta=1_flow-flow`` for
    ``--set novelty.beta=1 --methods flow/flow``; a tag keeps the same settings at another ``--steps`` apart.
    """
    parts = ["-".join(tasks)]
    if os.path.normpath(config) != os.path.join("configs", "demo.yaml"):
        parts.append(os.path.splitext(os.path.basename(config))[0])
    parts.extend(overrides)
    if sorted(methods) != sorted(DEFAULT_METHODS):
        parts.append("+".join(m.replace("/", "-") for m in methods))
    if tag:
        parts.append(tag)
    return "_".join(re.sub(r"[^\w.=+-]", "-", part) for part in parts)


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float(v.mean())
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    means = v[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def table(rows: list[dict], budgets: list[int]) -> str:
    import numpy as np

    head = ("| task | bonus | policy | reached goal | first success (median) | train success, last 10k | "
            + " | ".join(f"eval @ {b:,}" for b in budgets) + " | coverage | saturation | steps/s |")
    lines = [head, "|" + "---|" * (9 + len(budgets))]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["task"], r["bonus"], r["policy"]), []).append(r)
    for (task, bonus, policy), rs in sorted(groups.items()):
        firsts = [r["first_success"] for r in rs if r["first_success"]]
        evals = []
        for b in budgets:
            v = [r["evals"].get(str(b)) for r in rs if r["evals"].get(str(b)) is not None]
            evals.append(f"{np.mean(v):.2f} ({sum(x >= 0.9 for x in v)}/{len(v)} >= 0.9)" if v else "-")
        sat = [r["saturation"] for r in rs if r["saturation"] is not None]
        late = [r["train_success_last10k"] for r in rs if r.get("train_success_last10k") is not None]
        late_text = f"{np.mean(late):.2f} ({sum(x >= 0.9 for x in late)}/{len(late)} >= 0.9)" if late else "-"
        lines.append(
            f"| {task} | {bonus} | {policy} | {len(firsts)}/{len(rs)} | "
            f"{(f'{int(np.median(firsts)):,}' if firsts else '-')} | {late_text} | " + " | ".join(evals)
            + f" | {np.mean([r['coverage'] for r in rs]):.0%} | {(f'{np.mean(sat):.0%}' if sat else '-')} | "
            f"{np.mean([r['steps_per_s'] for r in rs]):.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], budgets: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        methods = sorted({(r["bonus"], r["policy"]) for r in rows if r["task"] == task})
        for bonus, policy in methods:
            rs = [r for r in rows if (r["task"], r["bonus"], r["policy"]) == (task, bonus, policy)]
            xs, mean, lo, hi = [], [], [], []
            for b in budgets:
                v = [r["evals"][str(b)] for r in rs if str(b) in r["evals"]]
                if v:
                    xs.append(b)
                    mean.append(np.mean(v))
                    ci = bootstrap_ci(v)
                    lo.append(ci[0])
                    hi.append(ci[1])
            line = ax.plot(xs, mean, marker="o", label=f"{bonus} bonus, {policy} policy")[0]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("deterministic eval success")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["umaze"], choices=TASKS)
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="bonus/policy pairs, e.g. flow/flow rnd/gaussian none/gaussian")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="eval points (default: thirds of --steps)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"),
                   help="the agent's settings (algorithm, networks, novelty options); its env is replaced by the task")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. novelty.beta=2")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one core each)")
    p.add_argument("--out", default=os.path.join("runs", "bench_exploration"))
    p.add_argument("--tag", default="", help="appended to the table's and figure's names (e.g. 60k), so that the "
                   "same settings at other --steps do not overwrite them")
    args = p.parse_args(argv)
    methods = [tuple(m.split("/")) for m in args.methods]
    for bonus, policy in methods:
        if bonus not in BONUSES or policy not in POLICIES:
            p.error(f"method {bonus}/{policy}: bonus must be one of {BONUSES}, policy one of {POLICIES}")
    budgets = args.budgets or [args.steps // 3, 2 * args.steps // 3, args.steps]
    if max(budgets) > args.steps:
        p.error("every budget must be <= --steps")
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "runs.jsonl")
    settings = {"config": os.path.relpath(os.path.abspath(args.config), ROOT), "set": args.set}
    wanted = {(t, b, q, s) for t in args.tasks for b, q in methods for s in args.seeds}
    rows = [r for r in read_runs(log_path) if run_key(r) in wanted and r.get("settings") == settings
            and r["steps"] == args.steps and all(str(b) in r["evals"] for b in budgets)]
    done = {run_key(r) for r in rows}
    jobs = [(t, b, q, s, args.steps, budgets, args.config, args.set) for t, b, q, s in sorted(wanted - done)]
    print(f"{len(jobs)} runs of {args.steps:,} steps, {args.jobs} at a time"
          + (f" ({len(done)} found in {log_path}, not run again)" if done else ""), flush=True)
    with cf.ProcessPoolExecutor(args.jobs) as pool, open(log_path, "a") as log:
        futures = {pool.submit(run_one, *job): job for job in jobs}
        failed = []
        for fut in cf.as_completed(futures):
            error = fut.exception()
            if error is not None:  # one broken run must not lose the others: report it at the end
                task, bonus, policy, seed = futures[fut][:4]
                failed.append(f"{task} {bonus}/{policy} seed {seed}: {type(error).__name__}: {error}")
                print(f"  FAILED {failed[-1]}", flush=True)
                continue
            row = dict(fut.result(), settings=settings)
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"  {row['task']} {row['bonus']}/{row['policy']} seed {row['seed']}: first {row['first_success']}, "
                  f"eval {row['evals']}, coverage {row['coverage']:.0%}, {row['steps_per_s']:.0f} steps/s", flush=True)
    if not rows:
        raise SystemExit("no run finished:\n" + "\n".join(failed))
    text = table(rows, budgets)
    print()
    print(text)
    name = output_name(args.tasks, settings["config"], args.set, args.methods, args.tag)  # budgets differ between tasks
    table_path = os.path.join(args.out, f"table-{name}.md")
    with open(table_path, "w") as f:
        f.write(f"`{' '.join([settings['config'], *settings['set']])}`, {args.steps:,} steps\n\n{text}\n")
    path = os.path.join(args.out, f"success_curves-{name}.png")
    plot(rows, budgets, path)
    print(f"\nruns: {log_path}; table: {table_path}; success curves: {path}")
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
