"""Wall time of a sweep with concurrent trials against the same trials one after another (Ray Tune).

Runs SWEEP twice on one local Ray (started first, not timed): once as
written (``resources.cpus`` per trial, as many trials at once as the cores
allow) and once with ``max_concurrent=1`` (the same trials, the same threads
per trial, one after another); prints both wall times, their ratio and the
report of the concurrent sweep.

    python scripts/bench_sweep.py [SWEEP] [key=value ...] [--out DIR] [--repeats N]

e.g. the shipped demo sweep reduced to 2 seeds and 8k env steps (6 trials), the README's figure:
``python scripts/bench_sweep.py configs/sweeps/demo_novelty.yaml 'seeds=[0,1]' total_timesteps=8000``.
Trials of a few seconds measure Ray's start-up per trial (~2 s) more than the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", default=os.path.join(ROOT, "configs", "sweeps", "demo_novelty.yaml"))
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", default=os.path.join("runs", "bench_sweep"), help="storage_path of both sweeps")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each mode this many times, alternating (ABBA...) against drifting machine load")
    args = p.parse_args()

    import ray

    from agents.config import parse_overrides
    from agents.sweep.report import write_report
    from agents.sweep.tune import _init_ray, start_sweep

    overrides = {**parse_overrides(args.overrides), "storage_path": os.path.abspath(args.out)}
    _init_ray(overrides.get("address"))
    cores = int(ray.cluster_resources().get("CPU", 0))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    modes = [("one after another", {"max_concurrent": 1}), ("concurrent", {})]
    order = [modes[(k + k // 2) % 2] for k in range(2 * args.repeats)]  # A B B A A B ...
    rows = []
    for k, (mode, extra) in enumerate(order):
        t0 = time.perf_counter()
        name = f"{mode.split()[0]}-{stamp}-{k}"
        result = start_sweep(args.sweep, {**overrides, **extra, "name": name}, verbose=0)
        wall = time.perf_counter() - t0
        trial_s = sum(json.load(open(os.path.join(t["run_dir"], "summary.json")))["wall_time_s"]
                      for t in result.trials if t["run_dir"])
        rows.append((mode, len(result.trials), result.complete, wall, trial_s, result.sweep_dir))
    print(f"\nRay CPUs: {cores}; os.cpu_count(): {os.cpu_count()}; load average before: {os.getloadavg()}")
    print("| trials run | trials | all finished | sweep wall (s) | sum of trial train() wall (s) |")
    print("|---|---|---|---|---|")
    for mode, n, ok, wall, trial_s, _ in rows:
        print(f"| {mode} | {n} | {ok} | {wall:.0f} | {trial_s:.0f} |")
    wall = {m: sum(r[3] for r in rows if r[0] == m) for m, _ in modes}
    print(f"\nspeed-up of concurrent trials: {wall[modes[0][0]] / wall[modes[1][0]]:.2f}x "
          f"(total wall of {args.repeats} sweep(s) per mode)\n")
    print(write_report(next(r[5] for r in rows if r[0] == "concurrent")))


if __name__ == "__main__":
    main()
