"""Benchmark: Gaussian vs flow policies (RealNVP, NAF) in SB3's SAC and PPO, same hyper-parameters.

Every variant of one seed trains in lock-step chunks (variant A for a chunk,
then B, then C, then A again, ...), so that all of them see the same load on a
shared machine; steps/s is the training wall time of the variant's own chunks
and is reported as a ratio to the Gaussian of the same run.  Final return:
mean over evaluation episodes after training, with the deterministic policy
(``det``) and the stochastic one (``stoch``).

    python scripts/bench_policies.py --algo sac --steps 10000 --seeds 3
    python scripts/bench_policies.py --algo ppo --steps 102400 --seeds 3
    python scripts/bench_policies.py --algo ppo --env flowrl/TwoModeBandit-v0 --steps 16384

Defaults: Pendulum-v1 for both.  SAC: lr 1e-3, SB3's other defaults, nets
256x256.  PPO on Pendulum-v1: RL-Zoo-like settings without gSDE (flows are their
own exploration noise): 4 envs, n_steps 1024, batch 64, 10 epochs, gamma 0.9,
gae_lambda 0.95, clip 0.2, lr 1e-3, ent_coef 0.  PPO on the two-mode bandit
(a one-step task paying in two separated action regions; ``min mode`` is the
smaller share of stochastic actions in either mode): n_steps 256, lr 3e-4,
SB3's other defaults.  Any of these can be overridden on the command line.

RealNVP on a 1-D action: a coupling conditions on the state only, so two compose
to one affine map; ``--flow-kwargs realnvp.transforms=1`` is as expressive and
cheaper (PPO, Pendulum-v1, 3 seeds: 0.88x the Gaussian's steps/s against 0.69x).

Flow PPO actions: the rollout stores the pre-squash value ``u`` and NAF's slope
floor is 0.1 (the policy's defaults; see :class:`agents.FlowActorCriticPolicy`).
Recorded with this script (PPO, Pendulum-v1), the reasons for both defaults:
with box actions (``store_pre_squash=False``), a good policy saturates the
torque and a third of the rollout sat on the bound, scored at the clamped
point ``|u| = 7.25``; NAF-PPO's approximate KL per update reached 1 to 7000.
With NAF's own slope floor (1e-3) the policy reached the bound by flattening
one sigmoid until its samples sat at ``|u| ~ 1e3..1e4``, where a small slope
change moved a stored action's log-density by thousands of nats (approximate
KL per update up to 7000); with a floor of 0.1, ``|u|`` stays below about 50
and the KL near 0.04.

Flow PPO entropy: with ``ent_coef == 0`` the entropy term is multiplied by zero,
so the flows default to ``entropy_samples=0`` (no Monte-Carlo entropy pass; SB3
then logs ``-log_prob`` of the stored actions as the entropy); with
``ent_coef > 0`` they default to one reparameterised sample per state.  Pass
``--entropy-samples`` to choose.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO, SAC  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

import envs  # noqa: E402,F401  (registers flowrl/TwoModeBandit-v0)
from agents import FlowActorCriticPolicy, FlowSACPolicy  # noqa: E402

BANDIT = "flowrl/TwoModeBandit-v0"

#: PPO settings per env (RL Zoo's Pendulum-v1 settings without gSDE; the bandit's earlier ones).
PPO_PRESETS = {
    "Pendulum-v1": dict(n_envs=4, n_steps=1024, batch_size=64, n_epochs=10, gamma=0.9, gae_lambda=0.95,
                        clip_range=0.2, ent_coef=0.0, lr=1e-3),
    BANDIT: dict(n_envs=4, n_steps=256, batch_size=64, n_epochs=10, gamma=0.99, gae_lambda=0.95,
                 clip_range=0.2, ent_coef=0.0, lr=3e-4),
}
PPO_KEYS = ("n_envs", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range", "ent_coef")

FLOW_KWARGS = {
    "realnvp": dict(transforms=2, hidden_features=(64,)),
    "naf": dict(transforms=1, hidden_features=(64,), hidden=8),
}


def make_model(algo: str, variant: str, env_id: str, seed: int, args) -> object:
    flow_kw = {} if variant == "gaussian" else dict(flow=variant, flow_kwargs=dict(FLOW_KWARGS[variant]))
    if algo == "sac":
        policy = "MlpPolicy" if variant == "gaussian" else FlowSACPolicy
        return SAC(policy, gym.make(env_id, **args.env_kwargs), learning_rate=args.lr, seed=seed,
                   policy_kwargs=flow_kw or None, device="cpu")
    policy = "MlpPolicy" if variant == "gaussian" else FlowActorCriticPolicy
    if variant != "gaussian":
        flow_kw["entropy_samples"] = args.entropy_samples
    env = make_vec_env(env_id, n_envs=args.n_envs, seed=seed, env_kwargs=args.env_kwargs)
    return PPO(policy, env, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs,
               gamma=args.gamma, gae_lambda=args.gae_lambda, clip_range=args.clip_range, ent_coef=args.ent_coef,
               learning_rate=args.lr, seed=seed, policy_kwargs=flow_kw or None, device="cpu")


def min_mode_share(model, env_id: str, args) -> float:
    bandit = gym.make(env_id, **args.env_kwargs).unwrapped
    if not hasattr(bandit, "mode_of"):
        return float("nan")
    actions, _ = model.predict(np.zeros((2000, 1), np.float32), deterministic=False)
    modes = bandit.mode_of(actions)
    return float(min((modes == 0).mean(), (modes == 1).mean()))


def run_seed(algo: str, env_id: str, seed: int, variants: list[str], args) -> dict[str, dict]:
    torch.manual_seed(seed)
    models = {v: make_model(algo, v, env_id, seed, args) for v in variants}
    chunk = args.chunk if algo == "sac" else args.n_steps * args.n_envs
    wall = {v: 0.0 for v in variants}
    done = 0
    while done < args.steps:
        n = min(chunk, args.steps - done)
        order = variants[done // chunk % len(variants):] + variants[: done // chunk % len(variants)]
        for v in order:  # rotate who goes first in each chunk
            t0 = time.perf_counter()
            models[v].learn(n, reset_num_timesteps=(done == 0))
            wall[v] += time.perf_counter() - t0
        done += n
    out = {}
    for v, model in models.items():
        eval_env = gym.make(env_id, **args.env_kwargs)
        det, _ = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
        sto, _ = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=False)
        out[v] = dict(det=det, stoch=sto, sps=model.num_timesteps / wall[v], mode=min_mode_share(model, env_id, args))
        print(f"  seed {seed} {v:9s} det {det:9.2f}  stoch {sto:9.2f}  steps/s {out[v]['sps']:7.1f}"
              f"  min mode {out[v]['mode']:.2f}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=["sac", "ppo"], default="sac")
    p.add_argument("--env", default="Pendulum-v1", help=f"default Pendulum-v1; PPO presets: {', '.join(PPO_PRESETS)}")
    p.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=FLOAT", help="e.g. width=0.3")
    p.add_argument("--steps", type=int, default=None, help="env steps per run (default 10000 sac, 102400 ppo)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed+seeds-1")
    p.add_argument("--from-logs", nargs="+", default=None, metavar="LOG",
                   help="print the table from the per-seed lines of earlier runs' output (e.g. seeds run in parallel)")
    p.add_argument("--variants", default="gaussian,realnvp,naf")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (sac), the env's preset (ppo)")
    p.add_argument("--chunk", type=int, default=500, help="SAC steps per interleaving chunk")
    for key in PPO_KEYS:
        kind = int if key in ("n_envs", "n_steps", "batch_size", "n_epochs") else float
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       help=f"PPO {key} (default: the env's preset)")
    p.add_argument("--flow-kwargs", nargs="*", default=[], metavar="FLOW.KEY=VALUE",
                   help="override a flow setting, e.g. realnvp.transforms=1 naf.hidden=4 (Python literals)")
    p.add_argument("--entropy-samples", type=int, default=None,
                   help="flow PPO entropy estimate samples (default: 0 if ent_coef == 0 else 1)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.env_kwargs = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.env_kwargs)}
    for item in args.flow_kwargs:
        key, value = item.split("=", 1)
        flow, name = key.split(".", 1)
        if flow not in FLOW_KWARGS:
            raise SystemExit(f"--flow-kwargs: unknown flow {flow!r}; use one of {', '.join(FLOW_KWARGS)}")
        FLOW_KWARGS[flow][name] = ast.literal_eval(value)
    env_id = args.env
    args.steps = args.steps or (10000 if args.algo == "sac" else 102400)
    preset = PPO_PRESETS.get(env_id, PPO_PRESETS["Pendulum-v1"])
    for key in PPO_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.lr = args.lr or (1e-3 if args.algo == "sac" else preset["lr"])
    if args.entropy_samples is None:
        args.entropy_samples = 0 if args.ent_coef == 0 else 1
    ppo_settings = {k: getattr(args, k) for k in PPO_KEYS} | dict(entropy_samples=args.entropy_samples)
    variants = args.variants.split(",")
    if variants[0] != "gaussian":
        raise SystemExit("the first variant must be 'gaussian' (the reference of the ratios)")
    if args.from_logs:
        results = parse_logs(args.from_logs, variants)
    else:
        print(f"{args.algo.upper()} on {env_id}: {args.steps} steps x {args.seeds} seeds from seed {args.first_seed}, "
              f"lr {args.lr}, env kwargs {args.env_kwargs}, flows {FLOW_KWARGS}, torch threads {args.threads}"
              + (f", PPO {ppo_settings}" if args.algo == "ppo" else ""), flush=True)
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        results = [run_seed(args.algo, env_id, seed, variants, args) for seed in seeds]
    print_table(args.algo, variants, results)


def parse_logs(paths: list[str], variants: list[str]) -> list[dict[str, dict]]:
    """Per-seed results from the ``  seed S variant det ... min mode M`` lines of earlier runs."""
    by_seed: dict[int, dict[str, dict]] = {}
    for path in paths:
        with open(path) as fh:
            for line in fh:
                f = line.split()
                if len(f) == 12 and f[0] == "seed" and f[2] in variants:
                    by_seed.setdefault(int(f[1]), {})[f[2]] = dict(
                        det=float(f[4]), stoch=float(f[6]), sps=float(f[8]), mode=float(f[11]))
    complete = [r for _, r in sorted(by_seed.items()) if all(v in r for v in variants)]
    print(f"{len(complete)} complete seed(s) read from {', '.join(paths)}: {sorted(by_seed)}")
    return complete


def print_table(algo: str, variants: list[str], results: list[dict[str, dict]]) -> None:
    print(f"\n| {algo} variant | det return (mean ± sd) | stoch return | steps/s | steps/s ratio vs gaussian "
          "| min mode share |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        det = np.array([r[v]["det"] for r in results])
        sto = np.array([r[v]["stoch"] for r in results])
        sps = np.array([r[v]["sps"] for r in results])
        ratio = np.array([r[v]["sps"] / r["gaussian"]["sps"] for r in results])
        mode = np.array([r[v]["mode"] for r in results])
        min_mode = np.nanmean(mode) if not np.all(np.isnan(mode)) else float("nan")
        per_seed = ", ".join(f"{x:.2f}" for x in ratio)
        print(f"| {v} | {det.mean():.2f} ± {det.std():.2f} | {sto.mean():.2f} ± {sto.std():.2f} | {sps.mean():.1f} "
              f"| {ratio.mean():.2f} (per seed {per_seed}) | {min_mode:.2f} |")


if __name__ == "__main__":
    main()
