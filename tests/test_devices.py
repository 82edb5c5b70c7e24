"""Devices: CUDA agrees with the CPU, the novelty model follows the agent, checkpoints cross devices.

Every test here takes the ``device`` fixture: ``pytest --device cuda tests/test_devices.py``
runs them on a GPU; on the default ``cpu`` they check the same plumbing with the CPU on
both sides.
"""

from __future__ import annotations

import copy
import os
import traceback

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env

from agents.novelty import attach_novelty, find_novelty, make_novelty_bonus, novelty_callbacks, novelty_density
from flow_cases import all_cases, perturb
from flowrl.precision import ieee_float32, tf32_enabled

IMAGE_SHAPE = (2, 4, 4)
CASES = [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in all_cases()]
# SB3's SAC: one shared critic (the novelty critics, on by default, are IntrinsicCriticSAC's)
SMALL_FLOW = {"model": {"flow_kwargs": {"transforms": 2, "hidden_features": [16]}, "batch_size": 32,
                        "steps_per_update": 2, "cell_samples": 4, "seed": 0},
              "update_every": 8, "critics": None}
SMALL_SAC = dict(learning_starts=24, batch_size=16, buffer_size=2000, policy_kwargs=dict(net_arch=[16]))


# ------------------------------------------------------------------ TF32
def test_ieee_float32_turns_tf32_off_and_restores_the_flags():
    before = tf32_enabled()
    legacy = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # a program that asked for TF32 matmuls
        assert tf32_enabled()["matmul"]
        with ieee_float32():
            assert tf32_enabled() == {"matmul": False, "conv": False}
        assert tf32_enabled() == {"matmul": True, "conv": before["conv"]}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = legacy
    assert tf32_enabled() == before


@pytest.mark.parametrize("case", CASES)
def test_float32_log_prob_on_the_device_is_as_accurate_as_on_the_cpu(case, device):
    """``log_prob`` in float32 on ``device`` against float64 on the CPU, with TF32 off.

    The tolerance is the CPU's own float32 error measured in the same run (x10 for another
    summation order) plus 1e-5 (1 + |log p|), ~100 float32 ulps: a device that rounds like
    IEEE float32 passes, one that computes in TF32 (error ~1e-3 relative) does not.
    """
    shape = (max(3, case.min_dim),) if case.vector else IMAGE_SHAPE
    dim = shape[0] if case.vector else shape
    ref = case.build(dim, 2, torch.float64, seed=0)
    perturb(ref)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(32, *shape, generator=g, dtype=torch.float64)
    c = torch.randn(32, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref.log_prob(x, c)  # data-dependent initialisation, shared by every copy below
        ref.eval()
        want = ref.log_prob(x, c)
        cpu32 = copy.deepcopy(ref).float()
        dev32 = copy.deepcopy(cpu32).to(device)
        err_cpu = (cpu32.log_prob(x.float(), c.float()).double() - want).abs().max().item()
        with ieee_float32():
            got = dev32.log_prob(x.float().to(device), c.float().to(device))
    assert got.device.type == device.type and torch.isfinite(got).all()
    err = (got.double().cpu() - want).abs()
    bound = 10 * err_cpu + 1e-5 * (1 + want.abs())
    assert (err <= bound).all(), (err.max().item(), err_cpu)


# -------------------------------------------------------------- novelty
def _mc():
    return make_vec_env("MountainCarContinuous-v0", n_envs=1, seed=0)


def test_novelty_model_follows_the_agent_device(device):
    env = _mc()
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, SMALL_FLOW)
    bonus = kwargs["replay_buffer_kwargs"]["novelty"]
    assert bonus.options.device == "auto" and bonus.model.device.type == "cpu"  # no agent yet
    model = SAC("MlpPolicy", env, seed=0, device=device, **kwargs)
    assert bonus.model.device.type == device.type
    model.learn(40, callback=callbacks)
    samples = model.replay_buffer.sample(8)
    assert model.replay_buffer.last_intrinsic.device.type == device.type == samples.rewards.device.type
    pinned_kwargs, _ = attach_novelty(SAC, SMALL_SAC, env, {**SMALL_FLOW, "device": "cpu"})
    SAC("MlpPolicy", env, seed=0, device=device, **pinned_kwargs)
    assert pinned_kwargs["replay_buffer_kwargs"]["novelty"].model.device.type == "cpu"  # an explicit device stays


def test_follow_moves_the_optimiser_state_with_the_model():
    bonus = make_novelty_bonus(_mc().observation_space, SMALL_FLOW)
    bonus.model.update(np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    assert bonus.model.optimizer.state  # Adam has moments now
    bonus.follow("meta")  # a device without data: every tensor that moved shows it
    assert all(p.device.type == "meta" for p in bonus.model.parameters())
    moments = [v for s in bonus.model.optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and all(v.device.type == "meta" for v in moments)
    pinned = make_novelty_bonus(_mc().observation_space, {**SMALL_FLOW, "device": "cpu"})
    pinned.follow("meta")
    assert pinned.model.device.type == "cpu"


def test_novelty_checkpoint_moves_between_devices(device, tmp_path):
    """Saved on ``device``, loaded on the CPU, saved again and loaded back: the same model, still training."""
    env = _mc()
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, SMALL_FLOW)
    model = SAC("MlpPolicy", env, seed=0, device=device, **kwargs)
    model.learn(48, callback=callbacks)
    model.save(tmp_path / "dev")
    on_cpu = SAC.load(tmp_path / "dev", env=env, device="cpu")
    a, b = find_novelty(model).model, find_novelty(on_cpu).model
    assert b.device.type == "cpu" and b.n_total == a.n_total.cpu() == 48
    for k, v in a.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v.cpu(), b.state_dict()[k]), k
    pts = np.random.default_rng(0).normal([-0.5, 0.0], [0.3, 0.02], size=(8, 2)).astype(np.float32)
    with ieee_float32():  # float32 rounding of log N (~1e-5) is the bonus's relative error
        np.testing.assert_allclose(novelty_density(on_cpu, pts, "bonus"), novelty_density(model, pts, "bonus"),
                                   rtol=1e-4)
    on_cpu.save(tmp_path / "cpu")
    back = SAC.load(tmp_path / "cpu", env=env, device=device)
    c = find_novelty(back).model
    assert c.device.type == device.type
    assert np.array_equal(novelty_density(back, pts, "bonus"), novelty_density(model, pts, "bonus"))
    back.learn(32, callback=novelty_callbacks(back), reset_num_timesteps=False)  # Adam steps on the device
    assert float(c.n_total) == 48 + 32


def test_replay_scoring_reads_nothing_back_in_the_agent_layer(monkeypatch):
    """Scoring a replayed minibatch: no tensor value is read back to the host by ``agents/``.

    On a GPU each such read (``item``, ``bool``, ``float``, ``int`` of a tensor) is a device
    synchronisation; the ones left are inside the density model (``flowrl/novelty.py``).
    """
    env = _mc()
    # staleness 0: every minibatch drawn after an update is scored by the model (no cached rows)
    kwargs, callbacks = attach_novelty(SAC, SMALL_SAC, env, {**SMALL_FLOW, "staleness": 0})
    model = SAC("MlpPolicy", env, seed=0, device="cpu", **kwargs)
    model.learn(40, callback=callbacks)
    find_novelty(model).model.update(np.zeros((1, 2), np.float32), steps=1)  # the cached scores are now stale
    model.replay_buffer.sample(8)  # the first minibatch after an update may check the model once
    callers = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, **kw):
            callers.append(traceback.extract_stack(limit=2)[0].filename)  # the direct caller
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, spy)
    samples = model.replay_buffer.sample(64)
    monkeypatch.undo()
    assert samples.rewards.shape == (64, 1)
    agent_reads = [f for f in callers if f"{os.sep}agents{os.sep}" in f]
    assert agent_reads == [], agent_reads
    assert callers, "the spy saw no read at all: it is not watching"  # the density model's own reads
