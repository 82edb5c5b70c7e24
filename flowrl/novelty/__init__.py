"""Novelty models: how new an observation is, ``novelty(x)`` in ``(0, 1]``, learnt online from the visited ones.

Every model is an :class:`OnlineDensityModel` (observations in, training steps
taken; :mod:`flowrl.novelty.online`) built from an encoder
(:mod:`flowrl.novelty.encoders`: normalised vectors, or downsampled and
quantised frames):

* :class:`FlowPseudoCounter` (:mod:`flowrl.novelty.counts`): a flow density of
  the recent observations read as a pseudo-count ``N(x)``; ``novelty = 1 / sqrt(N + 1)``;
* :class:`ImagePseudoCounter` (:mod:`flowrl.novelty.image_counts`): the same on frames;
* :class:`RNDNovelty` and :class:`ImageRND` (:mod:`flowrl.novelty.rnd`,
  :mod:`flowrl.novelty.image_rnd`): random network distillation,
  ``novelty = 1 - exp(-e / s)`` of the predictor's normalised error.
"""

from .counts import ESTIMATORS, KERNELS, FlowPseudoCounter, PseudoCounter, bonus_from_count
from .encoders import FrameEncoder, ObservationEncoder, RunningNormalizer, VectorEncoder
from .image_counts import ImagePseudoCounter
from .image_rnd import ImageRND
from .online import ObservationBuffer, OnlineDensityModel, TrainingSettings
from .rnd import RandomNetworkDistillation, RNDNovelty

__all__ = [
    "OnlineDensityModel", "TrainingSettings", "ObservationBuffer",
    "ObservationEncoder", "VectorEncoder", "FrameEncoder", "RunningNormalizer",
    "PseudoCounter", "FlowPseudoCounter", "ImagePseudoCounter", "ESTIMATORS", "KERNELS", "bonus_from_count",
    "RandomNetworkDistillation", "RNDNovelty", "ImageRND",
]
