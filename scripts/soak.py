"""Soak: a long SAC + flow policy + flow bonus run, watching for non-finite numbers and memory growth.

Trains ``configs/demo.yaml`` (or ``--config``) for ``--steps`` env steps with a
checkpoint every ``--checkpoint-every`` steps, checks every tensor, logged loss,
reward and count for NaN/inf (:class:`agents.run.health.HealthCallback`) and prints
the resident-memory curve, then the growth after the replay buffer filled.

    python scripts/soak.py [--steps 100000] [--checkpoint-every 10000] [--every 5000] [--out runs/soak]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--checkpoint-every", type=int, default=10_000)
    p.add_argument("--every", type=int, default=5_000, help="env steps between health checks and RSS samples")
    p.add_argument("--out", default=os.path.join("runs", "soak-" + time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="further config overrides")
    args = p.parse_args()

    from agents.config import load_config
    from agents.run import train
    from agents.run.health import HealthCallback

    cfg = load_config(args.config, [f"total_timesteps={args.steps}", f"run.checkpoint_every={args.checkpoint_every}",
                                    f"run.out_dir={args.out}", "run.name=soak", "device=cpu", *args.overrides])
    health = HealthCallback(args.every)
    result = train(cfg, config_name="soak", callbacks=[health])
    buffer_size = int(result.model.buffer_size) if hasattr(result.model, "buffer_size") else 0
    print(f"\n{'step':>8s}  {'RSS MiB':>8s}")
    for step, mb in health.rss:
        print(f"{step:8d}  {mb:8.1f}" + ("   <- replay buffer full" if buffer_size and step >= buffer_size
                                          and all(s < buffer_size for s, _ in health.rss if s < step) else ""))
    full = [mb for step, mb in health.rss if step >= buffer_size]
    if len(full) >= 2:
        print(f"RSS growth after the replay buffer filled ({buffer_size:,} steps): {full[-1] - full[0]:+.1f} MiB")
    print(f"health checks: {health.checks}, problems: {len(health.problems)}")
    for problem in health.problems[:20]:
        print("  " + problem)
    print(f"run directory: {result.run_dir}")
    sys.exit(1 if health.problems else 0)


if __name__ == "__main__":
    main()
