"""SAC alone vs SAC + RND vs SAC + flow pseudo-count bonus on MountainCarContinuous-v0.

Same budget, same seeds, SB3's default SAC hyper-parameters, all measured in
the same run (one process per run, ``--jobs`` at a time).  Prints, per
method: seeds that reached the goal, environment step of the first success,
final deterministic return, wall time per step, and env steps/s relative to
plain SAC (the overhead of the bonus).

``sac-zoo`` (not in the default methods) is the reference: SAC with RL Zoo's
tuned hyper-parameters for this task (gSDE, ent_coef 0.1, gamma 0.9999, ...,
raw observations as tuned) and no bonus.

Observations: every method but ``sac-zoo`` sees them through ``VecNormalize``
(observations only; ``--raw-obs`` turns it off); the bonuses model the raw
observations either way.  The raw velocity is about 1e-2, and with it the
first success of SAC + flow bonus sat at 4.5k-5k steps (seeds 0-2) whatever
the bonus: beta 0.5 to 10, capped bonuses, faster or slower count updates,
novelty-prioritised replay, a 5-step bonus lookahead and a fixed entropy
coefficient all landed there.  That fits Adam: its steps do not grow with
the reward scale, and the policy needs thousands of them to weigh a 1e-2
input.  Scaling the velocity by 20 alone moved it to 472-963 steps; plain
SAC still never reached the goal.

    python scripts/bench_novelty.py --steps 50000 --seeds 0 1 2 --jobs 2
    python scripts/bench_novelty.py --steps 20000 --methods sac-zoo --until-success   # the reference
    python scripts/bench_novelty.py --steps 10000 --methods sac+flow --beta 5 --until-success   # a sweep point
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import get_context

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = {
    "sac": None,
    "sac+rnd": {"kind": "rnd"},
    "sac+flow": {"kind": "flow"},
    "sac-zoo": None,
}

#: RL Zoo's tuned SAC for MountainCarContinuous-v0 (rl-baselines3-zoo, hyperparams/sac.yml): the
#: reference the flow bonus is compared against; no bonus.
ZOO_SAC = dict(learning_rate=3e-4, buffer_size=50_000, batch_size=512, ent_coef=0.1, train_freq=32,
               gradient_steps=32, gamma=0.9999, tau=0.01, learning_starts=0, use_sde=True,
               policy_kwargs=dict(log_std_init=-3.67, net_arch=[64, 64]))


def run_one(job: tuple) -> dict:
    method, seed, steps, beta, eval_episodes, novelty_extra, time_limit, progress, until_success, raw_obs = job
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.novelty import attach_novelty

    torch.set_num_threads(1)

    class Successes(BaseCallback):
        """Env step of each episode that ends at the goal (MountainCar terminates only there)."""

        def __init__(self):
            super().__init__()
            self.steps: list[int] = []
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done and not info.get("TimeLimit.truncated", False):
                    self.steps.append(int(self.num_timesteps))
            if progress and self.num_timesteps % 500 == 0:
                with open(progress, "a") as f:
                    f.write(json.dumps({"method": method, "seed": seed, "t": self.num_timesteps,
                                        "wall_s": round(time.perf_counter() - self.start, 1),
                                        "successes": self.steps}) + "\n")
            # A wall-time budget, or a sweep that only needs the first success:
            # stop early (the table reports the steps actually run).
            if until_success and self.steps:
                return False
            return time_limit is None or time.perf_counter() - self.start < time_limit

    env = make_vec_env("MountainCarContinuous-v0", n_envs=1, seed=seed)
    normalize = not raw_obs and method != "sac-zoo"  # the Zoo's tuned setting has normalize: False
    if normalize:
        env = VecNormalize(env, norm_obs=True, norm_reward=False)
    kwargs: dict = {}
    callbacks: list = []
    if METHODS[method] is not None:
        opts = {"model": {**METHODS[method], "seed": seed, **novelty_extra.get(method, {})},  # SB3's SAC: one critic
                "weight": {"beta": beta}, "critics": None}
        kwargs, callbacks = attach_novelty(SAC, kwargs, env, opts)
    if method == "sac-zoo":
        kwargs = dict(ZOO_SAC)
    model = SAC("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    succ = Successes()
    t0 = time.perf_counter()
    model.learn(steps, callback=[*callbacks, succ])
    wall = time.perf_counter() - t0
    steps = int(model.num_timesteps)
    eval_env = make_vec_env("MountainCarContinuous-v0", n_envs=1, seed=seed + 1000)
    if normalize:  # the policy sees observations normalised with the training statistics, frozen
        eval_env = VecNormalize(eval_env, training=False, norm_obs=True, norm_reward=False)
        eval_env.obs_rms = env.obs_rms.copy()
    ret, _ = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
    return {
        "method": method, "seed": seed, "steps": steps, "wall_s": wall,
        "first_success": succ.steps[0] if succ.steps else None, "successes": len(succ.steps),
        "final_return": float(ret),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["sac", "sac+rnd", "sac+flow"], choices=list(METHODS))
    p.add_argument("--beta", type=float, default=2.0,
                   help="bonus weight of both bonuses (raw observations, first success, seeds 0-2: 0.2 -> median "
                        "7.5k, 2 -> 4.5k, 5 -> 4.7k, 10 -> none by 8k)")
    p.add_argument("--eval-episodes", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one core each)")
    p.add_argument("--flow-options", type=json.loads, default={}, help="extra novelty model options of sac+flow (JSON)")
    p.add_argument("--out", default=None, help="write the per-run results as JSON lines here")
    p.add_argument("--time-limit", type=float, default=None, help="wall seconds per run (stops learning early)")
    p.add_argument("--progress", default=None, help="append progress lines (every 500 steps) to this file")
    p.add_argument("--until-success", action="store_true",
                   help="stop each run at its first success (for sweeps: the final return is then not comparable)")
    p.add_argument("--raw-obs", action="store_true",
                   help="feed SAC raw observations (default: VecNormalize, observations only, for every method "
                        "but sac-zoo; see the module docstring)")
    args = p.parse_args()
    extra = {"sac+flow": args.flow_options}
    jobs = [(m, s, args.steps, args.beta, args.eval_episodes, extra, args.time_limit, args.progress,
             args.until_success, args.raw_obs)
            for s in args.seeds for m in args.methods]
    with get_context("spawn").Pool(args.jobs) as pool:
        results = []
        for r in pool.imap_unordered(run_one, jobs):
            print(json.dumps(r), flush=True)
            results.append(r)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"\nMountainCarContinuous-v0, {args.steps} steps, seeds {args.seeds}, beta {args.beta}, "
          f"SB3 default SAC, observations {'raw' if args.raw_obs else 'VecNormalize-d (sac-zoo: raw)'}, "
          f"{args.jobs} runs in parallel")
    print(f"{'method':10s} {'steps run':>10s} {'reached goal':>12s} {'first success (per seed)':>26s} "
          f"{'final det. return':>18s} {'ms/step':>8s} {'steps/s vs sac':>15s}")
    base = [r["steps"] / r["wall_s"] for r in results if r["method"] == "sac"]
    for m in args.methods:
        rs = sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
        reached = sum(r["first_success"] is not None for r in rs)
        firsts = ",".join("-" if r["first_success"] is None else str(r["first_success"]) for r in rs)
        rets = np.array([r["final_return"] for r in rs])
        ms = np.mean([1e3 * r["wall_s"] / r["steps"] for r in rs])
        sps = np.mean([r["steps"] / r["wall_s"] for r in rs])
        ratio = f"{sps / np.mean(base):.2f}" if base else "n/a"
        ran = ",".join(str(r["steps"]) for r in rs)
        print(f"{m:10s} {ran:>10s} {reached:>5d} of {len(rs):<4d} {firsts:>26s} "
              f"{rets.mean():9.1f} +- {rets.std():5.1f} {ms:8.1f} {ratio:>15s}")


if __name__ == "__main__":
    main()
