"""Every pseudo-count estimator against exact counts.

K tight clusters of states (std ``--spread``) on a grid are visited with known
counts from 1 to ``--max-count`` in a shuffled stream fed to
``FlowPseudoCounter.update`` in batches of ``--batch``.  For each flow and
estimator the table gives the Spearman rank correlation with the true counts,
the slope of log N_hat against log N, the pseudo-count of an unseen state
relative to the rarest seen one, and the time to score the K states.

    python scripts/bench_pseudocounts.py --flows nsf realnvp --seeds 0 1 2

``--images``: the same for :class:`flowrl.novelty.image_counts.ImagePseudoCounter`
on ``--k`` frames (``--side`` x ``--side`` uint8, a bright square at K
positions, ``point_image_stream`` of ``tests/count_streams.py``) visited 1 to
``--max-count`` times, with the cost of an ``update`` call (``--batch``
frames, ``--steps`` training steps) and of a ``bonus`` call on 64 frames.

    python scripts/bench_pseudocounts.py --images --k 8 --max-count 100 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the streams with known counts, shared with the tests
from count_streams import cluster_stream, count_agreement, point_image_stream  # noqa: E402

import flowrl  # noqa: E402
from flowrl.novelty import ESTIMATORS, FlowPseudoCounter  # noqa: E402
from flowrl.novelty.image_counts import ImagePseudoCounter  # noqa: E402

IMAGE_ESTIMATORS = ("density", "cell", "cell_bound")


def run(flow: str, seed: int, args) -> dict[str, tuple[float, float, float, float]]:
    counts = np.round(np.geomspace(1, args.max_count, args.k)).astype(int)
    centres, stream = cluster_stream(counts, dim=args.dim, spread=args.spread, seed=seed)
    torch.manual_seed(seed)
    counter = FlowPseudoCounter(
        args.dim, flow, lr=args.lr, batch_size=args.train_batch, steps_per_update=args.steps,
        seed=seed, resolution=args.resolution,
    )
    for chunk in stream.split(args.batch):
        counter.update(chunk)
    counter.train_steps(args.extra_steps)
    unseen = torch.full((1, args.dim), 1.5)  # outside the grid, never visited
    out = {}
    for est in ESTIMATORS:
        t0 = time.perf_counter()
        n_hat = counter.pseudo_count(centres, est).cpu().numpy()
        dt = time.perf_counter() - t0
        rho, slope = count_agreement(counts, n_hat)
        n_unseen = float(counter.pseudo_count(unseen, est))
        out[est] = (rho, slope, n_unseen / float(n_hat[np.argmin(counts)]), dt)
    return out


def run_images(seed: int, args) -> dict:
    counts = np.round(np.geomspace(1, args.max_count, args.k)).astype(int)
    frames, stream = point_image_stream(counts, side=args.side, seed=seed, unseen=1)
    frames, unseen = frames[:-1], frames[-1:]  # a square at a position never visited
    torch.manual_seed(seed)
    counter = ImagePseudoCounter(
        frames.shape[1:], args.image_flow, levels=args.levels, size=args.size, lr=args.lr,
        batch_size=args.train_batch, steps_per_update=args.steps, seed=seed, cell_samples=args.cell_samples,
        flow_kwargs=dict(transforms=args.transforms, hidden_features=tuple(args.hidden)),
    )
    t0 = time.perf_counter()
    chunks = stream.split(args.batch)
    for chunk in chunks:
        counter.update(chunk)
    update_ms = 1e3 * (time.perf_counter() - t0) / len(chunks)
    counter.train_steps(args.extra_steps)
    batch64 = stream[:64]
    counter.bonus(batch64)
    t0 = time.perf_counter()
    for _ in range(5):
        counter.bonus(batch64)
    bonus_ms = 1e3 * (time.perf_counter() - t0) / 5
    out = {"update_ms": update_ms, "bonus_ms": bonus_ms}
    for est in IMAGE_ESTIMATORS:
        n_hat = counter.pseudo_count(frames, est).cpu().numpy()
        rho, slope = count_agreement(counts, n_hat)
        n_unseen = float(counter.pseudo_count(unseen, est))
        out[est] = (rho, slope, n_unseen / float(n_hat[np.argmin(counts)]))
    out["table"] = (counts, counter.pseudo_count(frames).cpu().numpy())
    return out


def main_images(args) -> None:
    print(f"images: K={args.k} frames {args.side}x{args.side} -> {args.size}x{args.size} at {args.levels} levels, "
          f"{args.image_flow} (transforms={args.transforms}, hidden={args.hidden}), counts 1..{args.max_count}, "
          f"batches of {args.batch}, {args.steps} steps/update, +{args.extra_steps} steps, seeds {args.seeds}")
    t0 = time.perf_counter()
    results = [run_images(s, args) for s in args.seeds]
    print(f"{'estimator':12s} {'spearman':>16s} {'slope':>16s} {'N(unseen)/N(rarest)':>20s}")
    for est in IMAGE_ESTIMATORS:
        vals = np.array([r[est] for r in results])
        m, sd = vals.mean(0), vals.std(0)
        print(f"{est:12s} {m[0]:8.3f} +- {sd[0]:5.3f} {m[1]:8.3f} +- {sd[1]:5.3f} {np.median(vals[:, 2]):20.3g}")
    counts, n_hat = results[0]["table"]
    print(f"seed {args.seeds[0]}, default estimator: true count -> pseudo-count")
    print("  " + "  ".join(f"{c:d}->{n:.3g}" for c, n in zip(counts, n_hat)))
    upd = np.mean([r["update_ms"] for r in results])
    bon = np.mean([r["bonus_ms"] for r in results])
    print(f"cost: update({args.batch} frames, {args.steps} steps) {upd:.1f} ms; bonus(64 frames) {bon:.1f} ms; "
          f"total {time.perf_counter() - t0:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", nargs="+", default=None, help="default: realnvp, nice and nsf when available")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--max-count", type=int, default=200)
    p.add_argument("--spread", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=8, help="observations per update call")
    p.add_argument("--steps", type=int, default=16, help="training steps per update call")
    p.add_argument("--extra-steps", type=int, default=1000, help="training steps after the stream")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--resolution", type=float, default=0.4)
    p.add_argument("--images", action="store_true", help="benchmark the image counter instead")
    p.add_argument("--image-flow", default="glow")
    p.add_argument("--side", type=int, default=16, help="raw frame side (images)")
    p.add_argument("--size", type=int, default=8, help="downsampled side (images)")
    p.add_argument("--levels", type=int, default=2, help="quantisation levels (images)")
    p.add_argument("--transforms", type=int, default=2, help="flow steps per level (images)")
    p.add_argument("--cell-samples", type=int, default=64, help="points per cell (images)")
    p.add_argument("--hidden", type=int, nargs="+", default=[16], help="conditioner widths (images)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.images:
        main_images(args)
        return
    flows = args.flows or [f for f in ("nsf", "realnvp", "nice") if f in flowrl.available_flows()]
    print(f"K={args.k} clusters (std {args.spread}) in {args.dim}-D, counts 1..{args.max_count}, "
          f"batches of {args.batch}, {args.steps} steps/update, seeds {args.seeds}")
    print(f"{'flow':10s} {'estimator':15s} {'spearman':>16s} {'slope':>16s} {'N(unseen)/N(rarest)':>20s} "
          f"{'score ms':>9s}")
    for flow in flows:
        t0 = time.perf_counter()
        results = [run(flow, s, args) for s in args.seeds]
        for est in ESTIMATORS:
            vals = np.array([r[est] for r in results])
            m, sd = vals.mean(0), vals.std(0)
            print(f"{flow:10s} {est:15s} {m[0]:8.3f} +- {sd[0]:5.3f} {m[1]:8.3f} +- {sd[1]:5.3f} "
                  f"{np.median(vals[:, 2]):20.3g} {1e3 * m[3]:9.2f}")
        print(f"{flow:10s} (fit + score, {len(args.seeds)} seeds: {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
