"""The stores a run writes to (the MLflow tracking store, the Optuna storage): made once, checked early.

MLflow and Optuna create their sqlite schema on first use, and both race when several processes open one
fresh file at once. `creation_lock(uri)` serialises that first use across processes with a file lock beside the
sqlite file. `check_tracking_store(uri)` turns an unreachable server or an unusable file into one `ConfigError`
line before any data is read; with `create=True` (a run's start, a sweep's start) it also makes a missing local
store, whole or not at all (`lra.record.local_store`), so the schema exists before anything logs to it. Only the wait
for a remote server's answer is bounded in time: a local store's creation runs to its end, however loaded the
machine (a timer that cut MLflow's migrations short used to leave the file half-made for good).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit

from lra.record import local_store
from lra.errors import ConfigError
from lra.redaction import redact

__all__ = ["check_tracking_store", "creation_lock", "redact", "sqlite_path"]

CHECK_TIMEOUT_S = 20.0  # an unreachable server is reported well within the 30 s a user waits
LOCK_TIMEOUT_S = 600.0  # a schema migration of a large store can take minutes; a stale lock file does not block
DATABASE_SERVERS = ("postgresql", "postgres", "mysql", "mssql")  # SQLAlchemy schemes MLflow stores use


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


def _open_store(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments(max_results=1)


def _ping_database(uri: str) -> None:
    """One round trip to a database server (connect, SELECT 1), nothing else."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


def _reason(error: BaseException) -> str:
    return redact(" ".join(str(error).split()))[:300] or type(error).__name__


def check_tracking_store(uri: str, key: str = "tracking.uri", timeout: float = CHECK_TIMEOUT_S,
                         create: bool = False) -> None:
    """Open the MLflow store at `uri`; raise ConfigError naming the URI and the fix when it cannot be used, or
    when a server does not answer within `timeout` seconds. A sqlite file that does not exist yet is only checked
    to be creatable, unless `create` (then it is made now): a command refused later for another reason leaves no
    store behind. A half-made sqlite store is repaired or replaced (`lra.record.local_store`)."""
    _check_sqlite_writable(uri, key)
    path = sqlite_path(uri)
    if path is not None:
        _check_local(uri, path, key, create)
    else:
        _check_remote(uri, key, timeout)


def _check_local(uri: str, path: Path, key: str, create: bool) -> None:
    """No timer here: a local store's creation or repair runs to its end (minutes on a loaded machine)."""
    found = local_store.state_of(path, uri, key)  # ConfigError for an unreadable file, before any lock or run
    if found is None and not create:
        return
    with creation_lock(uri):  # waits while another process creates the schema
        local_store.make_whole(path, uri, key)
        try:
            _open_store(uri)
        except Exception as error:  # noqa: BLE001 - reported as one line
            reason = _reason(error)
            if "malformed" in reason or "not a database" in reason:
                raise local_store.unreadable_error(path, uri, key, reason) from None
            raise ConfigError(key, redact(uri), f"the MLflow store cannot be used ({reason})",
                              "check the file, or set tracking.uri to another store") from None


def _check_remote(uri: str, key: str, timeout: float) -> None:
    """A tracking server: its answer within `timeout`. A database server: its answer to one query within
    `timeout`, then MLflow's own opening (a first migration on an empty database) without a timer."""
    if uri.startswith(("http://", "https://")):
        _limit_http_retries()
        fix = "start the server (python -m lra.ui starts one on the local store) or set tracking.uri / " \
              "MLFLOW_TRACKING_URI to a reachable store"
        finished, error = _within(timeout, lambda: _open_store(uri))
    else:
        fix = "check the URI, the database server and its credentials, or use the local default (unset " \
              "MLFLOW_TRACKING_URI and tracking.uri)"
        server = urlsplit(uri).scheme.split("+")[0] in DATABASE_SERVERS
        finished, error = _within(timeout, (lambda: _ping_database(uri)) if server else (lambda: _open_store(uri)))
        if finished and error is None and server:
            try:
                _open_store(uri)
            except Exception as caught:  # noqa: BLE001 - reported as one line
                error = caught
    if not finished:
        raise ConfigError(key, redact(uri), f"the MLflow store did not answer within {timeout:.0f} s", fix)
    if error is not None:
        raise ConfigError(key, redact(uri), f"the MLflow store cannot be used ({_reason(error)})", fix)
