"""The training loop's progress inside an epoch: step, loss, samples/s and time left, on a terminal or not.

On a terminal a status line is redrawn in place at most once a second. Elsewhere (a log file, a SLURM job, a
pipe) a line is logged every `interval` seconds (30 by default) by a timer thread, so one comes even while a
single slow step runs: a quiet console then means a stuck run, not a busy one. The loop calls `update` once per
optimiser step and `close` at the end of the epoch.

    progress = EpochProgress(epoch=1, total=313, initial=0)
    for ...:
        progress.update(loss=stats.loss, samples=stats.count)
    progress.close()
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Optional, TextIO

log = logging.getLogger("lra.run.progress")

INTERVAL_S = 30.0
TTY_REFRESH_S = 1.0


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class EpochProgress:
    """Progress of one epoch of `total` optimiser steps, `initial` of them already done (a resumed run)."""

    def __init__(self, *, epoch: int, total: int, initial: int = 0, interval: float = INTERVAL_S,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None) -> None:
        self.epoch, self.total, self.initial, self.done = epoch, total, initial, initial
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.loss = math.nan
        self.samples = 0
        self.started = self.last_step = time.monotonic()
        self._lock = threading.Lock()
        self._drawn = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if not self.tty and interval > 0:
            self._thread = threading.Thread(target=self._tick, name="lra-progress", daemon=True)
            self._thread.start()

    def update(self, *, loss: float, samples: int, steps: int = 1) -> None:
        """One (or `steps`) optimiser step(s) done, with this loss over `samples` samples."""
        with self._lock:
            self.done += steps
            self.samples += samples
            self.loss = loss
            self.last_step = time.monotonic()
        if self.tty and self.last_step - self._drawn >= TTY_REFRESH_S:
            self._drawn = self.last_step
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()

    def line(self) -> str:
        """`epoch 2: step 120/313 (38%), loss 1.9321, 412 samples/s, 2m15s left`"""
        with self._lock:
            now = time.monotonic()
            elapsed = now - self.started
            steps = self.done - self.initial
            speed = self.samples / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.done) * elapsed / steps if steps else math.inf
            text = (f"epoch {self.epoch}: step {self.done}/{self.total} ({100 * self.done / max(1, self.total):.0f}%)"
                    f", loss {self.loss:.4f}, {speed:.0f} samples/s, {_duration(left)} left")
            if self.interval > 0 and now - self.last_step >= self.interval:
                text += f" (this step has run {_duration(now - self.last_step)})"
            return text

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            log.info("%s", self.line())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
