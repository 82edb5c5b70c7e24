"""Exact resume: a ``flowrl train`` killed with SIGKILL and resumed repeats the uninterrupted run bit for bit;
a corrupt newest checkpoint is skipped with a warning."""

from __future__ import annotations

import csv
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from agents.run.callbacks import latest_checkpoint
from agents.config import load_config
from agents.run import ALGORITHMS, train
from agents.novelty import find_novelty
from agents.run.resume import MANIFEST, STATE_FILE, check_checkpoint, truncate_csvs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
# Wall-clock columns: the only ones allowed to differ between two runs of the same seed.
CLOCK = {"steps_per_s", "wall_time", "time/fps", "time/time_elapsed"}


def overrides(out_dir, name: str, steps: int, every: int) -> list[str]:
    """The demo (SAC + RealNVP policy + flow bonus) shrunk to ``steps`` cheap steps on one CPU thread."""
    return [f"total_timesteps={steps}", f"run.out_dir={out_dir}", f"run.name={name}", "run.progress_bar=false",
            f"run.checkpoint_every={every}", "run.log_every=100", "run.plots=false", "eval.episodes=1",
            "device=cpu", "threads=1", "env.kwargs.max_episode_steps=60", "algo.kwargs.learning_starts=150",
            "algo.kwargs.batch_size=32", "algo.kwargs.buffer_size=5000", "policy_kwargs.net_arch=[32, 32]",
            "flow_kwargs.hidden_features=[32, 32]", "novelty.update_every=50"]


def flowrl(*items: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("OMP_NUM_THREADS", None)  # the config's threads=1 applies
    return subprocess.Popen([sys.executable, "-m", "agents.cli", "train", *items], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in CLOCK} for r in csv.DictReader(f)]


def progress_rows(run_dir: str) -> list[dict]:
    """SB3's logger rows, the resumed parts (``progress-<step>.csv``) after the first; empty cells dropped."""
    out = []
    for path in sorted(glob.glob(os.path.join(run_dir, "progress*.csv")), key=lambda p: (p.count("-"), p)):
        out += [{k: v for k, v in r.items() if v != "" and not k.startswith("time/")} for r in rows(path)]
    return out


def final_state(run_dir: str) -> dict[str, torch.Tensor]:
    """Every tensor of the final agent: policy, optimisers, entropy coefficient, novelty model."""
    model = ALGORITHMS["sac"].load(os.path.join(run_dir, "final_model.zip"), device="cpu")
    params = model.get_parameters()
    out = {f"{name}.{k}": v for name, sd in params.items() for k, v in _flat(sd)}
    out.update({f"novelty.{k}": v for k, v in _flat(find_novelty(model).model.state_dict())})
    return out


def _flat(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}.{i}")


def assert_same_run(a: str, b: str) -> None:
    for name in ("episodes.csv", "metrics.csv"):
        ra, rb = rows(os.path.join(a, name)), rows(os.path.join(b, name))
        assert len(ra) == len(rb) and ra == rb, name
    assert progress_rows(a) == progress_rows(b)
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def wait_for_checkpoint(proc: subprocess.Popen, ckpt_root: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}")
        if any(check_checkpoint(p) is None for p in glob.glob(os.path.join(ckpt_root, "step_*"))):
            return
        time.sleep(0.05)
    pytest.fail("no checkpoint within the time limit")


@pytest.mark.parametrize("seed, steps, every", [
    (0, 450, 150),
    pytest.param(1, 2500, 500, marks=pytest.mark.slow),
])
def test_a_killed_run_resumes_exactly(tmp_path, seed, steps, every):
    """SIGKILL a real ``flowrl train`` after its first checkpoint, at a random moment; ``resume=RUN_DIR``
    then gives the same episodes, metrics, logger rows and final tensors as the run that was never stopped."""
    whole = flowrl(DEMO, *overrides(tmp_path, "whole", steps, every), f"seed={seed}")
    killed = flowrl(DEMO, *overrides(tmp_path, "killed", steps, every), f"seed={seed}")
    run_dir = os.path.join(tmp_path, "killed")
    wait_for_checkpoint(killed, os.path.join(run_dir, "checkpoints"))
    time.sleep(random.Random(seed).uniform(0.0, 1.0))  # somewhere after it: mid-step, mid-write...
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not os.path.exists(os.path.join(run_dir, "final_model.zip"))
    finish(flowrl(f"resume={run_dir}"))
    finish(whole)
    assert glob.glob(os.path.join(run_dir, "progress-*.csv"))  # it did resume from a checkpoint
    assert_same_run(os.path.join(tmp_path, "whole"), run_dir)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> str:
    """A finished 300-step run with checkpoints at 200 and 300 (the two kept)."""
    out = tmp_path_factory.mktemp("runs")
    return train(load_config(DEMO, overrides(out, "r", 300, 100))).run_dir


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(short_run, tmp_path):
    run_dir = shutil.copytree(short_run, os.path.join(tmp_path, "r"))
    root = os.path.join(run_dir, "checkpoints")
    ckpts = sorted(glob.glob(os.path.join(root, "step_*")))
    assert [os.path.basename(p) for p in ckpts] == ["step_0000000200", "step_0000000300"]
    before, newest = ckpts
    with open(os.path.join(newest, "model.zip"), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="step_0000000300 is unusable: model.zip does not match"):
        assert latest_checkpoint(root) == before
    seen = {}
    with pytest.warns(UserWarning, match="step_0000000300"):
        resumed = train(load_config(os.path.join(run_dir, "config.yaml"), [f"resume={run_dir}"]),
                        on_model=lambda m: seen.setdefault("start", m.num_timesteps))
    assert seen["start"] == 200 and resumed.model.num_timesteps == 300
    # The rows written after step 200 were dropped before the resumed run wrote its own: none repeats.
    for name in ("episodes.csv", "metrics.csv"):
        assert rows(os.path.join(run_dir, name)) == rows(os.path.join(short_run, name))


def test_an_incomplete_checkpoint_is_skipped(short_run, tmp_path):
    root = shutil.copytree(os.path.join(short_run, "checkpoints"), os.path.join(tmp_path, "checkpoints"))
    os.remove(os.path.join(root, "step_0000000300", MANIFEST))
    with pytest.warns(UserWarning, match="step_0000000300 is unusable: no manifest.json"):
        assert latest_checkpoint(root) == os.path.join(root, "step_0000000200")
    os.remove(os.path.join(root, "step_0000000200", STATE_FILE))
    with pytest.warns(UserWarning) as record:
        assert latest_checkpoint(root) is None
    assert [str(w.message).split("is unusable: ")[1].split(";")[0] for w in record] == [
        "no manifest.json (incomplete)", f"{STATE_FILE} is missing"]


def test_truncate_csvs_drops_rows_written_after_the_checkpoint(tmp_path):
    (tmp_path / "episodes.csv").write_text("a,b\n1,2\n3,4\n5,")
    (tmp_path / "progress-0000000100.csv").write_text("x\n1\n")
    (tmp_path / "notes.csv").write_text("kept\n")
    truncate_csvs(str(tmp_path), {"episodes.csv": 2})
    assert (tmp_path / "episodes.csv").read_text() == "a,b\n1,2\n"
    assert not (tmp_path / "progress-0000000100.csv").exists()  # written by a later resume
    assert (tmp_path / "notes.csv").read_text() == "kept\n"
