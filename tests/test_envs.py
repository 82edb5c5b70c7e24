"""The exploration environments: env checker, exact maze collision, goals, deep sea, wrappers, coverage."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs import CoverageTracker, CoverageWrapper, DeepSea, PointMaze, SparseReward, load_layout, maze_tracker

FLOWRL_IDS = sorted(k for k in gym.registry if k.startswith("flowrl/"))


def test_every_shipped_env_is_registered():
    for env_id in envs.ENV_IDS:
        assert env_id in FLOWRL_IDS
    assert {"flowrl/PointMaze-Open-v0", "flowrl/PointMaze-UMaze-v0", "flowrl/PointMaze-Rooms-v0",
            "flowrl/DeepSea-v0"} <= set(FLOWRL_IDS)


@pytest.mark.parametrize("env_id", FLOWRL_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    # The sparse wrappers wrap classic-control tasks whose rendering needs pygame (not a dependency).
    sparse = isinstance(env.unwrapped, gym.Env) and "Sparse" in env_id
    check_env(env if sparse else env.unwrapped, skip_render_check=sparse)
    env.close()


@pytest.mark.parametrize("env_id", ["flowrl/PointMaze-UMaze-v0", "flowrl/DeepSea-v0"])
def test_rgb_render(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 10


# ------------------------------------------------------------------ collision
def _path_is_free(layout, p, q, half, samples=40):
    """The executed move sweeps x first, then y: check the square along both legs."""
    for t in np.linspace(0, 1, samples):
        if not layout.box_is_free(p[0] + t * (q[0] - p[0]), p[1], half):
            return False
        if not layout.box_is_free(q[0], p[1] + t * (q[1] - p[1]), half):
            return False
    return True


@pytest.mark.parametrize("layout", envs.available_layouts())
@pytest.mark.parametrize("max_speed", [0.3, 2.5])
def test_random_actions_never_cross_a_wall(layout, max_speed):
    env = PointMaze(layout, max_speed=max_speed, max_episode_steps=300)
    rng = np.random.default_rng(1)
    env.reset(seed=0)
    for _ in range(1500):
        p = env.position
        a = rng.uniform(-1, 1, 2) * rng.choice([0.3, 1.0, 3.0])  # also out-of-range actions (clipped)
        _, _, term, trunc, info = env.step(a.astype(np.float32))
        q = info["position"]
        assert np.all(np.abs(q - p) <= max_speed + 1e-9)
        assert _path_is_free(env.layout, p, q, env.agent_radius), (layout, p, q)
        if term or trunc:
            env.reset()


@settings(max_examples=60, deadline=None)
@given(
    start=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
    moves=st.lists(st.tuples(st.floats(-4, 4), st.floats(-4, 4)), min_size=1, max_size=12),
)
def test_property_moves_stay_in_free_space(start, moves):
    """Any sequence of moves (of any length) from any free point keeps the square out of the walls."""
    layout = load_layout("rooms")
    half = 0.1
    free = np.argwhere(~layout.walls)
    r, c = free[int(start[0] * (len(free) - 1))]
    x, y = c + half + start[1] * (1 - 2 * half), r + 0.5
    assert layout.box_is_free(x, y, half)
    for dx, dy in moves:
        nx, ny = layout.move(x, y, dx, dy, half)
        assert _path_is_free(layout, (x, y), (nx, ny), half, samples=80)
        x, y = nx, ny


def test_agent_stops_flush_against_a_wall():
    env = PointMaze("open", max_speed=0.4, agent_radius=0.1)
    env.reset(seed=0)
    for _ in range(10):
        env.step(np.array([-1.0, 0.0], dtype=np.float32))
    x, y = env.position
    assert x == pytest.approx(1.1, abs=1e-5) and y == pytest.approx(1.5)


def test_diagonal_gap_cannot_be_cut():
    # S in cell (row 1, col 1); G in (row 2, col 2) touches it only at a corner.
    env = PointMaze(["#####", "#S#.#", "##G.#", "#####"], max_speed=0.45, agent_radius=0.05)
    env.reset(seed=0)
    for _ in range(50):
        _, r, term, _, info = env.step(np.array([1.0, 1.0], dtype=np.float32))
        assert not term and r == 0.0
        assert env.layout.box_is_free(*info["position"], env.agent_radius)
    assert np.all(env.position < 2.0)


@pytest.mark.parametrize("goal_reward", [1.0, 10.0])
def test_goal_ends_the_episode_with_the_goal_reward(goal_reward):
    env = PointMaze(["#####", "#S.G#", "#####"], max_speed=0.5, goal_reward=goal_reward)
    env.reset(seed=0)
    rewards, terminated = [], False
    for _ in range(10):
        _, r, terminated, truncated, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
        rewards.append(r)
        if terminated:
            break
    assert terminated and info["is_success"] and rewards[-1] == goal_reward and sum(rewards) == goal_reward


def test_truncation_and_fixed_start():
    env = PointMaze("umaze", max_episode_steps=7)
    o1, _ = env.reset(seed=1)
    o2, _ = env.reset(seed=2)
    np.testing.assert_array_equal(o1, o2)  # fixed start by default
    for t in range(7):
        _, _, term, trunc, _ = env.step(np.zeros(2, dtype=np.float32))
    assert trunc and not term
    np.testing.assert_allclose(env.obs_to_position(o1), env.layout.start, atol=1e-6)


def test_position_control_moves_towards_the_target():
    env = PointMaze("open", control="position", max_speed=0.3)
    env.reset(seed=0)
    target = np.array([5.5, 4.5])
    action = (target / np.array([env.layout.width, env.layout.height])) * 2 - 1
    for _ in range(40):
        env.step(action.astype(np.float32))
    np.testing.assert_allclose(env.position, target, atol=1e-6)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="control"):
        PointMaze(control="force")
    with pytest.raises(ValueError, match="unknown maze layout"):
        PointMaze("nope")
    with pytest.raises(ValueError, match="start"):
        PointMaze(["###", "#.#", "###"])
    with pytest.raises(ValueError, match="finite"):
        PointMaze().step(np.array([np.nan, 0.0]))


# ------------------------------------------------------------------ deep sea
def test_deep_sea_needs_the_exact_action_sequence():
    env = DeepSea(size=6, mapping_seed=3)
    env.reset(seed=0)
    total, steps = 0.0, 0
    while True:
        a = env.right_action[env._row, env._col]
        _, r, term, trunc, info = env.step(a)
        total, steps = total + r, steps + 1
        if term:
            break
    assert steps == 5 and info["is_success"] and total == pytest.approx(1.0 - 5 * 0.01 / 6)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        env.reset()
        term = False
        while not term:
            _, r, term, _, info = env.step(int(rng.integers(2)))
        hits += info["is_success"]
    assert hits < 20  # p = 1/32 per episode


# ------------------------------------------------------------------ wrappers
class _Ramp(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Discrete(1)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, dtype=np.float32), float(self.t), False, self.t >= 5, {}


def test_sparse_reward_step_and_return_modes():
    env = SparseReward(_Ramp(), threshold=3.0, mode="step")
    env.reset()
    rewards = [env.step(0)[1] for _ in range(5)]
    assert rewards == [0.0, 0.0, 1.0, 1.0, 1.0]
    env = SparseReward(_Ramp(), threshold=6.0, mode="return", terminate=True)
    env.reset()
    out = [env.step(0) for _ in range(3)]
    assert [o[1] for o in out] == [0.0, 0.0, 1.0]  # cumulative 1, 3, 6
    assert out[-1][2] and out[-1][4]["dense_reward"] == 3.0


# ------------------------------------------------------------------ coverage
def test_coverage_counts_a_hand_made_trajectory():
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    tr = CoverageTracker((0, 4, 0, 2), (4, 2), valid)
    traj = np.array([[0.5, 0.5], [0.6, 0.4], [1.5, 0.5], [3.9, 1.9], [3.5, 0.5], [-3, 7]])
    tr.update(traj)
    expected = np.zeros((2, 4), dtype=int)
    expected[0, 0] = 2      # two points in the first cell
    expected[0, 1] = 1
    expected[1, 3] = 1
    expected[0, 3] = 1      # an invalid cell: counted, but not in the fraction
    expected[1, 0] = 1      # (-3, 7) clipped to the corner cell (row 1, column 0)
    np.testing.assert_array_equal(tr.counts, expected)
    assert tr.visited == 4 and tr.fraction == pytest.approx(4 / 7)
    heat = tr.heatmap()
    assert np.isnan(heat[0, 3]) and heat[0, 0] == 2
    tr.update(np.array([2.5, 1.5]))
    assert tr.visited == 5


def test_coverage_wrapper_on_maze_and_with_projection():
    env = CoverageWrapper(PointMaze("open", max_speed=1.0), maze_tracker(PointMaze("open")))
    env.reset(seed=0)
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    # start (1.5, 1.5) then 2.5, 3.5, 4.5 along the first row: 4 of the 42 free cells
    assert env.tracker.visited == 4 and info["coverage"] == pytest.approx(4 / 42)
    proj = CoverageWrapper(DeepSea(4), CoverageTracker((0, 1.0001, 0, 1.0001), 4), projection=lambda o: o[::-1])
    proj.reset(seed=0)
    proj.step(0)
    assert proj.tracker.visited == 2
    with pytest.raises(ValueError, match="position"):
        CoverageWrapper(_Ramp(), CoverageTracker((0, 1, 0, 1), 2)).reset()



@pytest.mark.parametrize("env_id", ["flowrl/PointMaze-Rooms-v0", "flowrl/PointMaze-v0"])
@pytest.mark.parametrize("limit", [None, 5, 400])
def test_gym_make_sets_the_episode_length(env_id, limit):
    """``gym.make(id, max_episode_steps=N)`` gives N-step episodes (200 by default), never the env's own 200."""
    kwargs = {} if limit is None else {"max_episode_steps": limit}
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    steps, term, trunc = 0, False, False
    while not (term or trunc):
        _, _, term, trunc, _ = env.step(np.zeros(2, dtype=np.float32))  # stays at the start: never the goal
        steps += 1
    assert trunc and not term and steps == (200 if limit is None else limit)
