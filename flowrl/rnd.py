"""Random network distillation (Burda et al. 2018): novelty as a prediction error.

A fixed random network ``f`` embeds normalised observations; a predictor
``f_hat`` is trained to match it on the observations seen.  The novelty of
``x`` is ``e(x) = ||f_hat(x) - f(x)||^2 / k`` (``k`` embedding size), large
where the predictor has not been trained.  ``bonus(x) = beta * e(x) / s``
with ``s`` a running average of the training error, so that a typical
visited state gets a bonus near ``beta`` whatever the embedding's scale.
It shares the normaliser, buffer and training loop of
:class:`flowrl.novelty.OnlineDensityModel`, so it is a drop-in baseline for
:class:`flowrl.novelty.FlowPseudoCounter` (it has no ``pseudo_count``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .nn import MLP
from .novelty import OnlineDensityModel

__all__ = ["RNDNovelty"]


def check_rnd_settings(embedding_dim: int, error_decay: float) -> None:
    """``ValueError`` unless ``embedding_dim >= 1`` and ``0 <= error_decay < 1``."""
    if not isinstance(embedding_dim, (int, np.integer)) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")
    if not 0.0 <= error_decay < 1.0:
        raise ValueError(f"error_decay must be in [0, 1), got {error_decay}")


class RNDNovelty(OnlineDensityModel):
    """Random-network-distillation novelty over vectors of size ``obs_dim``.

    Args:
        obs_dim: observation size.
        hidden_features: widths of both networks.
        embedding_dim: output size ``k`` of the target network.
        error_decay: decay of the running average ``s`` of the training error.
        lr, batch_size, steps_per_update, steps_per_observation, buffer_size, clip, normalize, seed:
            see :class:`flowrl.novelty.OnlineDensityModel`.
    """

    def __init__(
        self,
        obs_dim: int,
        *,
        hidden_features: Sequence[int] | int = (64, 64),
        embedding_dim: int = 16,
        error_decay: float = 0.99,
        lr: float = 1e-3,
        batch_size: int = 256,
        steps_per_update: Optional[int] = None,
        steps_per_observation: float = 1.0,
        buffer_size: int = 100_000,
        clip: float = 5.0,
        normalize: bool = True,
        seed: Optional[int] = None,
    ):
        if not isinstance(obs_dim, (int, np.integer)) or obs_dim < 1:
            raise ValueError(f"obs_dim must be a positive int, got {obs_dim!r}")
        check_rnd_settings(embedding_dim, error_decay)
        super().__init__(
            (int(obs_dim),), lr=lr, batch_size=batch_size, steps_per_update=steps_per_update,
            steps_per_observation=steps_per_observation,
            buffer_size=buffer_size, clip=clip, normalize=normalize, seed=seed,
        )
        self.obs_dim = int(obs_dim)
        self._init_networks(
            lambda: MLP(obs_dim, embedding_dim, hidden_features, activation=nn.LeakyReLU, zero_last=False),
            error_decay, seed,
        )

    def _init_networks(self, make_network: Callable[[], nn.Module], error_decay: float, seed: Optional[int]) -> None:
        """A fixed random target and a predictor of the same architecture (seeded by ``seed``), and the error scale."""
        self.error_decay = float(error_decay)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            self.target = make_network()
            self.predictor = make_network()
        self.target.requires_grad_(False)
        self.register_buffer("error_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("scale_steps", torch.zeros((), dtype=torch.long))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.predictor.parameters())

    def _error(self, z: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.target(z)
        return (self.predictor(z) - target).pow(2).flatten(1).mean(dim=1)

    def loss(self, z: Tensor) -> Tensor:
        err = self._error(z)
        with torch.no_grad():  # running average of the error, bias-corrected at the start
            self.scale_steps += 1
            w = max(1.0 - self.error_decay, 1.0 / float(self.scale_steps))
            self.error_scale.lerp_(err.mean().detach(), w)
        return err.mean()

    def error(self, obs: Any) -> Tensor:
        """Prediction error ``e(x)``, shape ``(batch,)``."""
        z = self.model_input(obs)
        with torch.no_grad():
            return self._error(z)

    def bonus(self, obs: Any, beta: float = 1.0) -> Tensor:
        """``beta * e(x) / s`` (``s``: running training error), shape ``(batch,)``."""
        return beta * self.error(obs) / self.error_scale.clamp(min=1e-8)
