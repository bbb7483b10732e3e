"""A full disk as one line: the folder, the space free and the space needed, and the fix.

A write that runs out of space (ENOSPC, or EDQUOT for a quota) raises `DiskFullError` from `on_full_disk`,
after the partial files it made are removed, so nothing is left that keeps the disk full. torch and safetensors
wrap the operating system's error in their own (`RuntimeError: ... unexpected pos`, `SafetensorError: ... os
error 28`), so a failed write also counts as a full disk when the folder then has less space free than the
write needed.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


class DiskFullError(RuntimeError):
    """A write ran out of space; nothing partial was left behind."""

    def __init__(self, folder: Path, free: int, needed: int, what: str, fix: str) -> None:
        self.folder, self.free, self.needed = folder.absolute(), free, needed
        super().__init__(f"no space left in {self.folder} to write {what} ({size(free)} free, {size(needed)} needed); "
                         f"fix: {fix}")


def size(n: int) -> str:
    """Bytes as a person reads them (binary units, as `df -h`)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def free_bytes(folder: Path) -> int:
    """The space free for this process in `folder` (or in its nearest existing parent)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free


def is_full(error: BaseException) -> bool:
    """Whether `error` (or an error it wraps) is the operating system's "no space left" or "quota exceeded"."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def on_full_disk(folder: Path, needed: Union[int, Callable[[], int]], what: str, fix: str,
                 leftovers: Iterable[Path] = ()) -> Iterator[None]:
    """Turn a full disk met inside the block into DiskFullError (`needed` in bytes, or a function giving them),
    after removing `leftovers` (the block's partial files). Any other error passes unchanged, its leftovers
    removed too."""
    leftovers = list(leftovers)
    try:
        yield
    except BaseException as error:
        for path in leftovers:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        if isinstance(error, DiskFullError) or not isinstance(error, Exception):
            raise
        need = needed() if callable(needed) else needed
        free = free_bytes(folder)
        if is_full(error) or free < need:
            raise DiskFullError(folder, free, need, what, fix) from None
        raise
