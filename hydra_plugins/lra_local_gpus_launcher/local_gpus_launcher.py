"""`hydra/launcher=local_gpus`: one job per device slot on one machine (see lra/parallel/devices.py for the slots).

hydra-submitit-launcher's local launcher starts every job of a batch at once, all on the same devices; this
one starts at most one job per slot, job k pinned to its slot's GPUs through submitit's `visible_gpus`
(`CUDA_VISIBLE_DEVICES`), and starts the next job on the first slot that frees up. Each job is its own
process under submitit's local executor, so a job signalled before its time limit (SIGUSR2) is checkpointed
and requeued in its slot by submitit's checkpointing protocol (`BaseSubmititLauncher.checkpoint`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from lra.parallel.devices import Slot, describe, device_slots, visible_gpus

log = logging.getLogger(__name__)


class LocalGpusLauncher(BaseSubmititLauncher):
    """submitit's local executor, at most one job per device slot at a time (see the module doc)."""

    _EXECUTOR = "local"

    def __init__(self, *, gpus: Optional[Sequence[Any]] = None, gpus_per_job: int = 1, n_jobs: Optional[int] = None,
                 signal_delay_s: int = 120, max_num_timeout: int = 3, poll_s: float = 0.5, **params: Any) -> None:
        super().__init__(**params)
        self.gpus = None if gpus is None else [str(gpu) for gpu in gpus]
        self.gpus_per_job, self.n_jobs = int(gpus_per_job), n_jobs
        self.signal_delay_s, self.max_num_timeout, self.poll_s = int(signal_delay_s), int(max_num_timeout), poll_s

    def _executor(self) -> Any:
        import submitit

        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"],
                                          max_num_timeout=self.max_num_timeout)
        executor.update_parameters(timeout_min=self.params.get("timeout_min", 60), tasks_per_node=1,
                                   signal_delay_s=self.signal_delay_s,
                                   stderr_to_stdout=bool(self.params.get("stderr_to_stdout", False)))
        return executor

    @staticmethod
    def _pin(executor: Any, slot: Slot) -> None:
        """Give the next job the devices of `slot` (submitit sets CUDA_VISIBLE_DEVICES from visible_gpus)."""
        if all(device.isdigit() for device in slot):
            executor.update_parameters(gpus_per_node=len(slot), visible_gpus=tuple(int(d) for d in slot), setup=[])
        else:  # UUIDs or MIG names: exported before the job starts
            executor.update_parameters(gpus_per_node=0, visible_gpus=(),
                                       setup=[f"export CUDA_VISIBLE_DEVICES={','.join(slot)}"])

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        slots = device_slots(visible_gpus() if self.gpus is None else self.gpus, self.gpus_per_job, self.n_jobs)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("local_gpus: %d jobs, %d at once (%s); logs in %s/.submitit/", len(job_overrides), len(slots),
                 ", ".join(describe(slot) for slot in slots), sweep_dir)
        executor = self._executor()
        pending = deque(enumerate(job_overrides))
        free = deque(range(len(slots)))
        running: dict[int, tuple[int, Any]] = {}
        results: list[Optional[JobReturn]] = [None] * len(job_overrides)
        while pending or running:
            while pending and free:
                slot, (position, overrides) = free.popleft(), pending.popleft()
                idx = initial_job_idx + position
                self._pin(executor, slots[slot])
                job = executor.submit(self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                      Singleton.get_state())
                log.info("\t#%d on %s (submitit job %s): %s", idx, describe(slots[slot]), job.job_id,
                         " ".join(filter_overrides(overrides)))
                running[slot] = (position, job)
            done = [slot for slot, (_, job) in running.items() if job.done()]
            for slot in done:
                position, job = running.pop(slot)
                results[position] = self._result(job, job_overrides[position])
                log.info("\t#%d ended %s; %s is free", initial_job_idx + position, results[position].status.name,
                         describe(slots[slot]))
                free.append(slot)
            if not done:
                time.sleep(self.poll_s)
        return results  # type: ignore[return-value]

    @staticmethod
    def _result(job: Any, overrides: Sequence[str]) -> JobReturn:
        """The job's JobReturn; a job the executor lost (killed, out of memory) is a failed job, not a crash of
        the whole sweep."""
        try:
            return job.results()[0]
        except Exception as error:  # noqa: BLE001 - submitit raises UncompletedJobError, FailedJobError, ...
            failed = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            failed.return_value = RuntimeError(f"submitit job {job.job_id} did not complete: "
                                               f"{' '.join(str(error).split())[:500]} (log: {job.paths.stdout})")
            return failed
