"""Data for every LRA task: `load_splits(cfg.data, cfg.dataset)` -> {"train", "dev", "test"} of `Split`s.

Release-file tasks (listops, text, retrieval, image, pathfinder) are prepared once from `data.source` into
memory-mapped arrays under `data.root` with a JSON manifest (`python -m lra.data prepare <task> --source PATH`
does it ahead of time); generated tasks (listops-generated, pathfinder-generated) and image-digits are made on
first use and cached the same way. Token id 0 is padding in every task. Each task's `data` node and model sizes
live in `conf/task/*.yaml` (read through `lra/data/tasks.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lra.data.base import SPLITS, GeneratedLoader, Loader, ReleaseLoader
from lra.data.loaders import LOADERS
from lra.data.params import COMMON_KEYS, check_sizes, parse
from lra.data.store import MANIFEST, Builder, fingerprint, open_prepared, params_key, token_dtype
from lra.data.tasks import prepare_command, task_presets
from lra.errors import ConfigError

log = logging.getLogger("lra.data")



@dataclass(frozen=True)
class Split:
    """One split: padded token ids, real lengths and labels (and the second document for retrieval)."""

    tokens: np.ndarray  # (N, T) integer array (may be a np.memmap), 0 is the pad id everywhere
    lengths: np.ndarray  # (N,) int: sample n's real tokens are tokens[n, :lengths[n]] (images: always T)
    labels: np.ndarray  # (N,) int64
    tokens2: np.ndarray | None = None  # retrieval: the second document
    lengths2: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index) -> dict:
        """Samples `index` (an int array) as int64 torch tensors: tokens, lengths, labels[, tokens2, lengths2]."""
        import torch

        index = np.asarray(index)
        out = {"tokens": self.tokens[index], "lengths": self.lengths[index], "labels": self.labels[index]}
        if self.tokens2 is not None:
            out["tokens2"] = self.tokens2[index]
            out["lengths2"] = self.lengths2[index]
        return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in out.items()}


def sequence_length(data_cfg: Mapping) -> int:
    """The fixed length T of this task's token arrays, from the config alone (no I/O)."""
    loader, _, params = parse(data_cfg, LOADERS)
    return loader.seq_len(params)


def check_data_config(data_cfg: Mapping) -> None:
    """Validate the `data` node (loader known, its parameters known, well-typed and sane); reads no data."""
    parse(data_cfg, LOADERS)


def task_info(data_cfg: Mapping) -> dict[str, int]:
    """What the model needs for this data: {seq_len, vocab_size (smallest that fits), num_classes}."""
    loader, _, params = parse(data_cfg, LOADERS)
    return {"seq_len": loader.seq_len(params), "vocab_size": loader.vocab_size, "num_classes": loader.num_classes}


def reads_source(loader: Loader) -> bool:
    """Whether `data.source` means anything to this loader (release files; not generated, not built in)."""
    return isinstance(loader, ReleaseLoader) and not loader.builtin


def source_readers(loader_name: str, data_cfg: Mapping | None = None) -> list[str]:
    """The tasks (conf/task/) that read release files of the same data as `loader_name` (listops-generated ->
    listops-release): the loaders named alike (the part before the first '-') that read a source. With
    `data_cfg`, only those whose data node shares the most parameters with it (pathfinder128-generated ->
    pathfinder128, by the resolution)."""

    family = loader_name.split("-")[0]
    readers = {name for name, other in LOADERS.items() if reads_source(other) and name.split("-")[0] == family}
    try:
        presets = task_presets()
    except Exception:  # a broken conf must not hide the error this is suggested for
        return []
    tasks = {task: spec["data"] for task, spec in presets.items() if spec["data"].get("loader") in readers}
    if data_cfg is not None and tasks:
        def shared(data: Mapping) -> int:
            return sum(1 for k, v in data.items() if k not in COMMON_KEYS and k in data_cfg and data_cfg[k] == v)

        best = max(shared(data) for data in tasks.values())
        tasks = {task: data for task, data in tasks.items() if shared(data) == best}
    return sorted(tasks)


def check_source_used(data_cfg: Mapping, key: str = "data.source", switch: str = "task={}") -> None:
    """Refuse a source the loader would silently ignore, naming the task that reads it (`switch` formats it)."""
    loader, common, _ = parse(data_cfg, LOADERS)
    if common.source is None or reads_source(loader):
        return
    what = "generated here" if isinstance(loader, GeneratedLoader) else "built in (" + loader.layout.split(": ", 1)[-1] + ")"
    readers = source_readers(loader.name, data_cfg)
    fix = f"drop {key}"
    if readers:
        fix += ", or use the task that reads release files: " + " or ".join(switch.format(t) for t in readers)
    raise ConfigError(key, common.source, f"{loader.name} data are {what}, so the source would be ignored", fix)


def prepared_manifest(data_cfg: Mapping, sizes: Mapping[str, int], *, seed: int | None = None) -> Path:
    """Where the manifest of this config's prepared arrays is (or will be); reads nothing. `seed` overrides
    `data.seed`."""
    loader, common, params = parse(data_cfg, LOADERS)
    return prepared_folder(loader, common.root, params, check_sizes(sizes),
                           common.seed if seed is None else int(seed)) / MANIFEST


@dataclass(frozen=True)
class ArraysEstimate:
    """What the arrays of a config weigh: bytes per sample and whether they are held in memory."""

    bytes_per_sample: int
    in_memory: bool  # copied into RAM at load (or, for generated data, drawn in RAM)
    generated: bool

    def total(self, sizes: Mapping[str, int]) -> int:
        return self.bytes_per_sample * sum(int(n) for n in sizes.values())


def arrays_estimate(data_cfg: Mapping, documents: int = 1) -> ArraysEstimate:
    """Bytes per sample of the token, length and label arrays (`documents` = 2 for a dual-encoder task)."""
    loader, common, params = parse(data_cfg, LOADERS)
    itemsize = token_dtype(max(loader.vocab_size - 1, 0)).itemsize
    per_sample = documents * (loader.seq_len(params) * itemsize + 4) + 8  # tokens, int32 lengths, int64 labels
    generated = isinstance(loader, GeneratedLoader)
    return ArraysEstimate(per_sample, common.in_memory or generated, generated)


def load_splits(data_cfg: Mapping, sizes: Mapping[str, int], *, seed: int | None = None) -> dict[str, Split]:
    """{"train", "dev", "test"}: the first `sizes[split]` samples of each split (generated tasks: that many drawn,
    from `seed`, default `data.seed`). Prepares or generates the arrays on first use and caches them under `data.root`; the samples
    used are copied into memory unless `data.in_memory` is false (then they are read from the memory map)."""
    loader, common, params = parse(data_cfg, LOADERS)
    sizes = check_sizes(sizes)
    manifest, arrays = _prepared(loader, common, params, sizes, common.seed if seed is None else int(seed))
    full = loader.splits(params, arrays, manifest)
    T = loader.seq_len(params)
    out = {}
    for split in SPLITS:
        fields = full[split]
        available = len(fields["labels"])
        n = sizes[split]
        if n > available:
            raise ConfigError(f"dataset.{split}", n, f"only {available} samples are available in this split",
                              f"set dataset.{split} <= {available}")
        for suffix in ("", "2"):
            longer = fields.get(f"full_lengths{suffix}")
            if longer is None or common.truncate:
                continue
            over = np.asarray(longer[:n]) > T
            if over.any():
                raise ConfigError("data.truncate", common.truncate,
                                  f"{int(over.sum())} of the first {n} {split} samples are longer than the task's "
                                  f"length {T} (the longest has {int(np.max(longer[:n]))} tokens)",
                                  "set data.truncate=true to cut them (as LRA does), or raise data.max_length "
                                  "(and model.max_seq_len)")
        take = (lambda a: np.array(a[:n])) if common.in_memory else (lambda a: a[:n])
        assert fields["tokens"].shape[1] == T, (fields["tokens"].shape, T)
        out[split] = Split(tokens=take(fields["tokens"]), lengths=take(fields["lengths"]),
                           labels=take(fields["labels"]),
                           tokens2=take(fields["tokens2"]) if "tokens2" in fields else None,
                           lengths2=take(fields["lengths2"]) if "lengths2" in fields else None)
    return out


def prepared_folder(loader: Loader, root: str | Path, params, sizes: dict[str, int], seed: int) -> Path:
    return Path(root) / loader.name / params_key(loader.identity(params, sizes, seed))


def _locate(loader: ReleaseLoader, common, params) -> Path:
    """The folder of the release files under `data.source` (by their names only), or the ConfigError that names
    the layout and the prepare command."""
    try:
        return loader.locate(Path(common.source), params)
    except ConfigError as error:

        command = prepare_command(loader.name, params, common.root)
        raise ConfigError(error.key, error.value, error.problem, f"{error.fix}; then run `{command}` (or "
                                                                 "set data.source to that folder)") from None


def _no_source(loader: ReleaseLoader, common, params, folder: Path, reason: str) -> ConfigError:
    return ConfigError("data.source", None,
                       f"no prepared {loader.name} data in {folder} ({reason}) and no source to prepare it from",
                       f"get the release files (layout: {loader.layout}); then run "
                       f"`{prepare_command(loader.name, params, common.root)}`, or set data.source=PATH")


def check_inputs(data_cfg: Mapping, sizes: Mapping[str, int]) -> bool:
    """Before any data is read: release data have their prepared arrays, or a source whose layout is there
    (file names only); else the ConfigError `load_splits` would raise. True when the prepared manifest exists."""
    loader, common, params = parse(data_cfg, LOADERS)
    folder = prepared_folder(loader, common.root, params, check_sizes(sizes), common.seed)
    prepared = (folder / MANIFEST).is_file()
    if reads_source(loader):
        if common.source is not None:
            _locate(loader, common, params)
        elif not prepared:
            raise _no_source(loader, common, params, folder, f"no {MANIFEST} there")
    return prepared


def _prepared(loader: Loader, common, params, sizes: dict[str, int], seed: int, force: bool = False):
    """(manifest, arrays): reuse the prepared folder when its manifest matches, else prepare/generate it."""
    identity = loader.identity(params, sizes, seed)
    folder = prepared_folder(loader, common.root, params, sizes, seed)
    opened = open_prepared(folder, identity)
    stale = force  # a valid folder that must be replaced
    if force and isinstance(opened, tuple):
        opened = "asked to prepare again"
    source_folder = None
    if reads_source(loader) and common.source is not None:
        source_folder = _locate(loader, common, params)
        if isinstance(opened, tuple):
            now = fingerprint(loader.source_files(source_folder, params))
            if opened[0].get("source_fingerprint") != now:
                opened = f"the files in {source_folder} changed since they were prepared"
                stale = True
    if isinstance(opened, tuple):
        return opened
    if reads_source(loader) and source_folder is None:
        raise _no_source(loader, common, params, folder, opened)
    what = "generating" if isinstance(loader, GeneratedLoader) else "preparing"
    if not stale and (folder / MANIFEST).is_file():  # there, but damaged: worth a warning (printed without config)
        log.warning("%s not used: %s; %s it again", folder, opened,
                    "generating" if what == "generating" else "preparing")
    else:
        log.info("%s %s data into %s (%s)", what, loader.name, folder, opened)
    started = time.time()
    builder = Builder(folder)
    try:
        manifest = {"identity": identity, "loader": loader.name}
        if isinstance(loader, GeneratedLoader):
            manifest.update(loader.generate(params, sizes, seed, builder))
        else:
            if source_folder is not None:
                manifest["source"] = str(source_folder.resolve())
                manifest["source_fingerprint"] = fingerprint(loader.source_files(source_folder, params))
            manifest.update(loader.prepare(params, source_folder, builder))
        builder.finish(manifest, replace=stale)
    except BaseException:
        builder.abort()
        raise
    log.info("%s %s data took %.1f s", what, loader.name, time.time() - started)
    opened = open_prepared(folder, identity)
    assert isinstance(opened, tuple), opened
    return opened


def prepare(data_cfg: Mapping, *, sizes: Mapping[str, int] | None = None, seed: int = 0,
            force: bool = False) -> tuple[Path, dict]:
    """Prepare (or generate) a task's arrays now; returns (folder, manifest). Used by `python -m lra.data`."""
    loader, common, params = parse(data_cfg, LOADERS)
    sizes = check_sizes(sizes) if sizes is not None else None
    if isinstance(loader, GeneratedLoader) and sizes is None:
        raise ConfigError("dataset", None, "a generated task needs sample counts", "give dataset sizes")
    manifest, _ = _prepared(loader, common, params, sizes or {}, seed, force=force)
    return prepared_folder(loader, common.root, params, sizes or {}, seed), manifest


def read_prepared_manifest(data_cfg: Mapping, sizes: Mapping[str, int], *,
                           seed: int | None = None) -> tuple[Path, dict] | None:
    """(folder, manifest) of the prepared arrays `load_splits` reads for this config, or None if they are not
    prepared yet; reads only the manifest (for the run's dataset input in MLflow)."""
    import json

    path = prepared_manifest(data_cfg, sizes, seed=seed)
    try:
        return path.parent, json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["Split", "LOADERS", "sequence_length", "check_data_config", "load_splits", "task_info", "prepare"]
