"""Pseudo-counts of the *default* counter against exact counts, in the online regime (issue: counts that stay
informative and calibrated whatever the chunk sizes and with redundant features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from count_streams import cluster_visits, maze_walk, with_redundant_features
from flowrl.novelty import FlowPseudoCounter


def _own_box_counts(counter: FlowPseudoCounter, stream: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact number of stream observations within the counter's own cell (side h, kept features) of each query."""
    z = counter.model_input(stream)
    q = counter.model_input(queries)
    keep = counter.normalizer.keep
    inside = ((z[None, :, keep] - q[:, None, keep]).abs() <= counter.cell_side / 2).all(-1)
    return inside.sum(1).numpy()


def _feed(counter: FlowPseudoCounter, stream: np.ndarray, seed: int) -> None:
    """Chunks of random sizes 1..64, as an agent's updates might come."""
    g = np.random.default_rng(seed)
    i = 0
    while i < len(stream):
        n = int(g.integers(1, 65))
        counter.update(stream[i:i + n])
        i += n


def _geometric_mean_ratio(estimate: np.ndarray, exact: np.ndarray) -> float:
    ok = exact > 0
    return float(np.exp(np.mean(np.log(estimate[ok] / exact[ok]))))


@pytest.mark.parametrize("redundant", [False, True], ids=["plain", "const+dup"])
@pytest.mark.parametrize("stream", ["clusters", "maze"])
def test_default_counts_track_exact_counts_online(stream, redundant):
    """Spearman >= 0.9 against the exact counts and within a factor of 2 (geometric mean of the ratio)."""
    torch.manual_seed(0)
    queries, x, counts = cluster_visits(0) if stream == "clusters" else maze_walk(0, n=2000)
    if redundant:
        queries, x = with_redundant_features(queries), with_redundant_features(x)
    counter = FlowPseudoCounter(x.shape[1], seed=0)
    _feed(counter, x, seed=0)
    n_hat = counter.pseudo_count(queries).numpy()
    assert counter.normalizer.effective_dim == 2  # the constant and the copied feature are masked
    rho = spearmanr(counts, n_hat)[0]
    ratio = _geometric_mean_ratio(n_hat, _own_box_counts(counter, x, queries))
    assert rho >= 0.9, (rho, n_hat.round(1), counts)
    assert 0.5 <= ratio <= 2.0, (ratio, n_hat.round(1))


def test_the_training_budget_follows_the_data_not_the_chunks():
    """steps_per_observation steps per observation, whatever the chunk sizes (fractions carry over)."""
    taken = []
    for chunks in ([1] * 40, [16, 16, 8], [40]):
        counter = FlowPseudoCounter(2, seed=0, steps_per_observation=0.5, flow_kwargs=dict(transforms=1))
        steps = 0
        counter._train = lambda k, _c=counter: taken.append(k) or {}  # count, do not train
        for n in chunks:
            counter.update(torch.randn(n, 2))
        steps = sum(taken)
        taken.clear()
        assert steps == 20, chunks
    fixed = FlowPseudoCounter(2, seed=0, steps_per_update=3, flow_kwargs=dict(transforms=1))
    fixed._train = lambda k: taken.append(k) or {}
    fixed.update(torch.randn(100, 2))
    assert taken == [3]


def test_redundant_features_are_masked_and_a_new_dimension_does_not_empty_the_cells():
    x = np.random.default_rng(0).standard_normal((500, 2)).astype(np.float32)
    plain, redundant = FlowPseudoCounter(2, seed=0), FlowPseudoCounter(4, seed=0)
    plain.update(x, steps=0)
    redundant.update(with_redundant_features(x), steps=0)
    assert redundant.normalizer.keep.tolist() == [True, True, False, False]
    assert redundant.cell_side == plain.cell_side == pytest.approx(0.4)  # 4 * 100 ** (-1 / 2)
    # masked features get the base distribution's cell: log-volume 2 log h + 2 log sqrt(2 pi)
    assert redundant._log_cell_volume() == pytest.approx(2 * np.log(0.4) + np.log(2 * np.pi), rel=1e-6)
    wide = FlowPseudoCounter(4, seed=0)
    wide.update(np.random.default_rng(1).standard_normal((500, 4)).astype(np.float32), steps=0)
    assert wide.cell_side == pytest.approx(4 * 100 ** -0.25)


def test_projection_counts_on_the_chosen_features_and_bad_projections_fail_at_construction():
    x = torch.randn(64, 5)
    by_index = FlowPseudoCounter(5, seed=0, project=[0, 3], flow_kwargs=dict(transforms=1))
    by_callable = FlowPseudoCounter(5, seed=0, project=lambda t: t[:, [0, 3]], flow_kwargs=dict(transforms=1))
    for counter in (by_index, by_callable):
        counter.update(x, steps=0)
        assert counter.model_shape == (2,)
        assert torch.equal(counter.buffer.data[:64], x[:, [0, 3]])
    with pytest.raises(ValueError, match="out of range"):
        FlowPseudoCounter(5, project=[0, 7])
    with pytest.raises(ValueError, match=r"\(batch, k\)"):
        FlowPseudoCounter(5, project=lambda t: t[:, 0])
    with pytest.raises(ValueError, match="project failed"):
        FlowPseudoCounter(5, project=lambda t: t[:, 9])
    with pytest.raises(ValueError, match="feature indices"):
        FlowPseudoCounter(5, project=[])


def test_non_finite_observations_name_the_offending_feature():
    counter = FlowPseudoCounter(4, seed=0, flow_kwargs=dict(transforms=1))
    bad = np.zeros((3, 4), dtype=np.float32)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"feature\(s\) \[2\]"):
        counter.update(bad)
