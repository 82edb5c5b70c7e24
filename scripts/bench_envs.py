"""Env steps per second of the flowrl environments, next to a gymnasium classic-control peer.

Random actions, auto-reset, one process; each env is timed ``--repeats``
times interleaved with the others and the best rate is kept.  The ratio
column is against gymnasium's ``MountainCarContinuous-v0`` (pure numpy, a
2-D continuous-control task) measured in the same run.  ``raw`` is the env
class itself, ``gym.make`` adds gymnasium's checker and order wrappers.

    python scripts/bench_envs.py [--steps 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym

import envs  # noqa: F401  (registers flowrl/ ids)

CASES = [
    ("MountainCarContinuous-v0 (peer)", "MountainCarContinuous-v0", {}, True),
    ("PointMaze open, velocity", "flowrl/PointMaze-Open-v0", {}, True),
    ("PointMaze umaze, velocity", "flowrl/PointMaze-UMaze-v0", {}, True),
    ("PointMaze rooms, velocity", "flowrl/PointMaze-Rooms-v0", {}, True),
    ("PointMaze rooms, position", "flowrl/PointMaze-Rooms-v0", {"control": "position"}, True),
    ("PointMaze rooms, velocity, gym.make", "flowrl/PointMaze-Rooms-v0", {}, False),
    ("DeepSea 10", "flowrl/DeepSea-v0", {}, True),
]


def rate(env: gym.Env, steps: int, seed: int = 0) -> float:
    """Env steps per second over ``steps`` random actions (actions drawn beforehand)."""
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    made = {}
    for name, env_id, kwargs, raw in CASES:
        env = gym.make(env_id, **kwargs)
        made[name] = env.unwrapped if raw else env
        if raw and env_id.startswith("MountainCar"):
            made[name] = gym.wrappers.TimeLimit(env.unwrapped, 999)  # the raw class never truncates
    best = {name: 0.0 for name in made}
    for _ in range(args.repeats):
        for name, env in made.items():
            best[name] = max(best[name], rate(env, args.steps))
    peer = best[CASES[0][0]]
    print(f"{'environment':40s} {'steps/s':>10s} {'vs peer':>8s}")
    for name, r in best.items():
        print(f"{name:40s} {r:10.0f} {r / peer:8.2f}")


if __name__ == "__main__":
    main()
