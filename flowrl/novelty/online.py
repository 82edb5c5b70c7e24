"""Online training of novelty models: one settings object, a bounded buffer, the training loop.

A novelty model is built from parts: an observation encoder
(:mod:`flowrl.novelty.encoders`), the networks it trains, and one
:class:`TrainingSettings`.  :class:`OnlineDensityModel` holds the plumbing they
share: ``update(obs)`` encodes observations, folds them into the encoder's
running statistics and a ring buffer of the last ``buffer_size``, then takes
Adam steps on minibatches drawn from the buffer,
``steps = steps_per_update`` or ``floor(carry + steps_per_observation * n_new)``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from .encoders import ObservationEncoder, RunningNormalizer

__all__ = ["TrainingSettings", "ObservationBuffer", "OnlineDensityModel", "seeded"]

T = TypeVar("T")


@dataclass(frozen=True)
class TrainingSettings:
    """How a novelty model trains; every default of every model's training is stated here once.

    Args:
        lr: Adam step size.
        batch_size: minibatch drawn from the buffer per step.
        steps_per_update: training steps taken by each ``update``; ``None`` (default): the
            budget follows the data, ``steps_per_observation`` steps per observation received,
            whatever the chunk sizes (fractions carry over to the next update).
        steps_per_observation: Adam steps per new observation when ``steps_per_update`` is ``None``.
        buffer_size: the last ``buffer_size`` observations are kept for training.
        seed: seeds the model's initialisation and its own generator (minibatches, jitter);
            ``None``: initialised from the global RNG, which is left as it was.

    >>> TrainingSettings(batch_size=64).replace(lr=3e-3).lr
    0.003
    """

    lr: float = 1e-3
    batch_size: int = 128
    steps_per_update: Optional[int] = None
    steps_per_observation: float = 1.0
    buffer_size: int = 100_000
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "buffer_size"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"{name} must be positive, got {v!r}")
        spu = self.steps_per_update
        if spu is not None and not (isinstance(spu, (int, np.integer)) and not isinstance(spu, bool) and spu >= 0):
            raise ValueError(f"steps_per_update must be None or an int >= 0, got {spu!r}")
        spo = self.steps_per_observation
        if not (isinstance(spo, (int, float)) and 0 <= spo < math.inf):
            raise ValueError(f"steps_per_observation must be a finite number >= 0, got {spo!r}")
        if self.seed is not None and not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be None or an int, got {self.seed!r}")
        set_ = object.__setattr__  # frozen: normalise the types once, here
        set_(self, "lr", float(self.lr))
        set_(self, "batch_size", int(self.batch_size))
        set_(self, "buffer_size", int(self.buffer_size))
        set_(self, "steps_per_update", None if spu is None else int(spu))
        set_(self, "steps_per_observation", float(spo))
        set_(self, "seed", None if self.seed is None else int(self.seed))

    def replace(self, **changes: Any) -> "TrainingSettings":
        """A copy with ``changes`` (field names); ``TypeError`` names an unknown one, ``ValueError`` a bad value."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}; the training options are {list(FIELDS)}")
        return dataclasses.replace(self, **changes)


#: Names of the training options (keyword arguments every novelty model accepts).
FIELDS = tuple(f.name for f in dataclasses.fields(TrainingSettings))


def seeded(seed: Optional[int], build: Callable[[], T]) -> T:
    """``build()`` with the global RNG seeded by ``seed`` (``None``: as it is), and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        return build()


class ObservationBuffer(nn.Module):
    """Ring buffer of the last ``capacity`` observations (kept in the state dict)."""

    data: Tensor
    pos: Tensor
    size: Tensor

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


def _sync_n_total_after_load(module: nn.Module, _keys: Any) -> None:
    """``load_state_dict`` post-hook: refresh the host copy of the loaded ``n_total``."""
    if isinstance(module, OnlineDensityModel):
        module._n_total_host = float(module.n_total)


class OnlineDensityModel(nn.Module):
    """Observations in, training steps taken: the plumbing shared by novelty models.

    Args:
        encoder: raw observations -> model inputs (see :mod:`flowrl.novelty.encoders`).
        settings: the training settings (see :class:`TrainingSettings`).

    Subclasses implement :meth:`loss` on a batch of *normalised* features and
    :meth:`trainable_parameters`.  Inputs are numpy arrays or tensors of shape
    ``(batch, *obs_shape)`` (a single observation of shape ``obs_shape`` is
    accepted too); the model sees ``model_input(obs) = normalize(encode(as_batch(obs)))``.

    The models' own constructors take the training options as keyword arguments
    (``lr=``, ``batch_size=``, ...) or as ``settings=``; :meth:`training_settings`
    resolves them against the class's :attr:`default_settings`.
    """

    n_total: Tensor
    #: The training settings a model of this class gets when none are given.
    default_settings: ClassVar[TrainingSettings] = TrainingSettings()

    def __init__(self, encoder: ObservationEncoder, settings: TrainingSettings):
        super().__init__()
        if not isinstance(settings, TrainingSettings):
            raise TypeError(f"settings must be a TrainingSettings, got {type(settings).__name__}")
        self.encoder = encoder
        self.settings = settings
        self._owed_steps = 0.0  # fraction of a step carried to the next update
        self.buffer = ObservationBuffer(settings.buffer_size, encoder.model_shape)
        self.register_buffer("n_total", torch.zeros((), dtype=torch.float64))
        self._n_total_host = 0.0  # host copy of n_total: counts read it per batch without a device sync
        self.register_load_state_dict_post_hook(_sync_n_total_after_load)
        self.revision = 0  # changes of the model (update and train_steps calls): caches of its outputs key on it
        self.generator = torch.Generator()  # minibatches and jitter; the global RNG is left alone
        if settings.seed is not None:
            self.generator.manual_seed(settings.seed)
        self.optimizer: Optional[torch.optim.Optimizer] = None

    def novelty(self, obs: Any) -> Tensor:
        """How novel each observation is, ``g(x)`` in ``(0, 1]`` (1: never seen), shape ``(batch,)``.

        The one score every novelty model gives, whatever it measures: a
        pseudo-count's ``1 / sqrt(N + 1)``, RND's ``1 - exp(-e / s)``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define novelty()")

    @classmethod
    def training_settings(cls, settings: Optional[TrainingSettings], options: dict[str, Any]) -> TrainingSettings:
        """``settings`` (default :attr:`default_settings`) with the keyword ``options`` replaced."""
        return (cls.default_settings if settings is None else settings).replace(**options)

    # ------------------------------------------------------------------ input
    @property
    def device(self) -> torch.device:
        return self.n_total.device

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self.encoder.obs_shape

    @property
    def model_shape(self) -> tuple[int, ...]:
        return self.encoder.model_shape

    @property
    def normalizer(self) -> Optional[RunningNormalizer]:
        """The encoder's running normaliser (``None`` when features are not normalised)."""
        return self.encoder.normalizer

    def as_batch(self, obs: Any) -> Tensor:
        """Validate ``obs`` and return a float32 tensor ``(batch, *obs_shape)`` on the model's device."""
        return self.encoder.as_batch(obs, self.device)

    def normalized(self, features: Tensor) -> Tensor:
        return self.encoder.normalize(features)

    def model_input(self, obs: Any) -> Tensor:
        """``normalize(encode(as_batch(obs)))``: raw observations in the model's space."""
        return self.encoder.normalize(self.encoder.encode(self.as_batch(obs)))

    # --------------------------------------------------------------- training
    def loss(self, z: Tensor) -> Tensor:
        """Training loss on a batch of normalised features."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook run after every optimiser step (parameter averaging)."""

    def _make_optimizer(self) -> torch.optim.Optimizer:
        # fused: one kernel for the whole update (these models are many small tensors); where this torch
        # has no fused Adam for the device, foreach: one kernel per state tensor kind. The same update.
        params = self.trainable_parameters()
        try:
            return torch.optim.Adam(params, lr=self.settings.lr, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(params, lr=self.settings.lr, foreach=True)

    def update(self, obs: Any, steps: Optional[int] = None) -> dict[str, float]:
        """Add ``obs`` to the model's experience, then take ``steps`` training steps.

        Default ``steps``: ``steps_per_update``, or, when that is ``None``,
        ``steps_per_observation`` per observation in ``obs`` (so 32 updates of
        16 observations train as much as one of 512).
        """
        x = self.encoder.encode(self.as_batch(obs))
        self.revision += 1
        self.encoder.observe(x)
        self.buffer.add(x)
        self.n_total += x.shape[0]
        self._n_total_host += x.shape[0]
        if steps is None:
            per_update = self.settings.steps_per_update
            steps = per_update if per_update is not None else self._steps_owed(x.shape[0])
        return self._train(steps)

    def _steps_owed(self, n_new: int) -> int:
        """Whole steps owed for ``n_new`` observations at ``steps_per_observation``; the fraction carries over."""
        self._owed_steps += self.settings.steps_per_observation * n_new
        steps = int(self._owed_steps)
        self._owed_steps -= steps
        return steps

    def train_steps(self, steps: int) -> dict[str, float]:
        """``steps`` Adam steps on minibatches drawn uniformly from the buffer."""
        if steps > 0:
            self.revision += 1
        return self._train(steps)

    def _train(self, steps: int) -> dict[str, float]:
        if steps <= 0 or int(self.buffer.size) == 0:
            return {}
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        was_training = self.training
        self.train()
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            z = self.encoder.normalize(self.buffer.sample(self.settings.batch_size, self.generator))
            loss = self.loss(z)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.after_step()
            total += loss.detach()
        self.train(was_training)
        return {"loss": float(total) / steps}  # one host read per call, not per step

    # ------------------------------------------------------------ persistence
    def get_extra_state(self) -> dict:
        """Optimiser, generator and step-budget state: saved under ``_extra_state`` by ``state_dict``."""
        # A copy: Adam's state dict holds references to its live step counters.
        return {
            "optimizer": None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "owed_steps": self._owed_steps,
            "revision": self.revision,
        }

    def set_extra_state(self, state: dict) -> None:
        if state.get("optimizer") is not None:
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self._owed_steps = float(state.get("owed_steps", 0.0))
        self.revision = int(state.get("revision", 0))
