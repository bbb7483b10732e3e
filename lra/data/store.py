"""Prepared data on disk: one folder of `.npy` arrays (opened memory-mapped) and a JSON manifest.

A folder is `<root>/<loader>/<key>`, the key a hash of everything that determines the arrays (loader, its
preparation parameters, the format version; for generated tasks also the sample counts and the seed). The manifest
records those parameters, the source's fingerprint and checksums, per-array shapes, dtypes, sizes and sha256,
counts, label histograms and skipped/truncated counts; a folder whose arrays disagree with it is not used. Arrays are written into a temporary folder that is renamed into place
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
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        manifest["arrays"] = {}
        for name, arr in self.arrays.items():
            file = self.tmp / f"{name}.npy"
            manifest["arrays"][name] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                                        "bytes": file.stat().st_size, "sha256": sha256_file(file)}
        manifest["prepared_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        manifest["prepare_seconds"] = round(time.time() - self.started, 3)
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
    """(manifest, arrays memory-mapped read-only) if `folder` holds complete, intact arrays made with `identity`;
    otherwise a one-line reason why not (naming the file). Intact: each array has the manifest's shape, dtype,
    size and sha256 (manifests written before sizes and checksums were recorded skip those two), and the labels
    have the manifest's label histogram."""
    path = folder / MANIFEST
    if not path.is_file():
        return f"no {MANIFEST} in {folder}"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        return f"unreadable {path}: {error}"
    problem = _manifest_problem(manifest)
    if problem is not None:
        return f"{path} {problem}"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"{path} has format version {manifest.get('format_version')}, this code writes {FORMAT_VERSION}"
    if manifest.get("identity") != json.loads(json.dumps(identity)):
        return f"{path} was prepared with other parameters"
    arrays = {}
    for name, meta in manifest["arrays"].items():
        file = folder / f"{name}.npy"
        try:
            size = file.stat().st_size
            if "bytes" in meta and size != meta["bytes"]:
                return f"{file} has {size} bytes, the manifest says {meta['bytes']}"
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            return f"cannot read {file}: {error}"
        if list(arr.shape) != meta["shape"] or str(arr.dtype) != meta["dtype"]:
            return f"{file} has shape {arr.shape} {arr.dtype}, the manifest says {meta['shape']} {meta['dtype']}"
        if "sha256" in meta and sha256_file(file) != meta["sha256"]:
            return f"{file} does not match its checksum in the manifest (changed since it was prepared)"
        arrays[name] = arr
    problem = _labels_problem(manifest, arrays)
    if problem is not None:
        return f"{folder}: {problem}"
    return manifest, arrays


def _manifest_problem(manifest: Any) -> str | None:
    """Why a parsed manifest is not the object this code writes, or None."""
    if not isinstance(manifest, dict):
        return f"holds a JSON {type(manifest).__name__}, not the expected object"
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or not arrays:
        return "lists no arrays"
    for name, meta in arrays.items():
        if (not isinstance(meta, dict) or not isinstance(meta.get("shape"), list)
                or not all(isinstance(n, int) and n >= 0 for n in meta["shape"])
                or not isinstance(meta.get("dtype"), str)
                or not isinstance(meta.get("bytes", 0), int) or not isinstance(meta.get("sha256", ""), str)):
            return f"has a malformed entry for the array {name!r}"
        if "/" in name or "\\" in name or name.startswith("."):
            return f"names an array outside its folder: {name!r}"
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        return "has a malformed 'splits' entry"
    for split, info in splits.items():
        histogram = info.get("label_histogram")
        if histogram is not None and (not isinstance(histogram, dict)
                                      or not all(isinstance(c, int) for c in histogram.values())):
            return f"has a malformed label histogram for {split}"
    return None


def _labels_problem(manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> str | None:
    """Compare the label arrays with the manifest's label histograms: per split where each split has its own
    `<split>.labels` array, else the sum over the splits against all label arrays together."""
    histograms = {split: info["label_histogram"] for split, info in manifest.get("splits", {}).items()
                  if "label_histogram" in info}
    labels = {name.rsplit(".", 1)[0]: arr for name, arr in arrays.items() if name.endswith(".labels")}
    if not histograms or not labels:
        return None
    if set(histograms) <= set(labels):
        for split, expected in histograms.items():
            if label_histogram(labels[split]) != expected:
                return (f"the labels in {split}.labels.npy do not match the manifest's histogram "
                        f"({label_histogram(labels[split])} against {expected})")
        return None
    expected: dict[str, int] = {}
    for histogram in histograms.values():
        for label, count in histogram.items():
            expected[label] = expected.get(label, 0) + count
    found: dict[str, int] = {}
    for arr in labels.values():
        for label, count in label_histogram(arr).items():
            found[label] = found.get(label, 0) + count
    if found != expected:
        names = ", ".join(f"{name}.labels.npy" for name in sorted(labels))
        return f"the labels in {names} do not match the manifest's histograms ({found} against {expected})"
    return None


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
