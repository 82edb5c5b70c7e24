"""Main job (placeholder until the exploration demo lands): fit a flow to two moons.

Writes ``runs/demo/density.png`` with the data beside the learned density.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import trange  # noqa: E402


import flowrl  # noqa: E402


def two_moons(n: int, seed: int = 0) -> torch.Tensor:
    """Two interleaved half circles with Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * torch.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return (torch.stack([x - 0.5, y - 0.25], 1) * 1.5 + 0.1 * torch.randn(n, 2, generator=g))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--flow", default="realnvp", choices=flowrl.available_flows())
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out", default="runs/demo")
    args = p.parse_args()
    torch.manual_seed(0)
    data = two_moons(20000)
    flow = flowrl.build_flow(args.flow, 2, transforms=6, hidden_features=(64, 64))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    bar = trange(args.steps, desc=f"fitting {args.flow}")
    for _ in bar:
        idx = torch.randint(0, len(data), (256,))
        loss = -flow.log_prob(data[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(nll=f"{loss.item():.3f}")
    flow.eval()
    os.makedirs(args.out, exist_ok=True)
    axis = torch.linspace(-3, 3, 200)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        dens = flow.log_prob(grid).exp().reshape(200, 200).T
    fig, ax = plt.subplots(1, 2, figsize=(9, 4.2))
    ax[0].scatter(*data[:3000].T, s=1)
    ax[0].set(title="data", xlim=(-3, 3), ylim=(-3, 3))
    ax[1].imshow(dens, origin="lower", extent=(-3, 3, -3, 3), cmap="magma")
    ax[1].set(title=f"learned density ({args.flow})")
    path = os.path.join(args.out, "density.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"final NLL {loss.item():.3f} nats; picture written to {path}")


if __name__ == "__main__":
    main()
