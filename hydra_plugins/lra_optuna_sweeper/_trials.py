"""A trial's life outside the study's own calls: how a job's return becomes its state, the heartbeat that marks
the trials a sweeper is running (so the next sweeper can tell a killed worker's trials), and SIGTERM as an
interrupt, so a stopped sweep releases its trials instead of leaving them to look alive.

A RUNNING trial whose sweeper is gone is *stale*: released (its sweeper was stopped and said so: heartbeat 0),
marked last by a process of this machine that no longer exists, or without a heartbeat for `grace_period`
seconds (a worker on another machine). A stale trial is taken over by the next sweeper of the study and run
again with its number and parameters, so its job resumes from that config's checkpoint into its MLflow run.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import ListConfig
from optuna.trial import TrialState

HEARTBEAT_ATTR = "lra_heartbeat"      # trial user attribute: time.time() of the sweeper's last mark (0: released)
WORKER_ATTR = "lra_worker"            # trial user attribute: "<host>:<pid>" of the sweeper running it
RESUMES_ATTR = "lra_resumes"          # trial user attribute: how often a killed worker's trial was taken over
FAIL_REASON_ATTR = "lra_fail_reason"  # trial user attribute: why a trial ended FAIL
RELEASED = 0.0                        # the heartbeat of a trial whose sweeper was stopped (SIGTERM, Ctrl-C)


def worker_id() -> str:
    """This sweeper process, as `<host>:<pid>`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: Any) -> bool:
    """Whether `worker` (`<host>:<pid>`) is a process of this machine that no longer runs. A worker on another
    machine is never known gone: its trial goes stale when its heartbeats stop."""
    host, _, pid = str(worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's process
        return False
    return False


def last_heartbeat(trial: Any, now: float) -> float:
    """The time of a trial's last heartbeat (its start if it has none yet)."""
    start = trial.datetime_start.timestamp() if trial.datetime_start else now
    return float(trial.user_attrs.get(HEARTBEAT_ATTR, start))


def is_stale(trial: Any, now: float, grace_period: float) -> bool:
    """Whether a RUNNING trial's sweeper is gone (see the module doc)."""
    return now - last_heartbeat(trial, now) > grace_period or worker_gone(trial.user_attrs.get(WORKER_ATTR))


def is_released(trial: Any) -> bool:
    return trial.user_attrs.get(HEARTBEAT_ATTR) == RELEASED


def outcome(ret: JobReturn, n_objectives: int = 1) -> tuple[TrialState, Optional[list[float]], Optional[str]]:
    """How a job ended, as the trial state, its values and (for FAIL) the reason."""
    if ret.status == JobStatus.FAILED:
        error = ret._return_value
        if isinstance(error, optuna.TrialPruned) or type(error).__name__ == "TrialPruned":
            return TrialState.PRUNED, None, None
        return TrialState.FAIL, None, f"{type(error).__name__}: {error}"[:2000]
    if ret.status != JobStatus.COMPLETED:
        return TrialState.FAIL, None, f"job status {ret.status}"
    value = ret.return_value
    try:
        if n_objectives == 1:
            values = [float(value)]
        else:
            if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, ListConfig)):
                raise TypeError
            values = [float(v) for v in value]
    except (TypeError, ValueError):
        wanted = "a number" if n_objectives == 1 else f"a list or tuple of {n_objectives} numbers"
        return TrialState.FAIL, None, f"the job returned {value!r}, not {wanted}"
    if len(values) != n_objectives:
        return TrialState.FAIL, None, f"the job returned {len(values)} values for {n_objectives} objectives"
    if not all(math.isfinite(v) for v in values):
        return TrialState.FAIL, None, f"the job returned {value}"
    return TrialState.COMPLETE, values, None


class Heartbeat:
    """A daemon thread that marks the trials this sweeper is running, every `interval` seconds."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.worker = worker_id()
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lra-optuna-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def add(self, trial_ids: Sequence[int]) -> None:
        with self.lock:
            self.trial_ids.update(trial_ids)
        self._beat(trial_ids)
        for trial_id in trial_ids:
            self._set(trial_id, WORKER_ATTR, self.worker)

    def remove(self, trial_ids: Sequence[int]) -> None:
        with self.lock:
            self.trial_ids.difference_update(trial_ids)

    def release(self, trial_ids: Sequence[int]) -> None:
        """Stop marking these trials and mark them released: the next sweeper takes them over at once. Only as
        this sweeper stops: the thread is stopped first, so that no late beat overwrites the mark."""
        self.remove(trial_ids)
        self.stop()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)
        for trial_id in trial_ids:
            self._set(trial_id, HEARTBEAT_ATTR, RELEASED)

    def _beat(self, trial_ids: Sequence[int]) -> None:
        now = time.time()
        for trial_id in trial_ids:
            self._set(trial_id, HEARTBEAT_ATTR, now)

    def _set(self, trial_id: int, key: str, value: Any) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, key, value)
        except Exception:  # noqa: BLE001 - finished meanwhile, or a busy database: try again next beat
            pass

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            self._beat(ids)


def interrupt_on_sigterm() -> Any:
    """Turn SIGTERM (kill, scancel) into KeyboardInterrupt, so running trials are released instead of looking
    alive until their grace period ends; returns the previous handler (None off the main thread, or when the app already handles SIGTERM:
    lra's sweep callback ends the sweep with its own `Interrupted`, which releases the trials the same way)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)
