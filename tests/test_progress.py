"""The console inside an epoch: a progress line at least every interval even off a terminal and even while one
step runs long; a status line redrawn in place on a terminal."""

from __future__ import annotations

import io
import logging
import time

from lra.run.progress import EpochProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_line_comes_every_interval_even_during_a_long_step(caplog):
    caplog.set_level(logging.INFO, logger="lra.run.progress")
    stream = io.StringIO()
    progress = EpochProgress(epoch=2, total=10, initial=4, interval=0.2, stream=stream)
    progress.update(loss=1.5, samples=32)
    time.sleep(1.1)  # one step that runs long: lines keep coming
    progress.close()
    lines = [record.getMessage() for record in caplog.records if record.name == "lra.run.progress"]
    assert len(lines) >= 3, lines
    assert lines[0].startswith("epoch 2: step 5/10 (50%), loss 1.5000, ")
    assert "samples/s" in lines[0] and " left" in lines[0]
    assert any("(this step has run" in line for line in lines[1:])
    assert stream.getvalue() == ""  # nothing drawn in place off a terminal
    count = len(caplog.records)
    time.sleep(0.5)
    assert len(caplog.records) == count  # closed: the timer is gone


def test_time_left_comes_from_the_speed_so_far():
    progress = EpochProgress(epoch=1, total=100, interval=0, stream=io.StringIO())
    progress.started -= 10.0  # ten steps took ten seconds
    for _ in range(10):
        progress.update(loss=2.0, samples=16)
    line = progress.line()
    progress.close()
    assert line.startswith("epoch 1: step 10/100 (10%), loss 2.0000, 16 samples/s, ")
    assert line.endswith(("1m30s left", "1m29s left", "1m31s left")), line


def test_on_a_terminal_the_line_is_redrawn_in_place_and_cleared_at_the_end(caplog):
    terminal = _Terminal()
    progress = EpochProgress(epoch=1, total=3, stream=terminal, interval=0.1)
    progress.update(loss=0.5, samples=8)
    time.sleep(0.3)
    progress.close()
    out = terminal.getvalue()
    assert out.startswith("\repoch 1: step 1/3 (33%), loss 0.5000") and out.endswith("\r\x1b[K")
    assert not [r for r in caplog.records if r.name == "lra.run.progress"]  # no timer lines on a terminal
