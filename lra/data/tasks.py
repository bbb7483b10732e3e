"""The tasks of `python -m lra.data`, read from the Hydra task group `conf/task/<name>.yaml` (the only source).

Each task's preset is what the trainer sees for `task=<name>`: the `data` node of the composed config exactly as
the trainer passes it to `lra.data.load_splits` (the task's keys over the defaults of `conf/config.yaml`), the
`dataset` sizes, and the model values its data must fit (`model.{vocab_size,max_seq_len,num_classes,
pooling_mode}`). Configs are composed on first use only (the CLI's `--help` needs the names alone) and cached.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import shlex
from pathlib import Path
from typing import Any

from lra.compose import CONF_DIR, compose_config
from lra.data.base import GeneratedLoader
from lra.data.loaders import LOADERS
from lra.data.params import COMMON_KEYS
from lra.errors import ConfigError

MODEL_KEYS = ("vocab_size", "max_seq_len", "num_classes", "pooling_mode")
# Hydra's own logging groups do not touch the app config; composing them as `none` saves about a quarter of the
# time of a compose.
_QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


def conf_dir() -> Path:
    return CONF_DIR


@functools.lru_cache(maxsize=1)
def task_names() -> tuple[str, ...]:
    """The task names: the files of `conf/task/` (sorted; nothing is composed)."""
    return tuple(sorted(path.stem for path in (conf_dir() / "task").glob("*.yaml")))


def task_preset(name: str) -> dict[str, dict[str, Any]]:
    """{"data", "dataset", "model"} of `task=<name>` (a fresh copy; composed once per process)."""
    import copy

    if name not in task_names():

        raise ConfigError("task", name, f"no such task in {conf_dir() / 'task'}",
                          f"use one of: {', '.join(task_names())}")
    return copy.deepcopy(_composed(name))


def task_presets() -> dict[str, dict[str, dict[str, Any]]]:
    """{task name: task_preset(name)} for every file of `conf/task/` (composes each task on first use)."""
    return {name: task_preset(name) for name in task_names()}


@functools.lru_cache(maxsize=None)
def _composed(name: str) -> dict[str, dict[str, Any]]:
    from omegaconf import OmegaConf


    cfg = compose_config([f"task={name}", *_QUIET])
    model = cfg.get("model") or {}
    return {"data": OmegaConf.to_container(cfg.data, resolve=True),
            "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
            "model": {key: model.get(key) for key in MODEL_KEYS}}


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def prepare_command(loader: str, params: Any, root: str, source: str | None = None) -> str:
    """The `python -m lra.data` command that makes the arrays a `data` node with `loader` and `params` needs: the
    task whose data node differs least, with `--set` for the differences. A loader no task uses is reached through
    a task whose own keys it also takes (`--set loader=<loader>`)."""

    wanted = dataclasses.asdict(params)
    own = set(wanted)
    try:
        presets = task_presets()
    except Exception:  # a broken conf must not hide the error this command is suggested for
        presets = {}
    best, best_key, best_diff = None, None, None
    for task, spec in presets.items():
        data = spec["data"]
        switch = data.get("loader") != loader
        if switch and any(k not in own and k not in COMMON_KEYS for k in data):
            continue  # --set loader=... would leave keys the wanted loader rejects
        diff = {k: v for k, v in wanted.items() if data.get(k, _default(params, k)) != v}
        if switch:
            diff = {"loader": loader, **diff}
        similarity = difflib.SequenceMatcher(None, str(data.get("loader")), loader).ratio()
        key = (switch, len(diff), -similarity, task)
        if best_key is None or key < best_key:
            best, best_key, best_diff = task, key, diff
    target = LOADERS.get(loader)
    verb = "generate" if isinstance(target, GeneratedLoader) else "prepare"
    parts = ["python", "-m", "lra.data", verb, best or loader]
    if verb == "prepare" and not getattr(target, "builtin", False):
        parts += ["--source", source or "PATH"]
    if root != "data":
        parts += ["--root", root]
    for key, value in (best_diff or {}).items():
        parts += ["--set", f"{key}={_format(value)}"]
    return shlex.join(parts).replace("'PATH'", "PATH")


def _default(params: Any, key: str) -> Any:
    for field in dataclasses.fields(params):
        if field.name == key:
            return field.default
    return None
