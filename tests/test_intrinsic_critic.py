"""``novelty.critics``: replay samples that keep the two rewards apart, and IntrinsicCriticSAC."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.vec_env import DummyVecEnv
from test_novelty_agents import ONE_CRITIC, SMALL_FLOW, SMALL_SAC, AlternatingGoal, _mc, merged
from tolerances import assert_close_rounding

import envs  # noqa: F401  (registers the mazes)
from agents.config import ConfigError, TrainConfig
from agents.run import algorithm_class, build_model, make_env
from agents.novelty import (
    IntrinsicCriticSAC,
    NoveltyNStepReplayBuffer,
    NoveltyReplayBuffer,
    attach_novelty,
    find_novelty,
    make_novelty_bonus,
)
from agents.novelty.buffers import SplitReplaySamples
from agents.novelty.options import CriticOptions, NoveltyOptions
from agents.policies import FlowSACPolicy, critic_value


@pytest.mark.parametrize("n_steps", [1, 3])
def test_split_samples_carry_the_extrinsic_rewards_and_the_unweighted_bonus_of_the_same_rows(n_steps):
    """Joint rewards = split rewards + beta * split intrinsic rewards, row by row; the other fields are equal."""
    box = spaces.Box(-1, 1, (2,), np.float32)
    bonus = make_novelty_bonus(box, merged(SMALL_FLOW, {"weight": {"beta": 0.7}, "critics": {"return_bound": False}}))
    cls, extra = (NoveltyReplayBuffer, {}) if n_steps == 1 else (NoveltyNStepReplayBuffer, {"n_steps": 3, "gamma": 0.9})
    buf = cls(200, box, spaces.Box(-1, 1, (1,)), device="cpu", n_envs=2, novelty=bonus, **extra)
    rng = np.random.default_rng(0)
    for _ in range(50):
        o, nxt = rng.uniform(-1, 1, (2, 2)).astype(np.float32), rng.uniform(-1, 1, (2, 2)).astype(np.float32)
        r, d = rng.normal(size=2).astype(np.float32), rng.random(2) < 0.2
        buf.add(o, nxt, rng.uniform(-1, 1, (2, 1)), r, d, [{"TimeLimit.truncated": False}] * 2)
    bonus.observe(buf.next_observations[:50].reshape(-1, 2))
    bonus.flush()
    inds = np.random.default_rng(1).integers(0, 50, size=32)
    np.random.seed(3)
    split = buf._get_samples(inds)
    bonus.options.critics = None
    np.random.seed(3)
    joint = buf._get_samples(inds)
    assert isinstance(split, SplitReplaySamples) and not isinstance(joint, SplitReplaySamples)
    for name in ("observations", "actions", "next_observations", "dones", "discounts"):
        a, b = getattr(split, name), getattr(joint, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    assert torch.equal(joint.rewards, split.rewards + 0.7 * split.intrinsic_rewards)
    assert (split.intrinsic_rewards <= 0).all() and (split.intrinsic_rewards < 0).any()  # unweighted g - 1
    if n_steps == 1:  # the bonus of each row's next state, g - 1, with no weight
        np.random.seed(3)
        cols = np.random.randint(0, 2, size=len(inds))
        want = bonus.novelty(buf.next_observations[inds, cols]) - 1.0
        torch.testing.assert_close(split.intrinsic_rewards.ravel(), want)


def test_critic_value_mixes_extrinsic_and_weighted_intrinsic_critics():
    q = tuple(torch.tensor([[v]]) for v in (1.0, 3.0, -10.0, -4.0))
    assert critic_value(q).item() == -10.0  # one set of critics: the minimum over all
    assert critic_value(q, 0.5).item() == 1.0 + 0.5 * -10.0  # min Q_e + w min Q_i
    assert critic_value(q, 0.0).item() == 1.0


def _trained(algo_class, beta: float, policy=None, policy_kwargs=None, device="cpu", critics=None):
    """``algo_class`` trained 48 steps with the bonus at weight ``beta`` (IntrinsicCriticSAC: ``critics`` over the defaults)."""
    env = _mc()
    options = merged(SMALL_FLOW, {"weight": {"beta": beta}},
                     {"critics": critics or {}} if algo_class is IntrinsicCriticSAC else ONE_CRITIC)
    kwargs, callbacks = attach_novelty(algo_class, SMALL_SAC, env, options)
    pk = {**SMALL_SAC["policy_kwargs"], **(policy_kwargs or {})}
    model = algo_class(policy or "MlpPolicy", env, seed=0, device=device, **{**kwargs, "policy_kwargs": pk})
    return model.learn(48, callback=callbacks)


def _one_update(model, beta: float):
    """One gradient step at weight ``beta`` from a saved state; the critic's and the actor's parameters after it."""
    state = copy.deepcopy((model.policy.state_dict(), model.actor.optimizer.state_dict(),
                           model.critic.optimizer.state_dict(), model.ent_coef_optimizer.state_dict(),
                           model.log_ent_coef.detach().clone(), find_novelty(model).model.state_dict()))
    find_novelty(model).options.weight.beta = beta
    model.replay_buffer._drawn = []  # the block of minibatches is drawn anew: the same one after the same seed
    np.random.seed(0)
    torch.manual_seed(0)
    model.train(gradient_steps=1, batch_size=16)
    after = ([p.detach().clone() for p in model.critic.parameters()],
             [p.detach().clone() for p in model.actor.parameters()])
    policy, actor_opt, critic_opt, ent_opt, log_ent, novelty = state
    model.policy.load_state_dict(policy)
    model.actor.optimizer.load_state_dict(actor_opt)
    model.critic.optimizer.load_state_dict(critic_opt)
    model.ent_coef_optimizer.load_state_dict(ent_opt)
    model.log_ent_coef.data.copy_(log_ent)
    find_novelty(model).model.load_state_dict(novelty)
    return after


#: The critics with SAC's own extrinsic targets: soft (entropy backed up), unbounded, temperature learnt throughout.
SOFT_CRITICS = {"return_bound": False, "backup_entropy": True, "hold_ent_coef": None}


@pytest.mark.parametrize("algo_class, critics", [(IntrinsicCriticSAC, None), (IntrinsicCriticSAC, SOFT_CRITICS),
                                                 (SAC, None)], ids=["default-critics", "soft-critics", "one-critic"])
def test_a_new_weight_moves_the_actor_but_not_the_critics_only_with_intrinsic_critics(algo_class, critics):
    """Same minibatch, weights 0.5 and 5: IntrinsicCriticSAC's critics learn the same, plain SAC's do not."""
    model = _trained(algo_class, beta=0.5, critics=critics)
    critic_a, actor_a = _one_update(model, 0.5)
    critic_b, actor_b = _one_update(model, 5.0)
    same_critic = all(torch.equal(a, b) for a, b in zip(critic_a, critic_b))
    assert same_critic == (algo_class is IntrinsicCriticSAC)
    assert not all(torch.equal(a, b) for a, b in zip(actor_a, actor_b))  # the actor mixes the weight in
    if algo_class is IntrinsicCriticSAC:
        assert len(model.critic.q_networks) == 4
        for key in ("train/extrinsic_q", "train/intrinsic_q", "train/critic_loss", "train/ent_coef"):
            assert np.isfinite(model.logger.name_to_value[key]), key


def test_intrinsic_critic_sac_round_trips_and_its_critic_rule_mixes_the_critics(tmp_path, device):
    model = _trained(IntrinsicCriticSAC, beta=2.0, policy=FlowSACPolicy, device=device,
                     policy_kwargs=dict(flow="realnvp", deterministic_rule="critic",
                                        flow_kwargs=dict(transforms=2, hidden_features=[16])))
    policy, actor = model.policy, model.policy.actor
    assert policy.intrinsic_weight == find_novelty(model).beta == 2.0
    obs = torch.randn(8, 2, device=device)
    with torch.no_grad():
        chosen = policy._predict(obs, deterministic=True)
        actor.action_dist.proba_distribution(actor._latent(obs))
        cands = actor.action_dist.candidate_actions()  # (K, 8, 1)
        q = torch.stack([critic_value(policy.critic(obs[i:i + 1].expand(len(cands), 2), cands[:, i]), 2.0)
                         for i in range(8)], dim=1)  # (K, 8), row by row
    picked = (cands == chosen.unsqueeze(0)).all(dim=-1)
    assert (picked.sum(dim=0) >= 1).all()
    assert_close_rounding(torch.where(picked, q, torch.full_like(q, -torch.inf)).max(dim=0).values,
                          q.max(dim=0).values)
    model.save(tmp_path / "ic")
    loaded = IntrinsicCriticSAC.load(tmp_path / "ic", device=device)
    assert len(loaded.critic.q_networks) == 4 and loaded.policy.intrinsic_weight == 2.0  # not doubled again
    np.testing.assert_array_equal(loaded.predict(obs.cpu().numpy(), deterministic=True)[0],
                                  model.predict(obs.cpu().numpy(), deterministic=True)[0])


def test_success_window_weight_reaches_the_actor():
    """With a success window the actor (and the critic rule) weights the intrinsic critics by beta (1 - s)."""
    env = DummyVecEnv([lambda: AlternatingGoal(True)])
    kwargs, callbacks = attach_novelty(IntrinsicCriticSAC, SMALL_SAC, env, merged(
        SMALL_FLOW, {"weight": {"beta": 2.0, "success_window": 4, "success_hold": None}}))
    small_flow = dict(net_arch=[16], flow_kwargs=dict(transforms=1, hidden_features=[8]))
    model = IntrinsicCriticSAC(FlowSACPolicy, env, seed=0, device="cpu", **{**kwargs, "policy_kwargs": small_flow})
    model.learn(64, callback=callbacks)
    assert find_novelty(model).success_rate == 0.5  # episodes alternate between success and time-out
    model.train(gradient_steps=1, batch_size=16)
    assert model.policy.intrinsic_weight == pytest.approx(1.0)


def test_critics_are_on_by_default_and_need_intrinsic_critic_sac():
    env = gym.make("flowrl/PointMaze-Open-v0")
    with pytest.raises(ValueError, match="critics .on by default. need algo_class=IntrinsicCriticSAC"):
        attach_novelty(SAC, {}, env, {})
    with pytest.raises(ValueError, match="IntrinsicCriticSAC needs critics"):
        attach_novelty(IntrinsicCriticSAC, {}, env, {"critics": None})
    with pytest.raises(ValueError, match="with novelty critics"):
        IntrinsicCriticSAC("MlpPolicy", env, device="cpu")  # no novelty buffer
    kwargs, _ = attach_novelty(IntrinsicCriticSAC, {}, env, {})
    assert kwargs["replay_buffer_kwargs"]["novelty"].options.critics == CriticOptions(
        return_bound=True, backup_entropy=False, hold_ent_coef=0.01)
    # Other algorithms have one critic: the default critics are dropped, critics asked for are an error.
    for algo_class in (PPO, TD3):
        kwargs, _ = attach_novelty(algo_class, {}, env, {})
        key = "rollout_buffer_kwargs" if algo_class is PPO else "replay_buffer_kwargs"
        assert kwargs[key]["novelty"].options.critics is None
        with pytest.raises(ValueError, match=f"critics: SAC only; {algo_class.__name__} has one critic"):
            attach_novelty(algo_class, {}, env, {"critics": {"return_bound": False}})
    assert attach_novelty(PPO, {}, env, {"critics": None})[0]["rollout_buffer_kwargs"]["novelty"].options.critics is None
    # From a config: SAC with a bonus is IntrinsicCriticSAC unless critics is null; without one, SB3's SAC.
    split = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu", novelty={})
    assert algorithm_class(split) is IntrinsicCriticSAC
    model, _ = build_model(split, make_env(split))
    assert type(model) is IntrinsicCriticSAC and len(model.critic.q_networks) == 4
    one = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu", novelty=dict(critics=None))
    assert algorithm_class(one) is SAC
    model, _ = build_model(one, make_env(one))
    assert type(model) is SAC and len(model.critic.q_networks) == 2
    assert type(model.replay_buffer) is NoveltyReplayBuffer  # the bonus is there, added to SAC's one reward
    assert algorithm_class(TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu", novelty=None)) is SAC
    ppo_algo = dict(name="ppo", kwargs=dict(n_steps=16))
    with pytest.raises(ValueError, match="novelty.critics: SAC only, but algo.name is ppo"):
        TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu", algo=ppo_algo, novelty=dict(critics=dict()))
    ppo = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu", algo=ppo_algo, novelty={})
    assert ppo.novelty.critics is None  # the default section is SAC's: dropped for PPO
    given = ppo.model_copy(update={"novelty": NoveltyOptions(critics=dict())})  # given past the config's check
    with pytest.raises(ConfigError, match="^novelty: critics: SAC only"):
        build_model(given, make_env(given))
    plain_ppo = ppo.model_copy(update={"novelty": NoveltyOptions()})  # the defaults: critics dropped
    model, _ = build_model(plain_ppo, make_env(plain_ppo))
    assert type(model) is PPO and find_novelty(model).options.critics is None


@pytest.mark.parametrize("n_steps", [1, 3])
def test_return_bound_stores_the_discounted_return_of_terminated_episodes_only(n_steps):
    """G_t = sum_k 0.9^(k-t) r_k for rows of a terminated episode; -inf for truncated, unfinished, overwritten rows."""
    box = spaces.Box(-1, 1, (2,), np.float32)
    bonus = make_novelty_bonus(box, merged(SMALL_FLOW, {"critics": {"return_bound": True}}))
    cls, extra = (NoveltyReplayBuffer, {}) if n_steps == 1 else (NoveltyNStepReplayBuffer, {"n_steps": 3, "gamma": 0.9})
    buf = cls(12, box, spaces.Box(-1, 1, (1,)), device="cpu", n_envs=2, novelty=bonus, return_gamma=0.9, **extra)
    assert buf.buffer_size == 6  # rows of n_envs transitions
    obs, act = np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32)

    def step(rewards, dones, truncated=(False, False)):
        infos = [{"TimeLimit.truncated": t} for t in truncated]
        buf.add(obs, obs, act, np.array(rewards, np.float32), np.array(dones), infos)

    step([0, 1], [False, False])
    step([0.5, 0], [False, False])
    step([1, 2], [True, True], truncated=(False, True))  # env 0 terminates, env 1 is cut by a time limit
    step([0, 0], [False, False])  # both still running
    np.testing.assert_allclose(buf.episode_returns[:3, 0], [0.5 * 0.9 + 0.81, 0.5 + 0.9, 1.0], rtol=1e-6)
    assert np.isneginf(buf.episode_returns[:4, 1]).all() and np.isneginf(buf.episode_returns[3, 0])
    bonus.observe(np.zeros((4, 2), np.float32))
    bonus.flush()
    inds = np.arange(4).repeat(4)
    np.random.seed(3)
    samples = buf._get_samples(inds)
    np.random.seed(3)
    cols = np.random.randint(0, 2, size=len(inds))
    np.testing.assert_array_equal(samples.return_bounds.numpy().ravel(), buf.episode_returns[inds, cols])
    for _ in range(4):
        step([0, 0], [False, False])  # rows 4, 5, 0, 1: the buffer wraps onto the finished episode's rows 0 and 1
    assert np.isneginf(buf.episode_returns[:2]).all() and buf.episode_returns[2, 0] == pytest.approx(1.0)
    step([3, 0], [True, False])  # env 0's episode of 6 rows (3, 4, 5, 0, 1, 2): all still stored
    np.testing.assert_allclose(buf.episode_returns[[3, 4, 5, 0, 1, 2], 0], 3 * 0.9 ** np.arange(5, -1, -1), rtol=1e-6)
    for _ in range(6):
        step([0, 0], [False, False])
    step([1, 1], [False, True])  # env 1 ran 13 steps in a 6-row buffer: its first rows are gone, no bound
    assert np.isneginf(buf.episode_returns[:, 1]).all()


def test_return_bound_lifts_only_the_extrinsic_targets():
    """Bounds above every target: the extrinsic critics move up to them; the intrinsic critics learn the same."""
    env = _mc()
    options = merged(SMALL_FLOW, {"weight": {"beta": 0.5}, "critics": {"return_bound": True}})
    kwargs, callbacks = attach_novelty(IntrinsicCriticSAC, SMALL_SAC, env, options)
    model = IntrinsicCriticSAC("MlpPolicy", env, seed=0, device="cpu", **kwargs).learn(48, callback=callbacks)
    buf = model.replay_buffer
    buf.episode_returns[:] = -np.inf
    low_critic, _ = _one_update(model, 0.5)
    assert model.logger.name_to_value["train/return_bound_used"] == 0.0
    buf.episode_returns[:] = 100.0
    high_critic, _ = _one_update(model, 0.5)
    assert model.logger.name_to_value["train/return_bound_used"] == 1.0
    params = [list(q.parameters()) for q in model.critic.q_networks]
    n_per_net = len(params[0])
    nets = [(low_critic[i * n_per_net:(i + 1) * n_per_net], high_critic[i * n_per_net:(i + 1) * n_per_net])
            for i in range(len(params))]
    assert not all(torch.equal(a, b) for a, b in zip(*nets[0]))  # extrinsic: a new target
    assert all(torch.equal(a, b) for a, b in zip(*nets[2]))  # intrinsic: the same target
    with pytest.raises(ValueError, match=r"return_bound: moved to novelty\.critics\.return_bound"):
        make_novelty_bonus(spaces.Box(-1, 1, (2,)), {"return_bound": True})  # the former flat option
    with pytest.raises(ValueError, match="return_bound needs return_gamma"):
        NoveltyReplayBuffer(12, spaces.Box(-1, 1, (2,)), spaces.Box(-1, 1, (1,)), device="cpu",
                            novelty=find_novelty(model))


@pytest.mark.parametrize("backup_entropy", [True, False])
def test_backup_entropy_false_keeps_the_temperature_out_of_the_extrinsic_targets(backup_entropy, tmp_path):
    """The critics' update from the same state and minibatch at two temperatures: equal iff no entropy backup."""
    env = _mc()
    kwargs, callbacks = attach_novelty(IntrinsicCriticSAC, SMALL_SAC, env, merged(SMALL_FLOW, {
        "weight": {"beta": 0.5}, "critics": {"backup_entropy": backup_entropy, "return_bound": False}}))
    with pytest.raises(TypeError, match="backup_entropy"):  # a novelty option now, no longer the constructor's
        IntrinsicCriticSAC("MlpPolicy", env, device="cpu", backup_entropy=backup_entropy, **kwargs)
    model = IntrinsicCriticSAC("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    assert model.critic_options.backup_entropy == backup_entropy
    model.learn(48, callback=callbacks)
    critics = []
    for alpha in (0.1, 2.0):
        model.log_ent_coef.data.fill_(float(np.log(alpha)))
        critics.append(_one_update(model, 0.5)[0])
    assert all(torch.equal(a, b) for a, b in zip(*critics)) == (not backup_entropy)
    model.save(tmp_path / "m")
    assert IntrinsicCriticSAC.load(tmp_path / "m", device="cpu").critic_options.backup_entropy == backup_entropy


def test_the_rooms_recipe_builds_from_a_config():
    """novelty.critics (return_bound, backup_entropy) + weight: the model and buffer they ask for."""
    cfg = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu",
                      algo=dict(name="sac", kwargs=dict(ent_coef=0.01)),
                      novelty=dict(critics=dict(return_bound=True, backup_entropy=False, hold_ent_coef=None),
                                   weight=dict(success_window=5, success_hold=0.9)))
    model, _ = build_model(cfg, make_env(cfg))
    assert isinstance(model, IntrinsicCriticSAC) and model.critic_options.backup_entropy is False
    assert model.critic_options.hold_ent_coef is None and find_novelty(model).options.weight.success_window == 5
    assert model.replay_buffer.episode_returns is not None and model.replay_buffer.return_gamma == model.gamma
    unbounded = cfg.model_copy(update={"novelty": cfg.novelty.model_copy(update={"critics": CriticOptions(
        return_bound=False)})})
    model, _ = build_model(unbounded, make_env(unbounded))
    assert isinstance(model, IntrinsicCriticSAC) and model.replay_buffer.episode_returns is None
    # the critics' options are no algo.kwargs any more, with separate critics or without
    for novelty in ({}, {"critics": None}):
        old = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu",
                          algo=dict(name="sac", kwargs=dict(backup_entropy=False)), novelty=novelty)
        with pytest.raises(ConfigError, match="algo.kwargs.*backup_entropy"):
            build_model(old, make_env(old))


def test_hold_ent_coef_fixes_the_temperature_once_the_bonus_holds(tmp_path):
    """Learnt temperature while exploring; the constant hold_ent_coef (and no more temperature steps) once held."""
    env = DummyVecEnv([lambda: AlternatingGoal(True)])
    kwargs, callbacks = attach_novelty(IntrinsicCriticSAC, SMALL_SAC, env, merged(SMALL_FLOW, {
        "weight": {"beta": 2.0, "success_window": 2, "success_hold": 0.5}, "critics": {"hold_ent_coef": 0.02}}))
    model = IntrinsicCriticSAC("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    bonus = find_novelty(model)
    model.learn(6, callback=callbacks)  # one episode finished: no full window yet
    assert not bonus.holding
    logs: dict = {"ent_coef_loss": []}
    log_prob = torch.full((4, 1), -1.0)
    alpha = float(torch.exp(model.log_ent_coef.detach()))
    assert model._temperature(log_prob, logs).item() == pytest.approx(alpha) and logs["ent_coef_loss"]  # a step
    model.learn(64, callback=callbacks, reset_num_timesteps=False)  # episodes alternate: a window's share is 0.5
    assert bonus.holding
    before, logs = model.log_ent_coef.detach().clone(), {"ent_coef_loss": []}
    assert model._temperature(log_prob, logs).item() == pytest.approx(0.02)
    assert torch.equal(model.log_ent_coef.detach(), before) and not logs["ent_coef_loss"]  # no temperature step
    model.save(tmp_path / "m")
    assert IntrinsicCriticSAC.load(tmp_path / "m", device="cpu").critic_options.hold_ent_coef == 0.02
    bonus.options.critics.hold_ent_coef = None  # learnt throughout: still a temperature step while held
    logs = {"ent_coef_loss": []}
    assert model._temperature(log_prob, logs).item() == pytest.approx(float(torch.exp(before))) and logs["ent_coef_loss"]
    with pytest.raises(ValueError, match=r"novelty\.critics\.hold_ent_coef"):
        attach_novelty(IntrinsicCriticSAC, SMALL_SAC, env, {"critics": {"hold_ent_coef": 0.0}})
