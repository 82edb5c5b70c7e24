"""Random network distillation (Burda et al. 2018): novelty as a prediction error.

A fixed random network ``f`` embeds normalised observations; a predictor
``f_hat`` is trained to match it on the observations seen.  The novelty of
``x`` is ``e(x) = ||f_hat(x) - f(x)||^2 / k`` (``k`` embedding size), large
where the predictor has not been trained.  ``bonus(x) = beta * e(x) / s``
with ``s`` a running average of the training error, so that a typical
visited state gets a bonus near ``beta`` whatever the embedding's scale.
:class:`RandomNetworkDistillation` is built from the same parts as a
pseudo-counter (an observation encoder, one
:class:`flowrl.novelty.online.TrainingSettings`, the training loop of
:class:`flowrl.novelty.online.OnlineDensityModel`), so it is a drop-in baseline for
:class:`flowrl.novelty.FlowPseudoCounter` (it has no ``pseudo_count``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..nn import MLP
from .encoders import ObservationEncoder, VectorEncoder
from .online import OnlineDensityModel, TrainingSettings, seeded

__all__ = ["RandomNetworkDistillation", "RNDNovelty"]


def check_embedding_dim(embedding_dim: int) -> None:
    """``ValueError`` unless ``embedding_dim`` is an int ``>= 1``."""
    if not isinstance(embedding_dim, (int, np.integer)) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")


class RandomNetworkDistillation(OnlineDensityModel):
    """RND novelty built from parts: ``e(x) = ||f_hat(z) - f(z)||^2 / k`` on encoded observations ``z``.

    Args:
        encoder: observations -> model space (:mod:`flowrl.novelty.encoders`).
        make_network: builds one network ``(B, *model_shape) -> (B, k)``; called twice
            (the fixed random target, then the predictor) under ``settings.seed``.
        settings: the training settings (:class:`flowrl.novelty.online.TrainingSettings`).
        error_decay: decay of the running average ``s`` of the training error.
    """

    error_scale: Tensor
    scale_steps: Tensor

    def __init__(self, encoder: ObservationEncoder, make_network: Callable[[], nn.Module],
                 settings: TrainingSettings, *, error_decay: float):
        if not 0.0 <= error_decay < 1.0:
            raise ValueError(f"error_decay must be in [0, 1), got {error_decay}")
        super().__init__(encoder, settings)
        self.error_decay = float(error_decay)
        self.target, self.predictor = seeded(settings.seed, lambda: (make_network(), make_network()))
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

    def novelty(self, obs: Any) -> Tensor:
        """``g(x) = 1 - exp(-e(x) / s)`` in ``[0, 1)``: the normalised error mapped to a bounded score."""
        return -torch.expm1(-self.bonus(obs))


class RNDNovelty(RandomNetworkDistillation):
    """Random-network-distillation novelty over vectors of size ``obs_dim``: MLP target and predictor.

    Args:
        obs_dim: observation size.
        hidden_features: widths of both networks.
        embedding_dim: output size ``k`` of the target network.
        error_decay: decay of the running average ``s`` of the training error.
        clip, normalize: see :class:`flowrl.novelty.encoders.VectorEncoder`.
        settings: training settings (default :attr:`default_settings`: minibatches of 256).
        **training: training options by name (``lr``, ``batch_size``, ...), replacing those
            of ``settings`` (see :class:`flowrl.novelty.online.TrainingSettings`).
    """

    default_settings = TrainingSettings(batch_size=256)

    def __init__(
        self,
        obs_dim: int,
        *,
        hidden_features: Sequence[int] | int = (64, 64),
        embedding_dim: int = 16,
        error_decay: float = 0.99,
        clip: float = 5.0,
        normalize: bool = True,
        settings: Optional[TrainingSettings] = None,
        **training: Any,
    ):
        encoder = VectorEncoder(obs_dim, normalize=normalize, clip=clip)
        check_embedding_dim(embedding_dim)
        super().__init__(
            encoder,
            lambda: MLP(int(obs_dim), int(embedding_dim), hidden_features, activation=nn.LeakyReLU, zero_last=False),
            self.training_settings(settings, training), error_decay=error_decay,
        )
        self.obs_dim = int(obs_dim)
