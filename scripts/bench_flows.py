"""Benchmark: flowrl's RealNVP and NSF against zuko and nflows with matched sizes.

Part 1, speed (CPU, one thread): for each flow and dimension, the time of
``log_prob`` forward + backward and of ``sample`` (no gradient) on a batch,
measured interleaved (each round times every library once, in a rotating
order) as the CPU time of the (single) torch thread.  The table gives the
best of the rounds (the estimate least disturbed by other processes on a
shared machine) and the ratio flowrl / fastest peer, with the same ratio
computed from the medians beside it.

Part 2, test NLL after a fixed training budget (Adam, same steps, same
batches, same seeds for every library): two moons (nats, standardised
coordinates) and scikit-learn's digits (bits/dim in pixel space: dequantised
with uniform noise, logit transform with ``alpha``; the logit and scaling
Jacobians are included, see ``scripts/datasets.py``).  Mean +- std over
seeds; flowrl is "within noise" of the best peer when the difference of
means is at most twice its standard error.

Matched sizes: the same number of coupling layers with alternating masks,
the same conditioner MLP widths (ReLU), the same number of spline bins and
the same spline interval ``[-bound, bound]`` with linear tails.  zuko's
couplings are ``GeneralCouplingTransform`` (``MonotonicAffineTransform`` /
``MonotonicRQSTransform``), nflows' are ``AffineCouplingTransform`` /
``PiecewiseRationalQuadraticCouplingTransform`` with a plain MLP.

Usage::

    python scripts/bench_flows.py --jobs 4               # full run (speed ~5 min, NLL ~15 min CPU)
    python scripts/bench_flows.py --dims 2 --rounds 5 --steps 200 --seeds 1   # quick
    python scripts/bench_flows.py --skip-nll              # speed table only
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from functools import partial
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from datasets import Digits, two_moons  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import flowrl  # noqa: E402

LIBS = ("flowrl", "zuko", "nflows")
KINDS = ("realnvp", "nsf")


class Model:
    """A flow of any library behind one interface: ``log_prob(x)``, ``sample(n)``, ``parameters()``."""

    def __init__(self, module: nn.Module, log_prob: Callable[[Tensor], Tensor], sample: Callable[[int], Tensor]):
        self.module, self.log_prob, self.sample = module, log_prob, sample

    def parameters(self):
        return self.module.parameters()


class _ContextMLP(nn.Sequential):
    """ReLU MLP that accepts (and ignores) nflows' ``context`` argument."""

    def __init__(self, n_in: int, n_out: int, hidden: tuple[int, ...]):
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(n_in, h), nn.ReLU()]
            n_in = h
        super().__init__(*layers, nn.Linear(n_in, n_out))
        self.hidden_features = n_in  # nflows' spline coupling scales its raw widths by 1/sqrt(this)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:  # noqa: D102
        return super().forward(x)


def build(lib: str, kind: str, dim: int, layers: int, hidden: tuple[int, ...], bins: int, bound: float) -> Model:
    if lib == "flowrl":
        extra = dict(bins=bins, bound=bound) if kind == "nsf" else {}
        f = flowrl.build_flow(kind, dim, transforms=layers, hidden_features=hidden, **extra)
        return Model(f, f.log_prob, f.sample)
    if lib == "zuko":
        from zuko.distributions import DiagNormal
        from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
        from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

        if kind == "nsf":
            uni, shapes = partial(MonotonicRQSTransform, bound=bound, slope=1e-3), [(bins,), (bins,), (bins - 1,)]
        else:
            uni, shapes = MonotonicAffineTransform, [(), ()]
        ts = [
            GeneralCouplingTransform(dim, 0, mask=torch.arange(dim) % 2 == i % 2, univariate=uni, shapes=shapes,
                                     hidden_features=hidden)
            for i in range(layers)
        ]
        base = UnconditionalDistribution(DiagNormal, torch.zeros(dim), torch.ones(dim), buffer=True)
        f = Flow(ts, base)
        return Model(f, lambda x: f().log_prob(x), lambda n: f().sample((n,)))
    if lib == "nflows":
        from nflows.distributions import StandardNormal
        from nflows.flows import Flow
        from nflows.transforms import (
            AffineCouplingTransform,
            CompositeTransform,
            PiecewiseRationalQuadraticCouplingTransform,
        )

        net = lambda i, o: _ContextMLP(i, o, hidden)  # noqa: E731
        ts = []
        for i in range(layers):
            mask = (torch.arange(dim) % 2 == i % 2).int()
            if dim == 1:
                mask = torch.ones(1, dtype=torch.int)
            if kind == "nsf":
                ts.append(PiecewiseRationalQuadraticCouplingTransform(
                    mask, net, num_bins=bins, tails="linear", tail_bound=bound))
            else:
                ts.append(AffineCouplingTransform(mask, net))
        f = Flow(CompositeTransform(ts), StandardNormal([dim]))
        return Model(f, f.log_prob, f.sample)
    raise ValueError(f"unknown library {lib!r}")


# ---------------------------------------------------------------------- speed
def _timed(fn: Callable[[], None]) -> float:
    """CPU time of this thread spent in ``fn`` (with one torch thread, all of its work).

    Unlike wall time, it does not count the time the process waits for a core
    on a shared, oversubscribed machine.
    """
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def _ops(model: Model, x: Tensor) -> dict[str, Callable[[], None]]:
    params = list(model.parameters())

    def density() -> None:
        for p in params:
            p.grad = None
        (-model.log_prob(x).mean()).backward()

    def sample() -> None:
        with torch.no_grad():
            model.sample(x.shape[0])

    return {"log_prob fwd+bwd": density, "sample": sample}


def speed_table(args) -> list[tuple]:
    rows = []
    for kind in KINDS:
        for dim in args.dims:
            models = {}
            for lib in LIBS:
                torch.manual_seed(0)
                models[lib] = build(lib, kind, dim, args.layers, tuple(args.hidden), args.bins, args.bound)
            x = torch.randn(args.batch, dim)
            ops = {lib: _ops(m, x) for lib, m in models.items()}
            for op in ("log_prob fwd+bwd", "sample"):
                times: dict[str, list[float]] = {lib: [] for lib in LIBS}
                for lib in LIBS:  # warm-up
                    for _ in range(2):
                        ops[lib][op]()
                for r in range(args.rounds):
                    order = LIBS[r % 3:] + LIBS[:r % 3]
                    for lib in order:
                        times[lib].append(_timed(ops[lib][op]))
                best = {lib: 1e3 * min(t) for lib, t in times.items()}
                med = {lib: 1e3 * statistics.median(t) for lib, t in times.items()}
                ratio = best["flowrl"] / min(best["zuko"], best["nflows"])
                ratio_med = med["flowrl"] / min(med["zuko"], med["nflows"])
                rows.append((kind, dim, op, best["flowrl"], best["zuko"], best["nflows"], ratio, ratio_med))
                print(f"  {kind:8s} d={dim:<3d} {op:17s} " + "  ".join(f"{lib} {best[lib]:7.2f} ms" for lib in LIBS)
                      + f"  ratio {ratio:.2f} (medians: {ratio_med:.2f})", flush=True)
    return rows


# ------------------------------------------------------------------------ NLL
def _train(model: Model, next_batch: Callable[[int], Tensor], steps: int, lr: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        loss = -model.log_prob(next_batch(step)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def nll_moons(lib: str, kind: str, seed: int, args) -> float:
    train, test = two_moons(20000, seed=seed), two_moons(5000, seed=10_000 + seed)
    torch.manual_seed(seed)
    model = build(lib, kind, 2, args.layers, tuple(args.hidden), args.bins, args.bound)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(train), (args.steps, args.train_batch), generator=g)
    _train(model, lambda s: train[idx[s]], args.steps, args.lr)
    with torch.no_grad():
        return -model.log_prob(test).mean().item()


def nll_digits(lib: str, kind: str, seed: int, args) -> float:
    data = Digits(alpha=args.alpha)
    torch.manual_seed(seed)
    model = build(lib, kind, data.dim, args.layers, tuple(args.hidden), args.bins, args.bound)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(data.train_pixels), (args.steps, args.train_batch), generator=g)
    noise = torch.Generator().manual_seed(1000 + seed)
    _train(model, lambda s: data.to_logit(data.train_pixels[idx[s]], noise)[0], args.steps, args.lr)
    test_noise = torch.Generator().manual_seed(123)
    bpd = []
    with torch.no_grad():
        for _ in range(4):  # average over dequantisation draws
            z, logdet = data.to_logit(data.test_pixels, test_noise)
            bpd.append(data.bits_per_dim(model.log_prob(z), logdet).mean().item())
    return sum(bpd) / len(bpd)


def _nll_task(task: tuple, args) -> float:
    """One training run (any process): ``task = (dataset, kind, seed, lib)``."""
    torch.set_num_threads(args.threads)
    dataset, kind, seed, lib = task
    return (nll_moons if dataset == "moons" else nll_digits)(lib, kind, seed, args)


def nll_table(args) -> list[tuple]:
    """Every (dataset, flow, seed, library) run, ``args.jobs`` processes at a time; then the summary."""
    tasks = [(d, k, s, lib) for d in ("moons", "digits") for k in KINDS for s in range(args.seeds) for lib in LIBS]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            values = list(pool.map(_nll_task, tasks, [args] * len(tasks)))
    else:
        values = [_nll_task(t, args) for t in tasks]
    results = dict(zip(tasks, values))
    rows = []
    for dataset in ("moons", "digits"):
        for kind in KINDS:
            res = {lib: [results[(dataset, kind, s, lib)] for s in range(args.seeds)] for lib in LIBS}
            stats = {
                lib: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else float("nan")) for lib, v in res.items()
            }
            best = min(("zuko", "nflows"), key=lambda lib: stats[lib][0])
            diff = stats["flowrl"][0] - stats[best][0]
            se = math.sqrt((stats["flowrl"][1] ** 2 + stats[best][1] ** 2) / args.seeds)
            verdict = "n/a (1 seed)" if args.seeds < 2 else ("yes" if diff <= 2 * se else "no")
            rows.append((dataset, kind, stats, best, diff, verdict))
            print(f"  {dataset:6s} {kind:8s} " + "  ".join(
                f"{lib} " + " ".join(f"{v:.4f}" for v in res[lib]) for lib in LIBS), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    ap.add_argument("--batch", type=int, default=1024, help="batch of the speed measurements")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per row (best and median reported)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--bound", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=600, help="training steps per model for the NLL table")
    ap.add_argument("--train-batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.05, help="logit-transform alpha for digits")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="processes for the NLL runs (speed is always one process)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-nll", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flowrl.set_validation(True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), layers={args.layers}, hidden={tuple(args.hidden)}, "
          f"bins={args.bins}, bound={args.bound}")

    if not args.skip_speed:
        print(f"\nspeed: batch {args.batch}, best (and median) of {args.rounds} interleaved rounds")
        rows = speed_table(args)
        print("\n| flow | dim | op | flowrl ms | zuko ms | nflows ms | flowrl / fastest peer | same, medians |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, dim, op, a, b, c, r, rm in rows:
            print(f"| {kind} | {dim} | {op} | {a:.2f} | {b:.2f} | {c:.2f} | {r:.2f} | {rm:.2f} |")

    if not args.skip_nll:
        print(f"\ntest NLL after {args.steps} Adam steps (lr {args.lr}, batch {args.train_batch}), "
              f"mean +- std over {args.seeds} seed(s)")
        rows = nll_table(args)
        print("\n| data (unit) | flow | flowrl | zuko | nflows | flowrl - best peer | within noise |")
        print("|---|---|---|---|---|---|---|")
        for dataset, kind, stats, best, diff, verdict in rows:
            unit = "nats" if dataset == "moons" else "bits/dim"
            cells = " | ".join(f"{stats[lib][0]:.4f} +- {stats[lib][1]:.4f}" for lib in LIBS)
            print(f"| {dataset} ({unit}) | {kind} | {cells} | {diff:+.4f} ({best}) | {verdict} |")


if __name__ == "__main__":
    main()
