"""The novelty bonus in Stable-Baselines3: off- and on-policy, VecNormalize, logging, save/load, errors."""

from __future__ import annotations

import functools
import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from tolerances import assert_close_rounding
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.config import merge_configs
from agents.novelty.buffers import DRAW_AHEAD
from agents.novelty import (
    NoveltyBonus,
    NoveltyReplayBuffer,
    NoveltyRolloutBuffer,
    attach_novelty,
    find_novelty,
    make_novelty_bonus,
    novelty_callbacks,
    novelty_density,
)

SMALL_FLOW = {"model": {"flow_kwargs": {"transforms": 2, "hidden_features": [16]}, "batch_size": 32,
                        "steps_per_update": 2, "cell_samples": 4},
              "update_every": 8}
#: SB3's SAC takes the bonus with one shared critic: the novelty critics (on by default) are off.
ONE_CRITIC = {"critics": None}
SMALL_SAC = dict(learning_starts=24, batch_size=16, buffer_size=2000, policy_kwargs=dict(net_arch=[16]))
SMALL_PPO = dict(n_steps=32, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[16]))


def merged(*parts: dict) -> dict:
    """Novelty options from ``parts``, later ones over earlier ones, section by section (as config files merge)."""
    return functools.reduce(merge_configs, parts, {})


class PointDict(gym.Env):
    """A 2-D point pushed by its action, observed as a Dict (position and a constant tag)."""

    def __init__(self):
        self.observation_space = spaces.Dict({
            "pos": spaces.Box(-5, 5, (2,), np.float32),
            "tag": spaces.Box(0, 1, (1,), np.float32),
        })
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.pos = np.zeros(2, np.float32)
        self.t = 0

    def _obs(self):
        return {"pos": self.pos.copy(), "tag": np.ones(1, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.1, 0.1, 2).astype(np.float32)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.asarray(action, np.float32), -5, 5)
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 20, {}


def _mc(n_envs=1, seed=0):
    return make_vec_env("MountainCarContinuous-v0", n_envs=n_envs, seed=seed)


def test_attach_gives_buffers_and_callbacks_without_touching_the_input():
    env = _mc()
    given = {"buffer_size": 100}
    kwargs, callbacks = attach_novelty(SAC, given, env, {"model": {"kind": "flow"}, "weight": {"beta": 0.3},
                                                         **ONE_CRITIC})
    assert given == {"buffer_size": 100}
    assert kwargs["replay_buffer_class"] is NoveltyReplayBuffer
    assert isinstance(kwargs["replay_buffer_kwargs"]["novelty"], NoveltyBonus)
    assert len(callbacks) == 1 and find_novelty(callbacks[0]).beta == 0.3
    kwargs, _ = attach_novelty(PPO, {}, env, {"model": {"kind": "rnd"}})
    assert kwargs["rollout_buffer_class"] is NoveltyRolloutBuffer
    assert kwargs["rollout_buffer_kwargs"]["novelty"].options.critics is None  # the default critics: SAC only


@pytest.mark.parametrize("options, match", [
    ({"model": {"kind": "flow"}, "weight": {"betta": 1.0}}, r"novelty\.weight\.betta: unknown key"),
    ({"model": {"kind": "counts"}}, "kind"),
    ({"model": {"kind": "rnd", "flow": "nsf"}}, r"novelty\.model\.flow: unknown key"),
    ({"model": {"estimator": "magic"}}, r"novelty\.model\.estimator"),
    ({"score": "later"}, "score"),
    ({"model": {"flow": "no-such-flow"}}, "unknown flow"),
    ({"beta": 1.0}, r"beta: moved to novelty\.weight\.beta"),
])
def test_bad_options_raise_value_errors_naming_the_problem(options, match):
    with pytest.raises(ValueError, match=match):
        attach_novelty(SAC, {}, _mc(), {**options, **ONE_CRITIC})


def test_dict_observations_need_a_key_and_nan_observations_are_refused():
    env = DummyVecEnv([PointDict])
    with pytest.raises(ValueError, match="obs_key"):
        attach_novelty(SAC, {}, env, ONE_CRITIC)
    with pytest.raises(ValueError, match="not in the observation space"):
        attach_novelty(SAC, {}, env, {"obs_key": "velocity", **ONE_CRITIC})
    bonus = make_novelty_bonus(spaces.Box(-1, 1, (2,)), {})
    with pytest.raises(ValueError, match="NaN"):
        bonus.intrinsic(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="Box"):
        make_novelty_bonus(spaces.Discrete(4), {})


def test_sac_scores_the_sampled_transitions_with_the_current_model(device):
    env = _mc(n_envs=2)
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, merged(SMALL_FLOW, ONE_CRITIC, {
        "model": {"seed": 0}, "weight": {"beta": 0.5}, "staleness": 0}))
    model = SAC("MlpPolicy", env, seed=0, device=device, **kwargs)
    model.learn(60, callback=callbacks)
    buf, bonus = model.replay_buffer, find_novelty(model)
    assert bonus.model.n_total == 60  # every visited state (2 envs x 30 steps) was fed to the model
    samples = buf.sample(64)
    inds, env_inds = buf.last_draw
    assert inds.max() < buf.size() and env_inds.max() < 2
    raw_next = buf.next_observations[inds, env_inds]
    assert np.allclose(samples.next_observations.cpu().numpy(), raw_next)  # rows line up with what was scored
    expected = buf.rewards[inds, env_inds] + bonus.intrinsic(raw_next).cpu().numpy()
    assert np.allclose(samples.rewards.cpu().numpy().ravel(), expected, atol=1e-5)
    # The bonus follows the model: after more training the same rows get other rewards, even when drawn
    # ahead of the update (staleness 0: scores older than the model are renewed when used).
    drawn_ahead = list(buf._drawn)
    bonus.model.update(raw_next, steps=20)
    assert not np.allclose(buf._get_samples(inds, env_inds=env_inds).rewards.cpu().numpy(),
                           samples.rewards.cpu().numpy())
    later = buf.sample(64)
    assert np.array_equal(buf.last_draw[0], drawn_ahead[-1][0])  # the next minibatch of the block drawn ahead
    rows, cols = buf.last_draw
    assert np.allclose(later.rewards.cpu().numpy().ravel(),
                       buf.rewards[rows, cols] + bonus.intrinsic(buf.next_observations[rows, cols]).cpu().numpy(),
                       atol=1e-5)
    logged = model.logger.name_to_value
    assert "train/intrinsic_reward" in logged or "rollout/intrinsic_reward" in model.logger.name_to_count


def test_replayed_bonuses_lag_the_model_by_at_most_staleness_updates():
    """A drawn score is at most ``staleness`` model updates old, and a block drawn ahead is scored in one call."""
    env = _mc(n_envs=2)
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, merged(SMALL_FLOW, ONE_CRITIC, {
        "model": {"seed": 0}, "weight": {"beta": 0.5}, "staleness": 3}))
    model = SAC("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    model.learn(80, callback=callbacks)
    buf, bonus = model.replay_buffer, find_novelty(model)
    stored = buf.next_observations[:buf.size()].reshape(-1, 2)

    scorer = bonus.novelty
    calls = []
    bonus.novelty = lambda x: calls.append(len(x)) or scorer(x)  # type: ignore[method-assign]

    def exact() -> np.ndarray:  # g(x) of every stored pair under the current model
        return scorer(stored).cpu().numpy().reshape(buf.size(), 2)

    scale = float(np.abs(bonus.log_density(stored)).max())
    snapshots = {bonus.version: exact()}
    buf._drawn = []
    for step in range(3 * DRAW_AHEAD):  # a model update every 4 minibatches
        if step % 4 == 0:
            bonus.model.update(stored[:4], steps=2)
            snapshots[bonus.version] = exact()
        samples = buf.sample(16)
        rows, cols = buf.last_draw
        stamps = buf.novelty_version[rows, cols]
        assert (bonus.version - stamps <= 3).all()  # no drawn score older than 3 updates
        beta = bonus.beta
        intrinsic = samples.rewards.cpu().numpy().ravel() - buf.rewards[rows, cols]
        for version, values in snapshots.items():  # each score is the one of the model it is stamped with
            mask = stamps == version  # (up to the rounding of the log-densities, scored in other batch shapes)
            want = beta * bonus.shaped(torch.as_tensor(values[rows, cols][mask])).numpy()
            assert_close_rounding(intrinsic[mask], want, scale=beta * scale)
    # one call renews a block; a stale minibatch of a block is rescored alone: fewer calls than minibatches
    assert len(calls) < 3 * DRAW_AHEAD / 2 and max(calls) > 16
    # after more than `staleness` updates without a draw, a minibatch is scored afresh
    for _ in range(4):
        bonus.model.update(stored[:4], steps=2)
    samples = buf.sample(32)
    rows, cols = buf.last_draw
    fresh = scorer(buf.next_observations[rows, cols]).cpu().numpy()
    assert_close_rounding(samples.rewards.cpu().numpy().ravel(),
                          buf.rewards[rows, cols] + beta * bonus.shaped(torch.as_tensor(fresh)).numpy(),
                          scale=beta * scale)


def test_intrinsic_and_extrinsic_rewards_are_kept_apart_in_info_and_logs(device):
    env = _mc()
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, merged(SMALL_FLOW, ONE_CRITIC, {"weight": {"beta": 0.5}}))
    model = SAC("MlpPolicy", env, seed=0, device=device, **kwargs)
    seen, scored_alone = [], []
    bonus = find_novelty(model)

    from stable_baselines3.common.callbacks import BaseCallback

    class Spy(BaseCallback):  # the infos of every step (filled in when their batch is scored)
        def _on_step(self):
            seen.extend(self.locals["infos"])
            return True

    class ScoreAlone(BaseCallback):  # before the novelty callback: the model of this step's collection
        def _on_step(self):
            scored_alone.append(bonus.novelty(self.locals["new_obs"]).cpu().numpy())
            return True

    model.learn(30, callback=[ScoreAlone(), *callbacks, Spy()])  # 30 steps: no episode ends (no terminal states)
    assert all("intrinsic_reward" in i and "extrinsic_reward" in i for i in seen)
    # scored in batches, every step's novelty is the one of scoring it alone at collection time (up to the
    # rounding of the log-densities it comes from: another batch shape may take another kernel)
    scale = float(np.abs(bonus.log_density(model.replay_buffer.next_observations[:30, 0])).max())
    assert_close_rounding(np.array([i["novelty"] for i in seen]), np.concatenate(scored_alone), scale=scale)
    assert all(i["intrinsic_reward"] <= 0 for i in seen) and any(i["intrinsic_reward"] < 0 for i in seen)
    assert all(i["extrinsic_reward"] <= 0 for i in seen)  # MountainCar's action cost
    names = set(model.logger.name_to_value) | set(model.logger.name_to_count)
    assert {"rollout/intrinsic_reward", "rollout/extrinsic_reward"} <= names


def test_bonus_survives_vecnormalize(device):
    venv = VecNormalize(_mc(), norm_obs=True, norm_reward=True)
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, venv, merged(SMALL_FLOW, ONE_CRITIC, {
        "weight": {"beta": 1.0}, "staleness": 0}))
    model = SAC("MlpPolicy", venv, seed=0, device=device, **kwargs)
    model.learn(40, callback=callbacks)
    buf, bonus = model.replay_buffer, find_novelty(model)
    samples = buf.sample(32, env=venv)
    inds, _ = buf.last_draw
    raw_next = buf.next_observations[inds, 0]
    extrinsic = venv.normalize_reward(buf.rewards[inds, 0])
    intrinsic = samples.rewards.cpu().numpy().ravel() - extrinsic
    assert np.allclose(intrinsic, bonus.intrinsic(raw_next).cpu().numpy(), atol=1e-5)
    assert (intrinsic <= 0).all() and (intrinsic < 0).any()
    # The density model saw raw observations, not VecNormalize's.
    assert np.allclose(bonus.model.normalizer.mean.cpu().numpy(), buf.next_observations[:40, 0].mean(0), atol=0.05)


def test_ppo_adds_the_bonus_before_advantages_and_needs_its_callback(device):
    from stable_baselines3.common.callbacks import BaseCallback

    venv = VecNormalize(_mc(n_envs=2))
    kwargs, callbacks = attach_novelty(PPO, SMALL_PPO, venv, merged(SMALL_FLOW, {"weight": {"beta": 0.5}}))
    model = PPO("MlpPolicy", venv, seed=0, device=device, **kwargs)
    snap = {}

    class Snapshot(BaseCallback):  # runs after SB3 computed the advantages of the rollout
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            buf = self.model.rollout_buffer
            for k in ("rewards", "values", "episode_starts", "advantages", "intrinsic_rewards"):
                snap[k] = getattr(buf, k).copy()
            snap["last_values"] = self.locals["values"].cpu().numpy().ravel()
            snap["dones"] = np.asarray(self.locals["dones"], dtype=np.float32)

    model.learn(64, callback=[*callbacks, Snapshot()])
    buf = model.rollout_buffer
    assert (snap["intrinsic_rewards"] <= 0).all() and (snap["intrinsic_rewards"] < 0).any()
    # Redo GAE by hand from the rewards (which include the bonus) and compare.
    r, v, starts = snap["rewards"], snap["values"], snap["episode_starts"]
    adv, last = np.zeros_like(r), np.zeros(r.shape[1], dtype=np.float32)
    for t in reversed(range(len(r))):
        if t == len(r) - 1:
            nonterminal, next_v = 1.0 - snap["dones"], snap["last_values"]
        else:
            nonterminal, next_v = 1.0 - starts[t + 1], v[t + 1]
        delta = r[t] + buf.gamma * next_v * nonterminal - v[t]
        last = delta + buf.gamma * buf.gae_lambda * nonterminal * last
        adv[t] = last
    assert np.allclose(adv, snap["advantages"], atol=1e-4)
    without_bonus = adv - snap["intrinsic_rewards"]  # a bonus left out would show up here
    assert not np.allclose(without_bonus, snap["advantages"], atol=1e-3)
    with pytest.raises(RuntimeError, match="callback"):
        PPO("MlpPolicy", venv, seed=0, device=device, **attach_novelty(PPO, SMALL_PPO, venv, SMALL_FLOW)[0]).learn(32)


def test_rollout_buffer_adds_the_bonus_once():
    bonus = make_novelty_bonus(spaces.Box(-1, 1, (2,)), merged(SMALL_FLOW, {"weight": {"beta": 2.0}}))
    bonus.model.update(np.random.default_rng(0).normal(size=(64, 2)))
    buf = NoveltyRolloutBuffer(4, spaces.Box(-1, 1, (2,)), spaces.Box(-1, 1, (1,)), gamma=0.0, gae_lambda=1.0,
                               novelty=bonus)
    states = np.random.default_rng(1).normal(size=(4, 1, 2)).astype(np.float32)
    for s in states:
        buf.record_scored(s)
        buf.add(s, np.zeros((1, 1)), np.zeros(1), np.zeros(1), torch.zeros(1), torch.zeros(1))
    buf.compute_returns_and_advantage(torch.zeros(1), np.zeros(1))
    buf.compute_returns_and_advantage(torch.zeros(1), np.zeros(1))
    expected = bonus.intrinsic(states.reshape(4, 2)).cpu().numpy()
    assert np.allclose(buf.returns.ravel(), expected, atol=1e-6)  # gamma = 0, values = 0: returns = rewards


@pytest.mark.parametrize("algo, algo_kwargs, options", [
    (SAC, SMALL_SAC, merged(SMALL_FLOW, ONE_CRITIC)),
    (PPO, SMALL_PPO, {"model": {"kind": "rnd", "batch_size": 32}, "update_every": 8}),
])
def test_save_load_restores_the_density_model_and_its_normaliser(tmp_path, algo, algo_kwargs, options, device):
    env = _mc()
    kwargs, callbacks = attach_novelty(algo, algo_kwargs, env, options)
    model = algo("MlpPolicy", env, seed=0, device=device, **kwargs)
    model.learn(64, callback=callbacks)
    model.save(tmp_path / "agent")
    loaded = algo.load(tmp_path / "agent", env=env, device=device)
    a, b = find_novelty(model).model, find_novelty(loaded).model
    assert a is not b
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, sb[k]), k
    assert torch.equal(a.normalizer.mean, b.normalizer.mean) and torch.equal(a.normalizer.m2, b.normalizer.m2)
    assert b.n_total == a.n_total > 0
    pts = np.random.default_rng(0).normal([-0.5, 0.0], [0.3, 0.02], size=(8, 2)).astype(np.float32)
    assert np.array_equal(novelty_density(model, pts, "bonus"), novelty_density(loaded, pts, "bonus"))
    n_before = float(b.n_total)
    loaded.learn(32, callback=novelty_callbacks(loaded), reset_num_timesteps=False)
    assert float(b.n_total) == n_before + 32  # training resumes from the restored counts


def test_novelty_density_for_maps(device):
    env = _mc()
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, merged(SMALL_FLOW, ONE_CRITIC))
    model = SAC("MlpPolicy", env, seed=0, device=device, **kwargs)
    model.learn(40, callback=callbacks)
    grid = np.stack(np.meshgrid(np.linspace(-1.2, 0.6, 5), np.linspace(-0.07, 0.07, 4)), -1).reshape(-1, 2)
    for target in (model, callbacks[0]):
        ld = novelty_density(target, grid)
        assert ld.shape == (20,) and np.isfinite(ld).all()
    assert novelty_density(model, grid, "pseudo_count").shape == (20,)
    rnd_kwargs, rnd_cbs = attach_novelty(SAC, SMALL_SAC, env, {"model": {"kind": "rnd"}, **ONE_CRITIC})
    with pytest.raises(ValueError, match="flow"):
        novelty_density(rnd_cbs[0], grid)


def test_dict_observations_with_a_key_train_end_to_end(device):
    env = DummyVecEnv([PointDict])
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, merged(SMALL_FLOW, ONE_CRITIC,
                                                                   {"obs_key": "pos", "score": "current"}))
    model = SAC("MultiInputPolicy", env, seed=0, device=device, **kwargs)
    model.learn(40, callback=callbacks)
    assert find_novelty(model).model.n_total == 40
    sample = model.replay_buffer.sample(8)
    assert torch.isfinite(sample.rewards).all() and (sample.rewards < 0).any()  # the non-positive bonus is in


# ------------------------------------------------------------------ images
SMALL_IMAGE = {"model": {"flow_kwargs": {"transforms": 1, "hidden_features": [8]}, "batch_size": 16,
                         "steps_per_update": 1, "cell_samples": 8},
               "update_every": 16}


def _pixel_env(n_envs=1):
    import envs  # noqa: F401  (registers flowrl/PixelPoint-v0)

    return make_vec_env("flowrl/PixelPoint-v0", n_envs=n_envs, seed=0, env_kwargs={"max_steps": 50})


def test_image_observation_space_gets_the_image_counter_in_channels_first_form():
    from flowrl.novelty.image_counts import ImagePseudoCounter

    hwc = spaces.Box(0, 255, (16, 16, 1), np.uint8)
    bonus = make_novelty_bonus(hwc, SMALL_IMAGE)
    assert isinstance(bonus.model, ImagePseudoCounter) and bonus.obs_shape == (1, 16, 16)
    assert bonus.model.flow_name == "glow" and bonus.model.max_value == 255.0
    assert make_novelty_bonus(spaces.Box(0, 255, (1, 16, 16), np.uint8), SMALL_IMAGE).obs_shape == (1, 16, 16)
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 1), dtype=np.uint8)
    chw = frames.transpose(0, 3, 1, 2)
    bonus.model.update(chw)
    # HWC, as SB3 stores frames before its transpose
    # the same bonus up to float32 rounding of the log-densities it comes from (another memory layout)
    assert_close_rounding(bonus.intrinsic(frames), bonus.intrinsic(chw),
                          scale=float(np.abs(bonus.log_density(chw)).max()))
    unit = make_novelty_bonus(spaces.Box(0.0, 1.0, (3, 16, 16), np.float32), SMALL_IMAGE)
    assert unit.model.max_value == 1.0
    with pytest.raises(ValueError, match="image observations have shape"):
        bonus.intrinsic(np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        unit.intrinsic(np.full((1, 3, 16, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"novelty\.model\.image\.levels"):
        make_novelty_bonus(hwc, {"model": {"image": {"levels": 1}}})


def test_sac_on_image_observations_logs_the_bonus_and_round_trips(tmp_path, device):
    from stable_baselines3.common.callbacks import BaseCallback

    env = _pixel_env()
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, merged(SMALL_IMAGE, ONE_CRITIC, {
        "model": {"seed": 0}, "weight": {"beta": 0.5}}))
    model = SAC("MlpPolicy", env, seed=0, device=device, **kwargs)
    assert model.observation_space.shape == (1, 16, 16)  # SB3 moved the channels first (VecTransposeImage)
    seen = []

    class Spy(BaseCallback):
        def _on_step(self):
            seen.extend(self.locals["infos"])  # filled in when their batch is scored
            return True

    from stable_baselines3.common.logger import KVWriter, Logger

    dumped: dict = {}

    class Record(KVWriter):  # every value the logger writes out
        def write(self, key_values, key_excluded, step=0):
            dumped.update(key_values)

    model.set_logger(Logger(None, [Record()]))
    model.learn(300, callback=[*callbacks, Spy()], log_interval=1)
    bonus = find_novelty(model)
    seen = [i["intrinsic_reward"] for i in seen]
    assert bonus.model.n_total == 300 and len(seen) == 300
    assert all(np.isfinite(seen)) and max(seen) <= 0 and min(seen) < 0
    assert {"rollout/intrinsic_reward", "rollout/extrinsic_reward", "rollout/intrinsic_ep_return"} <= set(dumped)
    assert dumped["rollout/intrinsic_reward"] < 0 and np.isfinite(dumped["novelty/loss"])
    samples = model.replay_buffer.sample(16)
    assert torch.isfinite(samples.rewards).all() and (samples.rewards < 0).any()  # bonus <= 0, extrinsic >= 0
    replayed = model.replay_buffer.observations[:256, 0]  # frames repeat: scored once each, memoised
    plain = copy.deepcopy(bonus.model)
    plain.memo = None  # every row evaluated
    assert torch.allclose(bonus.intrinsic(replayed), bonus.beta * (plain.bonus(replayed) - 1), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "agent")
    loaded = SAC.load(tmp_path / "agent", env=env, device=device)
    frames = model.replay_buffer.observations[:32, 0]
    assert np.array_equal(novelty_density(model, frames, "bonus"), novelty_density(loaded, frames, "bonus"))
    assert find_novelty(loaded).model.n_total == 300


def test_ppo_on_image_observations_adds_the_bonus_to_the_rollout(device):
    env = _pixel_env(n_envs=2)
    kwargs, callbacks = attach_novelty(PPO, SMALL_PPO, env, merged(SMALL_IMAGE, {"weight": {"beta": 0.5}}))
    model = PPO("MlpPolicy", env, seed=0, device=device, **kwargs)
    model.learn(64, callback=callbacks)
    buf = model.rollout_buffer
    assert buf.scored_obs.dtype == np.uint8 and buf.scored_obs.shape == (32, 2, 1, 16, 16)
    assert (buf.intrinsic_rewards <= 0).all() and (buf.intrinsic_rewards < 0).any() and find_novelty(model).model.n_total == 64


def test_image_rnd_bonus_for_sac_and_ppo_round_trips(tmp_path, device):
    """``kind="rnd"`` on frames: the convolutional RND scores, trains, logs and is saved with the agent."""
    from flowrl.novelty.image_rnd import ImageRND

    hwc = spaces.Box(0, 255, (16, 16, 1), np.uint8)
    rnd = {"model": {"kind": "rnd", "image": {"size": 8}, "hidden_features": [8], "embedding_dim": 8,
                     "batch_size": 16, "seed": 0},
           "update_every": 16, "weight": {"beta": 0.5}}
    bonus = make_novelty_bonus(hwc, rnd)
    assert isinstance(bonus.model, ImageRND) and bonus.model.size == (8, 8) and bonus.obs_shape == (1, 16, 16)
    with pytest.raises(ValueError, match="image.levels: flow only"):  # a flow-only option
        make_novelty_bonus(hwc, merged(rnd, {"model": {"image": {"levels": 4}}}))
    env = _pixel_env()
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, merged(rnd, ONE_CRITIC))
    model = SAC("MlpPolicy", env, seed=0, device=device, **kwargs)
    model.learn(100, callback=callbacks)
    trained = find_novelty(model)
    assert trained.model.n_total == 100
    samples = model.replay_buffer.sample(16)
    assert torch.isfinite(samples.rewards).all() and (samples.rewards < 0).any()
    model.save(tmp_path / "agent")
    loaded = SAC.load(tmp_path / "agent", env=env, device=device)
    frames = model.replay_buffer.observations[:32, 0]
    assert np.array_equal(novelty_density(model, frames, "bonus"), novelty_density(loaded, frames, "bonus"))
    penv = _pixel_env(n_envs=2)
    kwargs, callbacks = attach_novelty(PPO, SMALL_PPO, penv, rnd)
    ppo = PPO("MlpPolicy", penv, seed=0, device=device, **kwargs)
    ppo.learn(64, callback=callbacks)
    assert (ppo.rollout_buffer.intrinsic_rewards < 0).all() and find_novelty(ppo).model.n_total == 64


@pytest.mark.parametrize("kind", ["flow", "rnd"])
def test_default_bonus_is_nonpositive_so_ending_an_episode_never_costs_bonus(kind):
    """r_int = beta * (g(x) - 1) in [-beta, 0]: about 0 for a state never seen, near -beta for a familiar one."""
    space = spaces.Box(-10, 10, (2,), np.float32)
    # (the library's 100 cells, not the agent's 400: 512 familiar states then fill every cell they are in)
    extra = {"flow_kwargs": {"transforms": 1, "hidden_features": [16]}, "cells": 100} if kind == "flow" else {}
    model = {"kind": kind, "seed": 0, **extra}
    bonus = make_novelty_bonus(space, {"model": model, "weight": {"beta": 0.5}})
    assert bonus.options.weight.form == "nonpositive"  # the default
    positive = make_novelty_bonus(space, {"model": model, "weight": {"beta": 0.5, "form": "positive"}})
    familiar = np.random.default_rng(0).normal(0.0, 0.05, (512, 2)).astype(np.float32)
    for b in (bonus, positive):
        b.model.load_state_dict(bonus.model.state_dict())
        b.model.update(familiar, steps=300)
        b.model.eval()
    positive.model.load_state_dict(bonus.model.state_dict())
    far = np.array([[9.0, -9.0]], np.float32)
    r_familiar, r_far = bonus.intrinsic(familiar[:64]).numpy(), bonus.intrinsic(far).numpy()
    assert (r_familiar <= 0).all() and (r_familiar >= -0.5).all() and (r_far <= 0).all()
    assert r_far.min() > r_familiar.max()  # novelty still ranks states the same way
    g = positive.intrinsic(familiar[:64]).numpy() / 0.5  # the novelty g(x) in (0, 1]
    assert np.allclose(r_familiar, 0.5 * (g - 1.0), atol=1e-6)
    if kind == "flow":  # g = 1 / sqrt(N + 1); the far state's pseudo-count is ~0: it reads as never seen
        n = bonus.pseudo_count(familiar[:64])
        assert np.allclose(g, 1 / np.sqrt(n + 1), rtol=1e-5)
        assert bonus.saturated(bonus.novelty(far)).all() and not bonus.saturated(bonus.novelty(familiar[:64])).any()
    else:  # g = 1 - exp(-e / s) of RND's normalised error e / s
        e = bonus.model.bonus(familiar[:64]).numpy()
        assert np.allclose(g, -np.expm1(-e), atol=1e-6)


def _sample_both(ours, sb3, inds: np.ndarray, n_envs: int, seed: int):
    """Both buffers' samples of rows ``inds`` from the same global RNG state, and the env columns SB3 drew."""
    np.random.seed(seed)
    got = ours._get_samples(inds)
    np.random.seed(seed)
    want = sb3._get_samples(inds)
    np.random.seed(seed)
    return got, want, np.random.randint(0, n_envs, size=len(inds))


@pytest.mark.parametrize("as_dict, memory", [(False, False), (False, True), (True, False)])
def test_replay_rows_are_gathered_as_sb3_gathers_them_and_scored_once(memory, as_dict):
    """The bonus buffer draws each row's env column once and uses it for sample and bonus alike.

    Its gather must give what SB3's own ``_get_samples`` gives for the same draw
    (every field; the rewards up to the bonus of exactly the rows drawn).
    """
    from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer

    from agents.novelty import NoveltyDictReplayBuffer

    box = spaces.Box(-1, 1, (2,), np.float32)
    obs_space = spaces.Dict({"pos": box}) if as_dict else box
    act_space = spaces.Box(-1, 1, (1,), np.float32)
    bonus = make_novelty_bonus(obs_space, merged(SMALL_FLOW, ONE_CRITIC, {"obs_key": "pos"} if as_dict else {}))
    ours_cls, sb3_cls = (NoveltyDictReplayBuffer, DictReplayBuffer) if as_dict else (NoveltyReplayBuffer, ReplayBuffer)
    # (SB3's Dict buffer has no optimize_memory_usage, which itself excludes timeout handling.)
    extra = {} if as_dict else {"optimize_memory_usage": memory, "handle_timeout_termination": not memory}
    ours = ours_cls(300, obs_space, act_space, device="cpu", n_envs=3, novelty=bonus, **extra)
    sb3 = sb3_cls(300, obs_space, act_space, device="cpu", n_envs=3, **extra)
    rng = np.random.default_rng(0)

    def obs():
        x = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
        return {"pos": x} if as_dict else x

    for _ in range(40):
        o, nxt = obs(), obs()
        a, r = rng.uniform(-1, 1, (3, 1)).astype(np.float32), rng.normal(size=3).astype(np.float32)
        d = rng.random(3) < 0.2
        infos = [{"TimeLimit.truncated": bool(t)} for t in rng.random(3) < 0.5]
        for buf in (ours, sb3):
            buf.add(o, nxt, a, r, d, infos)
    bonus.observe(ours.observations["pos"][:40] if as_dict else ours.observations[:40])
    bonus.flush()
    inds = np.random.default_rng(1).integers(0, 40, size=32)
    got, want, env_inds = _sample_both(ours, sb3, inds, n_envs=3, seed=5)
    for name in ("observations", "next_observations"):
        g, w = getattr(got, name), getattr(want, name)
        for key in (w if as_dict else [None]):
            assert torch.equal(g[key] if key else g, w[key] if key else w), name
    assert torch.equal(got.actions, want.actions) and torch.equal(got.dones, want.dones)
    store, rows = (sb3.observations, (inds + 1) % sb3.buffer_size) if memory else (sb3.next_observations, inds)
    raw_next = (store["pos"] if as_dict else store)[rows, env_inds]
    expected = want.rewards.ravel() + bonus.intrinsic(raw_next).float()
    torch.testing.assert_close(got.rewards.ravel(), expected)


def test_n_step_returns_add_the_current_bonus_of_every_step_in_the_window():
    """With n_steps, SAC gets SB3's n-step return plus sum_k gamma^k r_int(x_{t+k+1}) up to the window's stop."""
    from stable_baselines3.common.buffers import NStepReplayBuffer

    from agents.novelty import NoveltyNStepReplayBuffer

    box = spaces.Box(-1, 1, (2,), np.float32)
    kwargs, _ = attach_novelty(SAC, {"n_steps": 4, "gamma": 0.9}, _mc(),
                               merged(SMALL_FLOW, ONE_CRITIC, {"weight": {"beta": 0.5}}))
    assert kwargs["replay_buffer_class"] is NoveltyNStepReplayBuffer and "n_steps" not in kwargs
    assert kwargs["replay_buffer_kwargs"]["n_steps"] == 4 and kwargs["replay_buffer_kwargs"]["gamma"] == 0.9
    bonus = kwargs["replay_buffer_kwargs"]["novelty"]
    ours = NoveltyNStepReplayBuffer(300, box, spaces.Box(-1, 1, (1,)), device="cpu", n_envs=2, n_steps=4, gamma=0.9,
                                    novelty=bonus)
    sb3 = NStepReplayBuffer(300, box, spaces.Box(-1, 1, (1,)), device="cpu", n_envs=2, n_steps=4, gamma=0.9)
    rng = np.random.default_rng(0)
    for _ in range(60):
        o, nxt = rng.uniform(-1, 1, (2, 2)).astype(np.float32), rng.uniform(-1, 1, (2, 2)).astype(np.float32)
        a, r, d = rng.uniform(-1, 1, (2, 1)), rng.normal(size=2).astype(np.float32), rng.random(2) < 0.15
        infos = [{"TimeLimit.truncated": bool(t)} for t in rng.random(2) < 0.1]
        ours.add(o, nxt, a, r, d, infos)
        sb3.add(o, nxt, a, r, d, infos)
    bonus.observe(ours.next_observations[:60].reshape(-1, 2))
    bonus.flush()
    inds = np.random.default_rng(1).integers(0, 60, size=64)
    got, want, cols = _sample_both(ours, sb3, inds, n_envs=2, seed=2)
    for name in ("observations", "actions", "next_observations", "dones"):
        assert torch.equal(getattr(got, name), getattr(want, name).to(getattr(got, name).dtype)), name
    # gamma^m: torch's and numpy's float32 pow may differ by an ulp (seen on an AVX-512 CPU)
    torch.testing.assert_close(got.discounts, want.discounts.to(got.discounts.dtype), rtol=2 * 2**-23, atol=0)
    # The bonus part, by hand: each row's window stops at its first termination or truncation (or the newest row).
    extra = np.zeros(64)
    for i, (t, c) in enumerate(zip(inds, cols)):
        for k in range(4):
            row = t + k
            extra[i] += 0.9**k * float(bonus.intrinsic(ours.next_observations[row, c][None])[0])
            if ours.dones[row, c] or ours.timeouts[row, c] or row == ours.pos - 1:
                break
    torch.testing.assert_close(got.rewards.ravel().double(), want.rewards.ravel().double() + torch.tensor(extra),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_steps"):
        attach_novelty(SAC, {"n_steps": 3}, DummyVecEnv([PointDict]), {"obs_key": "pos", **ONE_CRITIC})


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_every_steps_intrinsic_reward_is_the_weight_times_the_shaped_novelty(algo):
    """r_int = beta (g - 1) at every step while no episode succeeds (no fade), for SAC and PPO alike."""
    from stable_baselines3.common.callbacks import BaseCallback

    env = _mc()
    cls, small = (SAC, SMALL_SAC) if algo == "sac" else (PPO, SMALL_PPO)
    kwargs, callbacks = attach_novelty(cls, small, env, merged(SMALL_FLOW, {"weight": {"beta": 2.0}},
                                                              ONE_CRITIC if algo == "sac" else {}))
    model = cls("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    seen = []

    class Spy(BaseCallback):
        def _on_step(self):
            seen.append(self.locals["infos"][0])
            return True

    model.learn(128, callback=[*callbacks, Spy()])
    scored = [(info["intrinsic_reward"], info["novelty"]) for info in seen]  # filled in when scored
    assert len(scored) >= 100 and len({g for _, g in scored}) > 1
    for r_int, g in scored:
        assert r_int == pytest.approx(2.0 * (g - 1), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="beta_end: unknown key"):  # measured neutral: not an option
        attach_novelty(cls, small, env, {"weight": {"beta_end": 0.5}})


class AlternatingGoal(gym.Env):
    """Four-step episodes that alternately reach a terminal goal (reward 1) and time out; ``info["is_success"]``
    is reported only if ``report`` (otherwise success is read from the extrinsic return)."""

    def __init__(self, report: bool = True):
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.report, self.episode, self.t = report, -1, 0
        self.pos = np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        self.pos = np.zeros(2, np.float32)
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.2 * np.asarray(action, np.float32), -1, 1)
        self.t += 1
        end = self.t == 4
        success = end and self.episode % 2 == 0
        info = {"is_success": success} if self.report and end else {}
        return self.pos.copy(), float(success), success, end and not success, info


@pytest.mark.parametrize("algo", ["sac", "ppo"])
@pytest.mark.parametrize("report", [True, False])
def test_success_window_fades_the_weight_as_episodes_succeed(algo, report):
    """beta_t = beta (1 - s_t), s_t the success share of the last 3 finished episodes, in every step's reward."""
    from stable_baselines3.common.callbacks import BaseCallback

    env = DummyVecEnv([lambda: AlternatingGoal(report)])
    cls, small = (SAC, SMALL_SAC) if algo == "sac" else (PPO, SMALL_PPO)
    # no hold: the weight keeps following the share (a window of alternating episodes never reaches 0.9 anyway)
    kwargs, callbacks = attach_novelty(cls, small, env, merged(SMALL_FLOW, {
        "weight": {"beta": 2.0, "success_window": 3, "success_hold": None}}, ONE_CRITIC if algo == "sac" else {}))
    model = cls("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    seen = []

    class Spy(BaseCallback):
        def _on_step(self):
            seen.append(self.locals["infos"][0])
            return True

    model.learn(64, callback=[*callbacks, Spy()])
    seen = [(info["intrinsic_reward"], info["novelty"]) for info in seen]  # filled in when scored
    assert len(seen) == 64
    history: list[bool] = []  # episodes finished before each step: 0 succeeds, 1 fails, 2 succeeds, ...
    for t, (r_int, g) in enumerate(seen):
        last = history[-3:]
        s = sum(last) / len(last) if last else 0.0
        assert r_int == pytest.approx(2.0 * (1 - s) * (g - 1), rel=1e-5, abs=1e-6), (t, s)
        if t % 4 == 3:
            history.append((t // 4) % 2 == 0)
    bonus = find_novelty(model)
    assert bonus.success_rate == pytest.approx(sum(history[-3:]) / 3) and 0 < bonus.success_rate < 1
    restored = copy.deepcopy(bonus)  # the pickled state keeps the window (and so the weight)
    assert restored.beta == pytest.approx(bonus.beta) and list(restored.recent_successes) == history[-3:]


def test_success_window_is_validated_on_by_default_and_can_be_turned_off():
    with pytest.raises(ValueError, match="success_window"):
        NoveltyBonus({"weight": {"success_window": 0}}, 2)
    with pytest.raises(ValueError, match="success_hold needs success_window"):  # the default hold needs a window
        NoveltyBonus({"weight": {"success_window": None}}, 2)
    default = NoveltyBonus({}, 2)  # the agent's weight: 5, faded by the share of the last 20 episodes, held at 0.9
    assert (default.beta, default.options.weight.success_window, default.options.weight.success_hold) == (5.0, 20, 0.9)
    default.record_episode(True)
    default.record_episode(False)
    assert default.success_rate == 0.5 and default.beta == pytest.approx(2.5) and not default.holding
    bonus = NoveltyBonus({"weight": {"beta": 2.0, "success_window": None, "success_hold": None}}, 2)
    bonus.record_episode(True)
    assert bonus.success_rate == 0.0 and bonus.beta == 2.0


def test_success_hold_drops_the_weight_to_zero_for_good():
    """Once a full window's share reaches success_hold the weight is 0, whatever the episodes after."""
    bonus = NoveltyBonus({"weight": {"beta": 2.0, "success_window": 4, "success_hold": 0.75}}, 2)
    for ok in (True, True, False, False):
        bonus.record_episode(ok)
    assert not bonus.holding and bonus.beta == pytest.approx(2.0 * 0.5)  # share 0.5 < 0.75: the plain fade
    for _ in range(2):
        bonus.record_episode(True)  # windows (T, F, F, T) and (F, F, T, T): still 0.5
    assert not bonus.holding
    bonus.record_episode(True)
    assert bonus.holding and bonus.beta == 0.0  # window (F, T, T, T): 0.75 reached
    for _ in range(4):
        bonus.record_episode(False)
    assert bonus.success_rate == 0.0 and bonus.beta == 0.0  # held: failures do not bring the bonus back
    assert copy.deepcopy(bonus).beta == 0.0  # pickled with its best share
    with pytest.raises(ValueError, match="success_hold needs success_window"):
        NoveltyBonus({"weight": {"success_window": None, "success_hold": 0.9}}, 2)
    with pytest.raises(ValueError, match="success_hold"):
        NoveltyBonus({"weight": {"success_window": 5, "success_hold": 1.5}}, 2)
