"""Stop signals end training at a step boundary, never in the middle of an update.

While training, `StopSignals` records SIGINT (Ctrl-C), SIGTERM (`kill`, `scancel`, SLURM's end of job) and the
preemption signal of submitit and SLURM (`SIGUSR2`, or `$SUBMITIT_PREEMPT_SIGNAL`) instead of letting them
raise wherever the interpreter happens to be. The loop polls `requested` after each step, saves a checkpoint
at that step and then calls `StopSignals.finish`, which:

- hands the signal to the handler that was installed before training, when that is a Python function (a
  launcher's: submitit's requeues the job through its checkpointing protocol and exits; its SIGTERM handler
  only logs, and training then goes on with the checkpoint saved);
- otherwise raises `Interrupted`, a `SystemExit` with the shell's code for the signal (130 for SIGINT, 143
  for SIGTERM), so the process ends without a traceback and a sweep stops.

A second Ctrl-C while the first is pending raises `KeyboardInterrupt` at once (the way out of a hung step).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any, Callable, Optional, Union

Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


def preemption_signal() -> signal.Signals:
    """The signal submitit and SLURM send before a time limit or a preemption (submitit's rule)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name if name.startswith("SIG") else "SIG" + name, signal.SIGUSR2)


def exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by `signum`: 128 + the signal number."""
    return 128 + int(signum)


def interrupt_signal(error: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: SIGINT, or the one a handler named (`KeyboardInterrupt("signal
    15")`, as the sweepers raise it for SIGTERM)."""
    words = str(error).split()
    if len(words) == 2 and words[0] == "signal" and words[1].isdigit():
        return int(words[1])
    return int(signal.SIGINT)


class Interrupted(SystemExit):
    """Training stopped on a signal after saving its checkpoint; exits with 128 + the signal number."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = int(signum), step
        super().__init__(exit_code(signum))

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """Context manager: record stop signals while training (see the module doc). Does nothing off the main
    thread, where Python cannot install signal handlers."""

    def __init__(self, signums: Optional[tuple[int, ...]] = None) -> None:
        self.signums = signums or (signal.SIGINT, signal.SIGTERM, preemption_signal())
        self.requested: Optional[int] = None
        self._previous: dict[int, Handler] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt("second Ctrl-C")
        self.requested = signum

    def launcher_handles(self, signum: int) -> bool:
        """Whether a launcher installed its own Python handler for `signum` before training."""
        handler = self._previous.get(signum)
        return (callable(handler) and handler is not signal.default_int_handler
                and not getattr(handler, "lra_startup", False))  # launch.py's start-up line is not a launcher

    def finish(self, step: int) -> None:
        """After the checkpoint of `step` is saved: pass the pending signal on (see the module doc)."""
        signum, self.requested = self.requested, None
        if signum is None:
            return
        if self.launcher_handles(signum):
            handler = self._previous[signum]
            handler(signum, None)  # submitit: requeue and exit; or log and return, and training goes on
            return
        raise Interrupted(signum, step)
