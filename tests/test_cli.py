"""The training command: shipped configs train, runs resume, checkpoints are atomic, wandb logs offline."""

from __future__ import annotations

import csv
import glob
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from agents.run.callbacks import latest_checkpoint, save_checkpoint
from agents.cli import main
from agents.config import ConfigError, load_config
from agents.run import evaluate, evaluate_model, load_obs_normalizer, load_run, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def tiny(path: str, out_dir, steps: int = 256, **extra) -> list[str]:
    """Overrides that shrink a shipped config to a few hundred steps of cheap updates."""
    cfg = load_config(path)
    items = [f"total_timesteps={steps}", f"run.out_dir={out_dir}", "run.progress_bar=false",
             "run.checkpoint_every=100", "run.log_every=100", "eval.episodes=1", "run.plots=false", "device=cpu"]
    items += ["policy_kwargs.net_arch=[32, 32]"]
    if cfg.env.id.startswith("flowrl/PointMaze"):
        items += ["env.kwargs.max_episode_steps=50"]
    if cfg.algo.name == "sac":
        items += [f"algo.kwargs.learning_starts={max(steps - 48, 16)}", "algo.kwargs.batch_size=16",
                  "algo.kwargs.buffer_size=2000"]
    else:
        items += ["algo.kwargs.n_steps=64"]
        if cfg.algo.name == "ppo":
            items += ["algo.kwargs.batch_size=32", "algo.kwargs.n_epochs=1"]
    return items + [f"{k}={v}" for k, v in extra.items()]


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------- help
def test_help_of_the_command():
    out = subprocess.run([sys.executable, "-m", "agents.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "usage: flowrl" in out.stdout
    assert all(cmd in out.stdout for cmd in ("train", "eval", "plot"))


@pytest.mark.parametrize("command, text", [("train", "key=value"), ("eval", "RUN_DIR"), ("plot", "RUN_DIR")])
def test_help_of_each_subcommand(command, text, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"usage: flowrl {command}" in out and text in out


# --------------------------------------------------------------- train runs
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_trains(path, tmp_path):
    torch.manual_seed(0)
    for package in load_config(path).env.packages:  # optional environment packages (gymnasium_robotics, minigrid)
        pytest.importorskip(package)
    cfg = load_config(path, tiny(path, tmp_path))
    result = train(cfg, config_name="t")
    files = set(os.listdir(result.run_dir))
    assert {"config.yaml", "episodes.csv", "metrics.csv", "progress.csv", "final_model.zip", "summary.json",
            "checkpoints"} <= files
    assert result.summary["timesteps"] >= 256 and result.model.num_timesteps == result.summary["timesteps"]
    assert latest_checkpoint(os.path.join(result.run_dir, "checkpoints")) is not None
    saved = load_config(os.path.join(result.run_dir, "config.yaml"))
    assert saved.total_timesteps == 256 and saved.env == cfg.env


def test_train_eval_plot_through_the_cli(tmp_path, capsys):
    demo = os.path.join(ROOT, "configs", "maze_sac.yaml")
    assert main(["train", demo, *tiny(demo, tmp_path, steps=200, **{"run.plots": "true", "run.name": "r"})]) == 0
    run_dir = str(tmp_path / "r")
    assert "run directory" in capsys.readouterr().out
    for png in ["learning_curves.png", "coverage.png", "policy_samples.png"]:
        assert os.path.getsize(os.path.join(run_dir, png)) > 1000
    assert main(["eval", run_dir, "--episodes", "2"]) == 0
    assert '"success_rate"' in capsys.readouterr().out and os.path.exists(os.path.join(run_dir, "eval.json"))
    os.remove(os.path.join(run_dir, "coverage.png"))
    assert main(["plot", run_dir]) == 0
    assert os.path.exists(os.path.join(run_dir, "coverage.png"))


def test_demo_agent_has_flow_policy_novelty_and_pictures(tmp_path):
    path = os.path.join(ROOT, "configs", "demo.yaml")
    cfg = load_config(path, tiny(path, tmp_path, steps=256, **{"run.plots": "true", "run.name": "d"}))  # 64 per env
    assert cfg.policy == "flow" and cfg.novelty and cfg.novelty.model.kind == "flow"
    assert cfg.novelty.critics is not None and cfg.novelty.weight.success_hold == 0.9  # the defaults are the agent
    result = train(cfg)
    from agents.novelty import IntrinsicCriticSAC, find_novelty
    from agents.policies import FlowSACPolicy

    assert isinstance(result.model.policy, FlowSACPolicy) and find_novelty(result.model) is not None
    assert isinstance(result.model, IntrinsicCriticSAC) and len(result.model.critic.q_networks) == 4
    rows = read_rows(os.path.join(result.run_dir, "episodes.csv"))
    assert rows and all(float(r["intrinsic_return"]) < 0 for r in rows)  # the non-positive bonus
    for png in ["learning_curves.png", "coverage.png", "novelty_density.png", "policy_samples.png"]:
        assert os.path.getsize(os.path.join(result.run_dir, png)) > 1000


def test_bad_config_fails_naming_the_key(tmp_path, capsys):
    demo = os.path.join(ROOT, "configs", "maze_sac.yaml")
    assert main(["train", demo, "algo.kwargs_typo=1", f"run.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "algo.kwargs_typo: unknown key" in err
    assert main(["train", demo, "env.id=flowrl/NoSuchEnv-v0", f"run.out_dir={tmp_path}"]) == 2
    assert "env.id" in capsys.readouterr().err
    assert main(["train", demo, "algo.kwargs.not_an_arg=3", f"run.out_dir={tmp_path}"]) == 2
    assert "algo.kwargs" in capsys.readouterr().err
    assert main(["train", "total_timesteps=5"]) == 2 and "CONFIG" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "*" / "final_model.zip"))


def test_resume_continues_from_the_checkpoint(tmp_path):
    path = os.path.join(ROOT, "configs", "maze_sac.yaml")
    first = train(load_config(path, tiny(path, tmp_path, steps=200, **{"run.name": "r"})))
    run_dir = first.run_dir
    n_episodes = len(read_rows(os.path.join(run_dir, "episodes.csv")))
    seen = {}

    def check(model):
        seen["timesteps"] = model.num_timesteps
        seen["buffer"] = model.replay_buffer.size()
        seen["same_actor"] = all(torch.equal(a, b) for a, b in zip(
            model.actor.state_dict().values(), first.model.actor.state_dict().values()))

    assert main(["train", f"resume={run_dir}", "total_timesteps=350"]) == 0
    resumed = train(load_config(os.path.join(run_dir, "config.yaml"), [f"resume={run_dir}", "total_timesteps=450"]),
                    on_model=check)
    assert seen["timesteps"] == 350 and seen["buffer"] == 350
    assert resumed.run_dir == run_dir and resumed.model.num_timesteps == 450
    rows = read_rows(os.path.join(run_dir, "episodes.csv"))
    assert len(rows) > n_episodes and int(rows[-1]["episode"]) == len(rows)
    assert [int(r["timesteps"]) for r in rows] == sorted(int(r["timesteps"]) for r in rows)
    assert glob.glob(os.path.join(run_dir, "progress-*.csv"))
    assert seen["same_actor"] is False  # the resumed model is the checkpoint at 350, not the first run's
    assert load_config(os.path.join(run_dir, "config.yaml")).total_timesteps == 450


def test_eval_every_evaluates_the_live_policy_during_training(tmp_path, monkeypatch):
    """eval.every=50 over 200 steps of one env: four evaluations of the live model, logged as eval/success_rate."""
    import agents.run.training as run_train

    calls = []
    real = run_train.evaluate_model

    def counting(model, cfg, *args, **kwargs):
        calls.append(model.num_timesteps)
        return real(model, cfg, *args, **kwargs)

    monkeypatch.setattr(run_train, "evaluate_model", counting)
    path = os.path.join(ROOT, "configs", "maze_sac.yaml")
    result = train(load_config(path, tiny(path, tmp_path, steps=200, **{"run.name": "r", "eval.every": 50})))
    assert calls == [50, 100, 150, 200, 200]  # four during training, then the final evaluation
    rows = read_rows(os.path.join(result.run_dir, "progress.csv"))
    logged = [float(r["eval/success_rate"]) for r in rows if r.get("eval/success_rate")]
    assert logged and all(0.0 <= v <= 1.0 for v in logged)
    evaluations = read_rows(os.path.join(result.run_dir, "evaluations.csv"))  # one row per evaluation
    assert [int(r["timesteps"]) for r in evaluations] == [50, 100, 150, 200]
    assert all(0.0 <= float(r["success_rate"]) <= 1.0 for r in evaluations)
    with pytest.raises(ConfigError, match="eval.every"):
        load_config(path, ["eval.every=0"])


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = os.path.join(ROOT, "configs", "maze_sac.yaml")
    result = train(load_config(path, tiny(path, tmp_path, steps=100, **{"run.name": "r"})))
    root = os.path.join(result.run_dir, "checkpoints")
    good = latest_checkpoint(root)
    model = result.model
    model.num_timesteps = 999

    def crash(path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"half a zip")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, root)
    assert latest_checkpoint(root) == good
    _, loaded = load_run(result.run_dir, checkpoint=True)
    assert loaded.num_timesteps == 100


def test_cpu_runs_are_reproducible(tmp_path):
    path = os.path.join(ROOT, "configs", "maze_sac.yaml")
    runs = [train(load_config(path, tiny(path, tmp_path, steps=150, **{"run.name": f"r{i}"}))) for i in range(2)]
    a, b = (read_rows(os.path.join(r.run_dir, "episodes.csv")) for r in runs)
    assert [r["return"] for r in a] == [r["return"] for r in b]
    for p, q in zip(runs[0].model.policy.parameters(), runs[1].model.policy.parameters()):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(np.load(os.path.join(runs[0].run_dir, "coverage.npz"))["counts"],
                                  np.load(os.path.join(runs[1].run_dir, "coverage.npz"))["counts"])


def test_eval_reports_success_on_a_trivial_maze(tmp_path):
    path = os.path.join(ROOT, "configs", "maze_sac.yaml")
    result = train(load_config(path, tiny(path, tmp_path, steps=100, **{"run.name": "r"}) + [
        "env.id=flowrl/PointMaze-v0", "env.kwargs.layout=[\"####\", \"#SG#\", \"####\"]", "eval.episodes=2"]))
    stats = evaluate(result.run_dir, episodes=3)
    assert stats["episodes"] == 3 and 0.0 <= stats["success_rate"] <= 1.0 and stats["length_mean"] >= 1


def test_normalized_observations_are_saved_restored_and_used_for_eval_and_coverage(tmp_path):
    """env.normalize_obs: VecNormalize statistics travel with the final model and each checkpoint,
    a resumed run continues from them, eval normalises with them, and coverage stays in raw coordinates."""
    path = os.path.join(ROOT, "configs", "maze_sac.yaml")
    items = tiny(path, tmp_path, steps=200, **{"run.name": "n", "env.normalize_obs": "true"})
    items = [i for i in items if not i.startswith("env.kwargs")] + ["env.id=MountainCarContinuous-v0"]
    first = train(load_config(path, items))
    run_dir = first.run_dir
    stats = first.model.get_vec_normalize_env()
    assert stats is not None and stats.obs_rms.count > 200  # updated on every step (and reset)
    normalize = load_obs_normalizer(run_dir)
    raw = np.array([-0.5, 0.01], dtype=np.float32)
    assert np.allclose(normalize(raw), stats.normalize_obs(raw)) and not np.allclose(normalize(raw), raw)
    ckpt = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert os.path.exists(os.path.join(ckpt, "vecnormalize.pkl"))
    # Coverage counts raw observations: 200 steps never reach |velocity| > 0.063, the border rows of the
    # 20x20 grid over the raw box; normalised velocities (unit scale) would land there.
    with np.load(os.path.join(run_dir, "coverage.npz")) as data:
        counts = data["counts"]
    assert counts.sum() > 0 and counts[0].sum() == 0 and counts[-1].sum() == 0
    assert evaluate(run_dir, episodes=1)["episodes"] == 1
    with pytest.raises(ValueError, match="normalize_obs"):
        evaluate_model(first.model, first_cfg := load_config(os.path.join(run_dir, "config.yaml")), 1)
    assert first_cfg.env.normalize_obs
    seen = {}
    resumed = train(load_config(os.path.join(run_dir, "config.yaml"), [f"resume={run_dir}", "total_timesteps=260"]),
                    on_model=lambda m: seen.setdefault("mean", m.get_vec_normalize_env().obs_rms.mean.copy()))
    assert np.allclose(seen["mean"], stats.obs_rms.mean)  # restored, not fresh (fresh: zeros)
    assert resumed.model.get_vec_normalize_env().obs_rms.count > stats.obs_rms.count


# -------------------------------------------------------------------- wandb
def _wandb_history_keys(run_file: str) -> set[str]:
    """Keys of the history records in an offline ``.wandb`` file.

    The file is a LevelDB-style log (7-byte header, 32 KiB blocks, records
    with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) of
    ``wandb_internal_pb2.Record`` protobufs.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    raw = open(run_file, "rb").read()
    assert raw[:4] == b":W&B"
    block, pos, records, part = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(data)
        elif kind == 2:
            part = data
        elif kind == 3:
            part += data
        elif kind == 4:
            records.append(part + data)
    keys = set()
    for data in records:
        rec = pb.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in rec.history.item}
    return keys


def test_wandb_offline_receives_sb3_scalars(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = os.path.join(ROOT, "configs", "maze_sac.yaml")
    # Episodes of 25 steps: SB3 dumps its scalars every 4 episodes (steps 100, 200, 300), and the
    # losses start at step 30, so every row carries them; they reach the run synchronously
    # through agents.run.WandbOutputFormat.
    # A fresh process (``flowrl train``): wandb's service must not share a test worker with Ray's.
    overrides = tiny(path, tmp_path, steps=300, **{
        "run.name": "w", "wandb": "true", "env.kwargs.max_episode_steps": 25, "run.plots": "true",
        "algo.kwargs.learning_starts": 30})
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "agents.cli", "train", path, *overrides], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = os.path.join(str(tmp_path), "w")
    files = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1
    keys = _wandb_history_keys(files[0])
    assert {"rollout/ep_rew_mean", "train/critic_loss", "train/actor_loss", "flowrl/coverage"} <= keys
    media = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "files", "media", "images", "plots", "*"))
    assert {os.path.basename(m).split("_")[0] for m in media} >= {"coverage", "learning", "policy"}


def test_demo_trains_several_flow_seeds_beside_plain_sac_and_reports_the_rate(tmp_path):
    """scripts/demo.py (make demo) in miniature: two flow seeds and plain SAC in parallel, a rate and a table."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": ROOT, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--steps", "400", "--seed", "3",
                           "--flow-seeds", "2", "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flow agents that solved it (evaluation success >= 90%): 0 of 2 seeds" in proc.stdout  # 400 steps: none
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| SAC") or line.startswith("| plain")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "SAC + RealNVP policy + flow bonus, seed 3", "SAC + RealNVP policy + flow bonus, seed 4",
        "plain SAC (Gaussian, no bonus), seed 3"]
    assert sorted(os.listdir(out)) == ["flow-s3", "flow-s4", "plain-s3"]
    assert all((out / name / "summary.json").exists() for name in os.listdir(out))
