"""Count-based novelty bonuses for any Stable-Baselines3 algorithm.

Interface (stable)::

    kwargs, callbacks = attach_novelty(algo_class, algo_kwargs, env, novelty)
    model = algo_class(policy, env, **kwargs)
    model.learn(total_timesteps, callback=[*callbacks, *others])
    novelty_density(model_or_callback, points)      # log rho(x), shape (N,), for density maps

``novelty`` is a plain dict of :class:`NoveltyOptions` (unknown keys ->
``ValueError`` naming them), e.g. ``{"kind": "flow", "flow": "realnvp",
"beta": 0.5, "estimator": "cell", "update_every": 16, "score": "next"}`` or
``{"kind": "rnd", "beta": 0.5}``.  Off-policy agents get a replay buffer that
scores each sampled minibatch with the current model; on-policy agents get a
rollout buffer that adds the bonus before advantages are computed.
With ``intrinsic_critic=True``, :class:`IntrinsicCriticSAC` learns the
intrinsic return with critics of its own and weights it only in the actor.

Image observations (a 3-D ``Box``: uint8 frames, channels last or first,
as SB3 sees them before or after ``VecTransposeImage``) get the image
pseudo-counter of :mod:`flowrl.novelty_image` (downsample, quantise, a small
Glow), or with ``kind="rnd"`` the convolutional RND of :mod:`flowrl.rnd_image`;
options ``image_size``, ``image_grey`` (both kinds), ``image_levels`` (flow).

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
from .options import NoveltyOptions, parse_options
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
