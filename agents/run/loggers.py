"""SB3 loggers of a run: CSV, TensorBoard on request, and wandb (synchronous) when asked."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HumanOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
)

from ..config import TrainConfig

__all__ = ["WandbOutputFormat", "run_logger", "start_wandb"]

class WandbOutputFormat(KVWriter):
    """SB3 logger output that sends every numeric scalar to a wandb run at SB3's step.

    wandb's SB3 integration forwards SB3's scalars only by syncing TensorBoard
    event files, which wandb-core polls in the background and (0.31) does not
    drain when the run finishes, so the last rows of a run, or all rows of a
    short one, can be lost.  Logging through the SB3 logger itself is
    synchronous: every dumped row reaches the run.
    """

    def __init__(self, run: Any):
        self.run = run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        row = {k: float(v) for k, v in key_values.items()
               if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
        if row:
            self.run.log(row, step=int(step))

    def close(self) -> None:
        pass


def run_logger(run_dir: str, cfg: TrainConfig, csv_name: str, wandb_run: Any = None) -> Logger:
    formats: list[KVWriter] = [CSVOutputFormat(os.path.join(run_dir, csv_name))]
    if cfg.run.tensorboard:
        formats.append(TensorBoardOutputFormat(os.path.join(run_dir, "tensorboard")))
    if wandb_run is not None:
        formats.append(WandbOutputFormat(wandb_run))
    if cfg.run.verbose:
        formats.append(HumanOutputFormat(sys.stdout))
    return Logger(run_dir, formats)


def start_wandb(cfg: TrainConfig, run_dir: str):
    import wandb
    from wandb.integration.sb3 import WandbCallback

    id_file = os.path.join(run_dir, "wandb_id.txt")
    run_id = open(id_file).read().strip() if os.path.exists(id_file) else None
    # SB3's scalars go to the run through WandbOutputFormat (synchronous), not through
    # sync_tensorboard, whose background reader can miss the last rows of a run.
    run = wandb.init(
        project=cfg.wandb_project, name=os.path.basename(run_dir), dir=run_dir, id=run_id, resume="allow",
        group=cfg.wandb_group,
        config=cfg.model_dump(mode="json"),
    )
    with open(id_file, "w") as f:
        f.write(run.id)
    return run, WandbCallback(verbose=0)
