"""Devices for the jobs of a sweep on one machine: which GPUs there are, how they are shared out into slots,
and what each job logs about the devices it was given.

The launcher `hydra/launcher=local_gpus` (`hydra_plugins/lra_local_gpus_launcher`, where Hydra requires
launcher plugins to live) is hydra-submitit-launcher's local launcher (each job its own process through
submitit's local executor, its log in `<sweep dir>/.submitit/<job id>/`) with device slots: a machine with N
visible GPUs runs N jobs at once, job k on its own GPU (`CUDA_VISIBLE_DEVICES=<that GPU>`, so the job's
`cuda` is that device); the next job starts on the first slot that frees up. On a machine without a GPU the
same command runs `n_jobs` jobs at once on the CPU (`CUDA_VISIBLE_DEVICES` empty). A job that receives the
preemption or time-limit signal is checkpointed and requeued by submitit in the same slot.

Each job logs the devices it was given (`resolved.cuda_visible_devices`, see `device_params`) beside the
device it resolved (`resolved.device`), so the pinning can be read back from the store.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from lra.errors import ConfigError

Slot = tuple[str, ...]  # the device ids one job is given (empty: CPU only)


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: `$CUDA_VISIBLE_DEVICES` if set, else every GPU torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    import torch  # only counts the devices (NVML), without initialising CUDA in the sweeper

    return [str(index) for index in range(torch.cuda.device_count())]


def default_cpu_jobs() -> int:
    """Jobs at once on a CPU machine: half the cores (torch's intra-op threads need the rest), at least 1."""
    return max(1, (os.cpu_count() or 2) // 2)


def device_slots(gpus: Sequence[Any], gpus_per_job: int, n_jobs: Optional[int]) -> list[Slot]:
    """The slots jobs run in: one per group of `gpus_per_job` GPUs (`n_jobs` > groups shares them round robin,
    fewer uses the first ones); without GPUs `n_jobs` CPU slots."""
    devices = [str(gpu) for gpu in gpus]
    if not devices:
        return [()] * (n_jobs or default_cpu_jobs())
    groups = [tuple(devices[i:i + gpus_per_job]) for i in range(0, len(devices) - gpus_per_job + 1, gpus_per_job)]
    if not groups:
        raise ConfigError("hydra.launcher.gpus_per_job", gpus_per_job,
                          f"only {len(devices)} GPUs are visible ({','.join(devices)})",
                          f"set hydra.launcher.gpus_per_job={len(devices)} or fewer")
    return [groups[i % len(groups)] for i in range(n_jobs or len(groups))]


def device_params() -> dict[str, str]:
    """What a job was given, logged beside `resolved.device` (the pinning contract, readable from the store)."""
    return {"resolved.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
            "resolved.submitit_job_id": os.environ.get("SUBMITIT_LOCAL_JOB_ID")
            or os.environ.get("SLURM_JOB_ID", "none")}


def describe(slot: Slot) -> str:
    return f"GPU {','.join(slot)}" if slot else "CPU"
