"""Block Neural Autoregressive Flow (De Cao et al. 2019).

One network ``z = W_L s(... s(W_1 x + b_1) ...) + b_L`` whose weights are
``D x D`` grids of blocks: block ``(i, j)`` (hidden units of dimension ``i``
from those of ``j``) is free for ``j < i``, positive for ``j = i``
(``exp``), and zero for ``j > i``.  Rows are weight-normalised,
``W_r = e^{g_r} W~_r / ||W~_r||``.  So ``z_i`` depends on ``x_{<=i}`` and
increases in ``x_i``, and the Jacobian is triangular with
``dz_i/dx_i = W^L_ii diag(s') W^{L-1}_ii ... W^1_ii``: a product of small
positive blocks, accumulated in log space (log-matrix products by logsumexp).

The activation is ``s(u) = tanh(u) + leak * u`` (``leak`` default 0: De
Cao's ``tanh``), ``log s'(u) = logaddexp(log sech^2 u, log leak)``.  A
``tanh`` network is bounded, hence not onto R, so the output is gated with
the identity (De Cao's gated residual): ``z_i = sigmoid(a_i) net_i(x) +
sigmoid(-a_i) x_i``, increasing in ``x_i`` and onto R with slope at least
``sigmoid(-a_i)`` in the tails;
``log dz_i/dx_i = logaddexp(log sigmoid(a_i) + log dnet_i/dx_i, log sigmoid(-a_i))``.
A context, when given, shifts every layer's pre-activations.

Inverse: for each dimension ``i`` in turn, one pass of the network gives
the contribution of the already known ``x_{<i}`` to every layer of block
``i``; what is left is a small scalar network of ``x_i`` (the diagonal
blocks), inverted by :func:`flowrl.inversion.invert_monotone`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Transform
from ..inversion import invert_monotone
from ..nn import as_hidden

__all__ = ["BlockNAF"]

_LOG2 = math.log(2.0)
_BIAS_SPREAD = 2.0  # initial hidden biases span [-2, 2] (the bulk of standardised data)


def _log_leaky_tanh_derivative(u: Tensor, leak: float) -> Tensor:
    a = u.abs()
    log_sech2 = 2 * (_LOG2 - a - F.softplus(-2 * a))
    return log_sech2 if leak == 0 else torch.logaddexp(log_sech2, torch.full_like(u, math.log(leak)))


def _gate(x: Tensor, net: Tensor, log_dnet: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
    """``z = sigmoid(a) net + sigmoid(-a) x`` and ``log dz/dx`` in log space."""
    w = torch.sigmoid(gate)
    z = w * net + (1 - w) * x
    return z, torch.logaddexp(F.logsigmoid(gate) + log_dnet, F.logsigmoid(-gate))


def _log_matvec(w: Tensor, log_v: Tensor) -> Tensor:
    """``log(W v)``, scaled by ``max log v``, for positive ``W`` ``(n, m)`` or ``(D, n, m)`` and ``log v`` ``(..., m)``.

    ``log v`` may also be ``(B, D, m)`` with a per-dimension ``W`` ``(D, n, m)``.

    ``log(W v) = M + log(W exp(log v - M))`` with ``M = max_j log v_j`` is a
    matrix product (fast) that cannot overflow; the product is clamped at the
    dtype's smallest normal number so that it cannot underflow to ``log 0``.
    """
    top = log_v.amax(dim=-1, keepdim=True)
    v = (log_v - top).exp()
    # W v as one product per block (a broadcast ``w @ v[..., None]`` runs B*D tiny matmuls, ~40x slower)
    prod = F.linear(v, w) if w.dim() == 2 else torch.einsum("dij,bdj->bdi", w, v)
    return top + prod.clamp_min(torch.finfo(prod.dtype).tiny).log()


class BlockNAF(Transform):
    """Block-NAF over ``dim`` features with ``hidden_features`` hidden units *per dimension* per layer."""

    analytic_inverse = False

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden_features: Sequence[int] | int = (16, 16),
        leak: float = 0.0,
        tol: Optional[float] = None,
    ):
        super().__init__()
        if leak < 0:
            raise ValueError(f"leak must be >= 0, got {leak}")
        self.dim, self.context_dim, self.leak, self.tol = int(dim), int(context_dim), float(leak), tol
        self.widths = [1, *as_hidden(hidden_features), 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.log_norms = nn.ParameterList()
        self.contexts = nn.ModuleList()
        # start with sigmoid(-1) = 73 % identity: light (Gaussian-like) tails while the network learns
        self.gate = nn.Parameter(torch.full((dim,), -1.0))
        for n_in, n_out in zip(self.widths[:-1], self.widths[1:]):
            v = torch.empty(dim * n_out, dim * n_in)
            nn.init.uniform_(v, -1 / math.sqrt(n_in), 1 / math.sqrt(n_in))
            self.weights.append(nn.Parameter(v))
            # hidden biases spread over [-2, 2] in every block: with zero biases all first-layer units of
            # a block start as the same tanh(x_i) (a one-input row is normalised to weight 1), and the
            # network starts with one kink at 0 instead of a basis of steps across the data
            last = len(self.weights) == len(self.widths) - 1
            spread = torch.zeros(n_out) if last or n_out == 1 else _BIAS_SPREAD * torch.linspace(-1.0, 1.0, n_out)
            self.biases.append(nn.Parameter(spread.repeat(dim)))
            # e^g = n_in^-1/2: a unit-norm row of n_in similar positive entries sums to n_in^1/2,
            # so this keeps each layer's gain near 1 at initialisation (no saturated tanh start)
            self.log_norms.append(nn.Parameter(torch.full((dim * n_out,), -0.5 * math.log(n_in))))
            if context_dim:
                self.contexts.append(nn.Linear(context_dim, dim * n_out, bias=False))
            blocks_out = torch.arange(dim).repeat_interleave(n_out)
            blocks_in = torch.arange(dim).repeat_interleave(n_in)
            self.register_buffer(f"_lower{len(self.weights) - 1}", blocks_in[None, :] < blocks_out[:, None], False)
            self.register_buffer(f"_diag{len(self.weights) - 1}", blocks_in[None, :] == blocks_out[:, None], False)

    def _layer(self, k: int) -> tuple[Tensor, Tensor]:
        """Effective weight ``(D n_out, D n_in)`` and log diagonal blocks ``(D, n_out, n_in)``."""
        v, g = self.weights[k], self.log_norms[k]
        lower, diag = getattr(self, f"_lower{k}"), getattr(self, f"_diag{k}")
        raw = torch.where(diag, v.exp(), torch.where(lower, v, torch.zeros_like(v)))
        log_norm = 0.5 * torch.log((raw * raw).sum(1, keepdim=True))
        weight = torch.exp(g[:, None] - log_norm) * raw
        n_in, n_out = self.widths[k], self.widths[k + 1]
        log_diag = (g[:, None] - log_norm + v)[diag].reshape(self.dim, n_out, n_in)
        return weight, log_diag

    def _shift(self, k: int, context: Optional[Tensor], rows: int, like: Tensor) -> Tensor:
        shift = self.biases[k].expand(rows, -1)
        if context is not None:
            shift = shift + self.contexts[k](context.to(like.dtype))
        return shift

    def _check(self, x: Tensor, context: Optional[Tensor]) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"Block-NAF over {self.dim} features got input of shape {tuple(x.shape)}")
        if (context is None) != (self.context_dim == 0):
            raise ValueError(f"Block-NAF built with context_dim={self.context_dim} got context={context is not None}")

    def _run(self, x: Tensor, context: Optional[Tensor], layers, with_logdet: bool = True):
        """Full pass: output, log dz_i/dx_i ``(B, D)`` and each layer's (input, pre-activation).

        ``with_logdet=False`` returns only the trace (what the inverse needs).
        """
        b = x.shape[0]
        h, log_dh = x, x.new_zeros(b, self.dim, 1)
        trace = []
        for k, (weight, log_diag) in enumerate(layers):
            u = F.linear(h, weight) + self._shift(k, context, b, x)
            trace.append((h, u))
            if not with_logdet:
                h = torch.tanh(u) + self.leak * u if k < len(layers) - 1 else u
                continue
            log_du = _log_matvec(log_diag.exp(), log_dh)  # (B, D, n_out)
            if k < len(layers) - 1:
                h = torch.tanh(u) + self.leak * u
                log_dh = log_du + _log_leaky_tanh_derivative(u, self.leak).reshape(log_du.shape)
            else:
                h, log_dh = u, log_du
        if not with_logdet:
            return None, None, trace
        z, log_dz = _gate(x, h, log_dh.reshape(b, self.dim), self.gate)
        return z, log_dz, trace

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        layers = [self._layer(k) for k in range(len(self.weights))]
        z, log_d, _ = self._run(x, context, layers)
        return z, log_d.sum(1)

    def _scalar_map(self, i: int, layers, offsets: list[Tensor]):
        """``x_i -> (z_i, log dz_i/dx_i)`` with the contributions of ``x_{<i}`` frozen in ``offsets``."""
        diag_blocks = [log_diag[i].exp() for _, log_diag in layers]

        def fn(v: Tensor) -> tuple[Tensor, Tensor]:
            h, log_dh = v.unsqueeze(-1), torch.zeros_like(v).unsqueeze(-1)
            for k, w in enumerate(diag_blocks):
                u = F.linear(h, w) + offsets[k]
                log_du = _log_matvec(w, log_dh)
                if k < len(diag_blocks) - 1:
                    h = torch.tanh(u) + self.leak * u
                    log_dh = log_du + _log_leaky_tanh_derivative(u, self.leak)
                else:
                    h, log_dh = u, log_du
            return _gate(v, h.squeeze(-1), log_dh.squeeze(-1), self.gate[i])

        return fn

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(z, context)
        layers = [self._layer(k) for k in range(len(self.weights))]
        x = torch.zeros_like(z)
        total = z.new_zeros(z.shape[0])
        columns = torch.arange(self.dim, device=z.device)
        for i in range(self.dim):
            _, _, trace = self._run(x, context, layers, with_logdet=False)
            offsets = []
            for k, (h, u) in enumerate(trace):
                n_in, n_out = self.widths[k], self.widths[k + 1]
                h_i = h[:, i * n_in:(i + 1) * n_in]
                own = F.linear(h_i, layers[k][1][i].exp())
                offsets.append(u[:, i * n_out:(i + 1) * n_out] - own)
            x_i, ld_i = invert_monotone(self._scalar_map(i, layers, offsets), z[:, i], tol=self.tol)
            x = torch.where(columns == i, x_i.unsqueeze(1), x)
            total = total + ld_i
        return x, total

    def jacobian_mask(self, dim: int) -> Tensor:
        return torch.ones(dim, dim, dtype=torch.bool).tril()
