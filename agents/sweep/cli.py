"""The ``flowrl sweep`` and ``flowrl report`` subcommands (argument parsing and printing only)."""

from __future__ import annotations

import argparse

from ..config import ConfigError, parse_overrides

__all__ = ["add_parsers", "run"]

_SWEEP_HELP = """\
Run a sweep file (see configs/sweeps/) on Ray Tune: every configuration of
its grid (or every Optuna sample of its search) once per seed, each trial an
ordinary run directory trained like `flowrl train`. Overrides whose first key
is a sweep field (seeds, grid, resources.cpus, address, storage_path, name,
max_failures, ...) change the sweep; any other key goes to every trial's
training config:

  flowrl sweep configs/sweeps/demo_novelty.yaml
  flowrl sweep configs/sweeps/demo_novelty.yaml seeds=[0,1] total_timesteps=3000 resources.cpus=2
  flowrl sweep configs/sweeps/demo_novelty.yaml address=auto      # an existing Ray cluster
  flowrl sweep --resume runs/sweeps/demo_novelty-20260101-120000  # after an interruption

By default Ray runs on this machine with all its cores; `address: auto` or
`ray://HOST:PORT` uses a cluster (flowrl installed on every node,
storage_path a folder all nodes see). A crashed trial is retried from its
last checkpoint (max_failures times); --resume keeps finished trials."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep`` and ``report`` to the ``flowrl`` subcommands."""
    s = sub.add_parser("sweep", help="many seeds and configurations on Ray Tune", description=_SWEEP_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("items", nargs="*", metavar="SWEEP.yaml|key=value",
                   help="a sweep file followed by key=value overrides")
    s.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (address=... may follow)")
    r = sub.add_parser("report", help="statistics of a sweep over seeds",
                       description="Per configuration of SWEEP_DIR: mean and IQM of the final evaluation success "
                                   "and return with 95 % stratified bootstrap intervals over seeds, first-success "
                                   "step, learning curves (curves.png) and the best configuration; the Markdown "
                                   "table is printed and written to SWEEP_DIR/report.md.")
    r.add_argument("sweep_dir", metavar="SWEEP_DIR")
    r.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    r.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")


def _sweep(args: argparse.Namespace) -> int:
    from .tune import resume_sweep, start_sweep

    if args.resume:
        overrides = parse_overrides(args.items)
        unknown = set(overrides) - {"address"}
        if unknown:
            raise ConfigError(f"--resume takes only address=...; got {', '.join(sorted(unknown))}")
        result = resume_sweep(args.resume, address=overrides.get("address"))
    else:
        if not args.items or "=" in args.items[0]:
            raise ConfigError("sweep needs a SWEEP.yaml file (or --resume SWEEP_DIR)")
        result = start_sweep(args.items[0], parse_overrides(args.items[1:]))
    for t in result.trials:
        figures = "" if t["eval_success_rate"] is None else \
            f"success {t['eval_success_rate']:.2f} return {t['eval_return_mean']:.2f}"
        print(f"{t['status']:10s} {t['run_dir'] or t['config']} {figures} {t['error'] or ''}".rstrip())
    print(f"sweep folder: {result.sweep_dir}")
    if not result.complete:
        print(f"not every trial finished: `flowrl sweep --resume {result.sweep_dir}` continues the sweep")
        return 1
    print(f"statistics: flowrl report {result.sweep_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``flowrl sweep`` or ``flowrl report`` from parsed arguments."""
    if args.command == "sweep":
        return _sweep(args)
    from .report import write_report

    print(write_report(args.sweep_dir, reps=args.reps, seed=args.seed))
    return 0
