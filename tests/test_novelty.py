"""Flow pseudo-counts (flowrl.novelty) and RND (flowrl.novelty.rnd) against exact counts and by construction."""

from __future__ import annotations

import math
import copy

import numpy as np
import pytest
import torch

from count_streams import cluster_stream, count_agreement, point_image_stream
from flowrl.novelty.memo import RowMemo
from flowrl.novelty import (
    ESTIMATORS,
    FlowPseudoCounter,
    RunningNormalizer,
    bonus_from_count,
)
from flowrl.novelty.rnd import RNDNovelty
from flowrl.precision import ieee_float32
from tolerances import assert_close_rounding

COUNTS = np.round(np.geomspace(1, 200, 16)).astype(int)  # 16 states visited 1..200 times
# Default estimator (cell), flow family (nsf) and resolution; a small flow keeps the default run fast.
# The full-size setting of scripts/bench_pseudocounts.py is checked by the slow test below.
FAST_SETTING = dict(lr=3e-3, steps_per_update=8, batch_size=64, flow_kwargs=dict(transforms=2, hidden_features=(32, 32)))
FULL_SETTING = dict(lr=2e-3, steps_per_update=16, batch_size=64)


def _fit_clusters(setting: dict, extra_steps: int, seed: int):
    """A counter fitted on a shuffled stream of 16 tight clusters fed in batches of 8."""
    centres, stream = cluster_stream(COUNTS, dim=2, spread=0.01, seed=seed)
    counter = FlowPseudoCounter(2, seed=seed, **setting)
    for chunk in stream.split(8):
        counter.update(chunk)
    counter.train_steps(extra_steps)
    return counter, centres


@pytest.fixture(scope="module")
def fitted():
    return _fit_clusters(FAST_SETTING, 500, seed=0)


def _assert_counts_track_true_counts(counter, centres):
    n_hat = counter.pseudo_count(centres).numpy()
    spearman, slope = count_agreement(COUNTS, n_hat)
    assert spearman >= 0.9, (spearman, n_hat.round(1))
    assert 0.5 <= slope <= 2.0, (slope, n_hat.round(1))
    assert counter.n_total == COUNTS.sum()


def test_default_estimator_ranks_states_by_true_count(fitted):
    _assert_counts_track_true_counts(*fitted)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_default_estimator_ranks_states_by_true_count_full_size(seed):
    _assert_counts_track_true_counts(*_fit_clusters(FULL_SETTING, 1000, seed=seed))


def test_unseen_state_gets_a_larger_bonus_than_the_most_visited(fitted):
    counter, centres = fitted
    most = centres[int(np.argmax(COUNTS))].unsqueeze(0)
    unseen = torch.tensor([[2.0, -2.0]])
    assert counter.bonus(unseen) > 5 * counter.bonus(most)
    assert counter.bonus(np.zeros((3, 2), dtype=np.float32)).shape == (3,)


def test_every_estimator_gives_finite_positive_counts(fitted):
    counter, centres = fitted
    for est in ESTIMATORS:
        n = counter.pseudo_count(centres, est)
        assert n.shape == (len(centres),)
        assert torch.isfinite(n).all() and (n > 0).all(), est


def test_bonus_decreases_as_a_state_is_revisited():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    background = torch.rand(256, 2, generator=g) * 4 - 2
    state = torch.tensor([[0.7, -0.3]])
    counter = FlowPseudoCounter(2, seed=0, lr=3e-3, steps_per_update=20, batch_size=64,
                                flow_kwargs=dict(transforms=2, hidden_features=(32,)))
    counter.update(background)
    bonuses = [float(counter.bonus(state))]
    for _ in range(4):
        counter.update(state.repeat(32, 1) + 0.01 * torch.randn(32, 2, generator=g))
        bonuses.append(float(counter.bonus(state)))
    assert all(b1 < b0 for b0, b1 in zip(bonuses, bonuses[1:])), bonuses


def test_batched_exact_recoding_matches_a_step_on_each_state_alone():
    torch.manual_seed(0)
    counter = FlowPseudoCounter(2, seed=0, pg_lr=1e-2, ema=0.0, flow_kwargs=dict(hidden_features=(16,)))
    counter.update(torch.randn(64, 2))
    counter.train_steps(20)
    x = torch.randn(3, 2)
    z = counter.normalized(x)
    pg = counter._prediction_gain(z, exact=True)
    for i in range(3):
        flow = copy.deepcopy(counter.flow)
        before = flow.log_prob(z[i:i + 1]).sum()
        flow.zero_grad()
        before.backward()
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(1e-2 * p.grad)
            after = flow.log_prob(z[i:i + 1]).sum()
        assert torch.allclose(pg[i], after - before.detach(), rtol=1e-3, atol=1e-6)
    # First order: PG ~ lr ||g||^2 when the step is small.
    counter.pg_lr = 1e-5
    exact = counter._prediction_gain(z, exact=True)
    first = counter._prediction_gain(z, exact=False)
    assert torch.allclose(exact, first, rtol=0.05)


def test_cell_estimator_tends_to_the_density_estimator_for_small_cells():
    torch.manual_seed(0)
    counter = FlowPseudoCounter(2, seed=0, resolution=1e-3, flow_kwargs=dict(hidden_features=(16,)))
    counter.update(torch.randn(128, 2))
    x = torch.randn(5, 2)
    a = counter.log_pseudo_count(x, "cell")
    b = counter.log_pseudo_count(x, "density")
    assert torch.allclose(a, b, atol=1e-3)


def test_count_agreement_on_known_relations():
    n = np.arange(1, 20, dtype=float)
    assert count_agreement(n, n) == pytest.approx((1.0, 1.0))
    assert count_agreement(n, n**2)[1] == pytest.approx(2.0)
    assert count_agreement(n, 1 / n)[0] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        count_agreement(n, -n)


def test_bonus_formula():
    assert bonus_from_count(torch.tensor([0.0, 99.0]), beta=2.0).tolist() == pytest.approx([2.0, 0.2])


def test_running_normalizer_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(300, 4))
    norm = RunningNormalizer((4,), clip=0.0)
    for chunk in np.array_split(data, 7):
        norm.update(torch.as_tensor(chunk))
    assert torch.allclose(norm.mean, torch.as_tensor(data.mean(0)))
    assert torch.allclose(norm.std, torch.as_tensor(data.std(0)), rtol=1e-6)
    z = norm.normalize(torch.as_tensor(data))
    assert torch.allclose(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-6)


def test_state_dict_round_trip_restores_counts_and_training():
    torch.manual_seed(0)
    a = FlowPseudoCounter(2, seed=0, flow_kwargs=dict(hidden_features=(16,)))
    a.update(torch.randn(50, 2) * 3 + 1)
    b = FlowPseudoCounter(2, seed=1, flow_kwargs=dict(hidden_features=(16,)))
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 2)
    assert torch.equal(a.pseudo_count(x), b.pseudo_count(x))
    assert torch.equal(a.normalizer.mean, b.normalizer.mean) and b.n_total == 50
    more = torch.randn(10, 2)
    a.update(more)
    b.update(more)
    assert torch.allclose(a.pseudo_count(x), b.pseudo_count(x))


def test_bad_inputs_get_clear_errors():
    counter = FlowPseudoCounter(3, flow_kwargs=dict(hidden_features=(8,)))
    with pytest.raises(ValueError, match="NaN"):
        counter.update(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        counter.pseudo_count(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="dict"):
        counter.bonus({"obs": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="estimator"):
        counter.pseudo_count(torch.zeros(1, 3), "nope")
    with pytest.raises(ValueError, match="estimator"):
        FlowPseudoCounter(3, estimator="nope")
    with pytest.raises(ValueError, match="at least 2 counted features"):
        FlowPseudoCounter(1, "glow")  # glow needs at least 2 features
    with pytest.raises(ValueError, match="obs_dim"):
        FlowPseudoCounter(0)
    with pytest.raises(ValueError, match="unknown flow"):
        FlowPseudoCounter(2, "no-such-flow")
    assert counter.bonus(np.zeros(3)).shape == (1,)  # a single observation is a batch of one


def test_rnd_bonus_is_larger_off_the_visited_states_and_decreases_with_training():
    torch.manual_seed(0)
    rnd = RNDNovelty(2, seed=0, lr=3e-3, steps_per_update=50)
    visited = torch.randn(256, 2) * 0.1
    rnd.update(visited)
    first = float(rnd.error(visited[:32]).mean())
    for _ in range(4):
        rnd.update(visited[:32])
    assert float(rnd.error(visited[:32]).mean()) < first
    far = torch.tensor([[3.0, 3.0]]) * rnd.normalizer.std.float() + rnd.normalizer.mean.float()
    assert float(rnd.bonus(far)) > float(rnd.bonus(visited[:32]).mean())
    with pytest.raises(ValueError, match="NaN"):
        rnd.bonus(np.array([[np.inf, 0.0]]))


def test_image_rnd_bonus_is_larger_on_unseen_frames_and_validates_them():
    """The convolutional RND on frames: a square at a position never trained on is more novel than the seen ones."""
    from flowrl.novelty.image_rnd import ImageRND

    frames, stream = point_image_stream([20] * 4, side=16, seed=0, unseen=1)
    rnd = ImageRND((1, 16, 16), size=8, seed=0, lr=3e-3, steps_per_update=20)
    first = None
    for chunk in stream.split(16):
        rnd.update(chunk)
        first = float(rnd.error(frames[:4]).mean()) if first is None else first
    seen, unseen = rnd.bonus(frames[:4]), rnd.bonus(frames[4:])
    assert float(rnd.error(frames[:4]).mean()) < first  # training lowers the error on what it sees
    assert float(unseen.min()) > float(seen.max()), (seen, unseen)
    hwc = frames.permute(0, 2, 3, 1)
    # channels last or first: the same errors up to float32 rounding (another memory layout, other kernels)
    assert_close_rounding(rnd.error(hwc), rnd.error(frames))
    with pytest.raises(ValueError, match="images have shape"):
        rnd.bonus(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="pixel values"):
        rnd.bonus(torch.full((1, 1, 16, 16), 300.0))
    with pytest.raises(ValueError, match="larger than the frames"):
        ImageRND((1, 16, 16), size=32)
    with pytest.raises(ValueError, match="channels"):
        ImageRND((1, 16, 16), channels=())
    restored = ImageRND((1, 16, 16), size=8)
    restored.load_state_dict(rnd.state_dict())
    assert torch.equal(restored.bonus(frames), rnd.bonus(frames))  # networks, normaliser and error scale


# ------------------------------------------------------------------ images
from flowrl.novelty.frames import downsample  # noqa: E402
from flowrl.novelty.image_counts import ImagePseudoCounter, quantize  # noqa: E402

IMAGE_COUNTS = np.round(np.geomspace(1, 100, 8)).astype(int)  # 8 frames visited 1..100 times
IMAGE_SETTING = dict(lr=3e-3, batch_size=32, steps_per_update=8, flow_kwargs=dict(transforms=2, hidden_features=(16,)))


def _fit_frames(seed: int, extra_steps: int = 300):
    """An image counter fitted on a shuffled uint8 stream of 8 frames (a square at 8 positions), batches of 8."""
    frames, stream = point_image_stream(IMAGE_COUNTS, side=16, seed=seed, unseen=1)
    counter = ImagePseudoCounter((1, 16, 16), seed=seed, **IMAGE_SETTING)
    for chunk in stream.split(8):
        counter.update(chunk)
    counter.train_steps(extra_steps)
    return counter, frames[:-1], frames[-1:]


@pytest.fixture(scope="module")
def fitted_frames():
    return _fit_frames(seed=0)


def _assert_frame_counts_track_true_counts(counter, frames):
    n_hat = counter.pseudo_count(frames).numpy()
    spearman, slope = count_agreement(IMAGE_COUNTS, n_hat)
    assert spearman >= 0.9, (spearman, n_hat)
    assert 0.5 <= slope <= 2.0, (slope, n_hat)
    assert counter.n_total == IMAGE_COUNTS.sum()


def test_image_counts_track_true_counts(fitted_frames):
    counter, frames, _ = fitted_frames
    _assert_frame_counts_track_true_counts(counter, frames)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_image_counts_track_true_counts_other_seeds(seed):
    counter, frames, unseen = _fit_frames(seed)
    _assert_frame_counts_track_true_counts(counter, frames)
    assert counter.bonus(unseen) > counter.bonus(frames[int(np.argmax(IMAGE_COUNTS))])


def test_unseen_frame_gets_a_larger_bonus_than_the_most_visited(fitted_frames):
    counter, frames, unseen = fitted_frames
    most = frames[int(np.argmax(IMAGE_COUNTS))]
    assert counter.pseudo_count(unseen) < 0.1 * counter.pseudo_count(most)
    assert counter.bonus(unseen) > counter.bonus(most)
    rarest = frames[int(np.argmin(IMAGE_COUNTS))]
    assert counter.pseudo_count(unseen) < counter.pseudo_count(rarest)


def test_image_layouts_and_dtypes_give_the_same_counts(fitted_frames):
    counter, frames, _ = fitted_frames
    nchw = counter.pseudo_count(frames)
    # the same log-counts up to float32 rounding of the log-densities they come from (another layout)
    scale = float(counter.log_density(frames).abs().max())
    assert_close_rounding(counter.pseudo_count(frames.permute(0, 2, 3, 1).numpy()).log(), nchw.log(),
                          scale=scale)  # NHWC, numpy
    assert_close_rounding(counter.pseudo_count(frames.float()).log(), nchw.log(), scale=scale)  # float frames
    assert torch.equal(counter.log_density(frames[0]), counter.log_density(frames[:1]))  # a single frame
    unit = ImagePseudoCounter((1, 16, 16), max_value=1.0, **IMAGE_SETTING)
    unit.load_state_dict(counter.state_dict())
    assert torch.allclose(unit.pseudo_count(frames.float() / 255.0), nchw)


def test_downsample_is_an_area_average_and_quantize_bins_levels():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert downsample(x, (2, 2)).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    q = quantize(torch.tensor([0.0, 31.0, 32.0, 127.0, 128.0, 255.0]), levels=8, max_value=256.0)
    assert q.tolist() == [0, 0, 1, 3, 4, 7]
    counter = ImagePseudoCounter((3, 4, 4), size=2, grey=False, levels=4, **IMAGE_SETTING)
    frame = torch.zeros(1, 3, 4, 4)
    frame[0, 1] = 255.0  # green channel at full brightness
    frame[0, 2, :2, :2] = 100.0  # blue, one 2x2 block
    levels = counter.levels_of(frame)
    assert levels.shape == (1, 3, 2, 2)
    assert levels[0, 0].eq(0).all() and levels[0, 1].eq(3).all()
    assert levels[0, 2].tolist() == [[1, 0], [0, 0]]
    grey = ImagePseudoCounter((3, 4, 4), size=2, levels=4, **IMAGE_SETTING)
    assert grey.levels_of(frame).shape == (1, 1, 2, 2)


def test_image_counter_state_dict_round_trip(fitted_frames):
    counter, frames, _ = fitted_frames
    other = ImagePseudoCounter((1, 16, 16), seed=5, **IMAGE_SETTING)
    assert not torch.allclose(other.pseudo_count(frames), counter.pseudo_count(frames))
    other.load_state_dict(copy.deepcopy(counter.state_dict()))
    assert torch.equal(other.pseudo_count(frames), counter.pseudo_count(frames))
    assert other.n_total == counter.n_total and torch.equal(other.buffer.data, counter.buffer.data)
    a, b = copy.deepcopy(counter), other
    a.update(frames[:4])
    b.update(frames[:4])
    assert torch.allclose(a.pseudo_count(frames), b.pseudo_count(frames))  # training resumes identically


def test_image_counter_bad_inputs_get_clear_errors():
    counter = ImagePseudoCounter((1, 16, 16), **IMAGE_SETTING)
    frame = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        counter.update(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        counter.bonus(torch.zeros(2, 256))
    nan = frame.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        counter.update(nan)
    with pytest.raises(ValueError, match="max_value"):
        counter.update(frame + 300.0)
    with pytest.raises(ValueError, match="max_value"):
        counter.bonus(frame - 1.0)
    with pytest.raises(ValueError, match="dict"):
        counter.bonus({"pixels": frame})
    with pytest.raises(ValueError, match=r"\(batch, 16, 16, 1\)"):
        ImagePseudoCounter((1, 16, 16), channels_last=True, **IMAGE_SETTING).bonus(frame)
    with pytest.raises(ValueError, match="image_shape"):
        ImagePseudoCounter((16, 16))
    with pytest.raises(ValueError, match="does not model images"):
        ImagePseudoCounter((1, 16, 16), "nsf")
    with pytest.raises(ValueError, match="levels"):
        ImagePseudoCounter((1, 16, 16), levels=1)
    with pytest.raises(ValueError, match="size"):
        ImagePseudoCounter((1, 16, 16), size=32)
    assert counter.n_total == 0  # nothing bad got in


# ------------------------------------------------ images: distinct frames, memo
def _rows_seen(counter):
    """Wrap the cell estimator's evaluation so that the test sees how many frames reach the flow."""
    seen = []
    inner = counter._log_cell_mean_density

    def spy(z, geometric=False):
        seen.append(z.shape[0])
        return inner(z, geometric=geometric)

    counter._log_cell_mean_density = spy
    return seen


def _repeated_batch(frames, unseen, n=96, seed=0):
    """``n`` frames drawn with repeats from the 8 seen frames and the unseen one, plus pixel noise
    small enough to keep every frame in its quantisation cell (same counts, different raw pixels)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.cat([frames, unseen]).float()
    batch = pool[torch.randint(0, pool.shape[0], (n,), generator=g)]
    return (batch + 8.0 * (torch.rand(batch.shape, generator=g) - 0.5)).clamp(0, 255).round().to(torch.uint8)


def test_repeated_frames_are_evaluated_once_with_the_same_results(fitted_frames):
    counter, frames, unseen = fitted_frames
    counter = copy.deepcopy(counter)
    batch = _repeated_batch(frames, unseen)
    distinct = torch.unique(counter.levels_of(batch).flatten(1), dim=0).shape[0]
    assert distinct == 9 and batch.shape[0] == 96
    direct = {}
    counter.memo = None
    for est in ("cell", "density", "cell_bound", "pg_first_order"):
        direct[est] = counter.log_pseudo_count(batch, est)
    direct["log_density"] = counter.log_density(batch)
    seen = _rows_seen(counter)
    counter.log_pseudo_count(batch)
    assert seen == [96]  # without dedupe every row reaches the flow
    for cache_size in (0, 4096):  # distinct frames only, then also memoised
        counter.memo = RowMemo(cache_size)
        seen.clear()
        for est in ("cell", "density", "cell_bound", "pg_first_order"):
            got = counter.log_pseudo_count(batch, est)
            # differently batched float32 evaluations: a few roundings of log-values of size ~50
            tol = 64 * torch.finfo(torch.float32).eps * (1 + direct[est].abs().max())
            assert torch.allclose(got, direct[est], rtol=0.0, atol=float(tol)), (est, (got - direct[est]).abs().max())
        log_tol = float(64 * torch.finfo(torch.float32).eps * (1 + direct["cell"].abs().max()))
        assert torch.allclose(counter.pseudo_count(batch), direct["cell"].exp(), rtol=2 * log_tol, atol=0.0)
        assert counter.bonus(batch[:1]).shape == (1,)
        # cell and cell_bound see the 9 distinct frames once; memoised, the later calls evaluate nothing
        assert seen == ([9, 9, 9, 1] if cache_size == 0 else [9, 9]), seen
        counter.clear_cache()
        counter.train()  # training mode: a layer may be stochastic, every row is evaluated, nothing memoised
        ld_tol = float(64 * torch.finfo(torch.float32).eps * (1 + direct["log_density"].abs().max()))
        assert torch.allclose(counter.log_density(batch), direct["log_density"], rtol=0.0, atol=ld_tol)
        assert not counter.memo.values
        counter.eval()
        ld_tol = float(64 * torch.finfo(torch.float32).eps * (1 + direct["log_density"].abs().max()))
        assert torch.allclose(counter.log_density(batch), direct["log_density"], rtol=0.0, atol=ld_tol)
        assert ("log_prob" in counter.memo.values) == (cache_size > 0)


def test_memo_is_invalidated_by_updates_loads_and_parameter_changes(fitted_frames):
    counter, frames, unseen = fitted_frames
    counter = copy.deepcopy(counter)
    batch = _repeated_batch(frames, unseen, seed=1)
    plain = copy.deepcopy(counter)
    plain.memo = None

    def agree():
        got, want = counter.pseudo_count(batch), plain.pseudo_count(batch)
        assert torch.allclose(got, want, rtol=1e-5, atol=0.0), (got - want).abs().max()
        return got

    before = agree()
    assert counter.memo.values  # filled
    seen = _rows_seen(counter)
    counter.update(frames[:2])
    plain.update(frames[:2])
    after = agree()  # re-evaluated after the update ...
    assert seen == [9] and not torch.allclose(after, before, rtol=1e-3)  # ... and the counts moved
    other = ImagePseudoCounter((1, 16, 16), seed=7, **IMAGE_SETTING)
    other.update(frames)
    counter.load_state_dict(copy.deepcopy(other.state_dict()))
    plain.load_state_dict(copy.deepcopy(other.state_dict()))
    agree()
    with torch.no_grad():  # a change made by hand, not through update: the version counters catch it
        for module in (counter, plain):
            next(module.scoring_flow.parameters()).add_(0.05)
    agree()
    counter.train_steps(3)
    plain.train_steps(3)
    agree()


def test_a_fresh_counter_initialises_on_the_batch_as_given(fitted_frames):
    """Scoring before any update initialises ActNorm on the scored batch: dedupe must not change that batch."""
    _, frames, unseen = fitted_frames
    batch = _repeated_batch(frames, unseen, seed=2)
    a = ImagePseudoCounter((1, 16, 16), seed=3, **IMAGE_SETTING)
    b = ImagePseudoCounter((1, 16, 16), seed=3, dedupe=False, **IMAGE_SETTING)
    assert torch.allclose(a.pseudo_count(batch), b.pseudo_count(batch), rtol=1e-5, atol=0.0)
    a.update(frames)
    b.update(frames)
    assert torch.allclose(a.pseudo_count(batch), b.pseudo_count(batch), rtol=1e-5, atol=0.0)


def test_dedupe_options_are_validated():
    with pytest.raises(ValueError, match="cache_size"):
        ImagePseudoCounter((1, 16, 16), cache_size=-1)
    with pytest.raises(ValueError, match="cache_size"):
        ImagePseudoCounter((1, 16, 16), cache_size=2.5)
    with pytest.raises(ValueError, match="dedupe"):
        ImagePseudoCounter((1, 16, 16), dedupe="yes")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dedupe_on_cuda_matches_the_cpu(fitted_frames):
    counter, frames, unseen = fitted_frames
    batch = _repeated_batch(frames, unseen, seed=3)
    want = counter.log_pseudo_count(batch)
    gpu = copy.deepcopy(counter).cuda()
    with ieee_float32():  # cuDNN convolutions default to TF32 (~1e-3 here): compare float32 with float32
        got = gpu.log_pseudo_count(batch)
    assert got.device.type == "cuda" and gpu.memo.values["cell"][0].device.type == "cuda"
    assert torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-4)
    assert torch.equal(gpu.log_pseudo_count(batch), got)  # memo hit on the device


def test_counts_are_over_the_last_buffer_size_observations():
    """``N(x) = min(N_seen, buffer_size) * rho(x) * h^d``: past ``buffer_size`` a count is one over that window,
    the window the flow is fitted to (so counts of visited places stop growing, and old places read as new)."""
    counter = FlowPseudoCounter(2, buffer_size=300, seed=0, flow_kwargs={"transforms": 1, "hidden_features": [16]})
    x = torch.randn(600, 2, generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[0.0, 0.0], [1.0, -1.0], [3.0, 3.0]])
    for seen, chunk in zip((200, 600), (x[:200], x[200:])):
        counter.update(chunk, steps=5)
        log_volume = 2 * math.log(counter.cell_side)
        per_visit = counter.log_pseudo_count(points) - counter.log_density(points) - log_volume
        torch.testing.assert_close(per_visit, torch.full((3,), math.log(min(seen, 300))), rtol=0, atol=1e-5)
