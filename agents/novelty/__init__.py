"""Count-based novelty bonuses for any Stable-Baselines3 algorithm.

Interface (stable)::

    kwargs, callbacks = attach_novelty(algo_class, algo_kwargs, env, novelty)
    model = algo_class(policy, env, **kwargs)
    model.learn(total_timesteps, callback=[*callbacks, *others])
    novelty_density(model_or_callback, points)      # log rho(x), shape (N,), for density maps

``novelty`` is a plain dict of :class:`NoveltyOptions` in sections (unknown
keys -> ``ValueError`` naming them), e.g. ``{"model": {"kind": "rnd"}}``,
``{"weight": {"beta": 0.5, "success_hold": None}}`` or ``{"critics": None}``; ``{}``
is the project's agent (a flow pseudo-counter, weight 5 faded by success and
held at 0 once 18 of 20 episodes succeed, separate critics for SAC).
Off-policy agents get a replay buffer that scores each sampled minibatch
with the current model; on-policy agents get a rollout buffer that adds the
bonus before advantages are computed.  SAC takes the bonus as
:class:`IntrinsicCriticSAC`, which learns the intrinsic return with critics of
its own and weights it only in the actor (``critics=None``: SB3's ``SAC``).

Image observations (a 3-D ``Box``: uint8 frames, channels last or first,
as SB3 sees them before or after ``VecTransposeImage``) get the image
pseudo-counter of :mod:`flowrl.novelty.image_counts` (downsample, quantise, a small
Glow), or with ``kind: rnd`` the convolutional RND of :mod:`flowrl.novelty.image_rnd`;
options under ``model.image``.

Saving and resuming: ``model.save(path)`` pickles the buffer's kwargs, which
hold the :class:`NoveltyBonus` (options + the density model's state dict:
flow or RND weights, running normaliser, observation buffer, optimiser,
count ``n_total``).  ``Algo.load(path, env)`` rebuilds it inside the new
buffer; pass ``novelty_callbacks(model)`` to ``learn`` to keep training with
the same counts.  (``save_replay_buffer`` is independent of this.)
"""

from .attach import attach_novelty, find_novelty, make_novelty_bonus, novelty_callbacks, novelty_density
from .bonus import NoveltyBonus, image_max_value, observation_dim, observation_shape
from .buffers import (
    NoveltyDictReplayBuffer,
    NoveltyDictRolloutBuffer,
    NoveltyNStepReplayBuffer,
    NoveltyReplayBuffer,
    NoveltyRolloutBuffer,
)
from .callback import NoveltyCallback
from .options import (
    CriticOptions,
    FlowModelOptions,
    ImageOptions,
    NoveltyOptions,
    RNDModelOptions,
    WeightOptions,
    parse_options,
)
from .sac import IntrinsicCriticSAC

__all__ = [
    "attach_novelty",
    "novelty_density",
    "novelty_callbacks",
    "find_novelty",
    "make_novelty_bonus",
    "NoveltyBonus",
    "NoveltyCallback",
    "NoveltyOptions",
    "FlowModelOptions",
    "RNDModelOptions",
    "ImageOptions",
    "WeightOptions",
    "CriticOptions",
    "IntrinsicCriticSAC",
    "NoveltyReplayBuffer",
    "NoveltyNStepReplayBuffer",
    "NoveltyDictReplayBuffer",
    "NoveltyRolloutBuffer",
    "NoveltyDictRolloutBuffer",
    "observation_dim",
    "observation_shape",
    "image_max_value",
    "parse_options",
]
