"""Online density models of observations and the pseudo-counts they give.

``FlowPseudoCounter(obs_dim, flow="nsf")`` keeps a running normaliser of
the observations, a bounded buffer of past ones and a normalizing flow fitted
online to that buffer.  ``update(obs)`` adds observations and takes training
steps; ``pseudo_count(obs)`` turns the density into a count and
``bonus(obs) = beta / sqrt(N(x) + 1)``.

Estimators (``estimator=``), in the normalised observation space of ``d``
dimensions, with ``N_total`` the number of observations the flow is fitted to:
all those seen so far, or the last ``buffer_size`` once more were seen (then a
count is one over that window: a place visited often long ago reads as novel
again, and the counts of visited places stop growing with time):

* ``"density"``: ``N(x) = N_total * rho(x) * h^d``, the expected number of
  visits of the cell of side ``h = resolution`` around ``x`` if the density
  were flat inside it.  Right when the model is smooth at scale ``h``.
* ``"cell"``: ``N(x) = N_total * P_model(cell of side h around x)``, the cell's
  probability mass estimated by averaging ``rho`` over ``cell_samples`` fixed
  quasi-random points of the cell.  Right also when the model has peaks
  sharper than ``h`` (then ``"density"`` over-counts the peak's centre).
* ``"cell_bound"``: ``N(x) = N_total * h^d * exp(mean_j log rho(z_j))`` over the
  same points ``z_j`` of the cell: the geometric instead of the arithmetic
  mean, a lower bound of the cell's mass (Jensen) and exactly the quantity
  that training with ``smoothing=1`` maximises (the dequantisation bound).
  A model that maximises ``sum_x n_x * log bound(x)`` under ``sum_x bound(x) <= 1``
  has ``bound(x) = n_x / N_total``: right when the jitter fills the cell
  (``smoothing=1``), the default of image counters, where the arithmetic
  mean over a few points of a 64-dimensional cell is dominated by its
  largest term.
* ``"pg_exact"``: prediction gain ``PG = log rho'(x) - log rho(x)`` after one
  SGD step of size ``pg_lr`` on ``x`` alone (exact recoding, batched with
  per-sample gradients through ``torch.func``), ``N(x) = 1 / (exp(PG) - 1)``
  (Bellemare et al. 2016; Ostrovski et al. 2017).
* ``"pg_first_order"``: the same with ``PG ~ pg_lr * ||grad_theta log rho(x)||^2``.

The prediction-gain forms are right for a model whose per-sample gradient
shrinks as a state is seen more often (a discrete mixture such as CTS).  A
flow fitted to continuous states concentrates its capacity on the frequent
states, whose gradients stay large, so prediction gains rank states poorly;
``scripts/bench_pseudocounts.py`` measures every estimator against exact
counts.  The defaults (``flow="nsf"``, ``estimator="density"``,
``kernel="gaussian"``, ``resolution="auto"``) are the best of that table and
of ``tests/test_count_calibration.py``: on streams of 500-5,000 observations
(tight clusters visited 1..200 times, a random walk binned on maze cells,
both with a constant and a duplicated feature appended) the counts rank
like the exact ones (Spearman >= 0.9) within a factor 2 (geometric mean),
whatever the chunk sizes given to ``update``.

Three choices make counts informative on real observations:
``resolution="auto"`` picks the cell side from the number of *kept* features
(``h = 4 * cells ** (-1 / d)``: about ``cells`` cells span the visited
region's +-2 standard deviations whatever ``d``), the normaliser masks
constant and duplicated (affinely dependent) features out of ``d``
(``redundancy=True``), and the flow is fitted to observations jittered by
the cell's kernel (``smoothing``: ``N(0, sigma^2)`` with ``sigma = h / sqrt(2 pi)``
for the Gaussian kernel, uniform over the cell for the box one), so that the
density of a cell is its mass over ``h^d`` rather than an ever sharper peak;
counts are read from a Polyak average of the parameters (``ema``), which
removes most minibatch noise from the density of rarely seen states.

A counter is built from parts (:class:`PseudoCounter`): an observation
encoder (:class:`flowrl.novelty.encoders.VectorEncoder`, a running normaliser with an
optional projection, or :class:`flowrl.novelty.encoders.FrameEncoder`, a frame
quantiser), a flow, one :class:`flowrl.novelty.online.TrainingSettings`, the
estimator's settings, and optionally a fixed map into the flow's space and a
:class:`flowrl.novelty.memo.RowMemo`.  :class:`FlowPseudoCounter` assembles one for
vectors, :class:`flowrl.novelty.image_counts.ImagePseudoCounter` for frames.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..core import Transform
from ..flow import Flow
from ..registry import build_flow, flow_spec
from .encoders import ObservationEncoder, Projection, VectorEncoder
from .memo import RowMemo, tensor_state
from .online import OnlineDensityModel, TrainingSettings, seeded

__all__ = [
    "PseudoCounter",
    "FlowPseudoCounter",
    "ESTIMATORS",
    "KERNELS",
    "bonus_from_count",
]

ESTIMATORS = ("density", "cell", "cell_bound", "pg_exact", "pg_first_order")
KERNELS = ("gaussian", "box")
_LOG_COUNT_BOUND = 60.0  # |log N| is clamped here so that N stays finite in float32


def bonus_from_count(count: Tensor, beta: float = 1.0) -> Tensor:
    """Count-based bonus ``beta / sqrt(N + 1)``: ``beta`` for a state never seen, decreasing with its count."""
    return beta * torch.rsqrt(count + 1.0)


class PseudoCounter(OnlineDensityModel):
    """Pseudo-counts ``N(x)`` from a flow fitted online to encoded observations: a counter built from parts.

    Args:
        encoder: observations -> model space (:class:`flowrl.novelty.encoders.VectorEncoder`
            or :class:`flowrl.novelty.encoders.FrameEncoder`).
        flow: the density model, over ``encoder.model_shape`` (after ``preprocess``).
        settings: the training settings (:class:`flowrl.novelty.online.TrainingSettings`).
        estimator: one of :data:`ESTIMATORS` (see the module docstring).
        resolution: side ``h`` of a count cell in the model space, or ``"auto"``:
            ``h = 4 * cells ** (-1 / d)`` over the ``d`` kept features (the ``+-2 sigma``
            box cut into about ``cells`` cells whatever ``d``).
        cells: the number of cells of ``resolution="auto"``.
        kernel: training jitter, ``"gaussian"`` (``N(0, sigma^2)``, ``sigma = smoothing * h / sqrt(2 pi)``)
            or ``"box"`` (uniform in a cell of side ``smoothing * h``); ``smoothing=0``: none.
        cell_samples: points per cell for ``estimator="cell"``/``"cell_bound"``.
        ema: decay of the parameter average counts are read from (0: read the trained flow).
        pg_lr: SGD step of the prediction-gain estimators (default ``settings.lr``).
        preprocess: a fixed (parameter-free) transform from the model space to the flow's
            input, ``log rho(z) = log rho_flow(s(z)) + log|ds/dz|`` (``None``: the identity).
        memo: evaluates each distinct encoded observation once when scoring in eval mode
            (:class:`flowrl.novelty.memo.RowMemo`; ``None``: every row).

    The estimator's settings have no defaults here: the assembled counters
    (:class:`FlowPseudoCounter`, :class:`flowrl.novelty.image_counts.ImagePseudoCounter`)
    state theirs.
    """

    flow_name = "custom"
    cell_offsets: Tensor

    def __init__(
        self,
        encoder: ObservationEncoder,
        flow: Flow,
        settings: TrainingSettings,
        *,
        estimator: str,
        resolution: float | str,
        cells: float,
        kernel: str,
        cell_samples: int,
        smoothing: float,
        ema: float,
        pg_lr: Optional[float] = None,
        preprocess: Optional[Transform] = None,
        memo: Optional[RowMemo] = None,
    ):
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        if resolution != "auto" and not (isinstance(resolution, (int, float)) and resolution > 0):
            raise ValueError(f"resolution must be a positive number or 'auto', got {resolution!r}")
        if not (isinstance(cells, (int, float)) and cells > 1):
            raise ValueError(f"cells must be a number > 1, got {cells!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if cell_samples < 1:
            raise ValueError(f"cell_samples must be >= 1, got {cell_samples}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        if memo is not None and not isinstance(memo, RowMemo):
            raise TypeError(f"memo must be a RowMemo or None, got {type(memo).__name__}")
        super().__init__(encoder, settings)
        self.event_numel = math.prod(self.model_shape)
        self.flow = flow
        self.ema = float(ema)
        # Counts are read from a Polyak average of the trained flow: minibatch
        # noise otherwise makes the density of rarely seen states jitter.
        self.ema_flow: Optional[Flow] = copy.deepcopy(self.flow).requires_grad_(False) if self.ema > 0 else None
        self._ema_tensors: Optional[tuple[list[Tensor], ...]] = None  # after_step's tensors, listed once
        self.preprocess = preprocess
        self.memo = memo
        self.estimator = estimator
        self.kernel = kernel
        self.resolution = resolution if resolution == "auto" else float(resolution)
        self.cells = float(cells)
        self.smoothing = float(smoothing)
        self.pg_lr = float(settings.lr if pg_lr is None else pg_lr)
        offsets = torch.quasirandom.SobolEngine(self.event_numel, scramble=True, seed=0).draw(int(cell_samples))
        self.register_buffer("cell_offsets", (offsets - 0.5).to(torch.float32).reshape(-1, *self.model_shape))

    @property
    def cell_side(self) -> float:
        """``h``: the given ``resolution``, or ``4 * cells ** (-1 / d)`` over the ``d`` kept features."""
        if self.resolution != "auto":
            return float(self.resolution)
        return 4.0 * self.cells ** (-1.0 / max(self.encoder.effective_dim, 1))

    def _cell_sides(self, z: Tensor) -> Tensor:
        """Per-feature cell sides, shape ``model_shape``: ``h``, and for masked (redundant) features
        ``sqrt(2 pi)`` (jitter ``N(0, 1)``, the base distribution's) or 1 (box), which the flow fits
        at once and the count's volume divides out exactly."""
        h = self.cell_side
        sides = z.new_full(self.model_shape, h)
        if self.encoder.masks_features:
            masked = math.sqrt(2 * math.pi) if self.kernel == "gaussian" else 1.0
            sides = torch.where(self.encoder.kept.to(z.device), sides, sides.new_tensor(masked))
        return sides

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.flow.parameters())

    @property
    def scoring_flow(self) -> Flow:
        """The flow counts are read from: the parameter average when ``ema > 0``."""
        return self.flow if self.ema_flow is None else self.ema_flow

    def clear_cache(self) -> None:
        """Forget the memoised values (any change of the scoring tensors does it too)."""
        if self.memo is not None:
            self.memo.clear()

    def _model_log_prob(self, flow: Flow, z: Tensor) -> Tensor:
        """``log rho(z)`` in the model space: ``log rho_flow(s(z)) + log|ds/dz|``."""
        if self.preprocess is None:
            return flow.log_prob(z)
        s, logdet = self.preprocess(z)
        return flow.log_prob(s) + logdet

    def _flow_log_prob(self, z: Tensor) -> Tensor:
        return self._model_log_prob(self.scoring_flow, z)

    def loss(self, z: Tensor) -> Tensor:
        if self.smoothing > 0 and self.kernel == "gaussian":  # fit rho_sigma, sigma = s * h / sqrt(2 pi)
            e = torch.randn(z.shape, generator=self.generator).to(z)
            z = z + self.smoothing / math.sqrt(2 * math.pi) * self._cell_sides(z) * e
        elif self.smoothing > 0:  # box kernel: a uniform jitter within a cell of side s * h
            u = torch.rand(z.shape, generator=self.generator).to(z)
            z = z + self.smoothing * self._cell_sides(z) * (u - 0.5)
        return -self._model_log_prob(self.flow, z).mean()

    @torch.no_grad()
    def after_step(self) -> None:
        """``theta_avg <- ema * theta_avg + (1 - ema) * theta``; buffers are copied."""
        if self.ema_flow is None:
            return
        if self._ema_tensors is None:  # walking the modules costs more than the update itself: once per placement
            self._ema_tensors = (list(self.ema_flow.parameters()), list(self.flow.parameters()),
                                 list(self.ema_flow.buffers()), list(self.flow.buffers()))
        averaged, trained, averaged_buffers, trained_buffers = self._ema_tensors
        if averaged:
            torch._foreach_lerp_(averaged, trained, 1.0 - self.ema)
        if averaged_buffers:
            torch._foreach_copy_(averaged_buffers, trained_buffers)

    def _apply(self, fn, recurse=True):
        self._ema_tensors = None  # .to() / .cuda() / .float() may replace the buffers
        return super()._apply(fn, recurse)

    # ----------------------------------------------------------------- density
    def log_density(self, obs: Any) -> Tensor:
        """``log rho(x)`` of the model in normalised observation space, shape ``(batch,)``."""
        z = self.model_input(obs)
        with torch.no_grad():
            return self._per_row("log_prob", z, self._flow_log_prob)

    def _per_row(self, quantity: str, z: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn(z)``, a per-row quantity of model inputs ``z`` (``(batch,)``); ``quantity`` names it.

        With a :attr:`memo`, in eval mode, each distinct row is evaluated once (and
        memoised until the scoring tensors or the settings change); in training mode a
        layer may be stochastic or update statistics as it runs, so every row is.
        """
        flow = self.scoring_flow
        if self.memo is None or flow.training:
            return fn(z)
        tensors = (*flow.parameters(), *flow.buffers(), self.cell_offsets)
        key = (id(flow), id(self.preprocess), self.resolution, self.pg_lr, tensor_state(tensors))
        return self.memo(quantity, z, fn, key, ready=lambda: not flow.transform.awaits_initialisation)

    def _log_cell_volume(self) -> float:
        if self.encoder.masks_features:
            return float(self._cell_sides(self.n_total.new_zeros((), dtype=torch.float64)).log().sum())
        return self.event_numel * math.log(self.cell_side)

    def _log_n_total(self) -> float:
        """``log N_total``: the observations the flow was fitted to, at most the buffer's ``buffer_size``."""
        return math.log(min(max(self._n_total_host, 1.0), float(self.settings.buffer_size)))

    def log_pseudo_count(self, obs: Any, estimator: Optional[str] = None) -> Tensor:
        """``log N(x)`` from the chosen estimator (default: the counter's), shape ``(batch,)``."""
        est = self.estimator if estimator is None else estimator
        if est not in ESTIMATORS:
            raise ValueError(f"unknown estimator {est!r}; choose one of {ESTIMATORS}")
        z = self.model_input(obs)
        was_training = self.training
        toggle = was_training or self.scoring_flow.training  # train()/eval() walk every submodule: only if needed
        if toggle:
            self.eval()
        try:
            if est == "density":
                with torch.no_grad():
                    log_n = self._log_n_total() + self._per_row("log_prob", z, self._flow_log_prob) \
                        + self._log_cell_volume()
            elif est in ("cell", "cell_bound"):
                geometric = est == "cell_bound"
                with torch.no_grad():
                    mean_log = self._per_row(est, z, lambda r: self._log_cell_mean_density(r, geometric=geometric))
                    log_n = self._log_n_total() + self._log_cell_volume() + mean_log
            else:
                exact = est == "pg_exact"
                pg = self._per_row(est, z, lambda r: self._prediction_gain(r, exact=exact))
                # N = 1 / (exp(PG) - 1); PG <= 0 means the step did not help: count it as very large.
                pg = pg.clamp(min=math.exp(-_LOG_COUNT_BOUND))
                log_n = -torch.log(torch.expm1(pg))
        finally:
            if toggle:
                self.train(was_training)
        return log_n.clamp(-_LOG_COUNT_BOUND, _LOG_COUNT_BOUND)

    def pseudo_count(self, obs: Any, estimator: Optional[str] = None) -> Tensor:
        """Pseudo-count ``N(x)`` (see the module docstring), shape ``(batch,)``."""
        return torch.exp(self.log_pseudo_count(obs, estimator))

    def bonus(self, obs: Any, beta: float = 1.0, estimator: Optional[str] = None) -> Tensor:
        """Intrinsic reward ``beta / sqrt(N(x) + 1)``, shape ``(batch,)``."""
        return bonus_from_count(self.pseudo_count(obs, estimator), beta)

    def novelty(self, obs: Any) -> Tensor:
        """``g(x) = 1 / sqrt(N(x) + 1)`` in ``(0, 1]``."""
        return self.bonus(obs)

    def _log_cell_mean_density(self, z: Tensor, geometric: bool = False) -> Tensor:
        """``log mean_j rho(z + h * u_j)`` over the fixed offsets ``u_j`` in ``[-1/2, 1/2]^d``.

        ``geometric=True``: ``mean_j log rho(z + h * u_j)`` instead.
        """
        k = self.cell_offsets.shape[0]
        pts = z.unsqueeze(1) + self._cell_sides(z) * self.cell_offsets.to(z.dtype).unsqueeze(0)
        lp = self._flow_log_prob(pts.reshape(-1, *self.model_shape)).reshape(z.shape[0], k)
        if geometric:
            return lp.mean(dim=1)
        return torch.logsumexp(lp, dim=1) - math.log(k)

    # -------------------------------------------------------- prediction gain
    def _prediction_gain(self, z: Tensor, exact: bool) -> Tensor:
        """``log rho'(x) - log rho(x)`` after one SGD step of size ``pg_lr`` on each ``x`` alone."""
        if self.preprocess is not None:
            z = self.preprocess(z)[0]  # a fixed map: its log-det cancels in the gain
        flow = self.scoring_flow
        params = {k: v.detach() for k, v in flow.named_parameters()}
        buffers = {k: v.detach() for k, v in flow.named_buffers()}

        def log_p(p: dict, x: Tensor) -> Tensor:
            lp = functional_call(flow, (p, buffers), (x.unsqueeze(0),))
            return lp.squeeze(0)

        grads = vmap(grad(log_p), in_dims=(None, 0))(params, z)
        if not exact:
            sq = sum(g.reshape(z.shape[0], -1).pow(2).sum(1) for g in grads.values())
            return self.pg_lr * sq
        before = vmap(log_p, in_dims=(None, 0))(params, z)

        def after(g: dict, x: Tensor) -> Tensor:
            return log_p({k: params[k] + self.pg_lr * g[k] for k in params}, x)

        return (vmap(after)(grads, z) - before).detach()

    def extra_repr(self) -> str:
        return (
            f"model_shape={self.model_shape}, flow={self.flow_name!r}, estimator={self.estimator!r}, "
            f"resolution={self.resolution!r}"
        )


class FlowPseudoCounter(PseudoCounter):
    """Pseudo-counts of vector observations from a normalizing flow fitted online to them.

    The default is a *kernel count*: the flow is fitted to observations
    jittered by ``N(0, sigma^2 I)`` with ``sigma = h / sqrt(2 pi)``, so it models
    the Gaussian-smoothed visitation density ``rho_sigma``, and
    ``N(x) = N_total * h^d * rho_sigma(x)`` is the number of past observations
    within a soft cell of side ``h`` around ``x`` (exact for a state visited
    ``n`` times at one point: ``N = n``).  A smooth target is what a flow fits
    well, and a count costs one flow evaluation.

    Assembled from a :class:`flowrl.novelty.encoders.VectorEncoder` (``project``,
    ``normalize``, ``clip``, ``redundancy``), a registered flow over the counted
    features (``flow``, ``flow_kwargs``, initialised from ``seed``) and a
    :class:`PseudoCounter` with the estimator's settings below.

    Args:
        obs_dim: size of the observation vectors.
        flow: any flow name of :func:`flowrl.available_flows` that takes vectors.
        estimator, cells, kernel, cell_samples, smoothing, ema, pg_lr: see :class:`PseudoCounter`.
        resolution: side ``h`` of a count cell in normalised observation space, or
            ``"auto"`` (0.4 for 2 kept features, 1.26 for 4: with a fixed side, every
            added dimension would divide the counts of visited states by ``4 / h``).
        project: what to count on: ``None`` (every feature), a list of feature
            indices, or a callable mapping a float32 tensor ``(batch, obs_dim)`` to
            ``(batch, k)`` (checked once here, on zeros).
        redundancy: mask constant and duplicated features (see :class:`RunningNormalizer`).
        clip, normalize: see :class:`flowrl.novelty.encoders.VectorEncoder`.
        settings: training settings (default :attr:`default_settings`).
        flow_kwargs: options of the flow (e.g. ``transforms``, ``hidden_features``).
        **training: training options by name (``lr``, ``batch_size``, ``steps_per_update``,
            ``steps_per_observation``, ``buffer_size``, ``seed``), replacing those of ``settings``
            (see :class:`flowrl.novelty.online.TrainingSettings`).

    >>> import torch
    >>> counter = FlowPseudoCounter(2, seed=0, flow_kwargs=dict(transforms=1, hidden_features=(8,)))
    >>> _ = counter.update(torch.zeros(64, 2))           # 64 visits of one state
    >>> counter.pseudo_count(torch.zeros(1, 2)).shape
    torch.Size([1])
    """

    def __init__(
        self,
        obs_dim: int,
        flow: str = "nsf",
        *,
        estimator: str = "density",
        resolution: float | str = "auto",
        cells: float = 100.0,
        project: Projection = None,
        redundancy: bool = True,
        kernel: str = "gaussian",
        cell_samples: int = 16,
        smoothing: float = 1.0,
        ema: float = 0.99,
        pg_lr: Optional[float] = None,
        clip: float = 5.0,
        normalize: bool = True,
        settings: Optional[TrainingSettings] = None,
        flow_kwargs: Optional[dict] = None,
        **training: Any,
    ):
        encoder = VectorEncoder(obs_dim, project, normalize=normalize, clip=clip, redundancy=redundancy and normalize)
        settings = self.training_settings(settings, training)
        spec = flow_spec(flow)
        if not spec.vector:
            raise ValueError(f"flow {flow!r} does not model vectors")
        (model_dim,) = encoder.model_shape
        if model_dim < spec.min_dim:
            raise ValueError(f"flow {flow!r} needs at least {spec.min_dim} counted features, got {model_dim}; "
                             f"choose another flow")
        kwargs = dict(flow_kwargs or {})
        density = seeded(settings.seed, lambda: build_flow(flow, model_dim, validate_args=False, **kwargs))
        super().__init__(
            encoder, density, settings, estimator=estimator, resolution=resolution, cells=cells, kernel=kernel,
            cell_samples=cell_samples, smoothing=smoothing, ema=ema, pg_lr=pg_lr,
        )
        self.obs_dim = int(obs_dim)
        self.flow_name = flow
        self.flow_kwargs = kwargs
