"""A run killed with SIGKILL mid-epoch resumes from its checkpoint into the same MLflow run, and ends with the
metrics of an uninterrupted run with the same seed."""

import signal
import subprocess
from pathlib import Path

import pytest
from helpers import TINY, launch, launch_args, launch_env, wait_for_mid_epoch_checkpoint
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

RUN = (*TINY, "dataset.train=640", "training.num_epochs=2", "training.checkpoint_every=3",
       "model.dropout_prob=0.1", "attention=hrr-bundled")


def _only_run(tmp: Path):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    whole_dir.mkdir()
    killed_dir.mkdir()
    whole = launch(whole_dir, *RUN)
    assert whole.returncode == 0, whole.stderr[-3000:]

    process = subprocess.Popen(launch_args(killed_dir, *RUN), cwd=killed_dir, env=launch_env(killed_dir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = wait_for_mid_epoch_checkpoint(killed_dir, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL
    client, run = _only_run(killed_dir)
    assert run.info.status == "RUNNING"  # killed: nobody could end it
    assert state["run_id"] == run.info.run_id

    resumed = launch(killed_dir, *RUN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr + resumed.stdout
    client, run = _only_run(killed_dir)  # the same run, not a new one
    assert run.info.status == "FINISHED"
    _, reference = _only_run(whole_dir)
    for key in ("test_accuracy", "test_loss", "eval_accuracy"):
        assert run.data.metrics[key] == pytest.approx(reference.data.metrics[key], rel=1e-6, abs=1e-7), key
    ref_client = MlflowClient(f"sqlite:///{whole_dir / 'mlflow.db'}")
    # a step logged twice (redone after the kill) must carry the reference value both times
    ref = {m.step: m.value for m in ref_client.get_metric_history(reference.info.run_id, "eval_loss")}
    resumed_evals = client.get_metric_history(run.info.run_id, "eval_loss")
    assert len(ref) == 2 and {m.step for m in resumed_evals} == set(ref)
    for m in resumed_evals:
        assert m.value == pytest.approx(ref[m.step], rel=1e-6)
    # the per-step logging window is in the checkpoint: no point after the resume covers fewer steps
    for name in ("train_loss", "train_accuracy"):
        ref = {m.step: m.value for m in ref_client.get_metric_history(reference.info.run_id, name)}
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert set(got) == set(ref), name
        for step, value in got.items():
            assert value == pytest.approx(ref[step], rel=1e-6, abs=1e-7), (name, step)
