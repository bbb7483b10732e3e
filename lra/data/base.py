"""What every loader is: its parameters, its sequence length, and how its arrays are made.

Three kinds: `ReleaseLoader` prepares arrays from the official files under `data.source` (or, with
`builtin = True`, from data shipped with a library); `GeneratedLoader` draws its samples, so its arrays depend
on the sample counts and the seed too. Each returns plain arrays; `lra.data.load_splits` caches, checks and
slices them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.store import Builder
from lra.errors import ConfigError

SPLITS = ("train", "dev", "test")


class DataFileError(ConfigError):
    """A malformed or truncated source file: names the file and the line (or record)."""

    def __init__(self, path: Path, line: int, problem: str, fix: str | None = None, unit: str = "line") -> None:
        self.path, self.line = Path(path), line
        super().__init__("data.source", str(path), f"{unit} {line}: {problem}",
                         fix or "repair or re-download this file (compare it with the release archive), "
                                "then prepare again")


def find_layout(source: Path, marker: list[str], subdirs: list[str], layout: str) -> Path:
    """The folder under `source` (itself or one of `subdirs`) that holds every path in `marker`."""
    source = Path(source)
    if not source.exists():
        raise ConfigError("data.source", str(source), "does not exist",
                          f"point data.source at the release files; expected layout: {layout}")
    for sub in subdirs:
        folder = source / sub if sub else source
        if all((folder / m).exists() for m in marker):
            return folder
    tried = ", ".join(str((source / s) if s else source) for s in subdirs)
    raise ConfigError("data.source", str(source), f"{marker[0]} not found (looked in {tried})",
                      f"point data.source at the release files; expected layout: {layout}")


class Loader:
    name: str = ""
    Params: type = object
    num_classes: int = 0
    vocab_size: int = 0  # the smallest model.vocab_size that covers every token id
    description: str = ""
    generated: bool = False
    builtin: bool = False

    def seq_len(self, p: Any) -> int:
        raise NotImplementedError

    def check(self, p: Any) -> None:
        """Value checks beyond types; raise ConfigError('data.<param>', ...)."""

    def identity(self, p: Any, sizes: dict[str, int], seed: int) -> dict[str, Any]:
        """Everything the prepared arrays depend on (hashed into their folder name)."""
        return {"loader": self.name, "params": dataclasses.asdict(p)}

    def splits(self, p: Any, arrays: dict[str, np.ndarray], manifest: dict) -> dict[str, dict[str, np.ndarray]]:
        """The full train/dev/test splits as dicts of arrays (tokens, lengths, labels[, tokens2, lengths2]
        [, full_lengths, full_lengths2]); default: the arrays named `<split>.<field>`."""
        out = {}
        for split in SPLITS:
            out[split] = {name.split(".", 1)[1]: arr for name, arr in arrays.items() if name.startswith(split + ".")}
        return out


class ReleaseLoader(Loader):
    layout: str = ""  # the expected files, for error messages

    def locate(self, source: Path, p) -> Path:
        """The folder with the release files under `source`; raise ConfigError naming the layout if absent."""
        raise NotImplementedError

    def source_files(self, folder: Path, p) -> list[Path]:
        """The files whose sizes identify the source (checked on every load when data.source is set)."""
        raise NotImplementedError

    def prepare(self, p: Any, folder: Path | None, builder: Builder) -> dict[str, Any]:
        """Write the arrays with `builder`; return manifest entries (counts, histograms, checksums, skips)."""
        raise NotImplementedError


class GeneratedLoader(Loader):
    generated = True

    def identity(self, p: Any, sizes: dict[str, int], seed: int) -> dict[str, Any]:
        return {"loader": self.name, "params": dataclasses.asdict(p), "sizes": dict(sizes), "seed": int(seed),
                "generator_version": getattr(self, "version", 1)}

    def generate(self, p: Any, sizes: dict[str, int], seed: int, builder: Builder) -> dict[str, Any]:
        raise NotImplementedError
