"""Sweeps through submitit's local executor, for real: every job its own process (`hydra/launcher=submitit_local`
and our `local_gpus`), a grid run again that trains nothing twice, jobs pinned one per device, a job
preempted with SLURM's signal that requeues and resumes into the same MLflow run, and a sweeper killed and
run again while its jobs still run. Minutes each: marked long (`python -m pytest -m long`)."""

from __future__ import annotations

import json
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

from lra.sweep.callback import PARENT_TAG, child_runs

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
        root.mkdir(parents=True, exist_ok=True)
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


LONGER = ("dataset.train=640", "training.checkpoint_every=3", "model.dropout_prob=0.1")  # 80 steps, 26 checkpoints


def wait_for_checkpoints(root: Path, count: int, process: subprocess.Popen, timeout: float = 600) -> list[dict]:
    """The first mid-epoch checkpoint of `count` configs under root/checkpoints (jobs are then training)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = []
        for path in (root / "checkpoints").glob("*/last.pt"):
            try:
                state = torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 - only a complete file counts
                continue
            if state["progress"]["batch_in_epoch"] > 0 and not state["progress"]["completed"]:
                states.append(state)
        if len(states) >= count:
            return states
        assert process.poll() is None, f"the sweep ended before {count} jobs were training"
        time.sleep(0.05)
    raise AssertionError(f"no {count} mid-epoch checkpoints within {timeout} s")


def job_processes(root: Path) -> list[psutil.Process]:
    """The processes running a job of a sweep under `root` (submitit's `submitit.core._submit <folder>`)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "submitit.core._submit" in cmdline and str(root) in cmdline:
            found.append(process)
    return found


def test_a_preempted_job_is_requeued_and_resumes_into_its_run_with_the_metrics_of_an_uninterrupted_run(tmp_path):
    overrides = ("hydra/launcher=submitit_local", "attention=hrr-bundled", *LONGER)
    reference = Sweeps(tmp_path / "reference")
    whole = reference.run("sweep", *overrides)
    (expected,) = reference.jobs(sweep_ids(whole.stdout + whole.stderr)[0])

    preempted = Sweeps(tmp_path / "preempted")
    sweeper = preempted.start("sweep", *overrides)
    (state,) = wait_for_checkpoints(preempted.root, 1, sweeper)
    (job,) = job_processes(preempted.root)
    job.send_signal(signal.SIGUSR2)  # what SLURM (and submitit's local controller) send before a time limit
    assert sweeper.wait(900) == 0, (preempted.root / "sweep.log").read_text()[-5000:]

    (log,) = job_logs(preempted.root / "sweep").values()
    assert "Requeued job" in log and "resuming from" in log, log[-5000:]
    (run,) = preempted.jobs(sweep_ids((preempted.root / "sweep.log").read_text())[0])
    assert run.info.run_id == state["run_id"]  # the requeued job continued the run it had started
    assert run.info.status == "FINISHED" and run.data.tags["interrupted"] == "true"
    resumed_at = re.search(r"resuming from \S+ at epoch (\d+), batch (\d+)", log)
    print(f"SIGUSR2 after the checkpoint of step {state['progress']['global_step']}; requeued, resumed at epoch "
          f"{resumed_at.group(1)} batch {resumed_at.group(2)} into run {run.info.run_id}: " + ", ".join(f"{key} {run.data.metrics[key]:.6f} (uninterrupted "
                                             f"{expected.data.metrics[key]:.6f})"
                                             for key in ("test_accuracy", "test_loss", "best_eval_accuracy")))
    for key in ("test_accuracy", "test_loss", "best_eval_accuracy"):
        assert run.data.metrics[key] == pytest.approx(expected.data.metrics[key], rel=1e-6, abs=1e-7), key
    for key in ("eval_loss", "eval_accuracy"):
        history = {m.step: m.value for m in preempted.client.get_metric_history(run.info.run_id, key)}
        reference_history = {m.step: m.value for m in reference.client.get_metric_history(expected.info.run_id, key)}
        assert history.keys() == reference_history.keys()
        assert all(history[step] == pytest.approx(reference_history[step], rel=1e-6) for step in history), key
    (returned,) = job_returns(preempted.root / "sweep")
    assert returned.return_value == pytest.approx(expected.data.metrics["best_eval_accuracy"], rel=1e-6)


def test_a_sweeper_killed_and_run_again_does_not_duplicate_the_jobs_still_running(tmp_path):
    sweeps = Sweeps(tmp_path)
    overrides = ("hydra/launcher=submitit_local", "attention=softmax,tpr", *LONGER)
    sweeper = sweeps.start("first", *overrides)
    jobs: dict[Path, psutil.Process] = {}
    deadline = time.time() + 600
    while len(jobs) < 2:  # hold each job still once it trains, so that both surely run when the sweep is rerun
        assert sweeper.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-5000:]
        for folder in set((tmp_path / "checkpoints").glob("*")) - set(jobs):
            try:
                state = torch.load(folder / "last.pt", weights_only=True)
                owner = json.loads((folder / "owner.json").read_text())  # the process that trains it
            except Exception:  # noqa: BLE001 - not written yet
                continue
            if state["progress"]["batch_in_epoch"] > 0 and not state["progress"]["completed"]:
                jobs[folder] = psutil.Process(owner["pid"])
                jobs[folder].suspend()
        time.sleep(0.05)
    sweeper.send_signal(signal.SIGTERM)  # kill, scancel, a closed terminal: the sweeper only
    assert sweeper.wait(120) == 128 + signal.SIGTERM
    sweep_id, parent_id = sweep_ids((tmp_path / "first.log").read_text())
    parent = sweeps.client.get_run(parent_id)
    assert parent.info.status == "KILLED" and parent.data.tags["interrupted"] == "true"
    assert all(job.is_running() for job in jobs.values())  # the jobs outlive their sweeper

    again = sweeps.start("again", *overrides)
    deadline = time.time() + 600
    while not (tmp_path / "again" / ".submitit").exists() or \
            sum("waiting for it to end" in text for text in job_logs(tmp_path / "again").values()) < 2:
        assert again.poll() is None and time.time() < deadline, (tmp_path / "again.log").read_text()[-5000:]
        time.sleep(0.5)
    for job in jobs.values():
        job.resume()
    assert again.wait(900) == 0, (tmp_path / "again.log").read_text()[-5000:]

    assert sweep_ids((tmp_path / "again.log").read_text()) == (sweep_id, parent_id)
    runs = sweeps.jobs(sweep_id)
    assert sorted(run.data.tags["attention"] for run in runs) == ["softmax", "tpr"]  # no duplicate run
    assert all(run.info.status == "FINISHED" for run in runs)
    logs = job_logs(tmp_path / "again")
    assert all("already completed in this sweep" in text and "resuming" not in text for text in logs.values())
    parent = sweeps.client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "interrupted" not in parent.data.tags
    assert parent.data.tags["jobs_finished"] == "2"
