"""Online density models of observations and the pseudo-counts they give.

``FlowPseudoCounter(obs_dim, flow="nsf")`` keeps a running normaliser of
the observations, a bounded buffer of past ones and a normalizing flow fitted
online to that buffer.  ``update(obs)`` adds observations and takes training
steps; ``pseudo_count(obs)`` turns the density into a count and
``bonus(obs) = beta / sqrt(N(x) + 0.01)``.

Estimators (``estimator=``), in the normalised observation space of ``d``
dimensions, with ``N_total`` observations seen so far:

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
counts and the defaults (``flow="nsf"``, ``estimator="cell"``,
``resolution=0.4``) are the best of that table: on 16 tight clusters visited
1..200 times, Spearman ~0.99 and slope ~1.2 for ``cell`` on the spline flow,
against ~0.8-0.9 for RealNVP and negative or unstable correlations for the
prediction gains.

Two training details matter for counts: the flow is fitted to observations
jittered uniformly within a cell (``smoothing``: a box kernel of side
``smoothing * h``, so that the density of a cell is its mass over ``h^d``
rather than an ever sharper peak), and counts are read from a Polyak average
of the parameters (``ema``), which removes most minibatch noise from the
density of rarely seen states.

The shared plumbing (validation, normaliser, buffer, training loop) lives in
:class:`OnlineDensityModel`, which :class:`flowrl.rnd.RNDNovelty` reuses;
:class:`flowrl.novelty_image.ImagePseudoCounter` reuses the whole counter on
downsampled, quantised frames (the ``encode`` and ``_to_flow_space`` hooks).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .frames import real_tensor
from .registry import build_flow, flow_spec

__all__ = [
    "RunningNormalizer",
    "ObservationBuffer",
    "OnlineDensityModel",
    "FlowPseudoCounter",
    "ESTIMATORS",
    "bonus_from_count",
    "count_agreement",
    "cluster_stream",
]

ESTIMATORS = ("density", "cell", "cell_bound", "pg_exact", "pg_first_order")
KERNELS = ("gaussian", "box")
_LOG_COUNT_BOUND = 60.0  # |log N| is clamped here so that N stays finite in float32


def bonus_from_count(count: Tensor, beta: float = 1.0) -> Tensor:
    """Count-based bonus ``beta / sqrt(N + 1)``: ``beta`` for a state never seen, decreasing with its count."""
    return beta * torch.rsqrt(count + 1.0)


def _check_projection(
    project: Optional[Sequence[int] | Callable[[Tensor], Tensor]], obs_dim: int
) -> tuple[Optional[Callable[[Tensor], Tensor]], int]:
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


def _sync_host_after_load(module: nn.Module, _keys: Any) -> None:
    """``load_state_dict`` post-hook: refresh a module's host copies of its loaded buffers."""
    if isinstance(module, RunningNormalizer):
        module._sync_host()
    else:
        module._n_total_host = float(module.n_total)


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
        self.register_load_state_dict_post_hook(_sync_host_after_load)

    def _sync_host(self) -> None:
        """Host copies of the count and of the kept features' number (scoring reads them per batch)."""
        self._count_host = float(self.count)
        self._kept_host = int(self.keep.sum()) if self.redundancy else self.mean.numel()

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
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
        if self._count_host < 2:  # nothing to normalise with yet: identity
            return x.clamp(-self.clip, self.clip) if self.clip > 0 else x
        z = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        z = z.clamp(-self.clip, self.clip) if self.clip > 0 else z
        return z * self.keep.to(z.dtype) if self.redundancy else z


class ObservationBuffer(nn.Module):
    """Ring buffer of the last ``capacity`` observations (kept in the state dict)."""

    def __init__(self, capacity: int, shape: Sequence[int]):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"buffer_size must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.register_buffer("data", torch.zeros(self.capacity, *shape))
        self.register_buffer("pos", torch.zeros((), dtype=torch.long))
        self.register_buffer("size", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        x = x[-self.capacity:]
        n, p = x.shape[0], int(self.pos)
        idx = (torch.arange(n, device=x.device) + p) % self.capacity
        self.data[idx.to(self.data.device)] = x.to(self.data.dtype)
        self.pos.fill_((p + n) % self.capacity)
        self.size.fill_(min(int(self.size) + n, self.capacity))

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        size = int(self.size)
        idx = torch.randint(0, size, (n,), generator=generator)
        return self.data[idx.to(self.data.device)]


class OnlineDensityModel(nn.Module):
    """Observations in, training steps taken: the plumbing shared by novelty models.

    Args:
        obs_shape: shape of one observation.
        lr: Adam step size.  batch_size: minibatch drawn from the buffer per step.
        steps_per_update: training steps taken by each :meth:`update`; ``None`` (default):
            the budget follows the data, ``steps_per_observation`` steps per observation
            received, whatever the chunk sizes (fractions carry over to the next update).
        steps_per_observation: Adam steps per new observation when ``steps_per_update`` is ``None``.
        buffer_size: the last ``buffer_size`` observations are kept for training.
        clip: normalised observations are clipped to ``[-clip, clip]`` (0: no clip).
        normalize: keep a running mean/std normaliser (else observations are used as given).
        seed: seeds the model's initialisation and its own generator (minibatches, jitter).
        model_shape: shape of what :meth:`encode` returns, which the normaliser
            and the buffer hold (default ``obs_shape``: ``encode`` is the identity).
        redundancy: mask constant and duplicated features (see :class:`RunningNormalizer`).

    Subclasses implement :meth:`loss` on a batch of *normalised* observations.
    Inputs are numpy arrays or tensors of shape ``(batch, *obs_shape)``
    (a single observation of shape ``obs_shape`` is accepted too); the model
    sees ``model_input(obs) = normalized(encode(as_batch(obs)))``.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        *,
        lr: float = 1e-3,
        batch_size: int = 128,
        steps_per_update: Optional[int] = None,
        steps_per_observation: float = 1.0,
        buffer_size: int = 100_000,
        clip: float = 5.0,
        normalize: bool = True,
        seed: Optional[int] = None,
        model_shape: Optional[Sequence[int]] = None,
        redundancy: bool = False,
    ):
        super().__init__()
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.model_shape = self.obs_shape if model_shape is None else tuple(int(s) for s in model_shape)
        if any(s <= 0 for s in self.obs_shape):
            raise ValueError(f"observation shape must be positive, got {self.obs_shape}")
        for name, v in dict(lr=lr, batch_size=batch_size, buffer_size=buffer_size).items():
            if not v > 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if steps_per_update is not None and not (
            isinstance(steps_per_update, (int, np.integer)) and steps_per_update >= 0
        ):
            raise ValueError(f"steps_per_update must be None or an int >= 0, got {steps_per_update!r}")
        if not (isinstance(steps_per_observation, (int, float)) and 0 <= steps_per_observation < math.inf):
            raise ValueError(f"steps_per_observation must be a finite number >= 0, got {steps_per_observation!r}")
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.steps_per_update = None if steps_per_update is None else int(steps_per_update)
        self.steps_per_observation = float(steps_per_observation)
        self._owed_steps = 0.0  # fraction of a step carried to the next update
        self.use_normalizer = bool(normalize)
        self.normalizer = RunningNormalizer(self.model_shape, clip=clip, redundancy=redundancy and normalize)
        self.buffer = ObservationBuffer(buffer_size, self.model_shape)
        self.register_buffer("n_total", torch.zeros((), dtype=torch.float64))
        self._n_total_host = 0.0  # host copy of n_total: counts read it per batch without a device sync
        self.register_load_state_dict_post_hook(_sync_host_after_load)
        self.seed = seed
        self.generator = torch.Generator()  # minibatches and jitter; the global RNG is left alone
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self.optimizer: Optional[torch.optim.Optimizer] = None

    # ------------------------------------------------------------------ input
    @property
    def device(self) -> torch.device:
        return self.n_total.device

    def as_batch(self, obs: Any) -> Tensor:
        """Validate ``obs`` and return a float32 tensor ``(batch, *obs_shape)`` on the model's device."""
        x = real_tensor(obs).to(device=self.device, dtype=torch.float32)
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
        return x

    def encode(self, x: Tensor) -> Tensor:
        """Validated observations ``(batch, *obs_shape)`` -> what the model holds ``(batch, *model_shape)``."""
        return x

    def normalized(self, x: Tensor) -> Tensor:
        return self.normalizer.normalize(x) if self.use_normalizer else x

    def model_input(self, obs: Any) -> Tensor:
        """``normalized(encode(as_batch(obs)))``: raw observations in the model's space."""
        return self.normalized(self.encode(self.as_batch(obs)))

    # --------------------------------------------------------------- training
    def loss(self, z: Tensor) -> Tensor:
        """Training loss on a batch of normalised observations."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook run after every optimiser step (parameter averaging)."""

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable_parameters(), lr=self.lr)

    def update(self, obs: Any, steps: Optional[int] = None) -> dict[str, float]:
        """Add ``obs`` to the model's experience, then take ``steps`` training steps.

        Default ``steps``: ``steps_per_update``, or, when that is ``None``,
        ``steps_per_observation`` per observation in ``obs`` (so 32 updates of
        16 observations train as much as one of 512).
        """
        x = self.encode(self.as_batch(obs))
        if self.use_normalizer:
            self.normalizer.update(x)
        self.buffer.add(x)
        self.n_total += x.shape[0]
        self._n_total_host += x.shape[0]
        if steps is None:
            steps = self.steps_per_update if self.steps_per_update is not None else self._steps_owed(x.shape[0])
        return self.train_steps(steps)

    def _steps_owed(self, n_new: int) -> int:
        """Whole steps owed for ``n_new`` observations at ``steps_per_observation``; the fraction carries over."""
        self._owed_steps += self.steps_per_observation * n_new
        steps = int(self._owed_steps)
        self._owed_steps -= steps
        return steps

    def train_steps(self, steps: int) -> dict[str, float]:
        """``steps`` Adam steps on minibatches drawn uniformly from the buffer."""
        if int(self.buffer.size) == 0 or steps <= 0:
            return {}
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        was_training = self.training
        self.train()
        total = 0.0
        for _ in range(steps):
            z = self.normalized(self.buffer.sample(self.batch_size, self.generator))
            loss = self.loss(z)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.after_step()
            total += float(loss.detach())
        self.train(was_training)
        return {"loss": total / steps}

    # ------------------------------------------------------------ persistence
    def get_extra_state(self) -> dict:
        """Optimiser, generator and step-budget state: saved under ``_extra_state`` by ``state_dict``."""
        # A copy: Adam's state dict holds references to its live step counters.
        return {
            "optimizer": None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "owed_steps": self._owed_steps,
        }

    def set_extra_state(self, state: dict) -> None:
        if state.get("optimizer") is not None:
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self._owed_steps = float(state.get("owed_steps", 0.0))


class FlowPseudoCounter(OnlineDensityModel):
    """Pseudo-counts from a normalizing flow fitted online to the observations.

    The default is a *kernel count*: the flow is fitted to observations
    jittered by ``N(0, sigma^2 I)`` with ``sigma = h / sqrt(2 pi)``, so it models
    the Gaussian-smoothed visitation density ``rho_sigma``, and
    ``N(x) = N_total * h^d * rho_sigma(x)`` is the number of past observations
    within a soft cell of side ``h`` around ``x`` (exact for a state visited
    ``n`` times at one point: ``N = n``).  A smooth target is what a flow fits
    well, and a count costs one flow evaluation.

    Args:
        obs_dim: size of the observation vectors.
        flow: any flow name of :func:`flowrl.available_flows` that takes vectors.
        estimator: one of :data:`ESTIMATORS` (see the module docstring).
        resolution: side ``h`` of a count cell in normalised observation space, or
            ``"auto"``: the ``+-2 sigma`` box of the kept features is cut into about
            ``cells`` cells whatever their number ``d``, ``h = 4 * cells ** (-1 / d)``
            (0.4 for 2 features, 1.26 for 4): with a fixed side, every added
            dimension would divide the counts of visited states by ``4 / h``.
        cells: the number of cells of ``resolution="auto"``.
        project: what to count on: ``None`` (every feature), a list of feature
            indices, or a callable mapping a float32 tensor ``(batch, obs_dim)`` to
            ``(batch, k)`` (checked once here, on zeros).
        redundancy: mask constant and duplicated features (see :class:`RunningNormalizer`).
        kernel: training jitter, ``"gaussian"`` (the kernel count, with ``estimator="density"``)
            or ``"box"`` (uniform in a cell, what the ``cell`` estimators assume).
        cell_samples: points per cell for ``estimator="cell"``/``"cell_bound"``.
        smoothing: scales the jitter (``sigma = smoothing * h / sqrt(2 pi)``, or a box
            of side ``smoothing * h``); 0: off.
        ema: decay of the parameter average counts are read from (0: read the trained flow).
        pg_lr: SGD step of the prediction-gain estimators (default ``lr``).
        lr, batch_size, steps_per_update, steps_per_observation, buffer_size, clip, normalize, seed:
            see :class:`OnlineDensityModel`.
        flow_kwargs: options of the flow (e.g. ``transforms``, ``hidden_features``).

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
        project: Optional[Sequence[int] | Callable[[Tensor], Tensor]] = None,
        redundancy: bool = True,
        kernel: str = "gaussian",
        cell_samples: int = 16,
        smoothing: float = 1.0,
        ema: float = 0.99,
        pg_lr: Optional[float] = None,
        lr: float = 1e-3,
        batch_size: int = 128,
        steps_per_update: Optional[int] = None,
        steps_per_observation: float = 1.0,
        buffer_size: int = 100_000,
        clip: float = 5.0,
        normalize: bool = True,
        seed: Optional[int] = None,
        flow_kwargs: Optional[dict] = None,
    ):
        if not isinstance(obs_dim, (int, np.integer)) or obs_dim < 1:
            raise ValueError(f"obs_dim must be a positive int, got {obs_dim!r}")
        self._projection, model_dim = _check_projection(project, int(obs_dim))
        super().__init__(
            (int(obs_dim),), lr=lr, batch_size=batch_size, steps_per_update=steps_per_update,
            steps_per_observation=steps_per_observation, buffer_size=buffer_size, clip=clip,
            normalize=normalize, seed=seed, model_shape=(model_dim,), redundancy=redundancy,
        )
        spec = flow_spec(flow)
        if not spec.vector:
            raise ValueError(f"flow {flow!r} does not model vectors")
        if model_dim < spec.min_dim:
            raise ValueError(f"flow {flow!r} needs at least {spec.min_dim} counted features, got {model_dim}; "
                             f"choose another flow")
        self.obs_dim = int(obs_dim)
        self._init_counter(
            flow, estimator=estimator, resolution=resolution, cell_samples=cell_samples, smoothing=smoothing,
            ema=ema, pg_lr=pg_lr, seed=seed, flow_kwargs=flow_kwargs, kernel=kernel, cells=cells,
        )

    def encode(self, x: Tensor) -> Tensor:
        """The counted features: ``project(x)`` (every feature without a projection)."""
        return x if self._projection is None else self._projection(x)

    def _init_counter(
        self, flow: str, *, estimator: str, resolution: float | str, cell_samples: int, smoothing: float,
        ema: float, pg_lr: Optional[float], seed: Optional[int], flow_kwargs: Optional[dict],
        kernel: str = "box", cells: float = 100.0,
    ) -> None:
        """Build the flow over ``model_shape`` and the estimators' settings (shared with image counters)."""
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
        self.event_numel = math.prod(self.model_shape)
        self.flow_name = flow
        self.flow_kwargs = dict(flow_kwargs or {})
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            dim = self.model_shape[0] if len(self.model_shape) == 1 else self.model_shape
            self.flow = build_flow(flow, dim, validate_args=False, **self.flow_kwargs)
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.ema = float(ema)
        # Counts are read from a Polyak average of the trained flow: minibatch
        # noise otherwise makes the density of rarely seen states jitter.
        self.ema_flow = copy.deepcopy(self.flow).requires_grad_(False) if self.ema > 0 else None
        self.estimator = estimator
        self.kernel = kernel
        self.resolution = resolution if resolution == "auto" else float(resolution)
        self.cells = float(cells)
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        self.smoothing = float(smoothing)
        self.pg_lr = float(self.lr if pg_lr is None else pg_lr)
        offsets = torch.quasirandom.SobolEngine(self.event_numel, scramble=True, seed=0).draw(int(cell_samples))
        self.register_buffer("cell_offsets", (offsets - 0.5).to(torch.float32).reshape(-1, *self.model_shape))

    @property
    def cell_side(self) -> float:
        """``h``: the given ``resolution``, or ``4 * cells ** (-1 / d)`` over the ``d`` kept features."""
        if self.resolution != "auto":
            return float(self.resolution)
        d = self.normalizer.effective_dim if self.use_normalizer else self.event_numel
        return 4.0 * self.cells ** (-1.0 / max(d, 1))

    def _cell_sides(self, z: Tensor) -> Tensor:
        """Per-feature cell sides, shape ``model_shape``: ``h``, and for masked (redundant) features
        ``sqrt(2 pi)`` (jitter ``N(0, 1)``, the base distribution's) or 1 (box), which the flow fits
        at once and the count's volume divides out exactly."""
        h = self.cell_side
        sides = z.new_full(self.model_shape, h)
        if self.use_normalizer and self.normalizer.redundancy:
            masked = math.sqrt(2 * math.pi) if self.kernel == "gaussian" else 1.0
            sides = torch.where(self.normalizer.keep.to(z.device), sides, sides.new_tensor(masked))
        return sides

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.flow.parameters())

    @property
    def scoring_flow(self) -> nn.Module:
        """The flow counts are read from: the parameter average when ``ema > 0``."""
        return self.flow if self.ema_flow is None else self.ema_flow

    def _to_flow_space(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Fixed map from the model space to the flow's input and its ``log|det|`` (here the identity)."""
        return z, z.new_zeros(z.shape[0])

    def _model_log_prob(self, flow: nn.Module, z: Tensor) -> Tensor:
        """``log rho(z)`` in the model space: ``log rho_flow(s(z)) + log|ds/dz|``."""
        s, logdet = self._to_flow_space(z)
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
        if self.ema_flow is None:
            return
        for p_avg, p in zip(self.ema_flow.parameters(), self.flow.parameters()):
            p_avg.lerp_(p, 1.0 - self.ema)
        for b_avg, b in zip(self.ema_flow.buffers(), self.flow.buffers()):
            b_avg.copy_(b)

    # ----------------------------------------------------------------- density
    def log_density(self, obs: Any) -> Tensor:
        """``log rho(x)`` of the model in normalised observation space, shape ``(batch,)``."""
        z = self.model_input(obs)
        with torch.no_grad():
            return self._per_row("log_prob", z, self._flow_log_prob)

    def _per_row(self, quantity: str, z: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn(z)``, a per-row quantity of model inputs ``z`` (``(batch,)``); ``quantity`` names it.

        A hook: :class:`flowrl.novelty_image.ImagePseudoCounter` evaluates each
        distinct row once (quantised frames repeat) and memoises the results.
        """
        return fn(z)

    def _log_cell_volume(self) -> float:
        if self.use_normalizer and self.normalizer.redundancy:
            return float(self._cell_sides(self.n_total.new_zeros((), dtype=torch.float64)).log().sum())
        return self.event_numel * math.log(self.cell_side)

    def _log_n_total(self) -> float:
        return math.log(max(self._n_total_host, 1.0))

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
        """Intrinsic reward ``beta / sqrt(N(x) + 0.01)``, shape ``(batch,)``."""
        return bonus_from_count(self.pseudo_count(obs, estimator), beta)

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
        z = self._to_flow_space(z)[0]  # a fixed map: its log-det cancels in the gain
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


def count_agreement(true_counts: Any, pseudo_counts: Any) -> tuple[float, float]:
    """(Spearman rank correlation, slope of the least-squares fit of ``log N_hat`` on ``log N``).

    Ties get their average rank.  A good estimator has Spearman near 1 and a
    slope near 1 (below: it saturates; above: it explodes).
    """
    n = np.asarray(true_counts, dtype=np.float64).ravel()
    m = np.asarray(pseudo_counts, dtype=np.float64).ravel()
    if n.shape != m.shape or n.size < 3:
        raise ValueError("need two arrays of the same length >= 3")
    if (n <= 0).any() or (m <= 0).any():
        raise ValueError("counts must be positive")

    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="mergesort")
        r = np.empty(a.size)
        r[order] = np.arange(a.size, dtype=np.float64)
        for v in np.unique(a):  # average ranks of ties
            tie = a == v
            r[tie] = r[tie].mean()
        return r

    rn, rm = ranks(n), ranks(m)
    denom = np.sqrt(((rn - rn.mean()) ** 2).sum() * ((rm - rm.mean()) ** 2).sum())
    spearman = float(((rn - rn.mean()) * (rm - rm.mean())).sum() / denom) if denom > 0 else 0.0
    ln, lm = np.log(n), np.log(m)
    slope = float(np.polyfit(ln, lm, 1)[0])
    return spearman, slope


def cluster_stream(
    counts: Sequence[int], dim: int = 2, spread: float = 0.01, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Exact-count benchmark: ``(centres (K, dim), shuffled stream (sum(counts), dim))``.

    ``K = len(counts)`` cluster centres on a grid in ``[-1, 1]^dim`` (random
    order), and a stream where centre ``k`` appears ``counts[k]`` times with
    Gaussian jitter of std ``spread``, shuffled.
    """
    g = torch.Generator().manual_seed(seed)
    k = len(counts)
    side = math.ceil(k ** (1.0 / dim))
    axes = [torch.linspace(-1.0, 1.0, side)] * dim
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, dim)
    centres = grid[torch.randperm(grid.shape[0], generator=g)[:k]]
    idx = torch.repeat_interleave(torch.arange(k), torch.as_tensor(list(counts)))
    idx = idx[torch.randperm(idx.numel(), generator=g)]
    stream = centres[idx] + spread * torch.randn(idx.numel(), dim, generator=g)
    return centres, stream
