"""Benchmark: memory and time of plain vs memory-saving (O(1)-memory) backprop over depth.

For each depth it builds one flow twice with the same weights (plain and
``build_flow(..., memory_saving=True)``) and measures a training step
(forward, loss, backward, Adam step):

* the steps whose input the memory-saving stack keeps instead of rebuilding it
  (their reconstruction is sequential, e.g. MAF layers in density training),
* saved-for-backward bytes (``flowrl.memory.SavedTensorMeter``),
* peak process memory of a CPU training step above the resident set before
  it, measured in a fresh process (Linux ``VmHWM`` after resetting it
  through ``/proc/self/clear_refs``; "n/a" elsewhere),
* peak CUDA memory above the memory allocated before the step (on a GPU),
* median step time (process CPU time on CPU, so that other processes' load
  does not count; wall time on CUDA) and the ratio memory-saving / plain.

A second table trains both flows from the same initialisation on the same
batches in float32 and reports how far they drift apart: the float32
reconstruction error of the activations rebuilt in backward
(``flowrl.memory.reconstruction_drift``), the gradient difference at the end,
and the final losses.

``--strict`` adds ``memory_saving="strict"`` (the inputs of autoregressive
layers rebuilt by their ``D``-pass inverse instead of kept) to the first table.

Recorded on CPU (process CPU time, memory-saving / plain, depths 1-64):
RealNVP 1.4-1.6x, Glow 3x8x8 and 3x16x16 1.5-1.7x, MAF density and IAF
sampling 1.1-1.5x (mixed strategy; 5x when the rebuild ran the ``D``-pass
inverse).  Drift (float32, after training): RealNVP on 16-d vectors, max
absolute error of a rebuilt activation 5e-7 at depth 1 growing to 3e-6 at
depth 64 (both directions), gradients within 4e-7 relative of plain backprop
at the same parameters; multi-scale Glow on 3x8x8 images, 4e-6 (1 step per
level) to 3e-5 (64 steps per level), gradients within 1.3e-5 relative.

Usage::

    python scripts/bench_memory.py                       # realnvp on vectors, depths 1 4 16 64
    python scripts/bench_memory.py --flow maf --strict   # MAF: plain, mixed strategy and strict
    python scripts/bench_memory.py --flow glow --shape 3,16,16 --batch 64
    python scripts/bench_memory.py --direction sampling  # rsample_and_log_prob training step
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import flowrl  # noqa: E402
from flowrl.memory import SavedTensorMeter, flatten_blocks, reconstruction_drift  # noqa: E402


def _proc_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            m = re.search(rf"{field}:\s+(\d+) kB", fh.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


#: ``build_flow(memory_saving=...)`` of each measured mode
MODES = {"plain": False, "saving": True, "strict": "strict"}


def _build(args, depth: int, mode: str, seed: int = 0) -> flowrl.Flow:
    torch.manual_seed(seed)
    kwargs = dict(transforms=depth, hidden_features=tuple(args.hidden))
    flow = flowrl.build_flow(args.flow, args.shape, args.context_dim, memory_saving=MODES[mode], **kwargs)
    return flow.to(args.device)


def _loss_fn(args, flow: flowrl.Flow, x: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
    if args.direction == "density":
        return -flow.log_prob(x, c).mean()
    xs, lp = flow.rsample_and_log_prob(1, c) if c is not None else flow.rsample_and_log_prob(len(x))
    xs = xs.reshape(lp.numel(), -1)
    return (0.5 * xs.pow(2).sum(1) + lp.flatten()).mean()  # reverse KL to a standard normal (up to a constant)


def _data(args, seed: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shape = args.shape if isinstance(args.shape, tuple) else (args.shape,)
    x = torch.randn(args.batch, *shape, generator=g)
    x = torch.tanh(x) * 2 + 0.3 * x ** 2  # skewed, non-Gaussian data
    c = torch.randn(args.batch, args.context_dim, generator=g) if args.context_dim else None
    return x.to(args.device), (c.to(args.device) if c is not None else None)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(device: str):
    """CPU time of this process on CPU (immune to other processes' load), wall time on CUDA."""
    return time.perf_counter if device.startswith("cuda") else time.process_time


def _step(args, flow, opt, x, c) -> None:
    opt.zero_grad(set_to_none=True)
    _loss_fn(args, flow, x, c).backward()
    opt.step()


def _measure(args, depth: int) -> dict[str, dict[str, float]]:
    flows = {m: _build(args, depth, m) for m in args.modes}
    for m in args.modes[1:]:
        flows[m].load_state_dict(flows["plain"].state_dict())
    opts = {m: torch.optim.Adam(f.parameters(), lr=1e-4) for m, f in flows.items()}
    x, c = _data(args, 0)
    out: dict[str, dict[str, float]] = {m: {} for m in flows}
    steps = flatten_blocks(flows["saving"].transform, inverted=args.direction == "sampling")
    out["saving"]["steps"] = len(steps)
    out["saving"]["kept"] = sum(b.keeps_input for b in steps)  # mixed strategy: inputs stored, not rebuilt
    for m, f in flows.items():
        with torch.no_grad():
            f.log_prob(x, c)  # data-dependent initialisations, warm-up
        _step(args, f, opts[m], x, c)
        with SavedTensorMeter() as meter:
            loss = _loss_fn(args, f, x, c)
        loss.backward()
        out[m]["saved"] = meter.bytes
        out[m]["params"] = sum(p.numel() * p.element_size() for p in f.parameters())
        del loss
        opts[m].zero_grad(set_to_none=True)
    if args.device.startswith("cuda"):
        for m, f in flows.items():  # peak CUDA memory of one training step, each mode on its own
            opts[m].zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda0 = torch.cuda.memory_allocated()
            _step(args, f, opts[m], x, c)
            torch.cuda.synchronize()
            out[m]["peak_cuda"] = torch.cuda.max_memory_allocated() - cuda0
    for m in flows:  # peak process memory: a fresh process per measurement (the allocator keeps freed pages)
        out[m]["peak_rss"] = _peak_rss_in_fresh_process(args, depth, m)
    clock = _clock(args.device)
    times: dict[str, list[float]] = {m: [] for m in flows}
    for _ in range(args.repeats):  # interleaved so that both modes see the same machine load
        for m, f in flows.items():
            _sync(args.device)
            t0 = clock()
            _step(args, f, opts[m], x, c)
            _sync(args.device)
            times[m].append(clock() - t0)
    for m in flows:
        out[m]["time"] = statistics.median(times[m])
    return out


def _peak_rss_child(args, depth: int, mode: str) -> float:
    torch.set_num_threads(args.threads)
    args.device = "cpu"
    flow = _build(args, depth, mode)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    x, c = _data(args, 0)
    with torch.no_grad():
        flow.log_prob(x, c)  # data-dependent initialisations
    _step(args, flow, opt, x, c)  # warm-up: optimiser state, autograd engine, kernels
    rss0 = _proc_kib("VmRSS")
    if rss0 is None or not _reset_peak_rss():
        return float("nan")
    _step(args, flow, opt, x, c)
    hwm = _proc_kib("VmHWM")
    return float("nan") if hwm is None else float((hwm - rss0) * 1024)


def _peak_rss_in_fresh_process(args, depth: int, mode: str) -> float:
    """Peak resident memory of one CPU training step above the process's memory before it."""
    if sys.platform != "linux":
        return float("nan")
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    # glibc serves blocks above this size with mmap and unmaps them on free, so the
    # resident set follows the live tensors instead of keeping freed pages
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(_peak_rss_child, args, depth, mode).result()
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


def _drift(args, depth: int) -> dict[str, float]:
    """Train plain and memory-saving copies on the same batches (float32); compare them."""
    flows = {m: _build(args, depth, m, seed=1) for m in ("plain", "saving")}
    flows["saving"].load_state_dict(flows["plain"].state_dict())
    opts = {m: torch.optim.Adam(f.parameters(), lr=args.lr) for m, f in flows.items()}
    losses = {}
    for step in range(args.train_steps):
        x, c = _data(args, 100 + step)
        for m, f in flows.items():
            opts[m].zero_grad(set_to_none=True)
            torch.manual_seed(1000 + step)  # the same base samples for both copies (sampling direction)
            loss = _loss_fn(args, f, x, c)
            loss.backward()
            opts[m].step()
            losses[m] = loss.item()
    pairs = zip(flows["plain"].parameters(), flows["saving"].parameters())
    param_gap = max((p - q).abs().max().item() for p, q in pairs)
    # gradient error of memory saving alone: the plain stack at the memory-saving copy's parameters
    flows["plain"].load_state_dict(flows["saving"].state_dict())
    x, c = _data(args, 7)
    grads = {}
    for m, f in flows.items():
        f.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        _loss_fn(args, f, x, c).backward()
        grads[m] = torch.cat([p.grad.flatten() for p in f.parameters() if p.grad is not None])
    rel = ((grads["plain"] - grads["saving"]).norm() / grads["plain"].norm()).item()
    inverse = args.direction == "sampling"
    probe = x if not inverse else torch.randn_like(x)
    drift = reconstruction_drift(flows["saving"].transform, probe, c, inverse=inverse).max().item()
    return dict(drift=drift, grad_rel=rel, param_gap=param_gap, loss_plain=losses.get("plain", float("nan")),
                loss_saving=losses.get("saving", float("nan")))


def _fmt_bytes(n: float) -> str:
    if n != n:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _parse_shape(text: str):
    dims = tuple(int(v) for v in text.split(","))
    return dims[0] if len(dims) == 1 else dims


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--flow", default="realnvp")
    p.add_argument("--shape", type=_parse_shape, default=16, help="D or C,H,W")
    p.add_argument("--context-dim", type=int, default=4)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--depths", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--direction", choices=["density", "sampling"], default="density")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=100, help="steps of the drift table (0: skip it)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--drift-only", action="store_true", help="skip the memory/time table")
    p.add_argument("--strict", action="store_true",
                   help="also measure memory_saving='strict' (inputs of autoregressive layers rebuilt, not kept)")
    args = p.parse_args(argv)
    args.modes = ["plain", "saving"] + (["strict"] if args.strict else [])
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    print(f"flow={args.flow} shape={args.shape} context_dim={args.context_dim} hidden={args.hidden} "
          f"batch={args.batch} direction={args.direction} device={args.device} threads={args.threads} "
          f"torch={torch.__version__}")

    if not args.drift_only:
        modes = args.modes
        header = ["depth", "parameters", "kept inputs"] + [f"saved {m}" for m in modes]
        header += [f"peak CPU RSS {m}" for m in modes]
        if cuda:
            header += [f"peak CUDA {m}" for m in modes]
        header += [f"step {m}" for m in modes] + [f"time {m}/plain" for m in modes[1:]]
        rows = []
        for depth in args.depths:
            r = _measure(args, depth)
            row = [str(depth), _fmt_bytes(r["plain"]["params"]), f"{r['saving']['kept']}/{r['saving']['steps']}"]
            row += [_fmt_bytes(r[m]["saved"]) for m in modes] + [_fmt_bytes(r[m]["peak_rss"]) for m in modes]
            if cuda:
                row += [_fmt_bytes(r[m]["peak_cuda"]) for m in modes]
            row += [f"{1e3 * r[m]['time']:.1f} ms" for m in modes]
            row += [f"{r[m]['time'] / r['plain']['time']:.2f}x" for m in modes[1:]]
            rows.append(row)
            print(f"  depth {depth} done", flush=True)
        clock = "wall time" if cuda else "process CPU time"
        print(f"\nTraining step (forward, loss, backward, Adam): median {clock} of {args.repeats} steps")
        print(_table(header, rows))
        print("(peak RSS includes the parameters' gradients and Adam's update, which grow with the parameters;")
        print(" kept inputs: steps whose sequential reconstruction is replaced by storing their input, the")
        print(" mixed strategy of memory_saving=True: saved memory then grows by those inputs only;")
        print(" strict: memory_saving='strict' keeps none of them and rebuilds them by the D-pass inverse)")

    if args.train_steps > 0:
        rows = []
        for depth in args.depths:
            d = _drift(args, depth)
            rows.append([str(depth), f"{d['drift']:.2e}", f"{d['grad_rel']:.2e}", f"{d['loss_plain']:.4f}",
                         f"{d['loss_saving']:.4f}", f"{d['param_gap']:.2e}"])
        print(f"\nFloat32, after {args.train_steps} Adam steps of a plain and a memory-saving copy on the same "
              "batches:")
        print("rebuilt-activation error and gradient difference at the same (trained) parameters; final losses;")
        print("parameter gap between the two trajectories (float32 round-off amplified by training)")
        print(_table(["depth", "max |x_rebuilt - x|", "grad rel. diff", "loss plain", "loss saving",
                      "max |param gap|"], rows))


if __name__ == "__main__":
    main()
