"""Novelty models are built from parts: an encoder, a density model or networks, one TrainingSettings, a memo."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from count_streams import cluster_stream, point_image_stream
from flowrl.novelty.encoders import FrameEncoder, VectorEncoder
from flowrl.novelty.memo import RowMemo
from flowrl.novelty import FlowPseudoCounter, PseudoCounter
from flowrl.novelty.image_counts import ImagePseudoCounter, UnitToSymmetric
from flowrl.novelty.online import TrainingSettings, seeded
from flowrl.registry import build_flow
from flowrl.novelty.rnd import RNDNovelty
from flowrl.novelty.image_rnd import ImageRND

SMALL = dict(transforms=1, hidden_features=(8,))


def test_training_settings_state_defaults_once_and_validate():
    s = TrainingSettings()
    assert (s.lr, s.batch_size, s.steps_per_update, s.steps_per_observation, s.buffer_size, s.seed) == (
        1e-3, 128, None, 1.0, 100_000, None)
    for bad, match in [(dict(lr=0), "lr"), (dict(batch_size=-1), "batch_size"), (dict(buffer_size=0), "buffer_size"),
                       (dict(steps_per_update=1.5), "steps_per_update"),
                       (dict(steps_per_observation=math.inf), "steps_per_observation"), (dict(seed="a"), "seed")]:
        with pytest.raises(ValueError, match=match):
            TrainingSettings(**bad)
    with pytest.raises(TypeError, match="unknown training option.*'lr_'"):
        s.replace(lr_=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        s.replace(batch_size=0)
    assert s.replace(batch_size=7).batch_size == 7 and s.batch_size == 128  # frozen: a copy


def test_constructors_take_training_options_by_name_over_their_class_defaults():
    assert FlowPseudoCounter(2, flow_kwargs=SMALL).settings == TrainingSettings()
    assert RNDNovelty(2).settings == TrainingSettings(batch_size=256)
    assert ImageRND((1, 8, 8), size=4).settings == TrainingSettings(batch_size=64)
    image = ImagePseudoCounter((1, 8, 8), size=4, lr=3e-3, seed=2, flow_kwargs=SMALL)
    assert image.settings == TrainingSettings(lr=3e-3, batch_size=64, seed=2)
    given = TrainingSettings(lr=2e-3, batch_size=16)
    assert FlowPseudoCounter(2, settings=given, seed=4, flow_kwargs=SMALL).settings == given.replace(seed=4)
    with pytest.raises(TypeError, match="unknown training option.*'learning_rate'"):
        FlowPseudoCounter(2, learning_rate=1e-3)
    with pytest.raises(ValueError, match="lr must be positive"):
        RNDNovelty(2, lr=-1.0)


def test_a_counter_from_parts_is_the_assembled_vector_counter():
    """FlowPseudoCounter is PseudoCounter(VectorEncoder, flow, settings): same seed, same counts, bit for bit."""
    centres, stream = cluster_stream([3, 10, 30, 5], seed=0)
    settings = TrainingSettings(seed=3, batch_size=32)
    encoder = VectorEncoder(2, redundancy=True)
    flow = seeded(settings.seed, lambda: build_flow("nsf", 2, validate_args=False, **SMALL))
    parts = PseudoCounter(encoder, flow, settings, estimator="density", resolution="auto", cells=100.0,
                          kernel="gaussian", cell_samples=16, smoothing=1.0, ema=0.99)
    assembled = FlowPseudoCounter(2, seed=3, batch_size=32, flow_kwargs=SMALL)
    for chunk in stream.split(16):
        parts.update(chunk)
        assembled.update(chunk)
    for est in ("density", "cell"):
        assert torch.equal(parts.pseudo_count(centres, est), assembled.pseudo_count(centres, est))


def test_the_counter_validates_its_estimator_settings():
    encoder, settings = VectorEncoder(2), TrainingSettings()
    flow = build_flow("nsf", 2, **SMALL)
    ok = dict(estimator="cell", resolution=0.5, cells=100.0, kernel="box", cell_samples=4, smoothing=1.0, ema=0.0)
    for bad, match in [(dict(estimator="nope"), "estimator"), (dict(resolution=-1.0), "resolution"),
                       (dict(cells=1.0), "cells"), (dict(kernel="tophat"), "kernel"),
                       (dict(cell_samples=0), "cell_samples"), (dict(ema=1.0), "ema"), (dict(smoothing=-1.0), "smoothing")]:
        with pytest.raises(ValueError, match=match):
            PseudoCounter(encoder, flow, settings, **{**ok, **bad})


def test_frame_encoder_quantises_to_cell_centres_or_scales():
    frames = torch.tensor([[[[0.0, 255.0], [100.0, 200.0]]]])  # (1, 1, 2, 2)
    quantised = FrameEncoder((1, 2, 2), 2, levels=2).encode(frames)
    assert quantised.flatten().tolist() == [0.25, 0.75, 0.25, 0.75]  # (q + 1/2) / L
    scaled = FrameEncoder((1, 2, 2), 1).encode(frames)
    assert torch.allclose(scaled.flatten(), frames.mean().reshape(1) / 255.0)
    with pytest.raises(ValueError, match="levels"):
        FrameEncoder((1, 2, 2), 2, levels=1)


def test_unit_to_symmetric_is_the_affine_preprocessing():
    y = torch.rand(5, 1, 2, 3)
    s, logdet = UnitToSymmetric()(y)
    assert torch.equal(s, 2.0 * y - 1.0)
    assert torch.allclose(logdet, torch.full((5,), 6 * math.log(2.0)))
    back, inv_logdet = UnitToSymmetric().inverse(s)
    assert torch.allclose(back, y, atol=1e-7) and torch.allclose(inv_logdet, -logdet)


def test_row_memo_evaluates_distinct_rows_once_and_starts_empty_when_copied():
    memo, calls = RowMemo(cache_size=8), []

    def fn(z):
        calls.append(z.shape[0])
        return z.sum(1)

    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [1.0, 2.0]])
    out = memo("sum", z, fn, key=1, ready=lambda: True)
    assert out.tolist() == [3.0, 7.0, 3.0, 3.0] and calls == [2]
    memo("sum", z[:2], fn, key=1, ready=lambda: True)
    assert calls == [2]  # memoised
    memo("sum", z, fn, key=2, ready=lambda: True)
    assert calls == [2, 2]  # a new key: evaluated again
    memo("sum", z, fn, key=3, ready=lambda: False)
    assert calls == [2, 2, 4]  # not ready: the batch as given
    for clone in (copy.deepcopy(memo), pickle.loads(pickle.dumps(memo))):
        assert clone.cache_size == 8 and not clone.values
    with pytest.raises(ValueError, match="cache_size"):
        RowMemo(-1)


def test_image_counter_is_a_pseudo_counter_with_a_memo_and_pickles_without_it():
    frames, stream = point_image_stream([4, 8], side=8, block=2, seed=0)
    counter = ImagePseudoCounter((1, 8, 8), size=4, seed=0, cell_samples=4, flow_kwargs=SMALL).eval()
    assert isinstance(counter, PseudoCounter) and isinstance(counter.memo, RowMemo)
    counter.update(stream)
    want = counter.pseudo_count(frames)
    assert counter.memo.values  # filled by scoring
    clone = pickle.loads(pickle.dumps(counter))
    assert not clone.memo.values and torch.equal(clone.pseudo_count(frames), want)
    assert ImagePseudoCounter((1, 8, 8), size=4, dedupe=False, flow_kwargs=SMALL).memo is None
