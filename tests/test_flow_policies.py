"""Flow policies in Stable-Baselines3: the squashed flow, SAC and PPO/A2C policies, save/load, the bandit."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC

import envs  # noqa: F401  (registers flowrl/TwoModeBandit-v0)
import flowrl
from agents import FlowActorCriticPolicy, FlowDistribution, FlowSACPolicy
from agents.policies.distributions import build_action_flow
from flowrl.transforms.squash import SquashToBox, log_dtanh
from envs.bandit import TwoModeBandit
from flow_cases import perturb
from tolerances import assert_close_rounding

FLOWS = ["realnvp", "naf"]
SMALL = {
    "realnvp": dict(transforms=2, hidden_features=(16,)),
    "naf": dict(transforms=1, hidden_features=(16,), hidden=4),
}


def _flow(name, dim, context_dim=3, low=None, high=None, base="normal", direction="density", seed=0):
    torch.manual_seed(seed)
    low = -np.ones(dim) if low is None else low
    high = np.ones(dim) if high is None else high
    flow = build_action_flow(name, dim, context_dim, low, high, base, direction, SMALL[name]).double()
    perturb(flow, std=0.1, seed=seed + 1)
    return flow


def _ctx(rows, context_dim=3, seed=5):
    return torch.randn(rows, context_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------- squash
def test_log_dtanh_is_exact_and_finite():
    u = torch.linspace(-8, 8, 101, dtype=torch.float64)
    torch.testing.assert_close(log_dtanh(u), torch.log1p(-torch.tanh(u) ** 2), rtol=1e-9, atol=1e-9)
    big = torch.tensor([-60.0, -20.0, 20.0, 60.0])  # float32: 1 - tanh(u)^2 underflows to 0 here
    out = log_dtanh(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 2 * (math.log(2) - big.abs()), rtol=1e-6, atol=1e-4)


def test_squash_maps_into_box_and_round_trips():
    sq = SquashToBox([-2.0, 0.0], [3.0, 0.5]).double()
    u = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    assert u.abs().max() < 7  # inside the clamp of the density direction (|u| <= ~7.25)
    a, ld_inv = sq.inverse(u)
    assert (a[:, 0] > -2).all() and (a[:, 0] < 3).all() and (a[:, 1] > 0).all() and (a[:, 1] < 0.5).all()
    u2, ld_fwd = sq.forward(a)
    torch.testing.assert_close(u2, u, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ld_fwd, -ld_inv)
    # log-det against autograd for one row
    row = u[:1].clone().requires_grad_(True)
    jac = torch.autograd.functional.jacobian(lambda v: sq.inverse(v)[0], row)[0, :, 0, :]
    torch.testing.assert_close(torch.logdet(jac), ld_inv[0])


def test_boundary_actions_have_finite_log_prob():
    flow = _flow("realnvp", 2, low=np.array([-2.0, -1.0]), high=np.array([2.0, 1.0])).float()
    actions = torch.tensor([[-2.0, -1.0], [2.0, 1.0], [2.0, 0.0]])
    lp = flow.log_prob(actions, _ctx(3).float())
    assert torch.isfinite(lp).all()


def test_squash_rejects_unbounded_or_empty_boxes():
    with pytest.raises(ValueError, match="finite action bounds"):
        SquashToBox([-np.inf], [1.0])
    with pytest.raises(ValueError, match="high > low"):
        SquashToBox([1.0], [1.0])


# ------------------------------------------------------- squashed flow density
@pytest.mark.parametrize("direction", ["density", "sample"])
@pytest.mark.parametrize("base", ["normal", "conditional"])
@pytest.mark.parametrize("name", FLOWS)
def test_squashed_density_integrates_to_one_1d(name, base, direction):
    low, high = np.array([-2.0]), np.array([3.0])
    flow = _flow(name, 1, low=low, high=high, base=base, direction=direction)
    n = 4000
    edges = torch.linspace(-2.0, 3.0, n + 1, dtype=torch.float64)
    mids = ((edges[1:] + edges[:-1]) / 2).unsqueeze(1)
    with torch.no_grad():
        lp = flow.log_prob(mids, _ctx(1).expand(n, -1))
    assert torch.isfinite(lp).all()
    total = (lp.exp() * (5.0 / n)).sum().item()
    assert abs(total - 1.0) < 5e-3, total


@pytest.mark.parametrize("name", FLOWS)
def test_squashed_density_integrates_to_one_2d(name):
    flow = _flow(name, 2, low=np.array([-1.0, 0.0]), high=np.array([2.0, 1.0]), base="conditional")
    n = 300
    gx = torch.linspace(-1.0, 2.0, n + 1, dtype=torch.float64)
    gy = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    mx, my = (gx[1:] + gx[:-1]) / 2, (gy[1:] + gy[:-1]) / 2
    grid = torch.stack(torch.meshgrid(mx, my, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        lp = flow.log_prob(grid, _ctx(1).expand(grid.shape[0], -1))
    total = (lp.exp() * (3.0 / n) * (1.0 / n)).sum().item()
    assert abs(total - 1.0) < 2e-2, total


@pytest.mark.parametrize("direction", ["density", "sample"])
@pytest.mark.parametrize("name", FLOWS)
def test_log_prob_of_samples_matches_direct_density(name, direction):
    flow = _flow(name, 2, low=np.array([-2.0, -2.0]), high=np.array([2.0, 1.0]), base="conditional", direction=direction)
    ctx = _ctx(64)
    x, lp = flow.rsample_and_log_prob(1, ctx)
    direct = flow.log_prob(x[0], ctx)
    torch.testing.assert_close(lp[0], direct, rtol=1e-6, atol=1e-6)
    assert (x[0, :, 0] > -2).all() and (x[0, :, 1] < 1).all()


def test_log_prob_with_one_context_per_row_matches_broadcast_context():
    flow = _flow("realnvp", 2, base="conditional")
    x = flow.sample(5, _ctx(3)).reshape(15, 2)
    ctx = _ctx(3).repeat(5, 1)  # one row per x row: the fast path
    per_row = flow.log_prob(x, ctx)
    broadcast = flow.log_prob(x.reshape(5, 3, 2), _ctx(3))  # (5, 3) against (3,): broadcast path
    assert per_row.shape == (15,) and broadcast.shape == (5, 3)
    # the same log-densities, batched differently: equal up to float32 rounding (tests/tolerances.py)
    assert_close_rounding(per_row, broadcast.reshape(15))
    one_x = flow.log_prob(x[:1], ctx[:4])  # x broadcast against 4 context rows
    assert_close_rounding(one_x, flow.log_prob(x[:1].expand(4, 2), ctx[:4]))


@pytest.mark.parametrize("name", FLOWS)
def test_deterministic_action_is_the_squashed_pre_squash_mode_estimate(name):
    dists = {}
    for pre in (False, True):
        torch.manual_seed(0)
        d = FlowDistribution(2, name, SMALL[name], base="conditional", low=[-2.0, -1.0], high=[2.0, 1.0],
                             pre_squash=pre)
        perturb(d.proba_distribution_net(3), std=0.5)
        dists[pre] = d.proba_distribution(_ctx(16).float())
    box, u = dists[False].mode(), dists[True].mode()
    assert torch.equal(box, dists[False].mode())  # deterministic
    squash = dists[False].flow.transform.transforms[0]
    torch.testing.assert_close(box, squash.inverse(u, None)[0])
    assert (box[:, 0].abs() <= 2).all() and (box[:, 1].abs() <= 1).all()
    inner, ctx = dists[True]._unsquashed, _ctx(16).float()
    # never a lower pre-squash density than the base mode pushed through (it is one of the candidates)
    lp_est, lp_base = inner.log_prob(u, ctx), inner.log_prob(inner.mode_sample(ctx), ctx)
    assert (lp_est >= lp_base - 1e-5 * (1 + lp_base.abs())).all()
    dists[True].mode_candidates = 0
    torch.testing.assert_close(dists[True].mode(), inner.mode_sample(ctx))
    with pytest.raises(ValueError, match="mode_candidates"):
        FlowDistribution(2, name, SMALL[name], mode_candidates=-1)


@pytest.mark.parametrize("pre_squash", [False, True])
def test_candidate_actions_are_fixed_hold_the_mode_and_lie_in_the_box(pre_squash):
    torch.manual_seed(0)
    d = FlowDistribution(2, "realnvp", SMALL["realnvp"], base="conditional", low=[-2.0, -1.0], high=[2.0, 1.0],
                         pre_squash=pre_squash, mode_candidates=16)
    perturb(d.proba_distribution_net(3), std=0.5)
    d.proba_distribution(_ctx(8).float())
    cands = d.candidate_actions()
    assert cands.shape == (17, 8, 2) and torch.equal(cands, d.candidate_actions())
    # the mode is one of the candidates, row by row
    assert (cands == d.mode().unsqueeze(0)).all(dim=-1).any(dim=0).all()
    if not pre_squash:
        assert (cands[..., 0].abs() <= 2).all() and (cands[..., 1].abs() <= 1).all()


def test_flow_distribution_entropy_matches_grid_and_has_gradient():
    dist = FlowDistribution(1, "realnvp", SMALL["realnvp"], base="conditional", entropy_samples=20000)
    torch.manual_seed(0)
    flow = dist.proba_distribution_net(3).double()
    perturb(flow, std=0.1)
    ctx = _ctx(1)
    n = 4000
    mids = torch.linspace(-1, 1, n + 1, dtype=torch.float64)
    mids = ((mids[1:] + mids[:-1]) / 2).unsqueeze(1)
    with torch.no_grad():
        lp = flow.log_prob(mids, ctx.expand(n, -1))
    exact = -(lp.exp() * lp * (2.0 / n)).sum()
    estimate = dist.proba_distribution(ctx).entropy()
    assert estimate.shape == (1,)
    assert abs(estimate.item() - exact.item()) < 0.03, (estimate.item(), exact.item())
    estimate.sum().backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------- errors
def _obs_space():
    return spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize(
    "action_space, match",
    [
        (spaces.Discrete(3), "Discrete action spaces are not supported"),
        (spaces.MultiDiscrete([2, 3]), "MultiDiscrete action spaces are not supported"),
        (spaces.Box(-np.inf, np.inf, (2,), np.float32), "needs a bounded Box"),
        (spaces.Box(-1.0, np.inf, (2,), np.float32), "needs a bounded Box"),
    ],
)
@pytest.mark.parametrize("policy", [FlowSACPolicy, FlowActorCriticPolicy])
def test_unsupported_action_spaces_are_rejected(policy, action_space, match):
    with pytest.raises(ValueError, match=match):
        policy(_obs_space(), action_space, lambda _: 1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(flow="no_such_flow"), "unknown flow 'no_such_flow'"),
        (dict(flow="realnvp", base="uniform"), "unknown base 'uniform'"),
        (dict(flow="realnvp", direction="sideways"), "unknown direction 'sideways'"),
        (dict(flow="glow"), "needs at least 2 action dimensions"),
        (dict(flow="realnvp", flow_kwargs=dict(context_dim=4)), "may not set 'context_dim'"),
        (dict(flow="realnvp", flow_kwargs=dict(depth=4)), "unknown keyword argument"),
        (dict(flow="realnvp", use_sde=True), "use_sde"),
    ],
)
@pytest.mark.parametrize("policy", [FlowSACPolicy, FlowActorCriticPolicy])
def test_bad_flow_settings_are_rejected(policy, kwargs, match):
    one_dim = spaces.Box(-2.0, 2.0, (1,), np.float32)
    with pytest.raises(ValueError, match=match):
        policy(_obs_space(), one_dim, lambda _: 1e-3, **kwargs)


def test_transforms_without_an_inverse_are_rejected():
    from agents.policies.distributions import _check_both_directions

    class DensityOnly(flowrl.Transform):
        def forward(self, x, context=None):
            return x, x.new_zeros(x.shape[0])

    with pytest.raises(ValueError, match="does not implement inverse"):
        _check_both_directions("density_only", flowrl.Compose([DensityOnly()]))
    _check_both_directions("realnvp", flowrl.build_flow("realnvp", 2).transform)  # both directions: accepted


def test_algorithms_reject_flow_policies_on_discrete_envs():
    with pytest.raises(ValueError, match="Discrete action spaces are not supported"):
        PPO(FlowActorCriticPolicy, "CartPole-v1", device="cpu")


# ------------------------------------------------------------------ SAC
def _sac(env, flow, seed=0, device="cpu", policy_kwargs_extra=None, **kw):
    pk = dict(net_arch=[32, 32], flow=flow, flow_kwargs=SMALL[flow], **(policy_kwargs_extra or {}))
    return SAC(FlowSACPolicy, env, policy_kwargs=pk, learning_starts=32, batch_size=32, seed=seed, device=device,
               **kw)


@pytest.mark.parametrize("name", FLOWS)
def test_sac_actor_samples_and_scores_in_one_pass(name, device):
    model = _sac("Pendulum-v1", name, device=device)
    actor = model.policy.actor
    obs = torch.randn(16, 3).to(device)
    actions, log_prob = actor.action_log_prob(obs)
    assert actions.shape == (16, 1) and log_prob.shape == (16,)
    assert (actions.abs() < 1).all()  # SAC's normalised box, rescaled by SB3
    rescored = actor.action_dist.log_prob(actions.detach())
    torch.testing.assert_close(log_prob.detach(), rescored, rtol=1e-4, atol=1e-4)
    log_prob.sum().backward()
    assert all(p.grad is not None for p in actor.flow.parameters())
    # deterministic action = base mode pushed through the flow and the squash
    latent = actor.latent_pi(actor.extract_features(obs, actor.features_extractor))
    zeros = torch.zeros(16, 1, device=device)
    expected, _ = actor.flow.transform.inverse(zeros, latent)
    torch.testing.assert_close(actor(obs, deterministic=True), expected)
    direction = "sample" if flowrl.flow_spec(name).numerical_inverse else "density"
    assert actor.action_dist.direction == direction


def _same_predictions(model, loaded, obs):
    det_a, _ = model.predict(obs, deterministic=True)
    det_b, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(det_a, det_b)
    torch.manual_seed(123)
    sto_a, _ = model.predict(obs, deterministic=False)
    torch.manual_seed(123)
    sto_b, _ = loaded.predict(obs, deterministic=False)
    np.testing.assert_array_equal(sto_a, sto_b)
    assert not np.allclose(sto_a, det_a)  # the stochastic policy really is stochastic


@pytest.mark.parametrize("name", FLOWS)
def test_sac_save_load_round_trip(name, tmp_path, device):
    model = _sac("Pendulum-v1", name, device=device)
    model.learn(48)
    model.save(tmp_path / "sac")
    loaded = SAC.load(tmp_path / "sac", device=device)
    assert isinstance(loaded.policy, FlowSACPolicy)
    assert loaded.policy_kwargs["flow"] == name
    assert loaded.policy_kwargs["flow_kwargs"] == json.loads(json.dumps(SMALL[name]))  # tuples come back as lists
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[key], value, rtol=0, atol=0)
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    _same_predictions(model, loaded, obs)
    low, high = model.action_space.low, model.action_space.high
    actions, _ = loaded.predict(obs)
    assert (actions >= low).all() and (actions <= high).all()


def _deterministic_choice(model, obs):
    """The policy's deterministic actions of ``obs``, the flow's fixed candidates ``(K, B, D)`` and its mode."""
    policy, actor = model.policy, model.policy.actor
    with torch.no_grad():
        chosen = policy._predict(obs, deterministic=True)
        actor.action_dist.proba_distribution(actor._latent(obs))
        return chosen, actor.action_dist.candidate_actions(), actor(obs, deterministic=True)


def test_sac_deterministic_action_is_by_default_the_median_of_the_fixed_candidates(device, tmp_path):
    model = _sac("Pendulum-v1", "realnvp", device=device)
    assert model.policy.deterministic_rule == "median"
    model.learn(64)
    policy = model.policy
    obs = torch.randn(16, 3, device=device)
    chosen, cands, mode = _deterministic_choice(model, obs)
    k = cands.shape[0]
    below = (cands < chosen.unsqueeze(0)).sum(dim=0)
    above = (cands > chosen.unsqueeze(0)).sum(dim=0)
    assert (below <= k // 2).all() and (above <= k // 2).all()  # the middle value, coordinate by coordinate
    assert ((cands == chosen.unsqueeze(0)).any(dim=0)).all()  # one of the candidates' values
    assert torch.equal(policy._predict(obs, deterministic=True), chosen)  # deterministic
    assert not torch.equal(chosen, mode)  # not the density's mode
    low, high = (torch.as_tensor(b, device=device) for b in (model.action_space.low, model.action_space.high))
    assert ((chosen >= low) & (chosen <= high)).all()
    model.save(tmp_path / "sac")
    assert SAC.load(tmp_path / "sac", device=device).policy.deterministic_rule == "median"


def test_sac_critic_rule_picks_the_candidate_the_twin_critics_value_most(device, tmp_path):
    model = _sac("Pendulum-v1", "realnvp", device=device, policy_kwargs_extra=dict(deterministic_rule="critic"))
    model.learn(64)
    policy = model.policy
    obs = torch.randn(16, 3, device=device)
    chosen, cands, mode = _deterministic_choice(model, obs)  # cands: (K, 16, 1)
    with torch.no_grad():
        # every candidate scored row by row, with no tiling: min over the twin critics
        q = torch.stack([torch.cat(policy.critic(obs[i:i + 1].expand(len(cands), 3), cands[:, i]), 1).min(1).values
                         for i in range(16)], dim=1)  # (K, 16)
        picked = (cands == chosen.unsqueeze(0)).all(dim=-1)  # (K, 16): which candidate each row chose
    assert (picked.sum(dim=0) >= 1).all()  # the choice is one of the candidates
    q_chosen = torch.where(picked, q, torch.full_like(q, -torch.inf)).max(dim=0).values
    # the best one, up to the rounding of Q between a batch of K * 16 and one of K
    assert_close_rounding(q_chosen, q.max(dim=0).values)
    assert not torch.equal(chosen, mode)  # a different rule from the density's mode on some rows
    torch.manual_seed(1)
    sampled = policy._predict(obs, deterministic=False)
    assert sampled.shape == (16, 1) and not torch.equal(sampled, chosen)  # sampling is unchanged
    model.save(tmp_path / "sac")
    loaded = SAC.load(tmp_path / "sac", device=device)
    assert loaded.policy.deterministic_rule == "critic"
    np.testing.assert_array_equal(loaded.predict(obs.cpu().numpy(), deterministic=True)[0],
                                  model.predict(obs.cpu().numpy(), deterministic=True)[0])
    with pytest.raises(ValueError, match="deterministic_rule"):
        _sac("Pendulum-v1", "realnvp", policy_kwargs_extra=dict(deterministic_rule="mean"))


# --------------------------------------------------------------- PPO / A2C
def _on_policy(algo, env, flow, seed=0, store_pre_squash=True, device="cpu", **kw):
    pk = dict(net_arch=dict(pi=[32], vf=[32]), flow=flow, flow_kwargs=SMALL[flow], store_pre_squash=store_pre_squash)
    extra = dict(n_steps=32, batch_size=32, n_epochs=1) if algo is PPO else dict(n_steps=8)
    return algo(FlowActorCriticPolicy, env, policy_kwargs=pk, seed=seed, device=device, **extra, **kw)


@pytest.mark.parametrize("pre_squash", [True, False], ids=["pre-squash", "box"])
@pytest.mark.parametrize("name", FLOWS)
def test_actor_critic_evaluate_actions_is_exact_with_entropy_gradient(name, pre_squash, device):
    model = _on_policy(PPO, "Pendulum-v1", name, store_pre_squash=pre_squash, device=device)
    policy = model.policy
    assert policy.squash_output is pre_squash
    obs = torch.randn(16, 3).to(device)
    with torch.no_grad():
        actions, _, rollout_log_prob = policy(obs)
    if not pre_squash:
        assert (actions.abs() <= 2).all()
    assert not torch.allclose(actions.abs(), torch.full_like(actions, 2.0))
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    torch.testing.assert_close(log_prob.detach(), rollout_log_prob, rtol=1e-5, atol=1e-5)
    assert values.shape == (16, 1) and entropy.shape == (16,)
    entropy.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.action_net.parameters())
    # stored actions on (or, pre-squash, far beyond) the box boundary still get a finite log-density
    edge = torch.tensor([[-50.0], [50.0]] if pre_squash else [[-2.0], [2.0]], device=device)
    _, lp_edge, _ = policy.evaluate_actions(obs[:2], edge)
    assert torch.isfinite(lp_edge).all()


@pytest.mark.parametrize("name", FLOWS)
def test_pre_squash_actions_reach_the_env_squashed_and_keep_the_ratio(name, device):
    """The env gets ``squash(u)``; ``log pi(u) - log pi(squash(u))`` does not depend on the parameters."""
    model = _on_policy(PPO, "Pendulum-v1", name, device=device)
    policy = model.policy
    obs = torch.randn(64, 3).to(device)
    with torch.no_grad():
        u, _, _ = policy(obs)
    box = policy.unscale_action(u.cpu().numpy())
    squash = policy.action_dist.flow.transform.transforms[0]
    np.testing.assert_allclose(box, squash.inverse(u)[0].cpu().numpy(), rtol=1e-6, atol=1e-6)
    assert box.dtype == np.float32 and (np.abs(box) <= 2).all()
    far = policy.unscale_action(np.array([[-1e4], [1e4]], np.float32))
    np.testing.assert_array_equal(far, [[-2.0], [2.0]])
    # predict() goes through unscale_action: box actions, deterministic = squash of the flow's mode
    pred, _ = model.predict(obs.cpu().numpy(), deterministic=True)
    with torch.no_grad():
        mode = policy.get_distribution(obs).mode()
    np.testing.assert_allclose(pred, policy.unscale_action(mode.cpu().numpy()), rtol=1e-6, atol=1e-6)

    def log_probs():
        dist = policy.get_distribution(obs)
        with torch.no_grad():
            return dist.log_prob(u), dist.flow.log_prob(torch.as_tensor(box, device=device), dist.context)

    u_before, box_before = log_probs()
    with torch.no_grad():
        for p in policy.action_net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    u_after, box_after = log_probs()
    assert (u_after - u_before).abs().max() > 1e-2  # the policy changed...
    torch.testing.assert_close(u_after - u_before, box_after - box_before, rtol=1e-3, atol=1e-3)  # ...same ratio


def test_pre_squash_scores_actions_that_float32_tanh_rounds_onto_the_boundary(device):
    """Beyond ``|u| ~ 9`` the box action is exactly the bound: only ``u`` still tells samples apart."""
    model = _on_policy(PPO, "Pendulum-v1", "realnvp", device=device)
    policy = model.policy
    obs = torch.randn(2, 3).to(device)
    u = torch.tensor([[12.0], [20.0]], device=device)
    assert (policy.unscale_action(u.cpu().numpy()) == 2.0).all()
    _, lp_u, _ = policy.evaluate_actions(obs, u)
    assert torch.isfinite(lp_u).all()
    dist = policy.get_distribution(obs)
    with torch.no_grad():
        expected = dist._unsquashed.log_prob(u, dist.context)
    torch.testing.assert_close(lp_u.detach(), expected)
    assert not torch.allclose(lp_u[0], lp_u[1])


@pytest.mark.parametrize("pre_squash", [True, False], ids=["pre-squash", "box"])
@pytest.mark.parametrize("name", FLOWS)
def test_rollout_scores_its_own_sample_without_a_second_pass(name, pre_squash, monkeypatch, device):
    model = _on_policy(PPO, "Pendulum-v1", name, store_pre_squash=pre_squash, device=device)
    policy = model.policy
    dist = policy.action_dist
    flow = dist._unsquashed if pre_squash else dist.flow
    calls = []
    density = flow.log_prob
    monkeypatch.setattr(flow, "log_prob", lambda *a, **k: calls.append(1) or density(*a, **k))
    obs = torch.randn(8, 3).to(device)
    with torch.no_grad():
        actions, _, rollout_log_prob = policy(obs)
    assert calls == [], "the rollout rescored its own sample"
    with torch.no_grad():
        _, stored_log_prob, _ = policy.evaluate_actions(obs, actions)
    assert calls == [1]  # stored actions are scored in the density direction
    torch.testing.assert_close(rollout_log_prob, stored_log_prob, rtol=1e-5, atol=1e-5)
    # log_prob keeps no hidden state: any tensor it is given, a fresh sample included, is scored
    dist = policy.get_distribution(obs)
    dist.log_prob(dist.sample())
    assert calls == [1, 1]
    if not pre_squash:  # a box sample that rounded onto the boundary is rescored (clamped like a stored one)
        lp = torch.zeros(1, 8, device=device)
        monkeypatch.setattr(dist.flow, "rsample_and_log_prob",
                            lambda n, c: (torch.full((1, 8, 1), 2.0, device=device), lp))
        actions, log_prob = dist.actions_and_log_prob()
        assert calls == [1, 1, 1] and not torch.equal(log_prob, lp[0])


def test_ppo_naf_slope_floor_defaults_to_the_policy_value_and_can_be_overridden():
    from agents.policies import PPO_NAF_MIN_SLOPE

    for given, expected in (({}, PPO_NAF_MIN_SLOPE), ({"min_slope": 1e-3}, 1e-3)):
        model = PPO(FlowActorCriticPolicy, "Pendulum-v1", n_steps=32, batch_size=32, device="cpu",
                    policy_kwargs=dict(flow="naf", flow_kwargs={**SMALL["naf"], **given}))
        dsf = model.policy.action_dist.flow.transform.transforms[1].transforms[0].bijection
        assert dsf.min_slope == expected and model.policy_kwargs["flow_kwargs"].get("min_slope", expected) == expected
        assert model.policy._get_constructor_parameters()["flow_kwargs"]["min_slope"] == expected  # saved with the model


def test_entropy_samples_zero_defers_to_sb3(device):
    model = PPO(FlowActorCriticPolicy, "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=1, device=device,
                policy_kwargs=dict(flow="realnvp", flow_kwargs=SMALL["realnvp"], entropy_samples=0))
    _, _, entropy = model.policy.evaluate_actions(torch.randn(4, 3, device=device), torch.zeros(4, 1, device=device))
    assert entropy is None
    model.learn(32)


@pytest.mark.parametrize("algo", [PPO, A2C])
@pytest.mark.parametrize("name", FLOWS)
def test_on_policy_save_load_round_trip(algo, name, tmp_path, device):
    model = _on_policy(algo, "Pendulum-v1", name, device=device)
    assert model.policy.squash_output
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(32)
    changed = [k for k, v in model.policy.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.startswith("action_net.") for k in changed), "training did not update the flow"
    model.save(tmp_path / "m")
    loaded = algo.load(tmp_path / "m", device=device)
    assert isinstance(loaded.policy, FlowActorCriticPolicy)
    assert loaded.policy_kwargs["flow"] == name and loaded.policy.squash_output
    obs = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    _same_predictions(model, loaded, obs)


# --------------------------------------------------------------- the bandit
def test_bandit_rewards_and_modes():
    env = gym.make("flowrl/TwoModeBandit-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1,)
    bandit = env.unwrapped
    _, r0, terminated, _, info0 = env.step(bandit.modes[0])
    assert r0 == pytest.approx(1.0) and terminated and info0["mode"] == 0
    env.reset()
    _, r_mid, _, _, info_mid = env.step(np.zeros(2, np.float32))
    assert r_mid < 1e-3 and info_mid["mode"] == -1
    assert bandit.mode_of(bandit.modes[1] + 0.05).item() == 1
    with pytest.raises(ValueError, match="overlap"):
        TwoModeBandit(dim=2, offset=0.1, width=0.2)
    drawn = TwoModeBandit(render_mode="rgb_array")
    drawn.reset(seed=0)
    drawn.step(drawn.modes[1])
    img = drawn.render()
    assert img.shape == (64, 64, 3) and img[..., 1].max() > 200 and (img[..., 0] == 255).any()


def _mode_fractions(model, env, n=2000):
    actions, _ = model.predict(np.zeros((n, 1), np.float32), deterministic=False)
    modes = env.mode_of(actions)
    return [float((modes == k).mean()) for k in (0, 1)]


@pytest.mark.slow
def test_bandit_flow_sac_keeps_both_modes_gaussian_collapses():
    env = TwoModeBandit()
    common = dict(learning_starts=200, batch_size=128, learning_rate=3e-3, seed=0, device="cpu")
    gauss = SAC("MlpPolicy", env, policy_kwargs=dict(net_arch=[64, 64]), **common)
    gauss.learn(1500)
    g0, g1 = _mode_fractions(gauss, env)
    assert max(g0, g1) > 0.9 and min(g0, g1) < 0.05, (g0, g1)
    pk = dict(net_arch=[64, 64], flow="realnvp", flow_kwargs=dict(transforms=4, hidden_features=(64,)))
    flow = SAC(FlowSACPolicy, env, policy_kwargs=pk, **common)
    flow.learn(1500)
    f0, f1 = _mode_fractions(flow, env)
    assert min(f0, f1) >= 0.25, (f0, f1)


# --------------------------------------------------------------- learning
@pytest.mark.slow
@pytest.mark.parametrize("name", FLOWS)
def test_sac_flow_policy_improves_on_pendulum(name):
    from stable_baselines3.common.evaluation import evaluate_policy

    pk = dict(net_arch=[64, 64], flow=name, flow_kwargs=dict(transforms=2, hidden_features=(64,)))
    model = SAC(FlowSACPolicy, "Pendulum-v1", policy_kwargs=pk, learning_rate=1e-3, seed=0, device="cpu")
    before, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=5)
    model.learn(4000)
    after, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=5)
    assert after > before + 300 and after > -700, (before, after)


# --------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", [SAC, PPO])
def test_cuda_training_and_round_trip(algo, tmp_path):
    policy = FlowSACPolicy if algo is SAC else FlowActorCriticPolicy
    kw = dict(learning_starts=16, batch_size=16) if algo is SAC else dict(n_steps=32, batch_size=32, n_epochs=1)
    model = algo(policy, "Pendulum-v1", device="cuda", seed=0,
                 policy_kwargs=dict(flow="naf", flow_kwargs=SMALL["naf"]), **kw)
    model.learn(48)
    assert all(p.device.type == "cuda" for p in model.policy.parameters())
    model.save(tmp_path / "m")
    loaded = algo.load(tmp_path / "m", device="cuda")
    obs = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("algo, name", [(SAC, "naf"), (PPO, "realnvp")])
def test_checkpoints_load_across_devices(algo, name, tmp_path, device):
    """Trained and saved on ``device``, loaded on the CPU and back: same parameters, same actions.

    The CPU copy of a CUDA model acts within float32 rounding plus the NAF inversion tolerance
    (``2e-6 (1 + |u|)`` on ``|u| <~ 5``, times the box half-width 2: ~2.4e-5) of the original: atol 1e-4.
    """
    model = _sac("Pendulum-v1", name, device=device) if algo is SAC else _on_policy(algo, "Pendulum-v1", name,
                                                                                     device=device)
    model.learn(48)
    model.save(tmp_path / "m")
    on_cpu = algo.load(tmp_path / "m", device="cpu")
    assert all(p.device.type == "cpu" for p in on_cpu.policy.parameters())
    on_cpu.save(tmp_path / "m_cpu")
    back = algo.load(tmp_path / "m_cpu", device=device)
    assert all(p.device.type == device.type for p in back.policy.parameters())
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(on_cpu.policy.state_dict()[key], value.cpu(), rtol=0, atol=0)
        torch.testing.assert_close(back.policy.state_dict()[key], value, rtol=0, atol=0)
    obs = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    det = model.predict(obs, deterministic=True)[0]
    np.testing.assert_array_equal(back.predict(obs, deterministic=True)[0], det)
    np.testing.assert_allclose(on_cpu.predict(obs, deterministic=True)[0], det, rtol=0, atol=1e-4)
