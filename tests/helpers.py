"""Shared by the end-to-end tests: run the real `launch.py` as a subprocess in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch.py"

# A model and data small enough for a few seconds of CPU per run.
TINY = (
    "task=listops-small", "dataset.train=96", "dataset.dev=32", "dataset.test=40",
    "model.embedding_dim=16", "model.transformer_hidden_dim=32", "model.num_head=2", "model.head_dim=8",
    "model.num_layers=1", "training.batch_size=16", "training.num_epochs=2", "training.log_every=2",
    "tracking.system_metrics=false",
)


def launch_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env.pop("LRA_SWEEP_ID", None)
    env.pop("LRA_SWEEP_PARENT_RUN_ID", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def launch_args(tmp: Path, *overrides: str, multirun: bool = False) -> list[str]:
    args = [sys.executable, str(LAUNCH)]
    if multirun:
        args.append("-m")
    return args + [
        f"hydra.run.dir={tmp / 'outputs'}", f"hydra.sweep.dir={tmp / 'multirun'}",
        f"data.root={tmp / 'data'}", f"checkpoint.dir={tmp / 'checkpoints'}", "hardware.num_threads=1",
        *overrides,
    ]


def launch(tmp: Path, *overrides: str, multirun: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run launch.py with overrides in `tmp` (its own MLflow store, data cache and checkpoints)."""
    return subprocess.run(launch_args(tmp, *overrides, multirun=multirun), cwd=tmp, env=launch_env(tmp),
                          capture_output=True, text=True, timeout=timeout)


def wait_for_mid_epoch_checkpoint(tmp: Path, process: subprocess.Popen, timeout: float = 300,
                                  why_ended: Optional[Callable[[], str]] = None) -> dict:
    """The first checkpoint under `tmp/checkpoints` saved inside an epoch (so `process` is then training).
    `why_ended` tells what the process printed, should it end first."""
    import torch

    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in (tmp / "checkpoints").glob("*/last.pt"):
            try:
                state = torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 - a file being replaced; the rename makes the next read whole
                continue
            if state["progress"]["batch_in_epoch"] > 0:
                return state
        assert process.poll() is None, ("the run ended before a mid-epoch checkpoint was seen: "
                                        + (why_ended() if why_ended else ""))
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")
