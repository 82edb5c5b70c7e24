"""The ``flowrl`` command: ``train``, ``eval`` and ``plot``.

    flowrl train CONFIG [key=value ...]    train from a YAML config (overrides: seed=3 env.kwargs.layout=rooms)
    flowrl train resume=RUN_DIR [key=value ...]    continue a run from its last checkpoint
    flowrl eval RUN_DIR [--episodes N] [--stochastic]
    flowrl plot RUN_DIR
    flowrl sweep SWEEP.yaml [key=value ...] | flowrl sweep --resume SWEEP_DIR    many seeds/configs on Ray Tune
    flowrl report SWEEP_DIR    statistics over seeds with confidence intervals
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .config import ConfigError, apply_overrides, config_from_dict, parse_overrides, read_config

__all__ = ["main", "build_parser"]

_TRAIN_HELP = """\
Train an agent from a YAML config (see configs/). Any config key can be
overridden with key=value, nested keys with dots, values parsed as YAML:

  flowrl train configs/demo.yaml total_timesteps=5000 seed=3
  flowrl train configs/maze_sac.yaml env.kwargs.layout=rooms algo.kwargs.learning_rate=1e-3
  flowrl train configs/maze_sac.yaml device=cuda wandb=true
  flowrl train resume=runs/maze_sac-s0-20260101-120000 total_timesteps=40000

Each run gets a directory under run.out_dir (default runs/) holding the
resolved config.yaml, episodes.csv and metrics.csv, SB3's progress.csv,
atomic checkpoints, final_model.zip, summary.json and PNG pictures.
resume=RUN_DIR continues that run from its latest checkpoint (the CONFIG
argument may then be omitted: the run's own config.yaml is used).
wandb=true logs to Weights & Biases through its SB3 integration (set
WANDB_MODE=offline to log without an account)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowrl", description="Exploration with normalizing flows: train, evaluate and plot SB3 agents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,eval,plot,sweep,report}")
    t = sub.add_parser("train", help="train an agent from a YAML config", description=_TRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                   help="a YAML config file followed by key=value overrides")
    e = sub.add_parser("eval", help="evaluate a run's final model",
                       description="Run the final model of RUN_DIR for a number of episodes on a fresh env and "
                                   "print success rate, mean return and length (also written to RUN_DIR/eval.json).")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--episodes", type=int, default=None, help="episodes to run (default: the config's eval.episodes)")
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic policy")
    pl = sub.add_parser("plot", help="(re)draw a run's pictures",
                        description="Redraw RUN_DIR's PNG pictures from its files: learning curves, coverage "
                                    "heatmap, novelty density and policy samples (when the model supports them).")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    from .sweep.cli import add_parsers

    add_parsers(sub)
    return p


def _train(items: list[str]) -> int:
    from .run import train

    config_path = items[0] if items and "=" not in items[0] else None
    overrides = parse_overrides(items[1:] if config_path else items)
    if config_path is None:
        resume = overrides.get("resume")
        if not resume:
            raise ConfigError("train needs a CONFIG file (or resume=RUN_DIR)")
        config_path = os.path.join(str(resume), "config.yaml")
    cfg = config_from_dict(apply_overrides(read_config(config_path), overrides))
    name = os.path.splitext(os.path.basename(config_path))[0]
    result = train(cfg, config_name=name)
    print(json.dumps(result.summary, indent=1))
    print(f"run directory: {result.run_dir}")
    return 0


def _eval(run_dir: str, episodes: Optional[int], stochastic: bool) -> int:
    from .run import evaluate

    stats = evaluate(run_dir, episodes, deterministic=not stochastic)
    print(json.dumps(stats, indent=1))
    return 0


def _plot(run_dir: str) -> int:
    from .run import load_obs_normalizer, load_run, make_env, novelty_density_fn
    from .run.plots import plot_run

    cfg, model = load_run(run_dir)
    env = make_env(cfg)
    paths = plot_run(run_dir, model=model, env=env, density=novelty_density_fn(model),
                     normalize=load_obs_normalizer(run_dir))
    env.close()
    for path in paths:
        print(path)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args.items)
        if args.command in ("sweep", "report"):
            from .sweep.cli import run

            return run(args)
        if args.command == "eval":
            return _eval(args.run_dir, args.episodes, args.stochastic)
        return _plot(args.run_dir)
    except ConfigError as err:
        print(f"flowrl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
