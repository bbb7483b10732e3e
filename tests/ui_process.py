"""`python -m lra.ui` as a user starts it, in a subprocess: the lines it prints, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers import launch_env


class UIProcess:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "lra.ui", *args], cwd=tmp,
                                        env=launch_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 240) -> str:
        """The first printed line starting with `prefix` (fails if the process ends or time runs out first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if not self._reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"no line starting {prefix!r} from python -m lra.ui:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        """SIGTERM to `python -m lra.ui` alone (it must stop its server itself); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode
