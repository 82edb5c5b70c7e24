"""Main job: does a flow policy with a flow pseudo-count bonus explore a sparse-goal maze better than plain SAC?

Runs ``configs/demo.yaml`` (SAC, RealNVP flow policy, flow pseudo-count
novelty bonus) and the same config as plain SAC (Gaussian policy, no bonus)
with the same budget and seed, one process per core, then prints a table of
goal successes and maze coverage and where the pictures are.

    python scripts/demo.py [--steps N] [--seed S] [--out runs/demo] [--sequential]
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

VARIANTS = {
    "flow": ("SAC + RealNVP policy + flow bonus", []),
    "plain": ("plain SAC (Gaussian, no bonus)", ["policy=gaussian", "novelty=null"]),
}


def _overrides(args: argparse.Namespace, variant: str) -> list[str]:
    items = [f"run.out_dir={args.out}", f"run.name={variant}", f"seed={args.seed}", "device=cpu"]
    if args.steps:
        items.append(f"total_timesteps={args.steps}")
    return items + VARIANTS[variant][1]


def run_child(args: argparse.Namespace) -> None:
    """Train one variant in this process (with the config's ``threads``, one by default)."""
    from agents.config import load_config
    from agents.factory import train

    cfg = load_config(args.config, _overrides(args, args.child))
    position = list(VARIANTS).index(args.child)
    train(cfg, config_name="demo", progress_desc=f"{args.child:5s}", progress_position=position)


def _row(label: str, summary: dict) -> str:
    first = summary.get("first_success_step")
    return (f"| {label:34s} | {summary['train_successes']:>5d} / {summary['episodes']:<4d} | "
            f"{(f'{first:,}' if first else '-'):>13s} | {summary['eval_success_rate']:>12.0%} | "
            f"{summary['coverage']:>8.0%} | {summary['wall_time_s']:>8.0f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    p.add_argument("--steps", type=int, default=None, help="env steps per agent (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("runs", "demo-" + time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("--sequential", action="store_true", help="train one agent after the other (one core)")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args)
        return
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": ROOT}  # threads: the config's key (an OMP_NUM_THREADS here wins)
    cmds = {v: [sys.executable, os.path.abspath(__file__), "--child", v, "--config", args.config, "--seed",
                str(args.seed), "--out", args.out, *(["--steps", str(args.steps)] if args.steps else [])]
            for v in VARIANTS}
    order = "one after the other" if args.sequential else "in parallel"
    print(f"training {len(cmds)} agents on {args.config} ({order})")
    codes = {}
    if args.sequential:
        for v, cmd in cmds.items():
            codes[v] = subprocess.call(cmd, env=env)
    else:
        procs = {v: subprocess.Popen(cmd, env=env) for v, cmd in cmds.items()}
        codes = {v: proc.wait() for v, proc in procs.items()}
    if any(codes.values()):
        sys.exit(f"a training run failed: {codes}")
    wall = time.perf_counter() - t0
    summaries = {v: json.load(open(os.path.join(args.out, v, "summary.json"))) for v in VARIANTS}
    steps = summaries["flow"]["timesteps"]
    print(f"\nsparse-goal maze, {steps:,} env steps per agent, seed {args.seed}\n")
    print(f"| {'agent':34s} | goal reached | first success | eval success | coverage | train time |")
    print(f"|{'-' * 36}|{'-' * 14}|{'-' * 15}|{'-' * 14}|{'-' * 10}|{'-' * 12}|")
    for v, (label, _) in VARIANTS.items():
        print(_row(label, summaries[v]))
    print("\ngoal reached: training episodes that reached the goal / all; eval success: deterministic policy "
          "over the config's eval episodes; coverage: maze cells visited during training.")
    print(f"demo wall time: {wall:.0f} s")
    print("pictures:")
    for v in VARIANTS:
        pics = sorted(f for f in os.listdir(os.path.join(args.out, v)) if f.endswith(".png"))
        print(f"  {os.path.join(args.out, v)}/: {', '.join(pics)}")


if __name__ == "__main__":
    main()
