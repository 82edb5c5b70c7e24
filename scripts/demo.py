"""Main job: does a flow policy with a flow pseudo-count bonus solve a sparse-goal maze that plain SAC does not?

Runs ``configs/demo.yaml`` (SAC, RealNVP flow policy, flow pseudo-count
novelty bonus) on ``--flow-seeds`` seeds and the same config as plain SAC
(Gaussian policy, no bonus) on the first of them, with the same budget, all
in parallel (one process each), then prints how many flow agents solved the
maze (deterministic evaluation success >= 0.9), a table of goal successes and
maze coverage per agent, and where the pictures are.  One run is one draw:
the rate over seeds is the result.

    python scripts/demo.py [--steps N] [--seed S] [--flow-seeds K] [--out runs/demo] [--sequential]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

AGENTS = {
    "flow": ("SAC + RealNVP policy + flow bonus", []),
    "plain": ("plain SAC (Gaussian, no bonus)", ["policy=gaussian", "novelty=null"]),
}
SOLVED = 0.9  # deterministic evaluation success that counts as solved


def runs(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """``(run name, agent, seed)`` of every run: the flow agent on each seed, plain SAC on the first."""
    seeds = [args.seed + k for k in range(args.flow_seeds)]
    return [(f"flow-s{s}", "flow", s) for s in seeds] + [(f"plain-s{args.seed}", "plain", args.seed)]


def _overrides(args: argparse.Namespace, name: str, agent: str, seed: int) -> list[str]:
    items = [f"run.out_dir={args.out}", f"run.name={name}", f"seed={seed}", "device=cpu"]
    if args.steps:
        items.append(f"total_timesteps={args.steps}")
    return items + AGENTS[agent][1]


def run_child(args: argparse.Namespace) -> None:
    """Train one run in this process (with the config's ``threads``, one by default)."""
    from agents.config import load_config
    from agents.run import train

    name, agent, seed = next(r for r in runs(args) if r[0] == args.child)
    cfg = load_config(args.config, _overrides(args, name, agent, seed))
    position = [r[0] for r in runs(args)].index(name)
    train(cfg, config_name="demo", progress_desc=f"{name:8s}", progress_position=position)


def _row(label: str, summary: dict) -> str:
    first = summary.get("first_success_step")
    return (f"| {label:42s} | {summary['train_successes']:>5d} / {summary['episodes']:<4d} | "
            f"{(f'{first:,}' if first else '-'):>13s} | {summary['eval_success_rate']:>12.0%} | "
            f"{summary['coverage']:>8.0%} | {summary['wall_time_s']:>8.0f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    p.add_argument("--steps", type=int, default=None, help="env steps per agent (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--flow-seeds", type=int, default=2, help="seeds of the flow agent (seed, seed + 1, ...)")
    p.add_argument("--out", default=os.path.join("runs", "demo-" + time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("--sequential", action="store_true", help="train one agent after the other (one core)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.flow_seeds < 1:
        p.error("--flow-seeds must be >= 1")
    if args.child:
        run_child(args)
        return
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": ROOT}  # threads: the config's key (an OMP_NUM_THREADS here wins)
    common = ["--config", args.config, "--seed", str(args.seed), "--flow-seeds", str(args.flow_seeds),
              "--out", args.out, *(["--steps", str(args.steps)] if args.steps else [])]
    cmds = {name: [sys.executable, os.path.abspath(__file__), "--child", name, *common] for name, _, _ in runs(args)}
    order = "one after the other" if args.sequential else "in parallel"
    print(f"training {len(cmds)} agents on {args.config} ({order})")
    codes = {}
    if args.sequential:
        for name, cmd in cmds.items():
            codes[name] = subprocess.call(cmd, env=env)
    else:
        procs = {name: subprocess.Popen(cmd, env=env) for name, cmd in cmds.items()}
        codes = {name: proc.wait() for name, proc in procs.items()}
    if any(codes.values()):
        sys.exit(f"a training run failed: {codes}")
    wall = time.perf_counter() - t0
    summaries = {name: json.load(open(os.path.join(args.out, name, "summary.json"))) for name in cmds}
    flows = [name for name, agent, _ in runs(args) if agent == "flow"]
    solved = sum(summaries[name]["eval_success_rate"] >= SOLVED for name in flows)
    steps = summaries[flows[0]]["timesteps"]
    print(f"\nsparse-goal maze, {steps:,} env steps per agent")
    print(f"flow agents that solved it (evaluation success >= {SOLVED:.0%}): {solved} of {len(flows)} seeds\n")
    print(f"| {'agent':42s} | goal reached | first success | eval success | coverage | train time |")
    print(f"|{'-' * 44}|{'-' * 14}|{'-' * 15}|{'-' * 14}|{'-' * 10}|{'-' * 12}|")
    for name, agent, seed in runs(args):
        print(_row(f"{AGENTS[agent][0]}, seed {seed}", summaries[name]))
    print("\ngoal reached: training episodes that reached the goal / all; eval success: deterministic policy "
          "over the config's eval episodes; coverage: maze cells visited during training.")
    print(f"demo wall time: {wall:.0f} s")
    print("pictures:")
    for name in cmds:
        pics = sorted(f for f in os.listdir(os.path.join(args.out, name)) if f.endswith(".png"))
        print(f"  {os.path.join(args.out, name)}/: {', '.join(pics)}")


if __name__ == "__main__":
    main()
