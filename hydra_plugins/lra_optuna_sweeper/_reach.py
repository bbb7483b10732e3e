"""Whether an Optuna storage can be opened, found within a bounded time and said in one line.

A database server that is down, or an address that drops packets, would keep the sweeper in SQLAlchemy's
connection attempts (and its traceback) for minutes; `probe_server` connects once, in a daemon thread, and
gives up after `PROBE_TIMEOUT_S`. `reason` turns any storage error (a refused connection, a damaged sqlite
file) into the one line the sweeper prints.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Optional
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 20.0  # as lra's tracking-store check: within the 30 s a user waits
_TIMEOUT_ARG = {"postgresql": "connect_timeout", "postgres": "connect_timeout", "mysql": "connect_timeout"}


def is_server_url(url: str) -> bool:
    """A database on a server (PostgreSQL, MySQL, ...), not a sqlite file or a journal file path."""
    return "://" in url and not url.startswith("sqlite")


def reason(error: BaseException) -> str:
    """The first line of a storage error, without SQLAlchemy's `[SQL: ...]` and background-link lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("[SQL:", "(Background on this error"))]
    text = " ".join(lines[:2]) or type(error).__name__
    return re.sub(r"^\(([\w.]+)\) ", r"\1: ", text)[:300]  # "(sqlite3.DatabaseError) x" -> "sqlite3.DatabaseError: x"


def probe_server(url: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the database server at `url` accepts a connection within `timeout` seconds, else why not."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    outcome: dict[str, BaseException] = {}
    scheme = urlsplit(url).scheme.split("+")[0]
    connect_args: dict[str, Any] = {}
    if scheme in _TIMEOUT_ARG:
        connect_args[_TIMEOUT_ARG[scheme]] = max(1, int(timeout) - 1)

    def connect() -> None:
        try:
            engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
        except BaseException as error:  # noqa: BLE001 - reported to the caller
            outcome["error"] = error

    thread = threading.Thread(target=connect, daemon=True, name="optuna-storage-probe")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"the database server did not answer within {timeout:.0f} s"
    error = outcome.get("error")
    if isinstance(error, ModuleNotFoundError):
        return f"its driver is not installed ({error})"
    return None if error is None else reason(error)
