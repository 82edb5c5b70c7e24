"""One prepared GPU check: device tests, every flow on the GPU, flows vs zuko, agent presets cuda vs cpu.

Usage::

    python scripts/gpu_check.py            # a GPU machine: ~5 minutes on one H200, no network needed
    python scripts/gpu_check.py --smoke    # tiny sizes, CPU only, < 1 minute (the test suite runs this)
    make gpu-check

Steps, each printed as it runs; the exit status is 1 if any check failed:

0. the device tests: ``pytest --device cuda -m "not slow"`` on the device-sensitive test files.
1. every registered flow at dim 16, batch 4096, context 16 on the device: ``log_prob``
   forward+backward and ``rsample_and_log_prob`` times (and their ratio to RealNVP's), and three
   checks: ``log_prob`` finite; ``rsample_and_log_prob`` agrees with ``log_prob`` of its samples
   (the bound of the property suite, ``10 x max(2e-3, flow tolerance)``); the device's float32
   ``log_prob`` is as accurate as the CPU's (against float64 on the CPU, TF32 off: at most 10x the
   CPU's own float32 error + 1e-5 (1 + |log p|)).
2. flowrl vs zuko on the same device (unconditional RealNVP, NSF, MAF; dims 16 and 64, batches
   4096 and 65536; zuko optional: without it the table is skipped with a message, not failed).
3. agent presets ``configs/sac_flow_gpu.yaml`` and ``configs/ppo_flow_gpu.yaml``: env steps/s on
   cuda and on the CPU, the flow agent beside the Gaussian one on the same preset
   (``policy=gaussian novelty=null``).  CPU figures use every core torch sees.
4. the demo agent's time per part on the device (``scripts/bench_agent_speed.py``: SAC, flow and
   Gaussian policy, flow bonus and none).

Needs torch, gymnasium, stable-baselines3 and pydantic (wandb stays off); pytest (and
pytest-xdist, optional) for step 0.  Timings are wall-clock with the device synchronised
around each measurement; they are a benchmark, never a pass/fail criterion.

On a machine without network whose Python lacks some of them, carry wheels (Python 3.12,
x86-64) and install them next to the checkout, e.g.::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        -d .whl gymnasium farama-notifications stable-baselines3 pydantic pydantic-core annotated-types \
        typing-inspection [zuko]
    # there:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 scripts/gpu_check.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

import flowrl  # noqa: E402
from flowrl.precision import ieee_float32, tf32_enabled  # noqa: E402
from flowrl.registry import flow_spec  # noqa: E402

DEVICE_TESTS = ["tests/test_devices.py", "tests/test_flow_policies.py", "tests/test_novelty_agents.py",
                "tests/test_memory.py", "tests/test_properties.py", "tests/test_novelty.py"]
PRESETS = {"sac": "configs/sac_flow_gpu.yaml", "ppo": "configs/ppo_flow_gpu.yaml"}


class Sizes:
    """What each step measures: the full check, or ``--smoke``'s tiny version."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.dim, self.batch, self.context, self.reps = (4, 64, 3, 1) if smoke else (16, 4096, 16, 5)
        self.agree_rows = 32 if smoke else 256
        self.zuko = [(4, 64)] if smoke else [(16, 4096), (16, 65536), (64, 4096), (64, 65536)]
        self.zuko_layers, self.zuko_hidden = (2, (16,)) if smoke else (4, (64, 64))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall time of ``fn`` in ms over ``reps`` runs after one warm-up, device synchronised.

    A warm-up that took more than a second is followed by one run only (the budget is 5 minutes).
    """
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    reps = reps if time.perf_counter() - t0 < 1.0 else 1
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


# ------------------------------------------------------------------ step 0
def device_tests(device: torch.device, smoke: bool, timeout: float) -> bool:
    """``pytest --device <device> -m "not slow"`` on the device-sensitive files (a subprocess)."""
    cmd = [sys.executable, "-m", "pytest", "--device", str(device), "-m", "not slow", "-q", "-p", "no:cacheprovider"]
    if smoke:
        cmd += ["tests/test_devices.py", "-k", "ieee_float32"]
    else:
        try:
            import xdist  # noqa: F401

            cmd += ["-n", str(min(8, os.cpu_count() or 1))]
        except ImportError:
            pass
        cmd += DEVICE_TESTS
    print("$ " + " ".join(cmd), flush=True)
    try:
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
        out = subprocess.run(cmd, cwd=ROOT, timeout=timeout, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": path})
    except subprocess.TimeoutExpired:
        print(f"FAIL: the device tests ran past {timeout:.0f} s")
        return False
    tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    print(("ok" if out.returncode == 0 else f"FAIL: pytest exited with {out.returncode}"), flush=True)
    return out.returncode == 0


# ------------------------------------------------------------------ step 1
def _accuracy_bound(flow64: torch.nn.Module, x: torch.Tensor, c: torch.Tensor,
                    device: torch.device) -> tuple[float, float, bool]:
    """(device error, CPU float32 error) of float32 ``log_prob`` against float64, and whether it passes."""
    with torch.no_grad():
        want = flow64.log_prob(x, c)
        cpu32 = copy.deepcopy(flow64).float()
        err_cpu = (cpu32.log_prob(x.float(), c.float()).double() - want).abs().max().item()
        dev32 = cpu32.to(device)
        with ieee_float32():
            got = dev32.log_prob(x.float().to(device), c.float().to(device)).double().cpu()
    err = (got - want).abs()
    ok = bool(torch.isfinite(got).all()) and bool((err <= 10 * err_cpu + 1e-5 * (1 + want.abs())).all())
    return err.max().item(), err_cpu, ok


def flow_rows(device: torch.device, sizes: Sizes, names: Optional[list[str]] = None) -> tuple[list[tuple], bool]:
    """Table 1: one row per flow (times, ratio to realnvp, three checks)."""
    rows, all_ok = [], True
    names = names or flowrl.available_flows()
    g = torch.Generator().manual_seed(0)
    for name in names:
        try:
            spec = flow_spec(name)
            dim = max(sizes.dim, spec.min_dim)
            torch.manual_seed(0)
            flow64 = flowrl.build_flow(name, dim, context_dim=sizes.context).double()
            x = torch.randn(sizes.batch, dim, generator=g, dtype=torch.float64)
            c = torch.randn(sizes.batch, sizes.context, generator=g, dtype=torch.float64)
            n = sizes.agree_rows
            with torch.no_grad():
                flow64.log_prob(x[:n], c[:n])  # data-dependent initialisation (ActNorm), shared by every copy
            flow64.eval()
            err_dev, err_cpu, agree = _accuracy_bound(flow64, x[:n], c[:n], device)
            flow = copy.deepcopy(flow64).float().to(device).train()
            xd, cd = x.float().to(device), c.float().to(device)
            params = [p for p in flow.parameters() if p.requires_grad]

            def density() -> None:
                for p in params:
                    p.grad = None
                loss = -flow.log_prob(xd, cd).mean()
                if params:
                    loss.backward()

            def sampling() -> None:
                with torch.no_grad():
                    flow.rsample_and_log_prob(1, cd)

            t_lp = _timed(density, device, sizes.reps)
            t_rs = _timed(sampling, device, sizes.reps)
            flow.eval()
            with torch.no_grad():
                lp = flow.log_prob(xd, cd)
                finite = bool(torch.isfinite(lp).all())
                xs, lps = flow.rsample_and_log_prob(1, cd)
                gap = (flow.log_prob(xs[0], cd) - lps[0]).abs().max().item()
            bound = 10 * max(2e-3, spec.tolerance or 0.0)
            ok = finite and gap < bound and agree
            rows.append((name, t_lp, t_rs, finite, gap, bound, err_dev, err_cpu, agree, ok))
        except Exception as err:  # a flow that raises is a failed row, and the check goes on
            traceback.print_exc()
            rows.append((name, float("nan"), float("nan"), False, float("nan"), 0.0, float("nan"), float("nan"),
                         False, False))
            print(f"  {name}: {type(err).__name__}: {err}")
        all_ok &= rows[-1][-1]
        r = rows[-1]
        print(f"  {name:10s} log_prob fwd+bwd {r[1]:8.2f} ms  rsample {r[2]:8.2f} ms  "
              f"{'ok' if r[-1] else 'FAIL'}", flush=True)
    return rows, all_ok


def print_flow_table(rows: list[tuple], device: torch.device, sizes: Sizes) -> None:
    ref = {r[0]: r for r in rows}.get("realnvp")
    print(f"\n### Table 1: every flow on {device} (dim {sizes.dim}, batch {sizes.batch}, context {sizes.context}; "
          f"TF32 flags now: {tf32_enabled()})\n")
    print("| flow | log_prob fwd+bwd ms | x realnvp | rsample_and_log_prob ms | x realnvp | log_prob finite "
          "| max abs(rsample lp - log_prob) (bound) | float32 error on device / on CPU | result |")
    print("|---|---:|---:|---:|---:|:-:|---:|---:|:-:|")
    for name, t_lp, t_rs, finite, gap, bound, err_dev, err_cpu, agree, ok in rows:
        r_lp = t_lp / ref[1] if ref else float("nan")
        r_rs = t_rs / ref[2] if ref else float("nan")
        print(f"| {name} | {t_lp:.2f} | {r_lp:.2f} | {t_rs:.2f} | {r_rs:.2f} | {'yes' if finite else 'NO'} "
              f"| {gap:.1e} ({bound:.0e}) | {err_dev:.1e} / {err_cpu:.1e}{'' if agree else ' FAIL'} "
              f"| {'ok' if ok else 'FAIL'} |")


# ------------------------------------------------------------------ step 2
def zuko_rows(device: torch.device, sizes: Sizes) -> Optional[list[tuple]]:
    """Table 2: flowrl / zuko time ratios (``None`` when zuko is not installed)."""
    try:
        import zuko
    except ImportError:
        return None
    from bench_flows import build

    rows = []
    for kind in ("realnvp", "nsf", "maf"):
        for dim, batch in sizes.zuko:
            models = {}
            for lib in ("flowrl", "zuko"):
                torch.manual_seed(0)
                if kind == "maf":
                    m = (flowrl.build_flow("maf", dim, transforms=sizes.zuko_layers, hidden_features=sizes.zuko_hidden)
                         if lib == "flowrl" else
                         zuko.flows.MAF(dim, 0, transforms=sizes.zuko_layers, hidden_features=sizes.zuko_hidden))
                    m = m.to(device)
                    lp = m.log_prob if lib == "flowrl" else (lambda x, m=m: m().log_prob(x))
                    sample = m.sample if lib == "flowrl" else (lambda n, m=m: m().sample((n,)))
                    models[lib] = (m, lp, sample)
                else:
                    b = build(lib, kind, dim, sizes.zuko_layers, sizes.zuko_hidden, 8, 5.0)
                    b.module.to(device)
                    models[lib] = (b.module, b.log_prob, b.sample)
            x = torch.randn(batch, dim, device=device)
            t = {}
            for lib, (m, lp, sample) in models.items():
                params = list(m.parameters())

                def density(lp=lp, params=params) -> None:
                    for p in params:
                        p.grad = None
                    (-lp(x).mean()).backward()

                def sampling(sample=sample) -> None:
                    with torch.no_grad():
                        sample(batch)

                t[lib] = (_timed(density, device, sizes.reps), _timed(sampling, device, sizes.reps))
            rows.append((kind, dim, batch, *t["flowrl"], *t["zuko"]))
            print(f"  {kind:8s} d={dim:<3d} batch {batch:6d}  flowrl {t['flowrl'][0]:7.2f} ms  "
                  f"zuko {t['zuko'][0]:7.2f} ms", flush=True)
    return rows


def print_zuko_table(rows: Optional[list[tuple]], device: torch.device) -> None:
    print(f"\n### Table 2: flowrl vs zuko on {device} (unconditional; ratio < 1: flowrl faster)\n")
    if rows is None:
        print("zuko is not installed: table 2 skipped (pip install zuko, or carry its wheel, to fill it)")
        return
    print("| flow | dim | batch | flowrl log_prob fwd+bwd ms | zuko ms | flowrl / zuko | flowrl sample ms "
          "| zuko ms | flowrl / zuko |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, dim, batch, f_lp, f_s, z_lp, z_s in rows:
        print(f"| {kind} | {dim} | {batch} | {f_lp:.2f} | {z_lp:.2f} | {f_lp / z_lp:.2f} | {f_s:.2f} | {z_s:.2f} "
              f"| {f_s / z_s:.2f} |")


# ------------------------------------------------------------------ step 3
def _preset_overrides(algo: str, smoke: bool) -> list[str]:
    items = ["run.progress_bar=false", "run.plots=false"]
    if algo == "sac":
        items += ["algo.kwargs.buffer_size=100000"]
    if smoke:
        items += ["env.n_envs=2", "policy_kwargs.net_arch=[16, 16]", "flow_kwargs.hidden_features=[16]",
                  "novelty.model.batch_size=32"]
        items += (["algo.kwargs.batch_size=32", "algo.kwargs.learning_starts=32"] if algo == "sac" else
                  ["algo.kwargs.n_steps=32", "algo.kwargs.batch_size=32", "algo.kwargs.n_epochs=1"])
        if algo == "ppo":
            items[items.index("policy_kwargs.net_arch=[16, 16]")] = "policy_kwargs.net_arch={pi: [16], vf: [16]}"
    elif algo == "sac":
        items += ["algo.kwargs.learning_starts=1024"]
    return items


VARIANTS = {"sac": ("gaussian", "flow+bonus"), "ppo": ("gaussian", "flow", "flow+bonus")}


def agent_rate(algo: str, variant: str, device: str, smoke: bool) -> float:
    """Env steps per second of the preset of ``algo`` on ``device``.

    ``variant``: ``flow+bonus`` (the preset as shipped), ``flow`` (no novelty bonus) or
    ``gaussian`` (SB3's Gaussian policy with the preset's networks, no bonus).
    """
    from agents.config import load_config
    from agents.run import build_model, make_env

    path = os.path.join(ROOT, PRESETS[algo])
    items = _preset_overrides(algo, smoke) + [f"device={device}"]
    if variant != "flow+bonus":
        items += ["novelty=null"]
    if variant == "gaussian":
        net_arch = load_config(path, items).policy_kwargs.get("net_arch")
        items += ["policy=gaussian", "policy_kwargs=" + json.dumps({"net_arch": net_arch})]
    cfg = load_config(path, items)
    env = make_env(cfg)
    model, callbacks = build_model(cfg, env, device)
    per_call = cfg.env.n_envs * (cfg.algo.kwargs.get("n_steps", 0) if algo == "ppo" else 10)
    warm = (cfg.algo.kwargs.get("learning_starts", 0) + per_call) if algo == "sac" else per_call
    timed = per_call * (4 if algo == "sac" and not smoke else 1)  # SAC: 640 steps; PPO: one 4096-step rollout
    model.learn(warm, callback=callbacks)  # past learning_starts, kernels compiled, buffers allocated
    dev = torch.device(device)
    _sync(dev)
    t0 = time.perf_counter()
    model.learn(timed, callback=callbacks, reset_num_timesteps=False)
    _sync(dev)
    rate = timed / (time.perf_counter() - t0)
    env.close()
    return rate


def agent_rows(devices: list[str], smoke: bool) -> tuple[list[tuple], bool]:
    rows, ok = [], True
    for algo in ("sac", "ppo"):
        for variant in VARIANTS[algo]:
            rates = {}
            for device in devices:
                try:
                    rates[device] = agent_rate(algo, variant, device, smoke)
                except Exception as err:
                    traceback.print_exc()
                    print(f"  FAIL: {algo} {variant} on {device}: {type(err).__name__}: {err}")
                    rates[device] = float("nan")
                    ok = False
                print(f"  {algo} {variant:10s} {device:5s} {rates[device]:8.1f} steps/s", flush=True)
            rows.append((algo, variant, rates))
    return rows, ok


def print_agent_table(rows: list[tuple], devices: list[str]) -> None:
    print("\n### Table 3: presets, env steps per second (configs/sac_flow_gpu.yaml, configs/ppo_flow_gpu.yaml; "
          "flow = RealNVP policy for SAC, NAF policy for PPO; bonus = flow pseudo-count bonus)\n")
    gauss = {(a, d): r[d] for a, v, r in rows if v == "gaussian" for d in devices}
    head = " | ".join(f"{d} steps/s | {d}: x gaussian" for d in devices)
    print(f"| algo | policy | {head} |" + (" cuda / cpu |" if len(devices) > 1 else ""))
    print("|---|---|" + "---:|" * (2 * len(devices) + (1 if len(devices) > 1 else 0)))
    for algo, variant, rates in rows:
        cells = " | ".join(f"{rates[d]:.1f} | {rates[d] / gauss[(algo, d)]:.2f}" for d in devices)
        extra = f" {rates[devices[0]] / rates[devices[1]]:.2f} |" if len(devices) > 1 else ""
        label = variant.replace("flow", "flow (realnvp)" if algo == "sac" else "flow (naf)")
        print(f"| {algo} | {label} | {cells} |{extra}")


# -------------------------------------------------------------------- main
def agent_parts(device: str, smoke: bool) -> bool:
    """SAC on the demo config, flow and Gaussian policy, flow bonus and none: steps/s and time per part."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import bench_agent_speed

    steps = "1200" if smoke else "6000"
    try:
        bench_agent_speed.main(["--algos", "sac", "--bonuses", "none", "flow", "--steps", steps, "--device", device])
    except Exception:  # a benchmark failure is reported, and fails the check
        traceback.print_exc()
        return False
    return True


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU only (< 1 minute)")
    ap.add_argument("--device", default=None, help="device to check (default cuda; cpu with --smoke)")
    ap.add_argument("--only", nargs="+", choices=["tests", "flows", "zuko", "agents", "parts"], default=None,
                    help="run only these steps")
    ap.add_argument("--flows", nargs="+", default=None, help="flows of table 1 (default: every registered one)")
    ap.add_argument("--tests-timeout", type=float, default=150.0, help="seconds allowed to the device tests")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("FAIL: CUDA is not available (use --smoke for the CPU-only version of this check)")
        return 1
    steps = set(args.only or ["tests", "flows", "zuko", "agents", "parts"])
    sizes = Sizes(args.smoke)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check: torch {torch.__version__}, device {device} ({name}), {torch.get_num_threads()} CPU threads, "
          f"{'smoke sizes' if args.smoke else 'full sizes'}", flush=True)
    t_start, ok = time.perf_counter(), True
    if "tests" in steps:
        print("\n## 0. device tests", flush=True)
        ok &= device_tests(device, args.smoke, args.tests_timeout)
    if "flows" in steps:
        print("\n## 1. every flow", flush=True)
        rows, flows_ok = flow_rows(device, sizes, args.flows)
        print_flow_table(rows, device, sizes)
        ok &= flows_ok
    if "zuko" in steps:
        print("\n## 2. flowrl vs zuko", flush=True)
        print_zuko_table(zuko_rows(device, sizes), device)
    if "agents" in steps:
        print("\n## 3. agent presets", flush=True)
        devices = [str(device)] if device.type == "cpu" else [str(device), "cpu"]
        rows, agents_ok = agent_rows(devices, args.smoke)
        print_agent_table(rows, devices)
        ok &= agents_ok
    if "parts" in steps:
        print("\n## 4. where the demo agent's time goes (scripts/bench_agent_speed.py)", flush=True)
        ok &= agent_parts(str(device), args.smoke)
    print(f"\ngpu_check: {'all checks passed' if ok else 'FAILED'} in {time.perf_counter() - t_start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
