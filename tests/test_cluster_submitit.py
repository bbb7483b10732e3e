"""Sweeps through submitit's local executor, for real: every job its own process (`hydra/launcher=submitit_local`
and our `local_gpus`), a grid run again that trains nothing twice, jobs pinned one per device, a job
preempted with SLURM's signal that requeues and resumes into the same MLflow run, and a sweeper killed and
run again while its jobs still run. Minutes each: marked long (`python -m pytest -m long`)."""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from lra.sweep import PARENT_TAG, child_runs

pytestmark = pytest.mark.long

REPO = Path(__file__).resolve().parents[1]
ATTENTIONS = "softmax,hrr-individual,hrr-bundled,hrr-quadratic,tpr"
# sweeps/tiny.yaml's model, smaller data: seconds of CPU per job once the process has started
TINY = ("dataset.train=32", "dataset.dev=16", "dataset.test=16", "training.batch_size=16", "training.num_epochs=2",
        "tracking.system_metrics=false", "hardware.num_threads=1")


class Sweeps:
    """launch.py sweeps in one folder: one sqlite MLflow store, data cache and checkpoint root."""

    def __init__(self, root: Path) -> None:
        self.root, self.uri = root, f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def args(self, sweep_dir: str, *overrides: str, config: str = "tiny") -> list[str]:
        return [sys.executable, str(REPO / "launch.py"), "-cd", str(REPO / "sweeps"), "-cn", config, *TINY,
                f"data.root={self.root / 'data'}", f"checkpoint.dir={self.root / 'checkpoints'}",
                f"hydra.sweep.dir={self.root / sweep_dir}", *overrides]

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LRA_SWEEP")}
        env.update(MLFLOW_TRACKING_URI=self.uri, OMP_NUM_THREADS="1")
        return env

    def run(self, sweep_dir: str, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
        result = subprocess.run(self.args(sweep_dir, *overrides), cwd=self.root, env=self.env(), capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, explain(result)
        return result

    def start(self, sweep_dir: str, *overrides: str) -> subprocess.Popen:
        log = (self.root / f"{sweep_dir}.log").open("w")
        return subprocess.Popen(self.args(sweep_dir, *overrides), cwd=self.root, env=self.env(), stdout=log,
                                stderr=subprocess.STDOUT, text=True)

    def jobs(self, sweep_id: str) -> list:
        return child_runs(self.client, [self.client.get_experiment_by_name("listops-small").experiment_id], sweep_id)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"


def sweep_ids(output: str) -> tuple[str, str]:
    found = re.findall(r"sweep (\S+): parent MLflow run (\w+)", output)
    assert found, output[-3000:]
    return found[-1]


def job_logs(sweep_dir: Path) -> dict[str, str]:
    """submitit's log of each job process in the sweep folder: {job id: stdout + stderr}."""
    logs = {}
    for folder in sorted((sweep_dir / ".submitit").iterdir()):
        if folder.name != "%j":
            logs[folder.name] = "".join(path.read_text() for path in sorted(folder.glob("*_log.*")))
    return logs


def job_returns(sweep_dir: Path) -> list:
    """The JobReturn each job process handed back to the sweep (submitit's result pickles)."""
    returns = []
    for path in sorted((sweep_dir / ".submitit").glob("*/*_result.pkl")):
        with path.open("rb") as handle:
            outcome, value = pickle.load(handle)
        assert outcome == "success", value
        returns.append(value)
    return returns


def test_a_submitit_local_grid_of_the_five_attentions_run_again_trains_nothing(tmp_path):
    sweeps = Sweeps(tmp_path)
    first = sweeps.run("first", "hydra/launcher=submitit_local", f"attention={ATTENTIONS}")
    sweep_id, parent_id = sweep_ids(first.stdout + first.stderr)
    runs = sweeps.jobs(sweep_id)
    assert sorted(run.data.tags["attention"] for run in runs) == sorted(ATTENTIONS.split(","))
    assert all(run.info.status == "FINISHED" for run in runs)
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in runs)
    logs = job_logs(tmp_path / "first")  # each job its own process, its log in the sweep folder
    assert len(logs) == 5 and all("MLflow run" in text and "FINISHED" in text for text in logs.values())
    assert {run.data.params["resolved.submitit_job_id"] for run in runs} == set(logs)

    again = sweeps.run("again", "hydra/launcher=submitit_local", f"attention={ATTENTIONS}")
    assert sweep_ids(again.stdout + again.stderr) == (sweep_id, parent_id)  # the same sweep, its parent reused
    assert "continuing its parent run" in again.stdout + again.stderr
    rerun = sweeps.jobs(sweep_id)
    assert sorted(run.info.run_id for run in rerun) == sorted(run.info.run_id for run in runs)  # no new run
    assert all(run.info.status == "FINISHED" for run in rerun)
    logs = job_logs(tmp_path / "again")
    assert len(logs) == 5 and all("already completed in this sweep" in text for text in logs.values())
    assert not any("resuming" in text or "epoch 1:" in text for text in logs.values())
    # the sweep got each job's stored objective (the best dev accuracy), not a retrained one
    returned = sorted((ret.cfg.attention.name, ret.return_value) for ret in job_returns(tmp_path / "again"))
    stored = sorted((run.data.tags["attention"], run.data.metrics["best_eval_accuracy"]) for run in runs)
    assert returned == stored
    parent = sweeps.client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs_finished"] == "5"
    assert parent.data.tags[PARENT_TAG] == "true"


def _schedule(output: str) -> list[tuple[str, int, str]]:
    """The local_gpus launcher's log: ("start" | "end", job number, device) in order."""
    events = []
    for line in output.splitlines():
        if found := re.search(r"#(\d+) on (GPU [\d,]+|CPU) \(submitit job", line):
            events.append(("start", int(found.group(1)), found.group(2)))
        elif found := re.search(r"#(\d+) ended \w+; (GPU [\d,]+|CPU) is free", line):
            events.append(("end", int(found.group(1)), found.group(2)))
    return events


def test_local_gpus_runs_one_job_per_device_at_a_time(tmp_path):
    sweeps = Sweeps(tmp_path)
    result = sweeps.run("pinned", "hydra/launcher=local_gpus", "hydra.launcher.gpus=[0,1]", "attention=softmax,tpr",
                        "training.seed=0,1")
    output = result.stdout + result.stderr
    assert "4 jobs, 2 at once (GPU 0, GPU 1)" in output
    busy: dict[str, int] = {}
    most = 0
    for kind, job, device in _schedule(output):  # never two jobs on one device; both devices used at once
        if kind == "start":
            assert device not in busy, f"job {job} started on {device} while job {busy.get(device)} ran there"
            busy[device] = job
            most = max(most, len(busy))
        else:
            assert busy.pop(device) == job
    assert most == 2 and not busy
    sweep_id, _ = sweep_ids(output)
    runs = sweeps.jobs(sweep_id)
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    given = [run.data.params["resolved.cuda_visible_devices"] for run in runs]
    assert sorted(given) == ["0", "0", "1", "1"]  # what each job was given ...
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert {run.data.params["resolved.device"] for run in runs} == {expected}  # ... and the device it saw
    spans = sorted((run.info.start_time, run.info.end_time, run.data.params["resolved.cuda_visible_devices"])
                   for run in runs)
    for i, (start, end, device) in enumerate(spans):  # runs that overlapped in time had different devices
        for other_start, _, other_device in spans[i + 1:]:
            if other_start < end:
                assert other_device != device
