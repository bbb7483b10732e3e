"""The cluster parts in-process and fast: device slots, the launcher presets as Hydra composes them, and the
grid sweep id. The real launchers, processes and servers are in test_cluster_submitit.py and
test_cluster_postgres.py (marked long)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from lra.compose import CONF_DIR
from lra.devices import device_slots
from lra.errors import ConfigError
from lra.sweep import BASIC_SWEEPER, grid_sweep_id, sweep_id_of


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
