"""``base:`` in a training config: a task config inherits the agent of another and states what differs."""

import os

import pytest

from agents.config import ConfigError, load_config, merge_configs, read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_merge_configs_merges_mappings_and_replaces_everything_else():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}, "f": 3}
    merged = merge_configs(base, {"a": {"c": [3]}, "d": None, "g": 4})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": None, "f": 3, "g": 4}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}, "f": 3}  # not modified


def test_a_task_config_inherits_the_agent_and_keeps_its_own_keys(tmp_path):
    _write(tmp_path / "agent.yaml", "env: {id: flowrl/PointMaze-UMaze-v0, n_envs: 3, kwargs: {max_episode_steps: 50}}\n"
                                    "algo: {name: sac, kwargs: {batch_size: 32, learning_starts: 10}}\n"
                                    "novelty: {weight: {beta: 2.0}}\ntotal_timesteps: 500\n")
    task = _write(tmp_path / "task.yaml", "base: agent.yaml\nalgo: {kwargs: {batch_size: 64}}\ntotal_timesteps: 900\n")
    cfg = load_config(task)
    assert cfg.algo.kwargs == {"batch_size": 64, "learning_starts": 10}
    assert cfg.total_timesteps == 900 and cfg.novelty.weight.beta == 2.0 and cfg.env.n_envs == 3
    assert cfg.env.kwargs == {"max_episode_steps": 50}
    off = _write(tmp_path / "off.yaml", "base: agent.yaml\nnovelty: null\n")
    assert load_config(off).novelty is None


def test_another_env_id_does_not_inherit_the_base_envs_kwargs_wrappers_or_packages(tmp_path):
    _write(tmp_path / "agent.yaml", "env: {id: flowrl/PointMaze-UMaze-v0, n_envs: 3, kwargs: {max_speed: 0.2},\n"
                                    "      wrappers: [envs.wrappers.SuccessInfo], packages: [envs]}\n")
    task = _write(tmp_path / "task.yaml", "base: agent.yaml\nenv: {id: flowrl/SparseMountainCar-v0}\n")
    env = read_config(task)["env"]
    assert env == {"id": "flowrl/SparseMountainCar-v0", "n_envs": 3}
    same = _write(tmp_path / "same.yaml", "base: agent.yaml\nenv: {kwargs: {max_episode_steps: 9}}\n")
    assert read_config(same)["env"]["kwargs"] == {"max_speed": 0.2, "max_episode_steps": 9}


def test_a_missing_base_or_a_cycle_is_a_clear_error(tmp_path):
    lost = _write(tmp_path / "lost.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="base: 'nowhere.yaml'.*does not exist"):
        read_config(lost)
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        read_config(str(tmp_path / "a.yaml"))
    bad = _write(tmp_path / "bad.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base: a path"):
        read_config(bad)


@pytest.mark.parametrize("name", ["rooms_flow_sac", "robotics_pointmaze", "mountaincar_sac"])
def test_the_shipped_task_configs_are_the_demo_agent_on_another_env(name):
    """Everything but the env, the budget and the evaluation comes from configs/demo.yaml."""
    demo = read_config(os.path.join(ROOT, "configs", "demo.yaml"))
    task = read_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    differs = {k for k in set(demo) | set(task) if demo.get(k) != task.get(k)}
    assert differs <= {"env", "total_timesteps", "eval"}
    assert task["env"]["id"] != demo["env"]["id"]
    load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))  # and it validates
