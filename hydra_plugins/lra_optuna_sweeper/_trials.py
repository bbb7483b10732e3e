"""A trial's life outside the study's own calls: how a job's return becomes its state, the heartbeat that marks
the trials a sweeper is running (so the next sweeper can tell a killed worker's trials), and SIGTERM as an
interrupt, so a killed sweep ends its trials instead of leaving them RUNNING."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import ListConfig
from optuna.trial import TrialState

HEARTBEAT_ATTR = "lra_heartbeat"      # trial user attribute: time.time() of the sweeper's last mark
FAIL_REASON_ATTR = "lra_fail_reason"  # trial user attribute: why a trial ended FAIL


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

    def remove(self, trial_ids: Sequence[int]) -> None:
        with self.lock:
            self.trial_ids.difference_update(trial_ids)

    def _beat(self, trial_ids: Sequence[int]) -> None:
        now = time.time()
        for trial_id in trial_ids:
            try:
                self.storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, now)
            except Exception:  # noqa: BLE001 - finished meanwhile, or a busy database: try again next beat
                pass

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            self._beat(ids)


def interrupt_on_sigterm() -> Any:
    """Turn SIGTERM (kill, scancel) into KeyboardInterrupt, so running trials end FAIL instead of staying
    RUNNING; returns the previous handler (None off the main thread, or when the app already handles SIGTERM:
    lra's sweep callback ends the sweep with its own `Interrupted`, which ends the trials FAIL the same way)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)
