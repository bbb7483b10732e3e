"""Where this process stands in a run of several processes, read from the launcher's environment (no torch
import, so `launch.py` can ask before Hydra starts).

- torchrun (`torchrun --standalone --nproc_per_node=N launch.py ...`, or multi-node): `RANK`, `WORLD_SIZE`,
  `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`;
- srun under SLURM: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, used only when there is more than one
  task and either `MASTER_ADDR` and `MASTER_PORT` are set (an sbatch script exports them) or the job is
  submitit's (`SUBMITIT_EXECUTOR=slurm`: the SLURM launcher with `tasks_per_node` > 1; `lra.parallel.distributed`
  then takes the address from submitit), so that an ordinary one-task SLURM job stays one process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from lra.errors import ConfigError


@dataclass(frozen=True)
class Place:
    """This process's rank among world_size processes, and its rank on its own machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # torchrun, slurm (srun), submitit (its SLURM executor) or none


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(key, env[key], "must be an integer (set by the launcher)",
                          "launch with torchrun or srun, or unset it") from None


def place_from_env(env: Mapping[str, str] = os.environ) -> Optional[Place]:
    """The place torchrun or srun gave this process, or None when it was started alone."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return Place(_int(env, "RANK"), _int(env, "WORLD_SIZE"),
                     _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, "torchrun")
    if "SLURM_PROCID" in env:
        ntasks = _int(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else 1
        rendezvous = "MASTER_ADDR" in env and "MASTER_PORT" in env
        if ntasks > 1 and (rendezvous or env.get("SUBMITIT_EXECUTOR") == "slurm"):
            return Place(_int(env, "SLURM_PROCID"), ntasks,
                         _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                         "slurm" if rendezvous else "submitit")
    return None


def hydra_overrides_for_rank(env: Mapping[str, str] = os.environ) -> list[str]:
    """Overrides that keep a rank other than 0 out of the run's Hydra output folder: Hydra makes a run folder
    (and its `.hydra/` and job log) in every process, so such a rank gets a temporary folder of its own, without
    `.hydra/`, removed when the process exits. Rank 0, or a process started alone: nothing."""
    place = place_from_env(env)
    if place is None or place.rank == 0:
        return []
    folder = tempfile.mkdtemp(prefix=f"lra-rank{place.rank}-")
    atexit.register(shutil.rmtree, folder, True)
    return [f"hydra.run.dir={folder}", "hydra.output_subdir=null"]
