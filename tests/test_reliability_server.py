"""A tracking-server outage during training loses no training: the run stops with one line after saving its
checkpoint, and the same command continues the same MLflow run once the server is back (issue 14, item 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, launch_args, launch_env
from mlflow.tracking import MlflowClient
from mlflow_server import free_port, stop, wait_until_up

pytestmark = pytest.mark.long

RUN = (*TINY, "dataset.train=4000", "training.num_epochs=1", "training.checkpoint_every=3", "attention=tpr")


def _start_server(folder: Path, port: int) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    server = subprocess.Popen(
        [*command, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--workers", "1",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=(folder / "server.log").open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_up(f"http://127.0.0.1:{port}", server, folder / "server.log")
    return server


def test_a_server_outage_mid_run_keeps_the_checkpoint_and_the_rerun_continues_the_run(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**launch_env(tmp_path), "MLFLOW_TRACKING_URI": uri}
    server = _start_server(tmp_path, port)
    try:
        process = subprocess.Popen(launch_args(tmp_path, *RUN), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not list((tmp_path / "checkpoints").glob("*/last.pt")):
            assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.05)
        stop(server, signal.SIGKILL)  # the outage
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: the MLflow store {uri} failed") and "run the same command" in last, last
        step = int(last.split(" at step ")[1].split(";")[0])
        saved = torch.load(next((tmp_path / "checkpoints").glob("*/last.pt")), weights_only=True)
        assert saved["progress"]["global_step"] == step > 0  # the training up to the outage is kept

        server = _start_server(tmp_path, port)  # the server is back, on the same store
        resumed = subprocess.run(launch_args(tmp_path, *RUN), cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from" in resumed.stderr + resumed.stdout
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])
        assert run.info.run_id == saved["run_id"] and run.info.status == "FINISHED"
    finally:
        if server.poll() is None:
            stop(server)
