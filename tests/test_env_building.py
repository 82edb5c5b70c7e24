"""Any registered environment from a config: packages, module:EnvId, wrappers, Dict observations, discrete actions."""

from __future__ import annotations

import os
import sys
import uuid

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.torch_layers import CombinedExtractor

from agents.cli import main
from agents.config import ConfigError, EnvConfig, config_from_dict, load_config
from agents.run.env_builder import make_single_env
from agents.run import build_model, evaluate_model, make_env, train
from agents.novelty import IntrinsicCriticSAC, find_novelty, make_novelty_bonus
from agents.policies import FlowActorCriticPolicy, FlowSACPolicy
from envs.wrappers import ObservationBounds, SuccessInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")


class GoalToy(gym.Env):
    """A point in the plane that must reach a fixed goal, observed like Gymnasium-Robotics' goal envs (a Dict)."""

    def __init__(self, keys: tuple[str, ...] = GOAL_KEYS):
        box = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Dict({k: box for k in keys})
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal = np.array([0.3, 0.0], np.float32)
        self.pos = np.zeros(2, np.float32)

    def _obs(self) -> dict:
        return {k: (self.goal if k == "desired_goal" else self.pos).copy() for k in self.observation_space.spaces}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2, np.float32)
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.2 * np.asarray(action, np.float32), -1.0, 1.0).astype(np.float32)
        reached = bool(np.linalg.norm(self.pos - self.goal) < 0.15)
        return self._obs(), float(reached), reached, False, {"success": reached}


class GridToy(gym.Env):
    """A 7x7x3 uint8 grid of small indices (at most 10) declared as [0, 255], as MiniGrid's symbolic view is."""

    def __init__(self):
        self.observation_space = spaces.Box(0, 255, (7, 7, 3), np.uint8)
        self.action_space = spaces.Discrete(3)
        self.t = 0

    def _obs(self) -> np.ndarray:
        grid = np.zeros((7, 7, 3), np.uint8)
        grid[self.t % 7, :, 0] = 10
        return grid

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1 + int(action)
        return self._obs(), 0.0, False, False, {}


for _id, _entry in [("flowrl_test/GoalToy-v0", GoalToy), ("flowrl_test/GridToy-v0", GridToy)]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry, max_episode_steps=20)


def cfg_of(**data) -> object:
    """A tiny CPU config over ``data`` (``env`` must be given)."""
    base = dict(total_timesteps=64, device="cpu", seed=0, run=dict(progress_bar=False, plots=False, log_every=32),
                eval=dict(episodes=1))
    return config_from_dict({**base, **data})


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A module on ``sys.path`` that registers ``Toy<hex>-v0`` (CartPole, 10 steps) when imported."""
    name = f"flowrl_toy_{uuid.uuid4().hex[:8]}"
    env_id = f"Toy{name[-8:]}-v0"
    (tmp_path / f"{name}.py").write_text(
        "import gymnasium as gym\n"
        f"gym.register({env_id!r}, entry_point='gymnasium.envs.classic_control.cartpole:CartPoleEnv', "
        "max_episode_steps=10)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, env_id
    gym.registry.pop(env_id, None)
    sys.modules.pop(name, None)


# ------------------------------------------------------------ ids and packages
def test_module_prefix_imports_the_package_that_registers_the_id(toy_package):
    module, env_id = toy_package
    env = make_env(cfg_of(env=dict(id=f"{module}:{env_id}", n_envs=2)))
    assert env.num_envs == 2 and env.observation_space.shape == (4,)
    assert module in sys.modules


def test_packages_are_imported_before_gym_make_in_training_and_evaluation(toy_package):
    module, env_id = toy_package
    cfg = cfg_of(env=dict(id=env_id, packages=[module]), algo=dict(name="ppo", kwargs=dict(n_steps=32, batch_size=32)))
    model, _ = build_model(cfg, make_env(cfg))
    stats = evaluate_model(model, cfg, episodes=2)
    assert stats["episodes"] == 2 and stats["length_mean"] <= 10  # the package's registration (10 steps)


@pytest.mark.parametrize("env, expected", [
    (dict(id="flowrl_no_such_pkg:Foo-v0"),
     "env.id: package 'flowrl_no_such_pkg' is not installed (pip install flowrl-no-such-pkg)"),
    (dict(id="CartPole-v1", packages=["flowrl_no_such_pkg"]),
     "env.packages[0]: package 'flowrl_no_such_pkg' is not installed (pip install flowrl-no-such-pkg)"),
    (dict(id="gymnasium_robotics_missing:PointMaze_UMaze-v3"),
     "env.id: package 'gymnasium_robotics_missing' is not installed (pip install gymnasium-robotics-missing)"),
])
def test_a_missing_package_is_one_line_naming_it(env, expected):
    with pytest.raises(ConfigError) as err:
        make_env(cfg_of(env=env))
    assert str(err.value) == expected


def test_an_unknown_id_names_what_was_imported_or_the_package_to_list(toy_package):
    module, _ = toy_package
    with pytest.raises(ConfigError, match=rf"env.id: .*NoSuchToy.* doesn't exist.*imported '{module}'"):
        make_env(cfg_of(env=dict(id=f"{module}:NoSuchToy-v0")))
    with pytest.raises(ConfigError, match=r"registered by 'minigrid': list it in env.packages or write env.id as "
                                          r"minigrid:MiniGrid-NoSuchGrid-v0"):
        make_env(cfg_of(env=dict(id="MiniGrid-NoSuchGrid-v0")))


def test_a_package_name_must_be_a_module_name():
    with pytest.raises(ConfigError, match=r"env.packages.0: .*importable module name"):
        cfg_of(env=dict(id="CartPole-v1", packages=["gymnasium-robotics"]))


# -------------------------------------------------------------------- wrappers
def test_wrappers_with_and_without_kwargs_apply_in_order_to_training_and_evaluation():
    wrappers = ["gymnasium.wrappers.FlattenObservation", {"gymnasium.wrappers.TimeLimit": {"max_episode_steps": 3}},
                {"envs.wrappers.SuccessInfo": None}]
    with pytest.raises(ConfigError, match=r"env.wrappers\[2\]: envs.wrappers.SuccessInfo: .*exactly one"):
        make_env(cfg_of(env=dict(id="flowrl_test/GoalToy-v0", wrappers=wrappers)))
    wrappers[2] = {"envs.wrappers.SuccessInfo": {"key": "success"}}
    cfg = cfg_of(env=dict(id="flowrl_test/GoalToy-v0", wrappers=wrappers), algo=dict(name="ppo", kwargs=dict(
        n_steps=16, batch_size=16)))
    env = make_env(cfg)
    assert env.observation_space.shape == (6,)  # the Dict flattened
    single = make_single_env(cfg.env)
    assert isinstance(single, SuccessInfo) and isinstance(single.env, gym.wrappers.TimeLimit)
    model, _ = build_model(cfg, env)
    assert evaluate_model(model, cfg, episodes=2)["length_mean"] <= 3


@pytest.mark.parametrize("wrapper, expected", [
    ("gymnasium.wrappers.NoSuchWrapper", "env.wrappers[0]: module 'gymnasium.wrappers' has no 'NoSuchWrapper'"),
    ("flowrl_no_such_pkg.Wrapper",
     "env.wrappers[0]: cannot import 'flowrl_no_such_pkg.Wrapper': package 'flowrl_no_such_pkg' is not installed "
     "(pip install flowrl-no-such-pkg)"),
    ({"gymnasium.wrappers.TimeLimit": {"no_such_kwarg": 1}}, "env.wrappers[0]: gymnasium.wrappers.TimeLimit: "),
])
def test_a_wrapper_that_does_not_import_or_build_is_one_line_naming_it(wrapper, expected):
    with pytest.raises(ConfigError) as err:
        make_env(cfg_of(env=dict(id="CartPole-v1", wrappers=[wrapper])))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


@pytest.mark.parametrize("wrapper", ["FlattenObservation", {"a.B": 1, "c.D": None}, {"a.B": [1]}, 3])
def test_malformed_wrapper_entries_fail_at_config_time(wrapper):
    with pytest.raises(ConfigError, match=r"env.wrappers.0: "):
        cfg_of(env=dict(id="CartPole-v1", wrappers=[wrapper]))


# ------------------------------------------------------------ Dict observations
@pytest.mark.parametrize("algo, policy, critics", [("sac", "flow", True), ("ppo", "flow", True),
                                                   ("sac", "gaussian", False), ("a2c", "gaussian", True)])
def test_goal_conditioned_dict_observations_train_with_the_bonus_on_achieved_goal(algo, policy, critics, tmp_path):
    """SAC with the default critics is IntrinsicCriticSAC, with ``critics: null`` SB3's SAC; PPO/A2C drop them."""
    kwargs = {"sac": dict(learning_starts=32, batch_size=16, buffer_size=500), "ppo": dict(n_steps=16, batch_size=16),
              "a2c": dict(n_steps=16)}[algo]
    novelty = dict(model=dict(kind="flow"), update_every=8, **({} if critics else {"critics": None}))
    cfg = cfg_of(env=dict(id="flowrl_test/GoalToy-v0", wrappers=[{"envs.wrappers.SuccessInfo": {"key": "success"}}]),
                 algo=dict(name=algo, kwargs=kwargs), policy=policy, policy_kwargs=dict(net_arch=[16]),
                 flow_kwargs=dict(transforms=1, hidden_features=[16]), novelty=novelty,
                 run=dict(out_dir=str(tmp_path), progress_bar=False, plots=True, log_every=32))
    result = train(cfg)
    model = result.model
    assert isinstance(model, IntrinsicCriticSAC) == (algo == "sac" and critics)
    assert result.summary["timesteps"] >= 64
    assert isinstance(model.policy.features_extractor if algo != "sac" else model.policy.actor.features_extractor,
                      CombinedExtractor)
    if policy == "flow":
        assert isinstance(model.policy, FlowSACPolicy if algo == "sac" else FlowActorCriticPolicy)
    assert find_novelty(model).options.obs_key == "achieved_goal"


def test_a_dict_space_that_is_not_goal_conditioned_needs_obs_key():
    space = spaces.Dict({"position": spaces.Box(-1, 1, (2,)), "velocity": spaces.Box(-1, 1, (2,))})
    with pytest.raises(ValueError, match=r"obs_key: .*keys \['position', 'velocity'\]"):
        make_novelty_bonus(space, {"model": {"kind": "flow"}})
    assert make_novelty_bonus(space, {"model": {"kind": "flow"}, "obs_key": "velocity"}).options.obs_key == "velocity"
    assert make_novelty_bonus(GoalToy().observation_space, {"model": {"kind": "rnd"}}).options.obs_key == "achieved_goal"


def test_a_dict_space_without_obs_key_fails_through_the_config_naming_the_keys():
    cfg = cfg_of(env=dict(id="flowrl_test/GoalToy-v0", kwargs=dict(keys=["a", "b"])),
                 algo=dict(name="ppo", kwargs=dict(n_steps=16)), novelty=dict(model=dict(kind="flow")))
    with pytest.raises(ConfigError, match=r"novelty: obs_key: .*keys \['a', 'b'\]"):
        build_model(cfg, make_env(cfg))


# ------------------------------------------------------------ discrete actions
@pytest.mark.parametrize("algo, kwargs", [("ppo", "{n_steps: 32, batch_size: 32}"), ("a2c", "{n_steps: 32}"),
                                          ("dqn", "{learning_starts: 32, batch_size: 16, buffer_size: 500}")])
def test_discrete_actions_train_with_the_flow_bonus_through_the_command(algo, kwargs, tmp_path, capsys):
    code = main(["train", os.path.join(ROOT, "configs", "deepsea_ppo.yaml"), "env.id=CartPole-v1", "env.kwargs={}",
                 f"algo.name={algo}", f"algo.kwargs={kwargs}", "total_timesteps=64", f"run.out_dir={tmp_path}",
                 "run.progress_bar=false", "run.plots=false", "eval.episodes=1", "device=cpu",
                 # CartPole pays +1 a step: no success signal for the success fade
                 "novelty={model: {kind: flow}, update_every: 8, weight: {success_window: null, success_hold: null}}"])
    assert code == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1].split(": ", 1)[1]
    with open(os.path.join(run_dir, "progress.csv")) as f:
        assert "novelty/n_total" in f.readline()


def test_a_success_fade_on_an_env_that_pays_every_step_stops_at_the_first_episode(tmp_path):
    """Without ``is_success``, success is ``return > 0``: true of every CartPole episode, so the fade refuses it."""
    with pytest.raises(ValueError, match=r"novelty.weight.success_window needs a success signal: this env reports no "
                                         r"info\['is_success'\] and paid a positive reward on (\d+) of an episode's \1"):
        main(["train", os.path.join(ROOT, "configs", "deepsea_ppo.yaml"), "env.id=CartPole-v1", "env.kwargs={}",
              "algo.kwargs={n_steps: 64, batch_size: 32}", "total_timesteps=128", f"run.out_dir={tmp_path}",
              "run.progress_bar=false", "run.plots=false", "eval.episodes=1", "device=cpu",
              "novelty={model: {kind: flow}, update_every: 8}"])


@pytest.mark.parametrize("algo, policy, expected", [
    ("ppo", "flow", "policy: flow needs a Box action space; Discrete(2) has discrete actions, use policy: gaussian"),
    ("sac", "gaussian", "algo.name: sac needs a Box action space; Discrete(2) has discrete actions, use ppo or a2c"),
    ("dqn", "gaussian", "algo.name: dqn needs a Discrete action space, got Box(-1.0, 1.0, (2,), float32); use sac, "
                        "ppo or a2c"),
])
def test_an_agent_on_an_action_space_it_cannot_act_in_is_a_clear_error(algo, policy, expected):
    env_id = "flowrl_test/GoalToy-v0" if algo == "dqn" else "CartPole-v1"
    cfg = cfg_of(env=dict(id=env_id, wrappers=["gymnasium.wrappers.FlattenObservation"]), algo=dict(name=algo),
                 policy=policy)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, make_env(cfg))
    assert str(err.value) == expected


# ------------------------------------------------------------ symbolic grids
def test_a_small_grid_with_declared_bounds_goes_through_the_image_counter_and_an_mlp_policy(tmp_path):
    options = {"model": {"kind": "flow", "flow": "realnvp", "image": {"size": 7}}}
    raw = make_novelty_bonus(GridToy().observation_space, options)
    assert raw.max_value == 255.0  # quantised by 255, indices <= 10 all fall into the lowest level
    bounded = ObservationBounds(GridToy(), high=10)
    assert make_novelty_bonus(bounded.observation_space, options).max_value == 10.0
    cfg = load_config(os.path.join(ROOT, "configs", "minigrid_doorkey.yaml"), [
        "env.id=flowrl_test/GridToy-v0", "env.packages=[]", "env.n_envs=2",
        "env.wrappers=[{envs.wrappers.ObservationBounds: {high: 10}}]", "algo.kwargs.n_steps=32",
        "algo.kwargs.batch_size=32", "total_timesteps=64", f"run.out_dir={tmp_path}", "run.progress_bar=false",
        "run.plots=false", "eval.episodes=1", "device=cpu"])
    result = train(cfg)
    bonus = find_novelty(result.model)
    assert bonus.max_value == 10.0 and result.summary["timesteps"] >= 64
    frames = np.stack([np.roll(GridToy()._obs(), k, axis=0) for k in range(7)])
    assert len(np.unique(bonus.model.levels_of(frames.transpose(0, 3, 1, 2)).numpy().reshape(7, -1), axis=0)) == 7


# ------------------------------------------------------------ envs.wrappers
def test_success_info_from_a_key_or_from_the_reward():
    env = SuccessInfo(GoalToy(), key="success")
    env.reset(seed=0)
    infos = [env.step(np.array([0.5, 0.0], np.float32))[-1]["is_success"] for _ in range(2)]
    assert infos == [False, True]
    env = SuccessInfo(gym.make("CartPole-v1"), reward_above=0.5)
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, term, trunc, info = env.step(0)
        done = term or trunc
    assert info["is_success"] is True  # CartPole pays 1 on its terminal step
    with pytest.raises(ValueError, match="exactly one"):
        SuccessInfo(GoalToy(), key="success", reward_above=0.0)


def test_observation_bounds_declare_a_range_and_clip_only_when_asked():
    env = ObservationBounds(GridToy(), high=10)
    assert env.observation_space.dtype == np.uint8 and int(env.observation_space.high.max()) == 10
    assert int(env.reset(seed=0)[0].max()) == 10
    clipped = ObservationBounds(GridToy(), high=4, clip=True)
    assert int(clipped.reset(seed=0)[0].max()) == 4
    with pytest.raises(ValueError, match="Box observation space"):
        ObservationBounds(GoalToy(), high=1.0)
    with pytest.raises(ValueError, match="low must not exceed high"):
        ObservationBounds(GridToy(), low=5, high=4)


def test_env_config_round_trips_packages_and_wrappers():
    env = EnvConfig(id="m:E-v0", packages=["m"], wrappers=["a.B", {"c.D": {"k": 1}}, {"e.F": None}])
    assert EnvConfig.model_validate(env.model_dump(mode="json")) == env
