"""Glow's channel-wise layers (Kingma & Dhariwal 2018): ActNorm and invertible 1x1 convolutions.

Every layer here acts on dimension 1 ("channels") of a batch ``(B, C, *spatial)``
and is repeated identically at every spatial position, so the same class
serves images ``(B, C, H, W)`` and vectors ``(B, D)`` (no spatial dimensions:
a 1x1 convolution on a vector is a linear layer).  With ``S`` spatial
positions, ``log|det J| = S * log|det J_channel|``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Transform

__all__ = ["ActNorm", "InvConv1x1", "LUInvConv1x1", "LULinear", "random_rotation"]


def random_rotation(n: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """A random orthogonal ``(n, n)`` matrix with ``det = +1`` (QR of a Gaussian matrix)."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar-distributed
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype=dtype, device=device)


def _spatial_size(x: Tensor) -> int:
    return math.prod(x.shape[2:])


def _check_channels(x: Tensor, channels: int, what: str) -> None:
    if x.dim() < 2 or x.shape[1] != channels:
        raise ValueError(
            f"{what} over {channels} channels expects shape (batch, {channels}, *spatial), got {tuple(x.shape)}"
        )


def _mix_channels(x: Tensor, weight: Tensor) -> Tensor:
    """``y[:, i] = sum_j W[i, j] x[:, j]`` at every spatial position (a 1x1 convolution)."""
    if x.dim() == 2:
        return x @ weight.t()
    if x.dim() == 4:
        return F.conv2d(x, weight[:, :, None, None])
    return torch.einsum("ij,bj...->bi...", weight, x)


def _initial_weight(channels: int, weight: Optional[Tensor]) -> Tensor:
    """A random rotation, or a copy of ``weight`` (its floating dtype kept) after a shape check."""
    if weight is None:
        return random_rotation(channels, dtype=torch.get_default_dtype())
    weight = torch.as_tensor(weight)
    if not weight.is_floating_point():
        weight = weight.to(torch.get_default_dtype())
    if weight.shape != (channels, channels):
        raise ValueError(f"weight must have shape ({channels}, {channels}), got {tuple(weight.shape)}")
    return weight.detach().clone()


class ActNorm(Transform):
    """Per-channel affine normalisation ``z = (x + b) * exp(s)``; ``log|det| = S * sum(s)``.

    Data-dependent initialisation: the first batch seen by :meth:`forward`
    sets ``b = -mean`` and ``s = -log std`` per channel (statistics over the
    batch and all spatial positions), so that this batch leaves the layer
    with zero mean and unit variance.  ``std`` is floored at ``min_std``; when
    a channel has a single value in the batch (a vector batch of one row)
    only the mean is used (``s = 0``).  If the layer is first used through
    :meth:`inverse` (sampling before any data was seen) it keeps its current
    parameters (the identity at construction) and counts as initialised.
    The ``initialized`` flag is a persistent buffer: ``load_state_dict`` on a
    fresh model restores it and no re-initialisation happens.  The flag is
    read from the device once and then cached on the host (no sync per
    call); use :meth:`reinitialize_on_next_batch` rather than writing it.
    """

    initialized: Tensor

    def __init__(self, channels: int, min_std: float = 1e-3):
        super().__init__()
        if channels < 1:
            raise ValueError(f"ActNorm needs channels >= 1, got {channels}")
        self.channels = int(channels)
        self.min_std = float(min_std)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._seen_initialized = False  # host-side cache of the flag: no device sync per call

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._seen_initialized = False  # the loaded flag decides again

    def _needs_init(self) -> bool:
        if not self._seen_initialized:
            self._seen_initialized = bool(self.initialized)
        return not self._seen_initialized

    @property
    def awaits_initialisation(self) -> bool:
        """Whether the next :meth:`forward` batch sets ``b`` and ``s`` (no device sync once initialised)."""
        return self._needs_init()

    def reinitialize_on_next_batch(self) -> None:
        """Forget the initialisation: the next :meth:`forward` batch sets ``b`` and ``s`` again."""
        self.initialized.fill_(False)
        self._seen_initialized = False

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.reshape(1, self.channels, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b`` and ``s`` from the per-channel statistics of ``x``."""
        flat = x.detach().transpose(0, 1).reshape(self.channels, -1)
        mean = flat.mean(dim=1)
        self.bias.copy_(-mean)
        if flat.shape[1] > 1:
            std = flat.std(dim=1, unbiased=False).clamp_min(self.min_std)
            self.log_scale.copy_(-torch.log(std))
        else:
            self.log_scale.zero_()
        self.initialized.fill_(True)
        self._seen_initialized = True

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        _check_channels(x, self.channels, "ActNorm")
        if self._needs_init():
            self.initialize(x)
        z = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        ld = (_spatial_size(x) * self.log_scale.sum()).expand(x.shape[0])
        return z, ld

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        _check_channels(z, self.channels, "ActNorm")
        if self._needs_init():
            self.initialized.fill_(True)
            self._seen_initialized = True
        x = z * torch.exp(-self._view(self.log_scale, z)) - self._view(self.bias, z)
        ld = (-_spatial_size(z) * self.log_scale.sum()).expand(z.shape[0])
        return x, ld

    def jacobian_mask(self, dim: int) -> Tensor:
        return torch.eye(dim, dtype=torch.bool)


class InvConv1x1(Transform):
    """Invertible 1x1 convolution ``z = W x`` over channels; ``log|det| = S * log|det W|`` (slogdet).

    ``W`` starts as a random rotation (or the given ``weight``).
    """

    def __init__(self, channels: int, weight: Optional[Tensor] = None):
        super().__init__()
        weight = _initial_weight(channels, weight)
        if weight.shape != (channels, channels):
            raise ValueError(f"weight must have shape ({channels}, {channels}), got {tuple(weight.shape)}")
        self.channels = int(channels)
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        _check_channels(x, self.channels, "InvConv1x1")
        logabs = torch.linalg.slogdet(self.weight)[1]
        return _mix_channels(x, self.weight), (_spatial_size(x) * logabs).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        _check_channels(z, self.channels, "InvConv1x1")
        logabs = torch.linalg.slogdet(self.weight)[1]
        x = _mix_channels(z, torch.linalg.inv(self.weight))
        return x, (-_spatial_size(z) * logabs).expand(z.shape[0])


class LUInvConv1x1(Transform):
    """1x1 convolution with an LU-decomposed weight ``W = P L (U + diag(sign * exp(log_s)))``.

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly
    upper triangular; ``log|det W| = sum(log_s)`` costs ``O(C)`` and the
    inverse two triangular solves.  ``sign`` is fixed at construction.  The
    decomposition starts from a random rotation (or the given ``weight``).
    """

    permutation: Tensor
    sign: Tensor

    def __init__(self, channels: int, weight: Optional[Tensor] = None):
        super().__init__()
        weight = _initial_weight(channels, weight)
        dtype = weight.dtype
        p, lower, upper = torch.linalg.lu(weight.double())
        diag = torch.diagonal(upper)
        if bool((diag == 0).any()):
            raise ValueError("weight is singular")
        self.channels = int(channels)
        self.register_buffer("permutation", p.to(dtype))
        self.register_buffer("sign", torch.sign(diag).to(dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(diag.abs()).to(dtype))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        """The full matrix ``W = P L U``."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """``W^{-1} = U^{-1} L^{-1} P^T`` from two triangular solves."""
        lower, upper = self._factors()
        eye = torch.eye(self.channels, dtype=lower.dtype, device=lower.device)
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return u_inv @ l_inv @ self.permutation.t()

    def _check(self, x: Tensor) -> None:
        _check_channels(x, self.channels, type(self).__name__)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        ld = (_spatial_size(x) * self.log_s.sum()).expand(x.shape[0])
        return _mix_channels(x, self.weight()), ld

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        ld = (-_spatial_size(z) * self.log_s.sum()).expand(z.shape[0])
        return _mix_channels(z, self.inverse_weight()), ld


class LULinear(LUInvConv1x1):
    """LU-decomposed invertible linear layer on vectors ``(B, D)``: ``z = W x``, ``log|det| = sum(log_s)``."""

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.channels:
            raise ValueError(f"LULinear over {self.channels} features got input of shape {tuple(x.shape)}")
