"""Optuna storages from a URL, opened safely by many processes at once; the study attributes jobs read.

Two sweepers (or a sweeper and its jobs) that open one fresh storage at the same moment race to create its
tables, and the loser's trials used to end FAIL. `storage_lock(url)` serialises that first use across processes
and machines; the sweeper also holds it while it counts the study's trials and asks for the next one, so
parallel workers never start more than `n_trials` trials. The lock is a file beside a file storage (`<db>.lock`
for sqlite, the same file `lra.record.stores.creation_lock` uses, so lra and the sweeper agree), and the database's own
lock on PostgreSQL: a session advisory lock, which the server releases when the holder's connection closes, so
a killed worker never leaves one behind. Where no lock exists (another database such as MySQL, or `filelock`
not installed) a surplus trial is ended FAIL unlaunched (`_impl`). A new sqlite storage is made in a temporary
file beside it and renamed into place, so a process killed while it makes the tables never leaves it half-made.

This module needs neither lra nor filelock: without `filelock` installed the file lock is skipped (and creation
falls back to retries).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PRUNER_ATTR = "lra_pruner"  # study user attribute: {"_target_": "optuna.pruners.MedianPruner", ...} or None
RUN_ID_ATTR = "mlflow_run_id"  # trial user attribute: the MLflow run of the job that ran the trial
SQLITE_TIMEOUT_S = 60  # parallel workers share one sqlite file; wait for its lock instead of failing
LOCK_TIMEOUT_S = 600.0  # a schema migration can take a while; a stale lock file (no holder) never blocks


def lock_path(url: str) -> Optional[Path]:
    """The lock file for a storage: `<db>.lock` for `sqlite:///<db>`, `<file>.sweeper.lock` for a journal file
    (Optuna's own journal lock is `<file>.lock`), None for server databases and in-memory sqlite."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        return Path(path + ".lock") if path and path != ":memory:" else None
    if "://" not in url:
        return Path(url + ".sweeper.lock")
    return None


# one advisory lock per database (holds are milliseconds: a count and an ask); the key is a fixed 64-bit number
SERVER_LOCK_KEY = int.from_bytes(hashlib.sha256(b"lra_optuna_sweeper").digest()[:8], "big", signed=True)


def _is_postgresql(url: str) -> bool:
    return urlsplit(url).scheme.split("+")[0] in ("postgresql", "postgres")  # also postgresql+psycopg://...


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        from filelock import FileLock
    except ImportError:  # the plugin stands alone: no lock, creation retries instead
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=LOCK_TIMEOUT_S):
        yield


@contextlib.contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock, held on a connection of its own for the duration."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"SET lock_timeout = '{int(LOCK_TIMEOUT_S)}s'"))
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SERVER_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SERVER_LOCK_KEY})
                connection.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Hold the inter-process lock of the storage at `url`: its lock file, or its database's own lock (nothing
    where neither exists, see `can_lock`)."""
    path = lock_path(url)
    if path is not None:
        with _file_lock(path):
            yield
    elif _is_postgresql(url):
        with _advisory_lock(url):
            yield
    else:
        yield


def can_lock(url: str) -> bool:
    """Whether `storage_lock(url)` really serialises processes (a file storage with filelock installed, or a
    PostgreSQL database)."""
    if _is_postgresql(url):
        return True
    if lock_path(url) is None:
        return False
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True


def _create_sqlite_file(url: str, engine_kwargs: dict[str, Any]) -> None:
    """Make a missing sqlite storage whole or not at all (call under `storage_lock`): its tables are made in a
    temporary file beside it (`<db>.tmp-<pid>`) and renamed into place, so a process killed while making them
    leaves only a temporary file, which the next creator removes; never a half-made storage."""
    import optuna

    path, _, query = url[len("sqlite:///"):].partition("?")
    db = Path(path)
    if db.exists():
        return
    for leftover in db.parent.glob(f"{db.name}.tmp-*"):  # a killed creator's (no live one: the lock is held)
        leftover.unlink(missing_ok=True)
    tmp = db.with_name(f"{db.name}.tmp-{os.getpid()}")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}" + (f"?{query}" if query else ""),
                                         engine_kwargs=engine_kwargs)
    storage.engine.dispose()
    descriptor = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(tmp, db)


def make_storage(url: str) -> Any:
    """An Optuna storage from a URL: any SQLAlchemy URL (`sqlite:///...`, `postgresql://...`) is an RDB
    storage; anything else is the path of a journal file (`JournalFileBackend`, for NFS without a database)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        path = lock_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with storage_lock(url):
                _create_sqlite_file(url, engine_kwargs)
    for attempt in range(5):  # without a lock (a server database, no filelock) creators may still race
        try:
            with storage_lock(url):
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception:  # noqa: BLE001 - IntegrityError on alembic_version, or a locked sqlite file
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")
