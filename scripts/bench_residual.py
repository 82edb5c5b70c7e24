"""Benchmark of the stochastic-estimation flows (resflow, ffjord) against zuko's CNF and normflows' residual flow.

Three tables, every number measured in this run on one CPU thread:

1. density: test NLL on two-moons and 8-gaussians after a fixed training budget, and time per step;
2. speed: ``log_prob`` forward+backward at batch 1024, dims 2/16/64, ratios against the peers;
3. memory: bytes autograd saves for backward in one training ``log_prob`` (``saved_tensors_hooks``)
   for resflow with/without the Neumann gradient and ffjord with/without the adjoint, at two depths.

Usage: ``python scripts/bench_residual.py [--steps 200] [--skip-density] [--skip-speed] [--skip-memory]``.
The benchmark peers are imported here only (never by the packages).
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch

import flowrl
from flowrl.datasets import TOY_DATASETS
from flowrl.transforms.cnf import cnf_nfe

torch.set_num_threads(1)


DATASETS = TOY_DATASETS


# ---------------------------------------------------------------- models
class Model:
    """A uniform face: ``log_prob(x)``, the parameters, and an NFE counter where there is one."""

    def __init__(self, name, module, log_prob, nfe=None):
        self.name, self.module, self.log_prob, self.nfe = name, module, log_prob, nfe


def ours_resflow(dim, blocks=4, hidden=(64, 64), **kw):
    flow = flowrl.build_flow("resflow", dim, transforms=blocks, hidden_features=hidden, **kw)
    return Model("flowrl resflow", flow, flow.log_prob)


def ours_ffjord(dim, hidden=(64, 64), **kw):
    kw.setdefault("rtol", 1e-5)
    kw.setdefault("atol", 1e-6)
    flow = flowrl.build_flow("ffjord", dim, hidden_features=hidden, **kw)
    return Model("flowrl ffjord", flow, flow.log_prob, lambda: cnf_nfe(flow, reset=True))


def zuko_cnf(dim, hidden=(64, 64)):
    import zuko

    flow = zuko.flows.CNF(dim, hidden_features=hidden)
    calls = [0]
    ode = flow.transform.ode
    ode.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))

    def nfe():
        n, calls[0] = calls[0], 0
        return n

    return Model("zuko CNF", flow, lambda x: flow().log_prob(x), nfe)


def normflows_resflow(dim, blocks=4, hidden=(64, 64)):
    import normflows as nf

    flows = [nf.flows.Residual(nf.nets.LipschitzMLP([dim, *hidden, dim], init_zeros=True, lipschitz_const=0.97),
                               reduce_memory=True) for _ in range(blocks)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
    return Model("normflows residual", model, model.log_prob)


def _eval_log_prob(model, x, chunk=1024):
    model.module.eval()
    out = []
    for i in range(0, len(x), chunk):
        with torch.no_grad():
            out.append(model.log_prob(x[i:i + chunk]))
    model.module.train()
    return torch.cat(out)


def density_table(steps: int, batch: int = 256) -> None:
    print(f"\n## Density: test NLL (nats, 4096 test points) after {steps} Adam steps (lr 1e-3, batch {batch})\n")
    print("| data | model | test NLL | ms / step | NFE / step |")
    print("|---|---|---|---|---|")
    builders = [lambda: ours_resflow(2), lambda: normflows_resflow(2), lambda: ours_ffjord(2), lambda: zuko_cnf(2)]
    for dname, sampler in DATASETS.items():
        g = torch.Generator().manual_seed(0)
        train, test = sampler(20000, g), sampler(4096, g)
        for build in builders:
            torch.manual_seed(0)
            model = build()
            opt = torch.optim.Adam(model.module.parameters(), lr=1e-3)
            if model.nfe:
                model.nfe()
            t0 = time.perf_counter()
            for _ in range(steps):
                idx = torch.randint(0, len(train), (batch,))
                loss = -model.log_prob(train[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            ms = 1e3 * (time.perf_counter() - t0) / steps
            nfe = f"{model.nfe() / steps:.0f}" if model.nfe else "-"
            nll = -_eval_log_prob(model, test).mean().item()
            print(f"| {dname} | {model.name} | {nll:.3f} | {ms:.1f} | {nfe} |", flush=True)


def _time_fwd_bwd(model, x, reps: int) -> tuple[float, str]:
    def once():
        model.module.zero_grad()
        model.log_prob(x).sum().backward()

    once()  # warm-up
    if model.nfe:
        model.nfe()
    times = []
    for _ in range(reps):
        t0 = time.process_time()  # CPU time of this process: robust to other jobs sharing the cores
        once()
        times.append(time.process_time() - t0)
    nfe = f"{model.nfe() / reps:.0f}" if model.nfe else "-"
    return statistics.median(times), nfe


def speed_table(reps: int, dims=(2, 16, 64)) -> None:
    print("\n## Speed: log_prob forward+backward, batch 1024, 1 thread "
          "(CPU seconds, median of reps; NFE incl. backward)\n")
    print("| dim | model | seconds | NFE | ratio vs peer |")
    print("|---|---|---|---|---|")
    for dim in dims:
        x = torch.randn(1024, dim)
        torch.manual_seed(0)
        zk = zuko_cnf(dim)
        ours_cnf = ours_ffjord(dim, trace="hutchinson")
        # start both ODE flows away from the identity (zuko's MLP is not zero-initialised)
        with torch.no_grad():
            for p in ours_cnf.module.parameters():
                p.add_(0.1 * torch.randn_like(p))
        nf_res = normflows_resflow(dim)
        ours_res = ours_resflow(dim, logdet="series")
        t_zk, n_zk = _time_fwd_bwd(zk, x, 1 if dim == 64 else reps)
        t_cnf, n_cnf = _time_fwd_bwd(ours_cnf, x, reps)
        t_nf, _ = _time_fwd_bwd(nf_res, x, 3 * reps)  # the residual flows are cheap: more reps
        t_res, _ = _time_fwd_bwd(ours_res, x, 3 * reps)
        print(f"| {dim} | zuko CNF (exact trace) | {t_zk:.3f} | {n_zk} | 1.00 |")
        per_nfe = (t_cnf / float(n_cnf)) / (t_zk / float(n_zk))
        print(f"| {dim} | flowrl ffjord (Hutchinson) | {t_cnf:.3f} | {n_cnf} | {t_cnf / t_zk:.2f} x zuko "
              f"({per_nfe:.2f} x per NFE) |")
        print(f"| {dim} | normflows residual (4 blocks) | {t_nf:.3f} | - | 1.00 |")
        print(f"| {dim} | flowrl resflow (4 blocks, series) | {t_res:.3f} | - | {t_res / t_nf:.2f} x normflows |",
              flush=True)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward after ``fn()`` (alive, deduplicated by storage)."""
    refs = []

    def pack(t):
        refs.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()  # keep the graph alive while counting
    seen, total = set(), 0
    for r in refs:
        t = r()
        if t is not None and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    del out
    return total


def memory_table(dim: int = 16, batch: int = 256) -> None:
    print("\n## Memory: bytes kept for backward (saved tensors alive after forward) by one training log_prob "
          f"(dim {dim}, batch {batch})\n")
    print("| model | depth | option | saved MiB |")
    print("|---|---|---|---|")
    x = torch.randn(batch, dim)
    for depth in (2, 8):
        for neumann, label in ((True, "Neumann gradient in forward"), (False, "backprop through series")):
            torch.manual_seed(0)
            flow = flowrl.build_flow("resflow", dim, transforms=depth, logdet="series", estimator="fixed",
                                     n_terms=10, neumann_grad=neumann)
            mib = _saved_bytes(lambda: flow.log_prob(x).sum()) / 2**20  # noqa: B023 (called in this iteration)
            print(f"| resflow (10 series terms) | {depth} | {label} | {mib:.2f} |", flush=True)
    for depth in (1, 4):
        for adjoint in (True, False):
            torch.manual_seed(0)
            flow = flowrl.build_flow("ffjord", dim, transforms=depth, trace="hutchinson", adjoint=adjoint,
                                     rtol=1e-5, atol=1e-6)
            with torch.no_grad():
                for p in flow.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            mib = _saved_bytes(lambda: flow.log_prob(x).sum()) / 2**20  # noqa: B023 (called in this iteration)
            nfe = cnf_nfe(flow, reset=True)
            label = "adjoint" if adjoint else "backprop through solver"
            print(f"| ffjord | {depth} | {label} (forward NFE {nfe}) | {mib:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-density", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_memory:
        memory_table()
    if not args.skip_speed:
        speed_table(args.reps)
    if not args.skip_density:
        density_table(args.steps)


if __name__ == "__main__":
    main()
