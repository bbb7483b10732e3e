"""Atomic checkpoints, resume, and one owner per run.

Each distinct config gets its own folder (a hash of the config without the keys that do not change the
result), so the same command run again finds its checkpoint. A training process holds the folder's lock
(`.lock`, an OS file lock that dies with the process) while it trains, so a second command for the same config
is refused instead of sharing its files. Files are written to a temporary name unique to the process,
flushed to disk and renamed, so a kill never leaves a half-written checkpoint; the previous `last.pt` is kept
as `previous.pt`. A disk that fills up during a save ends it with `lra.disk.DiskFullError` (one line: the
folder, the space free and needed); the temporary file is removed and `last.pt` and `previous.pt` stay as they
were, so the same command resumes once there is room. Files are read with `weights_only=True`; one that cannot
be read, or that is not a checkpoint of this project, is moved aside (`last.pt.corrupt-<time>`) and the
previous one is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from lra.disk import on_full_disk
from lra.redaction import redact

# Keys that do not change what a run computes: where it logs, where it saves, how it reports progress. Of the
# sweep node only the Optuna trial stays: two trials with equal parameters are still two runs.
_NOT_IN_IDENTITY = ("tracking", "checkpoint", "sweeper_app")
_NOT_IN_IDENTITY_LEAVES = (("hardware", "num_threads"), ("training", "log_every"), ("training", "checkpoint_every"),
                           ("sweep", "id"), ("sweep", "parent_run_id"), ("sweep", "storage"))

log = logging.getLogger(__name__)

LAST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"
LOCK = ".lock"
OWNER = "owner.json"
# What every `last.pt` holds; a file without these is foreign (another program's, or another version's).
LAST_KEYS = frozenset({"model", "optimizer", "scheduler", "scaler", "rng", "progress", "run_id"})


class RunLockedError(RuntimeError):
    """Another live process trains the same config in the same checkpoint folder."""

    def __init__(self, folder: Path, owner: str) -> None:
        self.folder, self.owner = folder, owner
        super().__init__(f"{folder} is in use by {owner}")


def run_key(cfg: DictConfig) -> str:
    """A short stable hash of everything that determines the run's result."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_IN_IDENTITY:
        tree.pop(key, None)
    for parent, leaf in _NOT_IN_IDENTITY_LEAVES:
        tree.get(parent, {}).pop(leaf, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _room_fix(folder: Path) -> str:
    folder = folder.absolute()
    return (f"free space in {folder} (or move {folder.parent} to a disk with room and set checkpoint.dir to it), "
            "then run the same command: it resumes from the last checkpoint")


def _atomic_save(obj: Any, path: Path, keep_previous: Optional[Path] = None) -> None:
    """Write `obj` to `path` through a temporary file of this process, flushed to disk before the rename.
    Serialised in memory first, so its size is known and the file is written by Python (whose OSError names
    a full disk; torch's own writer reports it as `unexpected pos`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with on_full_disk(path.parent, len(data), path.name, _room_fix(path.parent), leftovers=[tmp]):
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    _fsync_folder(path.parent)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """The folder of one run: `last.pt` (everything needed to resume; `previous.pt` the one before) and
    `best.pt` (best-dev weights). `acquire()` makes this process the folder's only user until `release()`."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.folder = Path(root) / key
        self.loaded_from: Optional[Path] = None  # the file load_last() returned
        self._lock: Any = None
        self._made: list[Path] = []  # the folders acquire() created, deepest first

    def acquire(self) -> None:
        """Take the folder's lock, or raise RunLockedError naming the process that holds it."""
        from filelock import FileLock, Timeout

        missing = self.folder
        while not missing.exists() and missing != missing.parent:
            self._made.append(missing)
            missing = missing.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunLockedError(self.folder, self._owner()) from None
        self._lock = lock
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": redact(" ".join(sys.argv))[:2000]}
        text = json.dumps(owner)
        try:
            with on_full_disk(self.folder, len(text), OWNER, _room_fix(self.folder),
                              leftovers=[self.folder / OWNER]):
                (self.folder / OWNER).write_text(text)
        except BaseException:
            self.release(discard_unused=True)
            raise

    def _owner(self) -> str:
        try:
            owner = json.loads((self.folder / OWNER).read_text())
            return f"process {owner['pid']} on {owner['host']} (started {owner['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self, discard_unused: bool = False) -> None:
        """Give the folder up. `discard_unused`: a refused config (its error found after acquire(), against the
        data) leaves no trace: the folders acquire() created are removed while they hold nothing but the lock."""
        if self._lock is None:
            return
        (self.folder / OWNER).unlink(missing_ok=True)
        if discard_unused and self._made and [p.name for p in self.folder.iterdir()] == [LOCK]:
            (self.folder / LOCK).unlink()  # under the lock: a process that opens it later makes a new one
            for folder in self._made:
                try:
                    folder.rmdir()
                except OSError:  # another run's folder appeared in it meanwhile
                    break
        self._lock.release()
        self._lock = None

    def load_last(self) -> Optional[dict[str, Any]]:
        """The newest readable checkpoint (`last.pt`, else `previous.pt`); unreadable files are moved aside."""
        for name in (LAST, PREVIOUS):
            path = self.folder / name
            if not path.exists():
                continue
            state = self._read_checkpoint(path)
            if state is not None:
                self.loaded_from = path
                if name == PREVIOUS:
                    log.warning("resuming from the previous checkpoint %s", path)
                return state
        return None

    def _read_checkpoint(self, path: Path) -> Optional[dict[str, Any]]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not LAST_KEYS <= set(state):
                raise ValueError("not a checkpoint of lra (keys missing)")
            return state
        except Exception as error:  # noqa: BLE001 - truncated, corrupt, foreign: all are set aside alike
            self.set_aside(path, error)
            return None

    def set_aside(self, path: Path, error: BaseException) -> Path:
        """Move an unusable file out of the way (kept for inspection) and say so in one line."""
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        print(f"warning: checkpoint {path} cannot be used ({reason}); moved to {aside.name}", file=sys.stderr)
        return aside

    def save_last(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(state, self.folder / LAST, keep_previous=self.folder / PREVIOUS)

    def save_best(self, model_state: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(model_state, self.folder / BEST)

    def load_best(self) -> Optional[dict[str, torch.Tensor]]:
        path = self.folder / BEST
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def clear(self) -> None:
        """Remove the checkpoints of an earlier run (the lock and its owner stay)."""
        for name in (LAST, PREVIOUS, BEST):
            (self.folder / name).unlink(missing_ok=True)
