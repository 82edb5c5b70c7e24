"""Small density-estimation data sets for the benchmark scripts.

* :func:`two_moons`: re-exported from :mod:`flowrl.datasets`.
* :class:`Digits`: scikit-learn's bundled 8x8 digits (pixels 0..16),
  dequantised and moved to logit space, with the log-Jacobian needed to
  report densities in pixel space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowrl.datasets import two_moons  # noqa: F401  (re-exported for the benchmarks)


class Digits:
    """The 8x8 digits in logit space: ``z = logit(alpha + (1 - 2 alpha) (k + u) / 17)``, ``u ~ U[0, 1)``.

    ``k`` in ``0..16`` is a pixel value; ``v = k + u`` is the dequantised
    pixel.  ``log p(v) = log p(z) + log|dz/dv|`` with
    ``log|dz/dv| = sum[log(1 - 2 alpha) - log q - log(1 - q) - log 17]``,
    ``q = alpha + (1 - 2 alpha) v / 17``; bits/dim ``= -log p(v) / (64 log 2)``.
    """

    levels = 17

    def __init__(self, test_fraction: float = 0.2, alpha: float = 0.05, seed: int = 0):
        from sklearn.datasets import load_digits

        pixels = torch.as_tensor(load_digits().data, dtype=torch.float64)  # (1797, 64), 0..16
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(pixels), generator=g)
        n_test = int(round(test_fraction * len(pixels)))
        self.test_pixels, self.train_pixels = pixels[perm[:n_test]], pixels[perm[n_test:]]
        self.alpha = alpha
        self.dim = pixels.shape[1]

    def to_logit(self, pixels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Dequantise and map to logit space: ``(z, log|dz/dv|)`` per row, float32."""
        v = pixels + torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype)
        a = self.alpha
        q = a + (1 - 2 * a) * v / self.levels
        z = torch.log(q) - torch.log1p(-q)
        logdet = (math.log(1 - 2 * a) - math.log(self.levels) - torch.log(q) - torch.log1p(-q)).sum(dim=1)
        return z.float(), logdet.float()

    def bits_per_dim(self, log_prob_z: Tensor, logdet: Tensor) -> Tensor:
        """Bits/dim in pixel space from the flow's ``log p(z)`` and the preprocessing log-det."""
        return -(log_prob_z + logdet) / (self.dim * math.log(2.0))
