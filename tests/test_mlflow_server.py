"""A real `mlflow server` on loopback, as the README starts it: a sweep logs through it (the SLURM set-up's
tracking path) and its REST API (`runs/search`) serves the sweep's runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow_server import free_port, stop, wait_until_up

pytestmark = pytest.mark.long

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset.train=32", "dataset.dev=16", "dataset.test=16", "training.batch_size=16", "training.num_epochs=2",
        "tracking.system_metrics=false"]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_mlflow_server_serves_a_sweep_logged_through_it(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LRA_SWEEP", "MLFLOW_"))}
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [*command, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--workers", "1",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(base, server, log)
        result = subprocess.run(
            [sys.executable, str(REPO / "launch.py"), "-cd", str(REPO / "sweeps"), "-cn", "tiny", *TINY,
             "attention=softmax,tpr", f"data.root={tmp_path / 'data'}", f"checkpoint.dir={tmp_path / 'ckpt'}",
             f"hydra.sweep.dir={tmp_path / 'multirun'}"],
            cwd=tmp_path, env={**env, "MLFLOW_TRACKING_URI": base}, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        sweep_id, parent_id = re.search(r"sweep (\S+): parent MLflow run (\w+)",
                                        result.stdout + result.stderr).groups()

        experiment = _api(base, "experiments/get-by-name?experiment_name=listops-small")["experiment"]
        found = _api(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                           "filter": f"tags.sweep_id = '{sweep_id}'", "max_results": 100})
        runs = {run["info"]["run_id"]: run for run in found["runs"]}
        tags = {run_id: {t["key"]: t["value"] for t in run["data"].get("tags", [])} for run_id, run in runs.items()}
        children = [run_id for run_id in runs if run_id != parent_id]
        assert parent_id in runs and len(children) == 2
        assert sorted(tags[run_id]["attention"] for run_id in children) == ["softmax", "tpr"]
        for run_id in children:
            assert runs[run_id]["info"]["status"] == "FINISHED"
            assert tags[run_id]["mlflow.parentRunId"] == parent_id
            assert "test_accuracy" in {m["key"] for m in runs[run_id]["data"]["metrics"]}
        assert runs[parent_id]["info"]["status"] == "FINISHED"
    finally:
        stop(server)
