"""The `data` config node: the keys every loader shares, each loader's own parameters, and their checks.

Each loader declares its parameters as a frozen dataclass with defaults; `parse` turns a `data` node (a dict or
an OmegaConf DictConfig) into `(loader, DataConfig, params)` and rejects unknown or misspelt keys, wrong types and
insane values with a `ConfigError` whose key is the full path (`data.<param>`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lra.errors import ConfigError

COMMON_KEYS = ("seed", "loader", "root", "source", "truncate", "in_memory")


@dataclass(frozen=True)
class DataConfig:
    """The keys every loader shares."""

    loader: str
    root: str = "data"  # prepared and generated arrays live below this folder
    source: str | None = None  # the release files (their folder), or None
    truncate: bool = False  # cut sequences longer than the task's length instead of failing
    seed: int = 0  # draws generated tasks: the same data for every training seed unless changed
    in_memory: bool = True  # copy the samples used into RAM at load (false: read them from the memory map)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _allowed(tp: Any) -> tuple[tuple[type, ...], bool]:
    """The runtime types a field annotation admits, and whether None is admitted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        kinds = tuple(a for a in args if a is not type(None))
        return kinds, type(None) in args
    return (tp,), False


def check_value(key: str, value: Any, tp: Any) -> Any:
    """Return `value` if it has type `tp` (int accepted for float, never bool for int), else raise."""
    kinds, nullable = _allowed(tp)
    if value is None:
        if nullable:
            return None
        raise ConfigError(key, value, f"must be a {_type_name(tp)}, not null", f"set {key} to a value")
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(_type_name(k) for k in kinds) + (" or null" if nullable else "")
    raise ConfigError(key, value, f"must be {names}, not {type(value).__name__}", f"set {key} to a {names}")


def unknown_key_error(key: str, value: Any, allowed: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(key, value, f"unknown key for {where}",
                       f"{hint}remove it; known keys: {', '.join(sorted(allowed))}")


def build_params(cls: type, node: Mapping, prefix: str = "data") -> Any:
    """Build the dataclass `cls` from the keys of `node` it declares, type-checked; missing keys take defaults."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in node:
            values[field.name] = check_value(f"{prefix}.{field.name}", node[field.name], hints[field.name])
    return cls(**values)


def parse(data_cfg: Mapping, loaders: Mapping[str, Any]) -> tuple[Any, DataConfig, Any]:
    """Validate a `data` node: (the loader object, the shared keys, the loader's parameter dataclass)."""
    if not isinstance(data_cfg, Mapping):
        raise ConfigError("data", data_cfg, "must be a mapping of data options", "give a `data:` node with a loader")
    if "loader" not in data_cfg or data_cfg["loader"] is None:
        raise ConfigError("data.loader", None, "no loader named",
                          f"set data.loader to one of: {', '.join(sorted(loaders))}")
    name = data_cfg["loader"]
    if not isinstance(name, str) or name not in loaders:
        close = difflib.get_close_matches(str(name), list(loaders), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError("data.loader", name, "unknown loader",
                          f"{hint}use one of: {', '.join(sorted(loaders))}")
    loader = loaders[name]
    own = [f.name for f in dataclasses.fields(loader.Params)]
    allowed = list(COMMON_KEYS) + own
    for key in data_cfg:
        if key not in allowed:
            raise unknown_key_error(f"data.{key}", data_cfg[key], allowed, f"loader {name!r}")
    common = build_params(DataConfig, data_cfg)
    if not common.root:
        raise ConfigError("data.root", common.root, "must be a folder path", "set data.root, e.g. data")
    if common.source is not None and not common.source:
        raise ConfigError("data.source", common.source, "is an empty path", "set data.source to a folder or null")
    params = build_params(loader.Params, data_cfg)
    loader.check(params)
    return loader, common, params


def require(condition: bool, key: str, value: Any, problem: str, fix: str) -> None:
    """Raise ConfigError(key, value, problem, fix) unless `condition`."""
    if not condition:
        raise ConfigError(key, value, problem, fix)


def check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    """`dataset.{train,dev,test}`: three integers >= 1."""
    out = {}
    for split in ("train", "dev", "test"):
        key = f"dataset.{split}"
        if sizes is None or split not in sizes:
            raise ConfigError(key, None, "missing", f"set {key} to the number of samples to use")
        value = sizes[split]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(key, value, "must be an integer >= 1", f"set {key} to a positive sample count")
        out[split] = int(value)
    return out
