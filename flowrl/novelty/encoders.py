"""Observation encoders: raw observations in, the inputs of a novelty model out.

An encoder turns what an environment gives into what a density model (or
RND's networks) sees, ``z = normalize(encode(as_batch(obs)))``:

* :meth:`ObservationEncoder.as_batch` validates ``obs`` (shape, finite, range)
  and gives a float32 batch ``(B, *obs_shape)`` on the model's device;
* :meth:`~ObservationEncoder.encode` maps it to the features the model keeps
  in its buffer, ``(B, *model_shape)`` (a projection, downsampled or quantised frames);
* :meth:`~ObservationEncoder.normalize` standardises them with running
  statistics (:class:`RunningNormalizer`, updated by :meth:`~ObservationEncoder.observe`),
  or is the identity.

:class:`VectorEncoder` handles vectors (optional projection and redundancy
masking), :class:`FrameEncoder` frames (downsampling, optional quantisation).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .frames import check_frames, downsample, quantize, real_tensor

__all__ = ["RunningNormalizer", "ObservationEncoder", "VectorEncoder", "FrameEncoder", "FrameFacts", "Projection"]

#: What a vector counter counts on: every feature (``None``), feature indices, or a callable on ``(B, d)`` tensors.
Projection = Optional[Sequence[int] | Callable[[Tensor], Tensor]]


def _sync_normalizer_after_load(module: nn.Module, _keys: Any) -> None:
    """``load_state_dict`` post-hook: refresh the normaliser's host copies of its loaded buffers."""
    if isinstance(module, RunningNormalizer):
        module._sync_host()


class RunningNormalizer(nn.Module):
    """Running mean and variance (Chan et al. parallel update); ``normalize(x) = clip((x - mu) / sigma)``.

    Statistics are kept in float64; ``clip`` bounds normalised values so that a
    far outlier cannot blow up a model fed with them.

    With ``redundancy=True`` (vectors only) it also keeps the running
    covariance and masks *redundant* features to 0 after normalising: a
    feature is constant when ``sigma <= 1e-6 * max(1, |mu|)`` and a duplicate
    when ``|corr| >= 1 - 1e-6`` with an earlier feature that is kept (any
    affine copy, e.g. an achieved goal that repeats the position).  Such
    features carry no information about where the agent has been; left in,
    each would add a dimension to every count cell.  ``effective_dim`` is the
    number of features kept.  The mask is recomputed at every :meth:`update`.
    """

    count: Tensor
    mean: Tensor
    m2: Tensor
    comoment: Tensor
    keep: Tensor

    def __init__(self, shape: Sequence[int], clip: float = 5.0, eps: float = 1e-8, redundancy: bool = False):
        super().__init__()
        self.clip = float(clip)
        self.eps = float(eps)
        self.redundancy = bool(redundancy)
        if self.redundancy and len(tuple(shape)) != 1:
            raise ValueError(f"redundancy masking needs vector observations, got shape {tuple(shape)}")
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(tuple(shape), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(tuple(shape), dtype=torch.float64))
        if self.redundancy:
            d = int(tuple(shape)[0])
            self.register_buffer("comoment", torch.zeros(d, d, dtype=torch.float64))
            self.register_buffer("keep", torch.ones(d, dtype=torch.bool))
        self._sync_host()
        self.register_load_state_dict_post_hook(_sync_normalizer_after_load)

    def _sync_host(self) -> None:
        """Host copies of the count and of the kept features' number (scoring reads them per batch)."""
        self._count_host = float(self.count)
        self._kept_host = int(self.keep.sum()) if self.redundancy else self.mean.numel()

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch ``(B, *shape)`` into the running statistics."""
        x = x.to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        b_mean = x.mean(0)
        centred = x - b_mean
        b_m2 = (centred**2).sum(0)
        total = self.count + n
        delta = b_mean - self.mean
        scale = self.count * n / total
        self.mean += delta * n / total
        self.m2 += b_m2 + delta**2 * scale
        if self.redundancy:
            self.comoment += centred.T @ centred + torch.outer(delta, delta) * scale
        self.count.fill_(total)
        if self.redundancy:
            self.keep.copy_(self._kept_features())
        self._sync_host()

    def _kept_features(self) -> Tensor:
        """Features neither constant nor an affine copy of an earlier kept feature."""
        var = self.m2 / self.count.clamp(min=1.0)
        keep = var.sqrt() > 1e-6 * self.mean.abs().clamp(min=1.0)
        if float(self.count) < 2:
            return torch.ones_like(keep)
        sd = var.clamp(min=1e-300).sqrt()
        corr = (self.comoment / self.count) / torch.outer(sd, sd)
        for i in range(keep.numel()):
            if keep[i] and bool((corr[i, :i].abs()[keep[:i]] >= 1.0 - 1e-6).any()):
                keep[i] = False
        return keep

    @property
    def effective_dim(self) -> int:
        """Number of features kept (all of them without ``redundancy``)."""
        return self._kept_host

    @property
    def std(self) -> Tensor:
        var = self.m2 / self.count.clamp(min=1.0)
        return torch.sqrt(var + self.eps)

    def normalize(self, x: Tensor) -> Tensor:
        """``clip((x - mu) / sigma)``, redundant features set to 0; clipping only before two observations."""
        if self._count_host < 2:  # nothing to normalise with yet: identity
            return x.clamp(-self.clip, self.clip) if self.clip > 0 else x
        z = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        z = z.clamp(-self.clip, self.clip) if self.clip > 0 else z
        return z * self.keep.to(z.dtype) if self.redundancy else z


class ObservationEncoder(nn.Module):
    """Raw observations -> model inputs, ``z = normalize(encode(as_batch(obs)))`` (see the module docstring).

    Subclasses set ``obs_shape`` and ``model_shape`` and implement
    :meth:`as_batch`; :meth:`encode` defaults to the identity.  ``normalizer``
    is a :class:`RunningNormalizer` over ``model_shape`` or ``None`` (no normalisation).
    """

    obs_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    normalizer: Optional[RunningNormalizer]

    def as_batch(self, obs: Any, device: torch.device) -> Tensor:
        """Validated observations as float32 ``(B, *obs_shape)`` on ``device``; ``ValueError`` names a problem."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Validated observations ``(B, *obs_shape)`` -> the features a model keeps ``(B, *model_shape)``."""
        return x

    def observe(self, features: Tensor) -> None:
        """Fold encoded features into the running statistics (nothing without a normaliser)."""
        if self.normalizer is not None:
            self.normalizer.update(features)

    def normalize(self, features: Tensor) -> Tensor:
        """``(f - mu) / sigma`` clipped (see :class:`RunningNormalizer`), or ``f`` without a normaliser."""
        return features if self.normalizer is None else self.normalizer.normalize(features)

    @property
    def masks_features(self) -> bool:
        """Whether redundant features are masked to 0 (then :attr:`kept` says which)."""
        return self.normalizer is not None and self.normalizer.redundancy

    @property
    def kept(self) -> Tensor:
        """Boolean mask of the kept features, shape ``model_shape`` (all ``True`` unless :attr:`masks_features`)."""
        if self.normalizer is not None and self.normalizer.redundancy:
            return self.normalizer.keep
        return torch.ones(self.model_shape, dtype=torch.bool)

    @property
    def effective_dim(self) -> int:
        """Number of features that carry information: the kept ones, or ``prod(model_shape)``."""
        return self.normalizer.effective_dim if self.normalizer is not None else math.prod(self.model_shape)


def _check_projection(project: Projection, obs_dim: int) -> tuple[Optional[Callable[[Tensor], Tensor]], int]:
    """``(projection or None, number of counted features)``; a bad projection raises here, not mid-training."""
    if project is None:
        return None, obs_dim
    if callable(project):
        fn = project
        try:
            out = fn(torch.zeros(2, obs_dim))
        except Exception as err:  # the user's function: report what it raised
            raise ValueError(f"project failed on a (2, {obs_dim}) batch of zeros: {err!r}") from err
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"project must map (batch, {obs_dim}) tensors to (batch, k) tensors; "
                             f"it returned {shape} for a (2, {obs_dim}) batch")
        return fn, int(out.shape[1])
    idx = list(project)
    if not idx or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx):
        raise ValueError(f"project must be a callable or a non-empty list of feature indices, got {project!r}")
    bad = [i for i in idx if not -obs_dim <= i < obs_dim]
    if bad:
        raise ValueError(f"project indices {bad} are out of range for {obs_dim} features")
    index = torch.as_tensor([int(i) % obs_dim for i in idx])
    return _IndexProjection(index), len(idx)


class _IndexProjection:
    """``x[:, index]`` (a picklable projection)."""

    def __init__(self, index: Tensor):
        self.index = index

    def __call__(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index.to(x.device))


class VectorEncoder(ObservationEncoder):
    """Vectors ``(B, obs_dim)`` -> ``normalize(project(x))``, ``(B, k)``.

    Args:
        obs_dim: size of the observation vectors.
        project: ``None`` (every feature), a list of feature indices, or a callable
            mapping a float32 tensor ``(B, obs_dim)`` to ``(B, k)`` (checked once here, on zeros).
        normalize: keep a running mean/std normaliser (else features are used as given).
        clip: normalised features are clipped to ``[-clip, clip]`` (0: no clip).
        redundancy: mask constant and duplicated features (see :class:`RunningNormalizer`).
    """

    def __init__(self, obs_dim: int, project: Projection = None, *, normalize: bool = True, clip: float = 5.0,
                 redundancy: bool = False):
        super().__init__()
        if not isinstance(obs_dim, (int, np.integer)) or isinstance(obs_dim, bool) or obs_dim < 1:
            raise ValueError(f"obs_dim must be a positive int, got {obs_dim!r}")
        self.projection, k = _check_projection(project, int(obs_dim))
        self.obs_shape = (int(obs_dim),)
        self.model_shape = (k,)
        self.normalizer = RunningNormalizer(self.model_shape, clip=clip, redundancy=redundancy) if normalize else None

    def as_batch(self, obs: Any, device: torch.device) -> Tensor:
        # checked where the observations are, before the copy: host arrays cost the device no synchronisation
        x = real_tensor(obs).to(dtype=torch.float32)
        if tuple(x.shape) == self.obs_shape:
            x = x.unsqueeze(0)
        if x.dim() != len(self.obs_shape) + 1 or tuple(x.shape[1:]) != self.obs_shape:
            raise ValueError(
                f"observations have shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, self.obs_shape))})"
            )
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = (~finite).flatten(1).any(0).nonzero().flatten().tolist()
            raise ValueError(f"observations contain NaN or inf values in feature(s) {bad[:10]}"
                             f"{' ...' if len(bad) > 10 else ''} (flattened index of one observation)")
        return x.to(device)

    def encode(self, x: Tensor) -> Tensor:
        """The counted features: ``project(x)`` (every feature without a projection)."""
        return x if self.projection is None else self.projection(x)


class FrameEncoder(ObservationEncoder):
    """Frames ``(B, C, H, W)`` -> ``(B, c, h, w)``: area-averaged to ``size``, grey if asked, then scaled or quantised.

    ``levels=None``: ``y = downsample(x) / max_value`` in ``[0, 1]``; ``levels = L``: the
    centre of the frame's quantisation cell, ``y = (min(floor(L x / max_value), L - 1) + 1/2) / L``.
    Frames are uint8 or float with values in ``[0, max_value]``, channels first or
    last (``channels_last=None``: whichever layout the batch's shape matches,
    ``(C, H, W)`` first), one frame or a batch.

    Args:
        image_shape: ``(C, H, W)`` of one frame.
        size: ``(h, w)`` after area averaging (an int means ``(s, s)``).
        grey: average the channels into one.
        max_value: the largest pixel value (255 for uint8 frames).
        channels_last: ``False``: ``(B, C, H, W)``; ``True``: ``(B, H, W, C)``; ``None``: either.
        levels: quantisation levels ``L >= 2``, or ``None``: no quantisation.
        normalize, clip: a running per-pixel normaliser (see :class:`RunningNormalizer`).
    """

    def __init__(self, image_shape: Sequence[int], size: int | Sequence[int] = 8, *, grey: bool = True,
                 max_value: float = 255.0, channels_last: Optional[bool] = None, levels: Optional[int] = None,
                 normalize: bool = False, clip: float = 5.0):
        super().__init__()
        shape, size_hw, model_shape = check_frames(image_shape, size, grey, max_value, channels_last)
        if levels is not None and (not isinstance(levels, (int, np.integer)) or levels < 2):
            raise ValueError(f"levels must be an int >= 2, got {levels!r}")
        self.image_shape = shape
        self.size = size_hw
        self.grey = bool(grey)
        self.max_value = float(max_value)
        self.channels_last = channels_last
        self.levels = None if levels is None else int(levels)
        self.obs_shape = shape
        self.model_shape = model_shape
        self.normalizer = RunningNormalizer(model_shape, clip=clip) if normalize else None

    def downsampled(self, x: Tensor) -> Tensor:
        """Frames ``(B, C, H, W)`` area-averaged to ``(B, c, h, w)``, channels averaged if ``grey``."""
        small = downsample(x, self.size)
        return small.mean(dim=1, keepdim=True) if self.grey else small

    def encode(self, x: Tensor) -> Tensor:
        small = self.downsampled(x)
        if self.levels is None:
            return small / self.max_value
        return (quantize(small, self.levels, self.max_value) + 0.5) / self.levels

    def _as_nchw(self, x: Tensor) -> Tensor:
        c, h, w = self.image_shape
        chw, hwc = (c, h, w), (h, w, c)
        if x.dim() == 3:  # a single frame
            x = x.unsqueeze(0)
        trailing = tuple(x.shape[1:]) if x.dim() == 4 else None
        if self.channels_last is not True and trailing == chw:
            return x
        if self.channels_last is not False and trailing == hwc:
            return x.permute(0, 3, 1, 2)
        layouts = {None: f"(batch, {c}, {h}, {w}) or (batch, {h}, {w}, {c})",
                   False: f"(batch, {c}, {h}, {w})", True: f"(batch, {h}, {w}, {c})"}
        raise ValueError(f"images have shape {tuple(x.shape)}, expected {layouts[self.channels_last]}")

    def as_batch(self, obs: Any, device: torch.device) -> Tensor:
        x = self._as_nchw(real_tensor(obs, "images").to(device=device, dtype=torch.float32))
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images contain NaN or inf values")
        if bool((x < 0).any()) or bool((x > self.max_value).any()):
            raise ValueError(f"pixel values must lie in [0, max_value={self.max_value:g}], "
                             f"got [{float(x.min()):g}, {float(x.max()):g}]")
        return x.contiguous()

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, size={self.size}, grey={self.grey}, levels={self.levels}"


class FrameFacts:
    """Frame facts of a model whose ``encoder`` is a :class:`FrameEncoder` (read from the encoder)."""

    encoder: FrameEncoder

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.encoder.image_shape

    @property
    def size(self) -> tuple[int, int]:
        return self.encoder.size

    @property
    def max_value(self) -> float:
        return self.encoder.max_value
