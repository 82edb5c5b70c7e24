"""Random network distillation on image observations (Burda et al. 2018): convolutional target and predictor.

``ImageRND((C, H, W))`` has the interface of :class:`flowrl.novelty.rnd.RNDNovelty`
(``update``, ``error``, ``bonus``, ``state_dict``) and shares its training
loop and error scale; frames enter as for
:class:`flowrl.novelty.image_counts.ImagePseudoCounter` (uint8 or float in
``[0, max_value]``, channels first or last, validated by
:class:`flowrl.novelty.encoders.FrameEncoder`).  A frame is scaled to ``[0, 1]``,
area-averaged to ``size`` (grey if ``grey``) and normalised per pixel by the
running mean and standard deviation, clipped to ``[-5, 5]`` (as Burda et al.
normalise observations); both networks are
``conv(3x3, stride 2) -> LeakyReLU -> ... -> linear(embedding_dim)``, one
strided convolution per entry of ``channels``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

from .encoders import FrameEncoder, FrameFacts
from .online import TrainingSettings
from .rnd import RandomNetworkDistillation, check_embedding_dim

__all__ = ["ImageRND", "conv_embedding"]


def conv_embedding(shape: Sequence[int], channels: Sequence[int], embedding_dim: int) -> nn.Sequential:
    """``(B, c, h, w) -> (B, embedding_dim)``: strided 3x3 convolutions with LeakyReLU, then one linear layer."""
    c, h, w = (int(s) for s in shape)
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, int(out), 3, stride=2, padding=1), nn.LeakyReLU()]
        c, h, w = int(out), (h + 1) // 2, (w + 1) // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, int(embedding_dim))]
    return nn.Sequential(*layers)


class ImageRND(FrameFacts, RandomNetworkDistillation):
    """Random-network-distillation novelty of frames ``(C, H, W)``.

    Args:
        image_shape: ``(C, H, W)`` of one frame.
        size: ``(h, w)`` after area averaging (an int means ``(s, s)``).
        grey: average the channels into one.
        max_value: the largest pixel value (255 for uint8 frames).
        channels_last: ``False``: frames ``(B, C, H, W)``; ``True``: ``(B, H, W, C)``;
            ``None``: whichever layout the batch's shape matches.
        channels: output channels of the strided convolutions (each halves ``h`` and ``w``).
        embedding_dim, error_decay: as for :class:`flowrl.novelty.rnd.RNDNovelty`.
        settings: training settings (default :attr:`default_settings`: minibatches of 64).
        **training: training options by name (``lr``, ``batch_size``, ...), replacing those
            of ``settings`` (see :class:`flowrl.novelty.online.TrainingSettings`).
    """

    default_settings = TrainingSettings(batch_size=64)
    encoder: FrameEncoder

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        size: int | Sequence[int] = 16,
        grey: bool = True,
        max_value: float = 255.0,
        channels_last: Optional[bool] = None,
        channels: Sequence[int] = (16, 32),
        embedding_dim: int = 32,
        error_decay: float = 0.99,
        settings: Optional[TrainingSettings] = None,
        **training: Any,
    ):
        encoder = FrameEncoder(image_shape, size, grey=grey, max_value=max_value, channels_last=channels_last,
                               normalize=True, clip=5.0)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        check_embedding_dim(embedding_dim)
        shape = encoder.model_shape
        super().__init__(encoder, lambda: conv_embedding(shape, channels, embedding_dim),
                         self.training_settings(settings, training), error_decay=error_decay)
