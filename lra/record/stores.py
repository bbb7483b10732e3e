"""The stores a run writes to (the MLflow tracking store, the Optuna storage): made once, checked early.

MLflow and Optuna create their sqlite schema on first use, and both race when several processes open one
fresh file at once (MLflow's alembic migration leaves `_alembic_tmp_*` tables behind and the file unusable).
`creation_lock(uri)` serialises that first use across processes with a file lock beside the sqlite file;
`check_tracking_store(uri)` turns an unreachable server or an unwritable file into one `ConfigError` line within
a bounded time, before any data is read; with `create=True` (a run's start, a sweep's start) it also opens the
store under that lock, so the schema exists before anything logs to it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from lra.errors import ConfigError

CHECK_TIMEOUT_S = 20.0  # an unreachable store is reported well within the 30 s a user waits
LOCK_TIMEOUT_S = 600.0  # a schema migration of a large store can take minutes; a stale lock file does not block


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a `sqlite:///relative` or `sqlite:////absolute` URI (None for other stores and in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Hold an inter-process lock for the sqlite file of `uri` (`<file>.lock`); nothing for other stores."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        yield


def redact(text: str) -> str:
    """`text` with the passwords of URLs (`scheme://user:password@host`) replaced by ***."""
    return re.sub(r"://([^:/@\s]+):[^@\s]*@", r"://\1:***@", text)


def _within(seconds: float, work: Callable[[], Any]) -> tuple[bool, Optional[BaseException]]:
    """Run `work` in a daemon thread; (finished in time, the exception it raised)."""
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - reported to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True, name="store-check")
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), outcome.get("error")


def _check_sqlite_writable(uri: str, key: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        return
    folder = path.parent if path.parent.exists() else next(p for p in path.parents if p.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(key, redact(uri), f"the folder {folder} cannot be written (sqlite needs it for the "
                          "store and its journal)", "point the store at a writable folder")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(key, redact(uri), f"the file {path} cannot be read and written",
                          f"fix its permissions (chmod u+rw {path}) or use another store")


def _limit_http_retries() -> None:
    """MLflow retries an HTTP call for minutes by default; a run should notice an outage in seconds."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def check_tracking_store(uri: str, key: str = "tracking.uri", timeout: float = CHECK_TIMEOUT_S,
                         create: bool = False) -> None:
    """Open the MLflow store at `uri`; raise ConfigError naming the URI and the fix when it cannot be reached
    or written within `timeout` seconds. A sqlite file that does not exist yet is only checked to be creatable,
    unless `create` (then its schema is made now, under the creation lock): a command refused later for
    another reason leaves no store behind."""
    _check_sqlite_writable(uri, key)
    path = sqlite_path(uri)
    if path is not None and not path.exists() and not create:
        return
    if uri.startswith(("http://", "https://")):
        _limit_http_retries()

    def open_store() -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)

    if uri.startswith(("http://", "https://")):
        fix = "start the server (python -m lra.ui starts one on the local store) or set tracking.uri / " \
              "MLFLOW_TRACKING_URI to a reachable store"
    else:
        fix = "check the URI, the database server and its credentials, or use the local default (unset " \
              "MLFLOW_TRACKING_URI and tracking.uri)"
    with creation_lock(uri):  # waits while another process creates the schema (minutes on a busy machine)
        finished, error = _within(timeout, open_store)
    if not finished:
        raise ConfigError(key, redact(uri), f"the MLflow store did not answer within {timeout:.0f} s", fix)
    if error is not None:
        reason = redact(" ".join(str(error).split()))[:300] or type(error).__name__
        raise ConfigError(key, redact(uri), f"the MLflow store cannot be used ({reason})", fix)
