"""Nothing lost under concurrency, signals and bad files (issue 14): real `launch.py` processes on real stores.

Each test starts the real command as a subprocess in its own folder (its own sqlite store, data cache and
checkpoints), does to it what a cluster or a user does (start it twice, kill it, remove its store, corrupt its
checkpoint), and checks what the user sees (exit code, the last line) and what the store and the checkpoint
folder hold afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, launch, launch_args, launch_env, wait_for_mid_epoch_checkpoint
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

# 40 steps per epoch, a checkpoint every 3 steps: long enough to be caught mid-epoch on a busy machine.
LONG = (*TINY, "dataset.train=640", "training.num_epochs=2", "training.checkpoint_every=3", "attention=tpr")


def _runs(tmp: Path, experiment: str = "listops-small") -> list:
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def _start(tmp: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(launch_args(tmp, *overrides), cwd=tmp, env=env or launch_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_file(tmp: Path, name: str = "last.pt") -> Path:
    found = list((tmp / "checkpoints").glob(f"*/{name}"))
    assert len(found) == 1, found
    return found[0]


def _wait_mid_epoch(tmp: Path, process: subprocess.Popen) -> dict:
    return wait_for_mid_epoch_checkpoint(tmp, process, why_ended=lambda: process.communicate()[1][-2000:])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_runs_started_at_once_on_a_fresh_folder_all_finish_and_the_store_stays_usable(tmp_path: Path) -> None:
    """The schema creation race: several processes create one new sqlite store at the same moment."""
    processes = [_start(tmp_path, *TINY, "dataset.train=32", "training.num_epochs=1", f"training.seed={seed}")
                 for seed in range(4)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    runs = _runs(tmp_path)
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 4
    again = launch(tmp_path, *TINY, "dataset.train=32", "training.num_epochs=1", "training.seed=9")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_runs(tmp_path)) == 5


def test_a_second_command_for_a_running_config_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    # 250 steps an epoch for 50 epochs: still training when the second one starts (it is stopped below)
    overrides = (*LONG, "dataset.train=4000", "training.num_epochs=50")
    first = _start(tmp_path, *overrides)
    _wait_mid_epoch(tmp_path, first)
    second = launch(tmp_path, *overrides, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    line = _last_line(second.stderr)
    assert line.startswith("error: checkpoint.dir=") and f"process {first.pid}" in line, line
    assert "training.seed" in line and "Traceback" not in second.stderr
    assert first.poll() is None, "the first command goes on"
    (run,) = _runs(tmp_path)  # the refused command made no run
    assert run.info.status == "RUNNING"
    first.send_signal(signal.SIGTERM)  # the first still owns its files: it saves and stops cleanly
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr[-3000:]
    assert not list((tmp_path / "checkpoints").glob("*/*.tmp-*")), "no temporary file is left behind"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143),
                                           pytest.param(signal.SIGINT, 130, marks=pytest.mark.long)])
def test_a_stop_signal_saves_the_step_ends_the_run_killed_and_the_rerun_resumes(tmp_path: Path, signum: int,
                                                                                 code: int) -> None:
    process = _start(tmp_path, *LONG)
    _wait_mid_epoch(tmp_path, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    line = _last_line(stderr)
    assert line.startswith("interrupted at step ") and line.endswith("run the same command to resume"), line
    step = int(line.split()[3])
    saved = torch.load(_checkpoint_file(tmp_path), weights_only=True)
    assert saved["progress"]["global_step"] == step  # the checkpoint is the step the line names
    (run,) = _runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "true"

    resumed = launch(tmp_path, *LONG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run,) = _runs(tmp_path)  # the same run, continued
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval_accuracy"] >= 0


def test_resume_when_the_checkpoints_run_is_gone_continues_in_a_new_run(tmp_path: Path) -> None:
    process = _start(tmp_path, *LONG)
    saved = _wait_mid_epoch(tmp_path, process)
    process.kill()
    process.wait(60)
    (tmp_path / "mlflow.db").unlink()  # the store the run logged to is gone
    resumed = launch(tmp_path, *LONG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing from the checkpoint at step" in resumed.stderr, resumed.stderr[-3000:]
    (run,) = _runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_run_id"] == saved["run_id"] != run.info.run_id


def test_an_unreachable_tracking_server_fails_fast_with_one_line_before_any_data(tmp_path: Path) -> None:
    env = launch_env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
    tic = time.monotonic()
    result = subprocess.run(launch_args(tmp_path, *TINY), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert time.monotonic() - tic < 60  # the check itself is bounded at 20 s; the rest is start-up
    assert result.returncode == 2, result.stderr[-3000:]
    line = _last_line(result.stderr)
    assert line.startswith("error: tracking.uri='http://127.0.0.1:9'") and "fix:" in line, line
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()


def _corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    else:  # foreign: a valid torch file that is not a checkpoint of lra
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)


@pytest.mark.parametrize("how", ["truncated", pytest.param("garbage", marks=pytest.mark.long),
                                 pytest.param("foreign", marks=pytest.mark.long)])
def test_an_unreadable_checkpoint_is_set_aside_and_the_previous_one_is_used(tmp_path: Path, how: str) -> None:
    process = _start(tmp_path, *LONG)
    _wait_mid_epoch(tmp_path, process)
    deadline = time.time() + 300
    while not list((tmp_path / "checkpoints").glob("*/previous.pt")) and time.time() < deadline:
        time.sleep(0.02)  # wait for a second checkpoint, so that a previous one is kept
    process.kill()
    process.wait(60)
    last = _checkpoint_file(tmp_path)
    previous_step = torch.load(last.with_name("previous.pt"), weights_only=True)["progress"]["global_step"]
    _corrupt(last, how)
    resumed = launch(tmp_path, *LONG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warning = [line for line in resumed.stderr.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warning) == 1 and str(last) in warning[0] and "moved to last.pt.corrupt-" in warning[0], warning
    assert list(last.parent.glob("last.pt.corrupt-*")), "the unreadable file is kept aside"
    assert f"resuming from {last.parent} at epoch" in resumed.stderr + resumed.stdout
    (run,) = _runs(tmp_path)
    assert run.info.status == "FINISHED" and previous_step > 0


@pytest.mark.long
def test_a_completed_config_keeps_its_files_until_the_new_run_has_started(tmp_path: Path) -> None:
    done = launch(tmp_path, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    best = _checkpoint_file(tmp_path, "best.pt")
    before = best.read_bytes()
    env = launch_env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # the rerun cannot start its run
    failed = subprocess.run(launch_args(tmp_path, *TINY), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 2
    assert best.read_bytes() == before and best.with_name("last.pt").exists()
    again = launch(tmp_path, *TINY)  # with the store back, the rerun is a new run
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(run.info.status for run in _runs(tmp_path)) == ["FINISHED", "FINISHED"]
