"""Shared by the tests that start a real `mlflow server`: a free loopback port, the start on a sqlite store, the
wait for /health, the stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(base: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Return once `base`/health answers 200; fail with the server's log if it exits or never answers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server did not start in {timeout} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen, how: int = signal.SIGTERM, timeout: float = 30) -> None:
    """End the server's process group (started with `start_new_session=True`): `how`, then SIGKILL after
    `timeout` seconds."""
    os.killpg(server.pid, how)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` with its store `folder/mlflow.db` and its artifacts (served) under
    `folder`, as the README starts one; returns once it answers. Its output goes to `folder/server.log`."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    server = subprocess.Popen(
        [*command, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--workers", "1",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=(folder / "server.log").open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_up(f"http://127.0.0.1:{port}", server, folder / "server.log")
    return server
