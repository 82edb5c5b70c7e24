"""Benchmark: where one training run's time goes, part by part, for every agent variant, in one run.

Each variant (algorithm x policy x bonus) trains through ``agents.run.train``
(the code behind ``flowrl train``) with its methods wrapped in timers; a part's
time is *exclusive* (the density model's scoring inside a replay draw counts as
scoring, not as sampling).  The table gives env steps per second, the ratio to
the same algorithm's Gaussian policy without a bonus (measured in the same run),
and each part's share of the training time.

    python scripts/bench_agent_speed.py                       # SAC on configs/demo.yaml, PPO on mountaincar_ppo
    python scripts/bench_agent_speed.py --algos sac --steps 8000 --repeats 2
    python scripts/bench_agent_speed.py --set novelty.model.batch_size=512

Parts: ``env``: the environments' own steps; ``act``: the policy choosing
actions during collection; ``updates``: gradient steps of the agent (critic,
actor, PPO epochs), less what is listed apart; ``replay``: drawing replay
minibatches (gathers, n-step sums); ``scoring:<caller>``: the novelty model
scoring states, for the replay minibatches (and the cache's refresh), for the
callback's per-step rewards, or for a PPO rollout (``scoring:updates``);
``density``: training the novelty model; ``callback``: the novelty callback's own
bookkeeping; ``other``: SB3's loop, logging, the other callbacks.  Warm-up steps
(``learning_starts``) are timed with the rest, so short runs flatter SAC: the
defaults run long enough for the steady state to dominate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PARTS = ("env", "act", "updates", "replay", "scoring:replay", "scoring:callback", "scoring:updates", "density",
         "callback", "other")
SPLIT_BY_CALLER = ("scoring",)  # parts named after the part that calls them

#: (algorithm, config, steps) of each algorithm's rows.
ALGOS = {
    "sac": ("configs/demo.yaml", 6000),
    "ppo": ("configs/mountaincar_ppo.yaml", 8192),
}
POLICIES = ("gaussian", "flow")
BONUSES = ("none", "flow", "rnd")


class PartTimer:
    """Exclusive wall time per part: a part's clock stops while a nested part runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, time spent in nested parts]
        self._names: list[str] = []

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        if name in SPLIT_BY_CALLER and self._names:  # e.g. scoring for the replay vs for the callback
            name = f"{name}:{self._names[-1]}"
        self._stack.append([time.perf_counter(), 0.0])
        self._names.append(name)
        try:
            yield
        finally:
            self._names.pop()
            start, nested = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed - nested
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, owner: Any, attr: str, name: str) -> "_Patch":
        return _Patch(owner, attr, self, name)


class _Patch:
    """Replaces ``owner.attr`` by a timed version for the duration of a ``with`` block."""

    def __init__(self, owner: Any, attr: str, timer: PartTimer, name: str):
        self.owner, self.attr, self.timer, self.name = owner, attr, timer, name

    def __enter__(self) -> None:
        self.original = self.owner.__dict__[self.attr]
        original, timer, name = self.original, self.timer, self.name

        def timed(*args: Any, **kwargs: Any) -> Any:
            with timer.part(name):
                return original(*args, **kwargs)

        setattr(self.owner, self.attr, timed)

    def __exit__(self, *exc: Any) -> None:
        setattr(self.owner, self.attr, self.original)


def _patches(timer: PartTimer) -> list[_Patch]:
    """Every timed method: (class, method name, part)."""
    from stable_baselines3 import A2C, PPO, SAC
    from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer, RolloutBuffer
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.novelty import IntrinsicCriticSAC
    from agents.novelty.bonus import NoveltyBonus
    from agents.novelty.buffers import NoveltyNStepReplayBuffer, _ReplayScoring
    from agents.novelty.callback import NoveltyCallback
    from agents.policies import FlowActorCriticPolicy
    from agents.run import training as run_train

    targets: list[tuple[Any, str, str]] = [
        (DummyVecEnv, "step_wait", "env"),
        (OffPolicyAlgorithm, "_sample_action", "act"),
        (ActorCriticPolicy, "forward", "act"),
        (FlowActorCriticPolicy, "forward", "act"),
        (SAC, "train", "updates"), (IntrinsicCriticSAC, "train", "updates"),
        (PPO, "train", "updates"), (A2C, "train", "updates"),
        (ReplayBuffer, "_get_samples", "replay"), (NStepReplayBuffer, "_get_samples", "replay"),
        (_ReplayScoring, "_get_samples", "replay"), (NoveltyNStepReplayBuffer, "_get_samples", "replay"),
        (_ReplayScoring, "sample", "replay"),
        (RolloutBuffer, "compute_returns_and_advantage", "updates"),
        (NoveltyBonus, "novelty", "scoring"),
        (NoveltyBonus, "flush", "density"),
        (NoveltyCallback, "_on_step", "callback"),
        (run_train, "_learn", "other"),  # the training loop; what no part above claims stays here
    ]
    return [timer.wrap(owner, attr, part) for owner, attr, part in targets if attr in owner.__dict__]


def run_variant(config: str, overrides: list[str], device: str = "cpu") -> tuple[float, int, dict[str, float]]:
    """Train one variant; returns (training-loop seconds, env steps, exclusive seconds per part)."""
    from agents.config import load_config
    from agents.run import train

    timer = PartTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(config, [f"run.out_dir={out}", "run.name=bench", "run.plots=false",
                                   "run.progress_bar=false", f"device={device}", "eval.episodes=1",
                                   "run.checkpoint_every=100000000", *overrides])
        with ExitStack() as stack:
            for patch in _patches(timer):
                stack.enter_context(patch)
            result = train(cfg, config_name="bench")
    # The final evaluation runs after the loop: its env steps and actions are not training time.
    parts = {k: v for k, v in timer.seconds.items()}
    return sum(parts.values()), int(result.summary["timesteps"]), parts


def variant_overrides(algo: str, policy: str, bonus: str) -> list[str]:
    items = [f"policy={policy}"]
    if bonus == "none":
        items += ["novelty=null"]
    elif bonus == "rnd":  # the config's weight and critics, RND's model
        items += ["novelty.model={kind: rnd}"]
    return items


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--bonuses", nargs="+", default=list(BONUSES), choices=list(BONUSES))
    p.add_argument("--steps", type=int, default=None, help="env steps per variant (default: per algorithm)")
    p.add_argument("--repeats", type=int, default=1, help="runs of every variant (the table gives the fastest)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every variant")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--out", default=None, metavar="PAGE.md",
                   help="also write the table to this Markdown page, with the commit, machine and command")
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")

    rows: list[tuple[str, str, str, float, dict[str, float]]] = []
    for algo in args.algos:
        config, default_steps = ALGOS[algo]
        steps = args.steps or default_steps
        for policy in args.policies:
            for bonus in args.bonuses:
                best: tuple[float, dict[str, float]] | None = None
                for _ in range(args.repeats):
                    seconds, done, parts = run_variant(os.path.join(ROOT, config), [
                        f"total_timesteps={steps}", *variant_overrides(algo, policy, bonus), *args.set], args.device)
                    rate = done / seconds
                    if best is None or rate > best[0]:
                        best = (rate, parts)
                assert best is not None
                rows.append((algo, policy, bonus, *best))
                print(f"{algo} {policy:8s} {bonus:5s} {best[0]:7.0f} steps/s", file=sys.stderr, flush=True)
    table = format_table(rows)
    print(table)
    if args.out:
        write_page(args.out, table, argv if argv is not None else sys.argv[1:], args.device)


def write_page(path: str, table: str, argv: list[str], device: str) -> None:
    """The table as a Markdown page naming the commit, the machine and the command that measured it."""
    import platform

    import torch

    from agents.run.provenance import code_commit

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs" if device == "cpu" \
        else torch.cuda.get_device_name()
    lines = ["# Agent speed: where a training run's time goes", "",
             f"Generated by `python scripts/bench_agent_speed.py {' '.join(argv)}` on {time.strftime('%Y-%m-%d')} "
             f"at commit `{code_commit()}`; {machine}, torch {torch.__version__}, {torch.get_num_threads()} torch "
             "thread(s). Ratios are within this run; absolute steps/s depend on the machine and its load. SAC runs "
             f"`{ALGOS['sac'][0]}`, PPO `{ALGOS['ppo'][0]}`; the parts are listed in the script's docstring.", "",
             table, ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def format_table(rows: list[tuple[str, str, str, float, dict[str, float]]]) -> str:
    """Markdown: steps/s, ratio to the algorithm's Gaussian without bonus, and each part's share."""
    base = {algo: rate for algo, policy, bonus, rate, _ in rows if policy == "gaussian" and bonus == "none"}
    flow_none = {(algo, policy): rate for algo, policy, bonus, rate, _ in rows if bonus == "none"}
    head = ["algo", "policy", "bonus", "steps/s", "x gaussian/none", "x same policy/none",
            *[f"{p} %" for p in PARTS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt: Callable[[float | None], str] = lambda v: "-" if v is None else f"{v:.2f}"
    for algo, policy, bonus, rate, parts in rows:
        total = sum(parts.values()) or 1.0
        shares = [f"{100 * parts.get(part, 0.0) / total:.0f}" for part in PARTS]
        ref = base.get(algo)
        same = flow_none.get((algo, policy))
        lines.append("| " + " | ".join([algo, policy, bonus, f"{rate:.0f}", fmt(rate / ref if ref else None),
                                        fmt(same / rate if same and bonus != "none" else None), *shares]) + " |")
    lines.append("")
    lines.append("x same policy/none: the bonus's overhead (steps/s without it / with it, same policy).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
