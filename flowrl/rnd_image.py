"""Random network distillation on image observations (Burda et al. 2018): convolutional target and predictor.

``ImageRND((C, H, W))`` has the interface of :class:`flowrl.rnd.RNDNovelty`
(``update``, ``error``, ``bonus``, ``state_dict``) and shares its training
loop and error scale; frames enter as for
:class:`flowrl.novelty_image.ImagePseudoCounter` (uint8 or float in
``[0, max_value]``, channels first or last, validated by
:class:`flowrl.frames.FrameInput`).  A frame is scaled to ``[0, 1]``,
area-averaged to ``size`` (grey if ``grey``) and normalised per pixel by the
running mean and standard deviation, clipped to ``[-5, 5]`` (as Burda et al.
normalise observations); both networks are
``conv(3x3, stride 2) -> LeakyReLU -> ... -> linear(embedding_dim)``, one
strided convolution per entry of ``channels``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from .frames import FrameInput, check_frames
from .novelty import OnlineDensityModel
from .rnd import RNDNovelty, check_rnd_settings

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


class ImageRND(FrameInput, RNDNovelty):
    """Random-network-distillation novelty of frames ``(C, H, W)``.

    Args:
        image_shape: ``(C, H, W)`` of one frame.
        size: ``(h, w)`` after area averaging (an int means ``(s, s)``).
        grey: average the channels into one.
        max_value: the largest pixel value (255 for uint8 frames).
        channels_last: ``False``: frames ``(B, C, H, W)``; ``True``: ``(B, H, W, C)``;
            ``None``: whichever layout the batch's shape matches.
        channels: output channels of the strided convolutions (each halves ``h`` and ``w``).
        embedding_dim, error_decay, lr, batch_size, steps_per_update, steps_per_observation, buffer_size, seed:
            as for :class:`flowrl.rnd.RNDNovelty`.
    """

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
        lr: float = 1e-3,
        batch_size: int = 64,
        steps_per_update: Optional[int] = None,
        steps_per_observation: float = 1.0,
        buffer_size: int = 100_000,
        seed: Optional[int] = None,
    ):
        shape, size_hw, model_shape = check_frames(image_shape, size, grey, max_value, channels_last)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        check_rnd_settings(embedding_dim, error_decay)
        OnlineDensityModel.__init__(
            self, shape, lr=lr, batch_size=batch_size, steps_per_update=steps_per_update,
            steps_per_observation=steps_per_observation,
            buffer_size=buffer_size, clip=5.0, normalize=True, seed=seed, model_shape=model_shape,
        )
        self._init_frames(shape, size_hw, grey, max_value, channels_last)
        self._init_networks(lambda: conv_embedding(model_shape, channels, embedding_dim), error_decay, seed)

    def encode(self, x: Tensor) -> Tensor:
        """Frames ``(B, C, H, W)`` -> ``(B, c, h, w)`` in ``[0, 1]``: scaled, area-averaged, grey if asked."""
        return self.downsampled(x) / self.max_value

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, size={self.size}, grey={self.grey}"
