"""``NoveltyBonus``: the density model an agent shares between its buffer and its callback.

It turns raw observations (never the ``VecNormalize``-d ones) into the
intrinsic reward ``beta * bonus(x)``, collects the observations the agent
visits and updates the model every ``update_every`` environment steps.  It
pickles to its options plus a CPU state dict, so an SB3 ``model.save`` that
pickles the buffer's kwargs carries the density model, its normaliser, its
buffer and its optimiser along.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from gymnasium import spaces

from flowrl.novelty import FlowPseudoCounter, OnlineDensityModel
from flowrl.rnd import RNDNovelty

from .options import NoveltyOptions, parse_options

__all__ = ["NoveltyBonus", "observation_dim"]


def observation_dim(space: spaces.Space, obs_key: Optional[str]) -> int:
    """Size of the vector the density model sees, or a ``ValueError`` for spaces it cannot model."""
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
    if len(space.shape) == 3 and space.dtype == np.uint8:
        raise ValueError("image observations are not supported by the novelty bonus yet; "
                         "give it a vector key (obs_key) or a feature wrapper")
    return int(np.prod(space.shape))


class NoveltyBonus:
    """Intrinsic reward ``beta * b(x)`` from an online novelty model, shared by buffer and callback."""

    def __init__(self, options: NoveltyOptions | dict, obs_dim: int):
        self.options = options if isinstance(options, NoveltyOptions) else parse_options(options)
        self.obs_dim = int(obs_dim)
        self.model = self._build_model()
        self._pending: list[np.ndarray] = []
        self._pending_steps = 0

    # ---------------------------------------------------------------- model
    def _build_model(self) -> OnlineDensityModel:
        o = self.options
        common = dict(lr=o.lr, batch_size=o.batch_size, steps_per_update=o.steps_per_update,
                      buffer_size=o.buffer_size, seed=o.seed)
        if o.kind == "flow":
            model = FlowPseudoCounter(
                self.obs_dim, o.flow, estimator=o.estimator, resolution=o.resolution,
                cell_samples=o.cell_samples, smoothing=o.smoothing, ema=o.ema,
                flow_kwargs=o.flow_kwargs, **common,
            )
        else:
            hidden = o.hidden_features if isinstance(o.hidden_features, int) else tuple(o.hidden_features)
            model = RNDNovelty(self.obs_dim, hidden_features=hidden, embedding_dim=o.embedding_dim, **common)
        return model.to(o.device)

    @property
    def beta(self) -> float:
        return self.options.beta

    @property
    def score(self) -> str:
        return self.options.score

    @property
    def update_every(self) -> int:
        return self.options.update_every

    def select(self, obs: Any) -> np.ndarray:
        """The modelled part of raw observations, as ``(batch, obs_dim)`` float32."""
        if isinstance(obs, dict):
            key = self.options.obs_key
            if key is None or key not in obs:
                raise ValueError(f"dict observations need obs_key (one of {list(obs)}), got {key!r}")
            obs = obs[key]
        if isinstance(obs, torch.Tensor):
            obs = obs.detach().cpu().numpy()
        arr = np.asarray(obs, dtype=np.float32)
        if arr.size % self.obs_dim != 0:
            raise ValueError(f"observations of shape {arr.shape} do not hold vectors of size {self.obs_dim}")
        arr = arr.reshape(-1, self.obs_dim)
        if not np.isfinite(arr).all():
            raise ValueError("observations contain NaN or inf values")
        return arr

    # ------------------------------------------------------------ rewards
    def intrinsic(self, obs: Any) -> torch.Tensor:
        """``beta * b(x)`` of raw observations under the current model, shape ``(batch,)``."""
        x = self.select(obs)
        with torch.no_grad():
            return self.model.bonus(x, beta=self.beta).detach()

    def log_density(self, obs: Any) -> np.ndarray:
        """``log rho(x)`` of the flow model in its normalised space (flow bonus only)."""
        if not isinstance(self.model, FlowPseudoCounter):
            raise ValueError("log_density needs a flow novelty model; this bonus is RND")
        return self.model.log_density(self.select(obs)).cpu().numpy()

    def pseudo_count(self, obs: Any) -> np.ndarray:
        if not isinstance(self.model, FlowPseudoCounter):
            raise ValueError("pseudo_count needs a flow novelty model; this bonus is RND")
        return self.model.pseudo_count(self.select(obs)).cpu().numpy()

    # ------------------------------------------------------------- updates
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
            "model_state": state,
            "pending": list(self._pending),
            "pending_steps": self._pending_steps,
        }

    def __setstate__(self, state: dict) -> None:
        self.options = NoveltyOptions(**state["options"])
        self.obs_dim = state["obs_dim"]
        self.model = self._build_model()
        device = self.model.device
        self.model.load_state_dict({k: _to_device(v, device) for k, v in state["model_state"].items()})
        self._pending = list(state["pending"])
        self._pending_steps = state["pending_steps"]

    def __repr__(self) -> str:
        return f"NoveltyBonus(kind={self.options.kind!r}, beta={self.beta}, model={self.model.__class__.__name__})"


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
