"""Prepared data on disk: one folder of `.npy` arrays (opened memory-mapped) and a JSON manifest.

A folder is `<root>/<loader>/<key>`, the key a hash of everything that determines the arrays (loader, its
preparation parameters, the format version; for generated tasks also the sample counts and the seed). The manifest
records those parameters, the source's fingerprint and checksums, per-array shapes and dtypes, counts, label
histograms and skipped/truncated counts. Arrays are written into a temporary folder that is renamed into place
when complete, so a killed preparation never leaves a folder that looks valid. Nothing is pickled:
`np.load(..., allow_pickle=False)` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def params_key(identity: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able mapping."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def token_dtype(max_token: int) -> np.dtype:
    """The smallest integer dtype holding token ids up to `max_token` (uint8, else int16, else int32)."""
    if max_token <= 255:
        return np.dtype(np.uint8)
    if max_token <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def label_histogram(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


class Builder:
    """Writes arrays into a temporary folder; `finish` adds the manifest and moves the folder into place."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        self.tmp.mkdir()
        self.arrays: dict[str, np.ndarray] = {}
        self.started = time.time()

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A zero-filled writable memmap saved as `<name>.npy`."""
        arr = np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=np.dtype(dtype), shape=shape)
        self.arrays[name] = arr
        return arr

    def save(self, name: str, values: np.ndarray) -> None:
        arr = self.array(name, values.shape, values.dtype)
        arr[...] = values

    def finish(self, manifest: dict[str, Any], replace: bool = False) -> None:
        """Write the manifest and move the folder into place. If another process has meanwhile put a valid
        folder for the same identity there, keep theirs unless `replace` (the old one is stale)."""
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["arrays"] = {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in self.arrays.items()}
        manifest["prepared_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        manifest["prepare_seconds"] = round(time.time() - self.started, 3)
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        self.arrays.clear()
        with open(self.tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        old = None
        if self.final.exists():
            if not replace and isinstance(open_prepared(self.final, manifest["identity"]), tuple):
                shutil.rmtree(self.tmp, ignore_errors=True)  # another process finished first
                return
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            try:
                os.rename(self.final, old)
            except OSError:
                old = None
        try:
            os.rename(self.tmp, self.final)
        except OSError:  # another process put a folder there first: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # readers that still map its files keep them until they close

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def open_prepared(folder: Path, identity: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | str:
    """(manifest, arrays memory-mapped read-only) if `folder` holds complete arrays made with `identity`;
    otherwise a one-line reason why not."""
    path = folder / MANIFEST
    if not path.is_file():
        return f"no {MANIFEST} in {folder}"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        return f"unreadable {path}: {error}"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"{path} has format version {manifest.get('format_version')}, this code writes {FORMAT_VERSION}"
    if manifest.get("identity") != json.loads(json.dumps(identity)):
        return f"{path} was prepared with other parameters"
    arrays = {}
    for name, meta in manifest.get("arrays", {}).items():
        file = folder / f"{name}.npy"
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            return f"cannot read {file}: {error}"
        if list(arr.shape) != meta["shape"] or str(arr.dtype) != meta["dtype"]:
            return f"{file} has shape {arr.shape} {arr.dtype}, the manifest says {meta['shape']} {meta['dtype']}"
        arrays[name] = arr
    return manifest, arrays


def fingerprint(files: Iterable[Path]) -> dict[str, int]:
    """A cheap identity of a set of source files (count and total bytes, from stat only)."""
    count = total = 0
    for file in files:
        count += 1
        total += file.stat().st_size
    return {"files": count, "bytes": total}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class TreeHasher:
    """One sha256 over many files: each file's relative path and bytes, in the order they are added."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def add(self, relpath: str, data: bytes) -> None:
        self.digest.update(relpath.encode() + b"\0" + len(data).to_bytes(8, "little"))
        self.digest.update(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()
