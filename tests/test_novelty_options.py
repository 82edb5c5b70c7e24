"""The sections of ``novelty:`` (model / weight / critics), their defaults and errors, and the model registry."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC, TD3

import envs  # noqa: F401  (registers the flowrl/ envs)
from agents.novelty import (
    CriticOptions,
    FlowModelOptions,
    IntrinsicCriticSAC,
    RNDModelOptions,
    attach_novelty,
    make_novelty_bonus,
    parse_options,
)
from agents.novelty.options import AGENT_FLOW_COUNTER

TINY_MODEL = {"flow_kwargs": {"transforms": 2, "hidden_features": [8]}, "batch_size": 16, "cell_samples": 2, "seed": 0}


def test_the_defaults_are_the_default_agent():
    """``{}``: a flow counter, weight 5 faded by 20 episodes and held at 0.9, separate critics with the bound."""
    opts = parse_options({})
    assert isinstance(opts.model, FlowModelOptions)
    assert (opts.weight.beta, opts.weight.success_window, opts.weight.success_hold) == (5.0, 20, 0.9)
    assert opts.critics == CriticOptions(return_bound=True, backup_entropy=False, hold_ent_coef=0.01)


def test_a_model_without_kind_is_a_flow_and_rnd_takes_only_its_own_options():
    assert isinstance(parse_options({"model": {"cells": 50}}).model, FlowModelOptions)
    rnd = parse_options({"model": {"kind": "rnd", "embedding_dim": 4}}).model
    assert isinstance(rnd, RNDModelOptions) and rnd.embedding_dim == 4
    with pytest.raises(ValueError, match=r"novelty\.model\.cells: unknown key"):
        parse_options({"model": {"kind": "rnd", "cells": 50}})
    with pytest.raises(ValueError, match=r"novelty\.model\.embedding_dim: unknown key"):
        parse_options({"model": {"embedding_dim": 4}})
    with pytest.raises(ValueError, match=r"novelty\.model: image\.levels: flow only"):
        parse_options({"model": {"kind": "rnd", "image": {"levels": 4}}})


@pytest.mark.parametrize("flat, where", [
    ({"beta": 1.0}, "novelty.weight.beta"),
    ({"kind": "rnd"}, "novelty.model.kind"),
    ({"cells": 400}, "novelty.model.cells"),
    ({"intrinsic_critic": True}, "novelty.critics"),
    ({"image_size": 7}, "novelty.model.image.size"),
])
def test_a_key_of_the_former_flat_section_names_where_it_moved(flat, where):
    with pytest.raises(ValueError, match=f"moved to {where}"):
        parse_options(flat)


@pytest.mark.parametrize("bad, key", [
    ({"weight": {"beta": -1}}, "novelty.weight.beta"),
    ({"weight": {"success_window": None}}, "success_hold needs success_window"),
    ({"critics": {"hold_ent_coef": 0}}, "novelty.critics.hold_ent_coef"),
    ({"critics": {"separate": True}}, "novelty.critics.separate: unknown key"),
    ({"model": {"kind": "counts"}}, "novelty.model"),
    ({"score": "previous"}, "novelty.score"),
])
def test_bad_values_name_their_key(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        parse_options(bad)


def _point_env():
    import gymnasium as gym

    return gym.make("flowrl/PointMaze-Open-v0")


def test_critics_go_with_intrinsic_critic_sac_only():
    """SAC's default is IntrinsicCriticSAC; SB3's SAC needs critics=None; other algorithms drop unasked critics."""
    env = _point_env()
    kwargs, _ = attach_novelty(IntrinsicCriticSAC, {}, env, {})
    assert kwargs["replay_buffer_kwargs"]["novelty"].options.critics is not None
    assert "return_gamma" in kwargs["replay_buffer_kwargs"]  # return_bound: the buffer keeps episode returns
    with pytest.raises(ValueError, match="need algo_class=IntrinsicCriticSAC"):
        attach_novelty(SAC, {}, env, {})
    kwargs, _ = attach_novelty(SAC, {}, env, {"critics": None})
    assert kwargs["replay_buffer_kwargs"]["novelty"].options.critics is None
    with pytest.raises(ValueError, match="IntrinsicCriticSAC needs critics"):
        attach_novelty(IntrinsicCriticSAC, {}, env, {"critics": None})
    for algo in (PPO, TD3):
        kwargs, _ = attach_novelty(algo, {}, env, {})
        key = "rollout_buffer_kwargs" if algo is PPO else "replay_buffer_kwargs"
        assert kwargs[key]["novelty"].options.critics is None
        with pytest.raises(ValueError, match="critics: SAC only"):
            attach_novelty(algo, {}, env, {"critics": {"return_bound": False}})


def test_an_agent_flow_counter_on_vectors_trains_as_agent_flow_counter_says_unless_told():
    bonus = make_novelty_bonus(spaces.Box(-1, 1, (2,)), {})
    assert bonus.model.settings.buffer_size == AGENT_FLOW_COUNTER["buffer_size"]
    assert bonus.model.cells == AGENT_FLOW_COUNTER["cells"]
    assert bonus.model.settings.batch_size == AGENT_FLOW_COUNTER["batch_size"]
    told = make_novelty_bonus(spaces.Box(-1, 1, (2,)), {"model": {"buffer_size": 300, "cells": 50}})
    assert (told.model.settings.buffer_size, told.model.cells) == (300, 50)
    assert told.model.settings.batch_size == AGENT_FLOW_COUNTER["batch_size"]


@pytest.mark.parametrize("kind", ["flow", "rnd"])
@pytest.mark.parametrize("image", [False, True])
def test_every_model_of_the_registry_scores_novelty_in_the_unit_interval(kind, image):
    """One interface: ``g(x)`` in (0, 1] for a counter, [0, 1) for RND, on vectors and on frames, after training."""
    if image:
        space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
        model = {"kind": kind, "image": {"size": 4}, "batch_size": 16, "seed": 0}
        if kind == "rnd":
            model.update(hidden_features=[4], embedding_dim=4)
        else:
            model["flow_kwargs"] = {"transforms": 2, "hidden_features": [8]}
    else:
        space = spaces.Box(-1, 1, (3,), np.float32)
        model = dict(TINY_MODEL) if kind == "flow" else {"kind": "rnd", "hidden_features": [8], "batch_size": 16,
                                                           "seed": 0}
    bonus = make_novelty_bonus(space, {"model": model, "update_every": 16, "device": "cpu"})
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (64, 16, 16, 3)).astype(np.uint8) if image else rng.uniform(-1, 1, (64, 3))
    bonus.observe(obs[:32], env_steps=16)
    g = bonus.novelty(obs)
    assert g.shape == (64,) and torch.isfinite(g).all()
    assert bool((g >= 0).all() and (g <= 1).all())
    if kind == "flow":
        assert bool((g > 0).all())


def test_a_saved_ppo_config_with_the_default_bonus_loads_and_builds_again(tmp_path):
    """The critics section is SAC's: a PPO config stores ``critics: null`` and reads back as it was (resume)."""
    from agents.config import TrainConfig, load_config, save_config
    from agents.run import build_model, make_env

    cfg = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu", algo=dict(name="ppo", kwargs=dict(n_steps=16)),
                      novelty={})
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.novelty.critics is None and again == cfg
    model, _ = build_model(again, make_env(again))
    assert type(model) is PPO


def test_a_config_names_the_models_key_without_the_union_tag():
    from agents.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"novelty\.model\.cells: unknown key"):
        config_from_dict({"env": {"id": "flowrl/PointMaze-v0"}, "novelty": {"model": {"kind": "rnd", "cells": 3}}})
