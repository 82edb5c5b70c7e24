"""``NoveltyBonus``: the density model an agent shares between its buffer and its callback.

It turns raw observations (never the ``VecNormalize``-d ones) into the
intrinsic reward, collects the observations the agent
visits and updates the model every ``update_every`` environment steps.  It
pickles to its options plus a CPU state dict, so an SB3 ``model.save`` that
pickles the buffer's kwargs carries the density model, its normaliser, its
buffer and its optimiser along.

Image observations (a 3-D ``Box``, e.g. uint8 frames) are modelled by
:class:`flowrl.novelty.image_counts.ImagePseudoCounter` (``kind="flow"``) or
:class:`flowrl.novelty.image_rnd.ImageRND` (``kind="rnd"``): the bonus keeps them as
frames ``(C, H, W)`` (channels first, as SB3 stores them after
``VecTransposeImage``; channels-last frames are transposed on the way in)
and the counter downsamples and quantises them.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

import numpy as np
import torch
from gymnasium import spaces

from flowrl.novelty import FlowPseudoCounter, OnlineDensityModel, PseudoCounter
from flowrl.novelty.image_counts import ImagePseudoCounter
from flowrl.novelty.image_rnd import ImageRND
from flowrl.novelty.rnd import RNDNovelty

from .options import AGENT_FLOW_COUNTER, FlowModelOptions, NoveltyOptions, RNDModelOptions, model_kwargs, parse_options

__all__ = ["NoveltyBonus", "observation_dim", "observation_shape", "image_max_value"]


def _modelled_space(space: spaces.Space, obs_key: Optional[str]) -> spaces.Box:
    """The ``Box`` the density model sees, or a ``ValueError`` for spaces it cannot model."""
    if isinstance(space, spaces.Dict):
        if obs_key is None:
            raise ValueError(
                f"Dict observation space: choose the key to model with obs_key (one of {list(space.spaces)})"
            )
        if obs_key not in space.spaces:
            raise ValueError(f"obs_key {obs_key!r} is not in the observation space (keys: {list(space.spaces)})")
        space = space.spaces[obs_key]
    elif obs_key is not None:
        raise ValueError(f"obs_key={obs_key!r} given but the observation space is not a Dict")
    if not isinstance(space, spaces.Box):
        raise ValueError(f"the novelty bonus models Box observations; got {type(space).__name__}")
    return space


def _channels_first(shape: tuple[int, ...]) -> bool:
    """SB3's rule (``is_image_space_channels_first``): the smallest dimension holds the channels."""
    return int(np.argmin(shape)) == 0


def observation_shape(space: spaces.Space, obs_key: Optional[str]) -> tuple[int, ...]:
    """``(obs_dim,)`` for vector observations, ``(C, H, W)`` (channels first) for image ones (3-D ``Box``)."""
    box = _modelled_space(space, obs_key)
    shape = tuple(int(s) for s in box.shape)
    if len(shape) == 3:
        return shape if _channels_first(shape) else (shape[2], shape[0], shape[1])
    return (int(np.prod(shape)),)


def observation_dim(space: spaces.Space, obs_key: Optional[str]) -> int:
    """Number of values the density model sees per observation (``ValueError`` for spaces it cannot model)."""
    return int(np.prod(observation_shape(space, obs_key)))


def image_max_value(space: spaces.Space, obs_key: Optional[str]) -> float:
    """Largest pixel value of an image space (its ``high``); ``ValueError`` unless finite with ``low >= 0``."""
    box = _modelled_space(space, obs_key)
    if not (np.all(np.isfinite(box.low)) and np.all(np.isfinite(box.high)) and float(box.low.min()) >= 0):
        raise ValueError(
            f"image observations need finite bounds with low >= 0, got [{box.low.min()}, {box.high.max()}]"
        )
    return float(box.high.max())


class NoveltyBonus:
    """Intrinsic reward from an online novelty model, shared by buffer and callback.

    With ``g(x)`` in ``(0, 1]`` the novelty of a state (``model.novelty``: a
    pseudo-count's ``1 / sqrt(N(x) + 1)``, RND's ``1 - exp(-e(x) / s)``):

    * ``form="nonpositive"`` (default): ``r_int = beta_t (g(x) - 1)``, in ``[-beta_t, 0]``;
    * ``form="positive"``: ``r_int = beta_t g(x)``; ``"centred"``: ``beta_t (g(x) - mean g)``.

    Non-positive by default because an episode that ends at a terminal goal
    ends the stream of intrinsic reward: a positive bonus makes reaching the
    goal cost the ``~beta / (1 - gamma)`` the agent could still collect, so it
    learns to avoid the goal; a constant shift changes no preference between
    non-terminal behaviours.  Where failure terminates, use ``"positive"``.

    The weight ``beta_t`` (:attr:`beta`) follows ``options.weight``: a fade by the success share ``s`` of the last
    ``success_window`` training episodes (``beta (1 - s)``: the bonus is there to
    find the reward, and once episodes reach it what is left of it competes with
    the route), and a hold at 0 for good once a full window's share reaches
    ``success_hold`` (:attr:`holding`); the agent then follows what its
    extrinsic critic learnt (``options.critics``, :mod:`agents.novelty.sac`).

    ``obs_shape``: an int or ``(obs_dim,)`` for vectors, ``(C, H, W)`` for
    frames whose pixel values lie in ``[0, max_value]`` (see :func:`observation_shape`).
    """

    def __init__(self, options: NoveltyOptions | dict, obs_shape: int | tuple, max_value: float = 255.0):
        self.options = options if isinstance(options, NoveltyOptions) else parse_options(options)
        self.obs_shape = (int(obs_shape),) if isinstance(obs_shape, (int, np.integer)) else tuple(obs_shape)
        if len(self.obs_shape) not in (1, 3):
            raise ValueError(f"obs_shape must be (obs_dim,) or (C, H, W), got {self.obs_shape}")
        self.obs_dim = int(np.prod(self.obs_shape))
        self.max_value = float(max_value)
        self.model = self._build_model()
        self._pending: list[np.ndarray] = []
        self._pending_steps = 0
        self.recent_successes: deque[bool] = deque(maxlen=self.options.weight.success_window or 1)
        self.best_success_rate = 0.0  # over full windows (success_hold)

    # ---------------------------------------------------------------- model
    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    def _build_model(self) -> OnlineDensityModel:
        build = _MODELS[(self.options.model.kind, "image" if self.is_image else "vector")]
        # Eval mode between updates (``train_steps`` switches to training and back): scoring then
        # needs no mode switch, and image counters evaluate each distinct frame once.
        return build(self).to(self.device).eval()

    @property
    def device(self) -> str:
        """Where the density model lives first (``device="auto"``: the CPU until :meth:`follow` moves it)."""
        return "cpu" if self.options.device == "auto" else self.options.device

    def follow(self, device: torch.device | str) -> None:
        """With ``device="auto"``, move the model and its optimiser state to the agent's ``device``."""
        if self.options.device != "auto":
            return
        self.model.to(device)
        opt = getattr(self.model, "optimizer", None)
        for state in (opt.state.values() if opt is not None else ()):
            for k, v in state.items():  # Adam's "step" stays where torch keeps it (a CPU scalar)
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(device)

    @property
    def beta(self) -> float:
        """The weight in use: ``beta (1 - s)``, ``s`` the :attr:`success_rate`; 0 once :attr:`holding`."""
        if self.holding:
            return 0.0
        return self.options.weight.beta * (1.0 - self.success_rate)

    @property
    def holding(self) -> bool:
        """Whether a full window's success share has reached ``success_hold`` (the weight is then 0 for good)."""
        hold = self.options.weight.success_hold
        return hold is not None and self.best_success_rate >= hold

    @property
    def success_rate(self) -> float:
        """Share of the last ``success_window`` finished episodes that succeeded (0 before any, or without a window)."""
        if self.options.weight.success_window is None or not self.recent_successes:
            return 0.0
        return sum(self.recent_successes) / len(self.recent_successes)

    def record_episode(self, success: bool) -> None:
        """Note how a finished training episode ended (for ``success_window``)."""
        self.recent_successes.append(bool(success))
        if len(self.recent_successes) == self.recent_successes.maxlen:
            share = sum(self.recent_successes) / len(self.recent_successes)
            self.best_success_rate = max(self.best_success_rate, share)

    @property
    def version(self) -> int:
        """Changes of the model so far (``OnlineDensityModel.revision``): replay caches key on it."""
        return self.model.revision

    @property
    def score(self) -> str:
        return self.options.score

    @property
    def update_every(self) -> int:
        return self.options.update_every

    def select(self, obs: Any) -> np.ndarray:
        """The modelled part of raw observations, as float32 ``(batch, *obs_shape)``.

        Frames may come channels first ``(batch, C, H, W)`` or channels last
        ``(batch, H, W, C)`` (a single frame without the batch too).
        """
        if isinstance(obs, dict):
            key = self.options.obs_key
            if key is None or key not in obs:
                raise ValueError(f"dict observations need obs_key (one of {list(obs)}), got {key!r}")
            obs = obs[key]
        if isinstance(obs, torch.Tensor):
            obs = obs.detach().cpu().numpy()
        arr = np.asarray(obs, dtype=np.float32)
        if self.is_image:
            arr = self._frames_first(arr)
        elif arr.size % self.obs_dim != 0:
            raise ValueError(f"observations of shape {arr.shape} do not hold vectors of size {self.obs_dim}")
        else:
            arr = arr.reshape(-1, self.obs_dim)
        if not np.isfinite(arr).all():
            raise ValueError("observations contain NaN or inf values")
        return arr

    def _frames_first(self, arr: np.ndarray) -> np.ndarray:
        c, h, w = self.obs_shape
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim == 4 and arr.shape[1:] == (c, h, w):
            return arr
        if arr.ndim == 4 and arr.shape[1:] == (h, w, c):
            return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
        raise ValueError(f"image observations have shape {arr.shape}, expected (batch, {c}, {h}, {w}) "
                         f"or (batch, {h}, {w}, {c})")

    # ------------------------------------------------------------ rewards
    def novelty(self, obs: Any) -> torch.Tensor:
        """``g(x)`` in ``(0, 1]`` of raw observations: ``1 / sqrt(N + 1)`` (counts) or ``1 - exp(-e / s)`` (RND)."""
        x = self.select(obs)
        with torch.no_grad():
            return self.model.novelty(x)

    def intrinsic(self, obs: Any) -> torch.Tensor:
        """The intrinsic reward of raw observations under the current model, shape ``(batch,)``."""
        return self.reward(self.novelty(obs))

    def reward(self, novelty: torch.Tensor) -> torch.Tensor:
        """The intrinsic reward of novelties ``g`` in ``(0, 1]``: ``beta * shaped(g)``."""
        return self.beta * self.shaped(novelty)

    def shaped(self, novelty: torch.Tensor) -> torch.Tensor:
        """The unweighted intrinsic reward of novelties ``g``: ``g - 1``, ``g`` or ``g - mean(g)`` by ``form``."""
        if self.options.weight.form == "positive":
            return novelty
        if self.options.weight.form == "centred":
            return novelty - novelty.mean()
        return novelty - 1.0

    @staticmethod
    def saturated(novelty: np.ndarray | torch.Tensor) -> np.ndarray:
        """Whether each novelty ``g(x)`` is within 5 % of its cap 1 (a state that reads as never seen)."""
        g = novelty.detach().cpu().numpy() if isinstance(novelty, torch.Tensor) else np.asarray(novelty)
        return g >= 0.95

    def log_density(self, obs: Any) -> np.ndarray:
        """``log rho(x)`` of the flow model in its normalised space (flow bonus only)."""
        if not isinstance(self.model, PseudoCounter):
            raise ValueError("log_density needs a flow novelty model; this bonus is RND")
        return self.model.log_density(self.select(obs)).cpu().numpy()

    def pseudo_count(self, obs: Any) -> np.ndarray:
        if not isinstance(self.model, PseudoCounter):
            raise ValueError("pseudo_count needs a flow novelty model; this bonus is RND")
        return self.model.pseudo_count(self.select(obs)).cpu().numpy()

    # ------------------------------------------------------------- updates
    def update_due(self, env_steps: int = 1) -> bool:
        """Whether :meth:`observe` with ``env_steps`` more steps will update the model."""
        return self._pending_steps + int(env_steps) >= self.update_every

    def observe(self, obs: Any, env_steps: int = 1) -> Optional[dict]:
        """Queue visited observations; every ``update_every`` env steps the model trains on them."""
        self._pending.append(self.select(obs))
        self._pending_steps += int(env_steps)
        if self._pending_steps < self.update_every:
            return None
        return self.flush()

    def flush(self) -> Optional[dict]:
        """Update the model with the queued observations now."""
        if not self._pending:
            return None
        batch = np.concatenate(self._pending)
        self._pending, self._pending_steps = [], 0
        return self.model.update(batch)

    # --------------------------------------------------------- persistence
    def __getstate__(self) -> dict:
        state = {k: _to_cpu(v) for k, v in self.model.state_dict().items()}
        return {
            "options": self.options.as_dict(),
            "obs_dim": self.obs_dim,
            "obs_shape": self.obs_shape,
            "max_value": self.max_value,
            "model_state": state,
            "pending": list(self._pending),
            "pending_steps": self._pending_steps,
            "recent_successes": list(self.recent_successes),
            "best_success_rate": self.best_success_rate,
        }

    def __setstate__(self, state: dict) -> None:
        self.options = parse_options(state["options"])
        self.obs_dim = state["obs_dim"]
        self.obs_shape = tuple(state.get("obs_shape", (self.obs_dim,)))
        self.max_value = float(state.get("max_value", 255.0))
        self.model = self._build_model()
        device = self.model.device
        self.model.load_state_dict({k: _to_device(v, device) for k, v in state["model_state"].items()})
        self._pending = list(state["pending"])
        self._pending_steps = state["pending_steps"]
        self.recent_successes = deque(state.get("recent_successes", ()), maxlen=self.options.weight.success_window or 1)
        self.best_success_rate = float(state.get("best_success_rate", 0.0))

    def __repr__(self) -> str:
        kind, model = self.options.model.kind, type(self.model).__name__
        return f"NoveltyBonus(kind={kind!r}, beta={self.beta}, model={model})"


def _to_cpu(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, dict):
        return {k: _to_cpu(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_to_cpu(x) for x in v]
    return v


def _to_device(v: Any, device: torch.device) -> Any:
    # Optimiser states are moved by load_state_dict; the generator state stays on the CPU.
    if isinstance(v, torch.Tensor) and v.dtype != torch.uint8:
        return v.to(device)
    return v


def _hidden(model: RNDModelOptions) -> tuple[int, ...]:
    return (model.hidden_features,) if isinstance(model.hidden_features, int) else tuple(model.hidden_features)


def _flow_vector(bonus: NoveltyBonus) -> OnlineDensityModel:
    model = bonus.options.model
    assert isinstance(model, FlowModelOptions)
    return FlowPseudoCounter(bonus.obs_dim, project=bonus.options.project,
                             **model_kwargs(model, image=False, defaults=AGENT_FLOW_COUNTER))


def _flow_image(bonus: NoveltyBonus) -> OnlineDensityModel:
    model = bonus.options.model
    kwargs = model_kwargs(model, image=True)
    if model.image.levels is not None:
        kwargs["levels"] = model.image.levels
    return ImagePseudoCounter(bonus.obs_shape, size=tuple(model.image.size), grey=model.image.grey,
                              max_value=bonus.max_value, channels_last=False, **kwargs)


def _rnd_vector(bonus: NoveltyBonus) -> OnlineDensityModel:
    model = bonus.options.model
    assert isinstance(model, RNDModelOptions)
    return RNDNovelty(bonus.obs_dim, hidden_features=_hidden(model), embedding_dim=model.embedding_dim,
                      **model_kwargs(model, image=False))


def _rnd_image(bonus: NoveltyBonus) -> OnlineDensityModel:
    model = bonus.options.model
    assert isinstance(model, RNDModelOptions)
    return ImageRND(bonus.obs_shape, size=tuple(model.image.size), grey=model.image.grey, max_value=bonus.max_value,
                    channels_last=False, channels=_hidden(model), embedding_dim=model.embedding_dim,
                    **model_kwargs(model, image=True))


#: The density model of each (``model.kind``, observation modality): every one scores ``novelty(x)`` in (0, 1].
_MODELS: dict[tuple[str, str], Callable[[NoveltyBonus], OnlineDensityModel]] = {
    ("flow", "vector"): _flow_vector, ("flow", "image"): _flow_image,
    ("rnd", "vector"): _rnd_vector, ("rnd", "image"): _rnd_image,
}
