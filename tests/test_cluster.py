"""The cluster parts in-process and fast: device slots, the launcher presets as Hydra composes them, the grid
sweep id; and (slow) a sweep interrupted by a signal ends its job and its parent run KILLED. The real launchers, processes and servers are in test_cluster_submitit.py and
test_cluster_postgres.py (marked long)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from lra.compose import CONF_DIR
from lra.errors import ConfigError
from lra.parallel.devices import device_slots
from lra.sweep.callback import BASIC_SWEEPER, child_runs, grid_sweep_id, sweep_id_of

REPO = Path(__file__).resolve().parents[1]
TINY = ("task=listops-small", "dataset.dev=16", "dataset.test=16", "model.embedding_dim=16",
        "model.transformer_hidden_dim=32", "model.num_head=2", "model.head_dim=8", "model.num_layers=1",
        "training.batch_size=16", "training.num_epochs=2", "tracking.system_metrics=false", "hardware.num_threads=1")


def test_one_slot_per_gpu_or_group_and_cpu_slots_without_a_gpu():
    assert device_slots(["0", "1", "2", "3"], 1, None) == [("0",), ("1",), ("2",), ("3",)]
    assert device_slots([0, 1, 2, 3], 2, None) == [("0", "1"), ("2", "3")]
    assert device_slots(["0", "1"], 1, 4) == [("0",), ("1",), ("0",), ("1",)]  # two jobs per GPU, asked for
    assert device_slots(["0", "1", "2"], 1, 2) == [("0",), ("1",)]
    assert device_slots([], 1, 3) == [(), (), ()]  # CPU: n_jobs processes, no GPU each
    assert len(device_slots([], 1, None)) >= 1
    with pytest.raises(ConfigError, match=r"hydra.launcher.gpus_per_job=4: only 2 GPUs are visible"):
        device_slots(["0", "1"], 4, None)


def _hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    return config


def test_the_slurm_preset_sets_every_field_and_each_can_be_overridden():
    default = _hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert default._target_.endswith("SlurmLauncher")
    assert (default.gpus_per_node, default.tasks_per_node, default.signal_delay_s) == (1, 1, 120)
    assert default.max_num_timeout > 0 and default.submitit_folder.endswith("/.submitit/%j")
    launcher = _hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
                       "hydra.launcher.cpus_per_task=4", "hydra.launcher.mem_gb=64", "hydra.launcher.timeout_min=600",
                       "hydra.launcher.signal_delay_s=300", "hydra.launcher.max_num_timeout=5"]).hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.cpus_per_task, launcher.mem_gb,
            launcher.timeout_min, launcher.signal_delay_s, launcher.max_num_timeout) == ("gpu", 2, 4, 64, 600, 300, 5)


def test_the_local_gpus_preset_names_a_hydra_plugin_launcher():
    launcher = _hydra(["hydra/launcher=local_gpus", "hydra.launcher.gpus=[0,2]", "hydra.launcher.n_jobs=4"])
    launcher = launcher.hydra.launcher
    assert launcher._target_.startswith("hydra_plugins.")  # Hydra instantiates launchers from there only
    assert list(launcher.gpus) == [0, 2] and launcher.n_jobs == 4 and launcher.gpus_per_job == 1
    local = _hydra(["hydra/launcher=submitit_local"]).hydra.launcher
    assert local.submitit_folder.startswith("multirun/")  # each job's log in the sweep folder (resolved here)


def test_a_grid_sweep_id_is_the_same_for_the_same_command_only():
    base = _hydra(["attention=tpr", "training.seed=1"])
    assert base.hydra.sweeper._target_ == BASIC_SWEEPER
    same = _hydra(["attention=tpr", "training.seed=1"])
    other = _hydra(["attention=tpr", "training.seed=2"])
    assert grid_sweep_id(base) == grid_sweep_id(same) == sweep_id_of(base)
    assert grid_sweep_id(base) != grid_sweep_id(other)
    assert grid_sweep_id(base).startswith("grid-")
    assert sweep_id_of(_hydra(["attention=tpr", "sweep.id=mine"])) == "mine"


def _wait_for_mid_epoch_checkpoint(root: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in (root / "checkpoints").glob("*/last.pt"):
            try:
                if torch.load(path, weights_only=True)["progress"]["batch_in_epoch"] > 0:
                    return
            except Exception:  # noqa: BLE001 - only a complete file counts
                continue
        assert process.poll() is None, "the sweep ended before a job was training"
        time.sleep(0.05)
    raise AssertionError("no mid-epoch checkpoint appeared")


SWEEPS = {"grid": ("-m", "attention=softmax,tpr"),
          "optuna": ("-cd", str(REPO / "sweeps"), "-cn", "tiny_search", "hydra.sweeper.n_trials=2",
                     "hydra/sweeper/pruner=nop")}


@pytest.mark.long
@pytest.mark.parametrize("sweeper, signum", [("grid", signal.SIGINT), ("optuna", signal.SIGTERM)])
def test_an_interrupted_sweep_ends_its_running_job_and_its_parent_run_killed(tmp_path, sweeper, signum):
    env = {key: value for key, value in os.environ.items() if not key.startswith("LRA_SWEEP")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", OMP_NUM_THREADS="1")
    log = tmp_path / "sweep.log"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), *SWEEPS[sweeper], *TINY, "dataset.train=640",
         "training.checkpoint_every=3", f"data.root={tmp_path / 'data'}", f"checkpoint.dir={tmp_path / 'checkpoints'}",
         f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    _wait_for_mid_epoch_checkpoint(tmp_path, process)
    process.send_signal(signum)
    code = process.wait(120)
    # lra_optuna turns SIGTERM into KeyboardInterrupt, which train() reports as SIGINT (exit 130)
    assert code == 128 + signum or (sweeper == "optuna" and code == 130), log.read_text()[-3000:]
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    sweep_id, parent_id = re.findall(r"sweep (\S+): parent MLflow run (\w+)", output)[-1]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (job,) = child_runs(client, [client.get_experiment_by_name("listops-small").experiment_id], sweep_id)
    assert job.info.status == "KILLED" and job.data.tags["interrupted"] == "true"
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED" and parent.data.tags["interrupted"] == "true"
    assert parent.data.tags["interrupt_signal"] == signal.Signals(signum).name
    if sweeper == "optuna":  # its trial released, not FAIL: the same command runs it again, resuming (issue 19)
        (trial,) = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
        assert trial.state == optuna.trial.TrialState.RUNNING and trial.user_attrs["lra_heartbeat"] == 0.0
