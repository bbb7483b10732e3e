"""A local sqlite MLflow store, made whole or not at all.

MLflow makes a new sqlite store in place: some sixty alembic migrations run on the file itself, and sqlite
commits each table change at once, so a process killed half-way (or a timer that gives up on it) leaves a file at
an intermediate schema revision that no later command can use (`Detected out-of-date database schema`; `mlflow db
upgrade` then fails on the tables already made). Here the schema is built in a temporary file beside the store,
under the store's creation lock, with no time limit, and renamed into place once it is at MLflow's head revision:
other processes see no file or a whole one, and a kill leaves only a temporary file that the next creator
removes. A file found half-made (by an earlier version of lra, or by another program) is upgraded on a copy, or
else moved aside, with one warning line naming both files; a file sqlite cannot read is refused with one line
that says how to move it aside.

This uses MLflow's own schema functions (`mlflow.store.db.utils`, private but pinned with mlflow 3.17), so the
store is exactly the one MLflow itself would make.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lra.errors import ConfigError
from lra.redaction import redact

WHOLE, EMPTY, HALF_MADE, NEWER = "whole", "empty", "half-made", "newer"
SQLITE_BUSY_S = 60.0  # another process writing the store: wait for its lock rather than fail


class UnreadableStore(Exception):
    """sqlite cannot read the file (truncated, overwritten, not a database)."""


@dataclass(frozen=True)
class Found:
    """What a store file holds: WHOLE (usable as is), EMPTY (no MLflow table), HALF_MADE, or NEWER (a schema
    revision this MLflow does not know)."""

    state: str
    revision: Optional[str] = None


@functools.cache
def _revisions() -> tuple[str, frozenset[str], frozenset[str]]:
    """(MLflow's head schema revision, every revision it knows, the tables a whole store has)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    (head,) = script.get_heads()
    return head, frozenset(r.revision for r in script.walk_revisions()), frozenset(Base.metadata.tables)


def head_revision() -> str:
    return _revisions()[0]


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to an existing file (never creates one); a hot journal left by a killed writer is rolled
    back by sqlite on this first read."""
    return sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=SQLITE_BUSY_S)


def inspect(path: Path) -> Found:
    """The state of the store file at `path`; UnreadableStore if sqlite cannot read it."""
    head, known, expected = _revisions()
    try:
        connection = _connect(path)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            revisions = ([row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
                         if "alembic_version" in tables else [])
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        raise UnreadableStore(" ".join(str(error).split()) or type(error).__name__) from None
    mlflow_tables = {name for name in tables if not name.startswith(("alembic_", "sqlite_", "_alembic_tmp_"))}
    revision = revisions[0] if len(revisions) == 1 else None
    if not mlflow_tables:
        return Found(EMPTY, revision)
    if revision is not None and revision not in known:
        return Found(NEWER, revision)
    if revision == head and expected <= mlflow_tables and not any(n.startswith("_alembic_tmp_") for n in tables):
        return Found(WHOLE, revision)
    return Found(HALF_MADE, revision)


def _columns(path: Path) -> dict[str, frozenset[str]]:
    """Each table's column names: two stores with equal columns have the same schema for MLflow's purposes."""
    connection = _connect(path)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {table: frozenset(row[1] for row in connection.execute(f'PRAGMA table_info("{table}")'))
                for table in tables if not table.startswith(("alembic_", "sqlite_"))}
    finally:
        connection.close()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary(path: Path, tag: str = "") -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}{tag}")


def remove_temporaries(path: Path) -> None:
    """Remove the temporary files of creators that were killed (called under the creation lock, so no live
    process is writing one)."""
    for leftover in path.parent.glob(f"{path.name}.tmp-*"):
        leftover.unlink(missing_ok=True)


def _migrate(path: Path, fresh: bool) -> None:
    """Run MLflow's schema creation (`fresh`) or upgrade on the sqlite file at `path`, to its end."""
    from mlflow.store.db.utils import _all_tables_exist, _initialize_tables, _upgrade_db, create_sqlalchemy_engine

    engine = create_sqlalchemy_engine(f"sqlite:///{path}")
    try:
        if fresh or not _all_tables_exist(engine):
            _initialize_tables(engine)  # the initial tables, then every migration
        else:
            _upgrade_db(engine)
    finally:
        engine.dispose()


def build_fresh(path: Path) -> Path:
    """A new store at MLflow's head revision in a temporary file beside `path`; returns that file."""
    tmp = _temporary(path)
    tmp.unlink(missing_ok=True)
    _migrate(tmp, fresh=True)
    found = inspect(tmp)
    if found.state != WHOLE:
        raise RuntimeError(f"MLflow's schema creation ended at revision {found.revision}, not {head_revision()}")
    _fsync(tmp)
    return tmp


def _upgraded_copy(path: Path, reference: Path) -> tuple[Optional[Path], str]:
    """A copy of the half-made store at `path`, upgraded to the head revision with the same columns as the new
    store `reference`; (None, why not) when MLflow's upgrade cannot finish it."""
    copy = _temporary(path, "-upgrade")
    copy.unlink(missing_ok=True)
    try:
        source, target = _connect(path), sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        _migrate(copy, fresh=False)
        if inspect(copy).state != WHOLE or _columns(copy) != _columns(reference):
            raise RuntimeError("the upgraded schema differs from a new store's")
    except Exception as error:  # noqa: BLE001 - "table ... already exists" and the like: not repairable
        copy.unlink(missing_ok=True)
        reason = " ".join(str(getattr(error, "orig", None) or error).split()).split(" [SQL:")[0]
        return None, reason[:160] or type(error).__name__
    _fsync(copy)
    return copy, ""


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.half-made-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.half-made-{stamp}-{n}")
    return aside


def _keep_aside(path: Path) -> Path:
    """A second name for the file as found (a hard link, so `path` is never missing; a copy where the file
    system has no hard links)."""
    aside = _aside_name(path)
    try:
        os.link(path, aside)
    except OSError:
        shutil.copy2(path, aside)
    return aside


def publish(tmp: Path, path: Path) -> None:
    """Put the whole store `tmp` in place at `path`, atomically."""
    os.replace(tmp, path)
    _fsync(path.parent)


def make_whole(path: Path, uri: str, key: str) -> Optional[str]:
    """Create the store at `path`, or repair it if half-made; call under the creation lock. Returns the warning
    line printed for a repaired or replaced file (None otherwise); ConfigError for a file that cannot be used."""
    found = _found_or_refuse(path, uri, key) if path.exists() else None
    if found is not None and found.state == WHOLE:
        return None
    remove_temporaries(path)
    fresh = build_fresh(path)
    if found is None or found.state == EMPTY:  # nothing in it to keep
        publish(fresh, path)
        return None
    repaired, why_not = _upgraded_copy(path, fresh)
    aside = _keep_aside(path)
    where = (f"the MLflow store {path} was half-made (schema revision {found.revision}, not {head_revision()}: "
             "a migration cut short, or an older MLflow's store)")
    if repaired is not None:
        publish(repaired, path)
        fresh.unlink(missing_ok=True)
        line = f"warning: {where}; upgraded, the file as found is kept as {aside}"
    else:
        publish(fresh, path)
        line = (f"warning: {where} and MLflow's upgrade cannot finish it ({why_not}); moved to {aside}, a new "
                "store made in its place")
    print(line, file=sys.stderr)
    return line


def _found_or_refuse(path: Path, uri: str, key: str) -> Found:
    """`inspect(path)`, or ConfigError for a file sqlite cannot read or a schema newer than this MLflow's."""
    try:
        found = inspect(path)
    except UnreadableStore as error:
        raise unreadable_error(path, uri, key, str(error)) from None
    if found.state == NEWER:
        import mlflow

        raise ConfigError(key, redact(uri), f"{path} has schema revision {found.revision}, unknown to MLflow "
                          f"{mlflow.__version__} (a store made by a newer MLflow)",
                          "use it with the MLflow version that made it, or set tracking.uri to another store")
    return found


def unreadable_error(path: Path, uri: str, key: str, reason: str) -> ConfigError:
    aside = path.with_name(f"{path.name}.unreadable")
    return ConfigError(key, redact(uri), f"the file {path} is not a readable MLflow store ({reason})",
                       f"move it aside (mv {path} {aside}); the next command makes a new store")


def state_of(path: Path, uri: str, key: str) -> Optional[Found]:
    """The state of the store file (None if there is none), or ConfigError for a file that cannot be used."""
    return _found_or_refuse(path, uri, key) if path.exists() else None
