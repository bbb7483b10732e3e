"""The config against the machine and the data: checks that need more than the config itself.

`check_machine(cfg)` (called by `lra.config.validate`, before any data is read or any run exists): release
data are prepared or have a source (its layout, by file names); the folders a run writes (`checkpoint.dir`, and `data.root` when its arrays are not prepared yet) can be written, probed at the
nearest existing folder with a temporary file deleted at once, so nothing is created; the data arrays fit the
available memory (and, to be generated, the free disk). `check_against_data(cfg, splits)` (called by
`lra.run.train.train` right after loading the data, before the MLflow run starts): the model's vocabulary and class
count cover the token ids and labels of the loaded samples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lra.data import arrays_estimate, check_inputs
from lra.errors import ConfigError


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def check_writable(key: str, value: str, why: str) -> None:
    """`value` (a folder, maybe not there yet) can be made and written; raise ConfigError naming `key` if not."""
    folder = Path(os.path.abspath(os.path.expanduser(str(value))))
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(key, value, f"{existing} is a file, not a folder ({why})",
                          f"point {key} at a folder, or move the file {existing} away")
    problem = None
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = "permission denied"
    else:
        try:  # the real test (root passes os.access everywhere, even on a read-only file system)
            with tempfile.TemporaryFile(dir=existing, prefix=".lra-write-probe-"):
                pass
        except OSError as error:
            problem = error.strerror or str(error)
    if problem is not None:
        where = "it" if existing == folder else f"{existing}, the nearest existing folder above it"
        raise ConfigError(key, value, f"cannot write in {where} ({problem}); {why}",
                          f"point {key} at a folder you can write, or change the permissions of {existing}")


def check_machine(cfg: Any) -> None:
    """Folders writable, data arrays within memory and disk. `cfg` is the validated config."""

    check_writable("checkpoint.dir", cfg.checkpoint.dir, "each run saves its checkpoints there")
    sizes = {split: int(cfg.dataset[split]) for split in ("train", "dev", "test")}
    prepared = check_inputs(cfg.data, sizes)  # release data: prepared, or a source to prepare them from
    if not prepared:
        check_writable("data.root", cfg.data.root, "the task's arrays are not prepared there yet and would be "
                                                   "written there")
    estimate = arrays_estimate(cfg.data, documents=2 if cfg.model.dual_encoder else 1)
    if estimate.in_memory:
        import psutil

        _check_fits(sizes, estimate.bytes_per_sample, psutil.virtual_memory().available, "of memory",
                    "available", "" if estimate.generated else ", or set data.in_memory=false to read the "
                                                               "samples from disk")
    if estimate.generated and not prepared:
        disk = shutil.disk_usage(nearest_existing(Path(cfg.data.root))).free
        _check_fits(sizes, estimate.bytes_per_sample, disk, f"of disk under {cfg.data.root}", "free",
                    ", or point data.root at a larger disk")


def _check_fits(sizes: Mapping[str, int], per_sample: int, room: int, what: str, adjective: str,
                more_fix: str) -> None:
    need = per_sample * sum(sizes.values())
    if need <= room:
        return
    split = max(sizes, key=lambda s: sizes[s])
    others = per_sample * (sum(sizes.values()) - sizes[split])
    fits = max(0, (room - others) // per_sample)
    raise ConfigError(f"dataset.{split}", sizes[split],
                      f"the data arrays need about {_human(need)} {what}, more than the {_human(room)} {adjective}",
                      f"set dataset.{split} <= {fits}{more_fix}")


def _max(arrays: list[np.ndarray]) -> int:
    return max((int(np.max(a)) for a in arrays if a is not None and np.size(a)), default=-1)


def check_against_data(cfg: Any, splits: Mapping[str, Any]) -> None:
    """The model's `vocab_size` and `num_classes` cover the loaded samples' token ids and labels."""
    tokens = [array for split in splits.values() for array in (split.tokens, split.tokens2)]
    top = _max(tokens)
    if top >= cfg.model.vocab_size:
        raise ConfigError("model.vocab_size", cfg.model.vocab_size,
                          f"the {cfg.task} data has token ids up to {top}, so the embedding needs {top + 1} rows",
                          f"set model.vocab_size={top + 1} (or more)")
    label = _max([split.labels for split in splits.values()])
    if label >= cfg.model.num_classes:
        raise ConfigError("model.num_classes", cfg.model.num_classes,
                          f"the {cfg.task} data has labels up to {label}, so the classifier needs {label + 1} "
                          "outputs", f"set model.num_classes={label + 1}")
