"""The search space: Hydra's override grammar -> Optuna 5 distributions, as the Hydra Optuna plugin reads it.

    key=interval(a, b)                    FloatDistribution(a, b)
    key=tag(log, interval(a, b))          FloatDistribution(a, b, log=True)
    key=int(interval(a, b))               IntDistribution(a, b)              (Hydra's cast; also tag(log, int(...)))
    key=tag(int, interval(a, b))          IntDistribution(ceil a, floor b)   (ours, kept; `int` and `log` combine)
    key=range(a, b[, step])               IntDistribution(a, b, step): b INCLUDED, as the plugin samples it
                                          (FloatDistribution(a, b, step) if any of a, b, step is a float)
    key=choice(x, y, ...) or x,y,...      CategoricalDistribution: any values, lists and dicts too
    key=shuffle(...)                      CategoricalDistribution of the sweep's values (Hydra's range: b excluded)
    key=value, ~key                       fixed: passed to every trial unchanged

A later override of a key replaces an earlier one, so the command line wins over `hydra.sweeper.params`.
Parsing reuses Hydra's own `OverridesParser`, so the syntax and its errors are Hydra's.

Optuna's categorical values can only be None, bool, int, float or str: a list or dict choice is kept as its
override text (as the plugin does: `trial.params` shows `'[1,2]'`), and `SearchSpace.override` writes every
choice back exactly as the user wrote it.

`load_function` finds `custom_search_space`'s function by its dotted path (or the plugin's `.module.fn` form).
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import OverrideParseException
from hydra.utils import get_method
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ._errors import SweeperError

_BARE = re.compile(r"[A-Za-z_][\w\-./]*")
_RESERVED = {"null", "true", "false", "nan", "inf", "none", "yes", "no", "on", "off"}
_PRIMITIVE = (str, int, float, bool, type(None))


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> override value text ("" for `~key`)
    texts: dict[str, list[str]] = field(default_factory=dict)  # categorical key -> each choice's override text
    sources: dict[str, str] = field(default_factory=dict)  # key -> the value as written (for error lines)

    def override(self, key: str, value: Any) -> str:
        """`key=<value>` for a sampled value, with a choice's text as the user wrote it."""
        dist = self.distributions.get(key)
        if isinstance(dist, CategoricalDistribution) and key in self.texts:
            try:
                return f"{key}={self.texts[key][dist.to_internal_repr(value)]}"
            except (ValueError, IndexError):
                pass
        return f"{key}={format_value(value)}"


def _choice_text(value: Any) -> str:
    return format_value(value) if isinstance(value, _PRIMITIVE) else Transformer.str(value)


def _categorical(key: str, values: list[Any]) -> tuple[CategoricalDistribution, list[str]]:
    choices = [value if isinstance(value, _PRIMITIVE) else Transformer.str(value) for value in values]
    if not choices:
        raise SweeperError(f"hydra.sweeper.params.{key}", "", "an empty choice", "give at least one value")
    return CategoricalDistribution(choices), [_choice_text(value) for value in values]


def _source(override: Override) -> str:
    return (override.input_line or "").partition("=")[2] or str(override.value())


def _range(key: str, value: RangeSweep, line: str) -> BaseDistribution:
    start, stop, step = value.start, value.stop, value.step
    if not step:
        raise SweeperError(f"hydra.sweeper.params.{key}", line, "the step of a range must not be 0",
                           "give a positive step, e.g. range(1, 10, 2)")
    if (stop - start) * step < 0:
        raise SweeperError(f"hydra.sweeper.params.{key}", line, "the range is empty",
                           "put start below stop for a positive step")
    if stop < start:  # a descending range: the same set of values, ascending
        count = math.floor((start - stop) / -step + 1e-9)
        start, stop, step = start + count * step, start, -step
    if any(isinstance(v, float) for v in (start, stop, step)):
        return FloatDistribution(float(start), float(stop), step=float(step))
    return IntDistribution(int(start), int(stop), step=int(step))


def distribution_of(override: Override) -> tuple[BaseDistribution, Optional[list[str]]]:
    """The Optuna distribution of one sweep override, and for a categorical each choice's override text."""
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return _categorical(key, list(override.sweep_iterator()))
    if isinstance(value, RangeSweep):
        return _range(key, value, _source(override)), None
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        start, end = value.start, value.end
        if "int" in value.tags:
            return IntDistribution(math.ceil(start), math.floor(end), log=log), None
        if isinstance(start, int) and isinstance(end, int):  # int(interval(...)): Hydra casts the bounds
            return IntDistribution(start, end, log=log), None
        return FloatDistribution(float(start), float(end), log=log), None
    raise SweeperError(f"hydra.sweeper.params.{key}", _source(override), "not a search space",
                       "use interval(...), range(...), choice(...) or a comma list")


def parse_search_space(arguments: list[str]) -> SearchSpace:
    """Split `key=value` strings into the search space and the fixed overrides (later ones win)."""
    space = SearchSpace()
    parser, overrides = OverridesParser.create(), []
    for argument in arguments:
        try:
            overrides.extend(parser.parse_overrides([argument]))
        except OverrideParseException as error:
            key, _, value = argument.partition("=")
            problem = " ".join(str(error).splitlines()[1:2]) or str(error)
            raise SweeperError(key, value, f"cannot be parsed ({problem})",
                               "use Hydra's override grammar: interval(a, b), range(a, b, step), choice(x, y), "
                               "tag(log, ...), int(...)") from None
    for override in overrides:
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        space.texts.pop(key, None)
        space.sources[key] = _source(override)
        if override.is_sweep_override():
            distribution, texts = distribution_of(override)
            space.distributions[key] = distribution
            if texts is not None:
                space.texts[key] = texts
        elif override.is_delete() and override.value() is None:
            space.fixed[key] = ""  # `~key` has no value
        else:
            space.fixed[key] = override.get_value_element_as_str()
    return space


def grid_values(key: str, distribution: BaseDistribution, source: str = "interval(...)") -> list[Any]:
    """Every value of a discrete distribution, for Optuna's GridSampler (ends included, as sampled)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        count = math.floor((distribution.high - distribution.low) / distribution.step + 1e-9) + 1
        return [round(distribution.low + i * distribution.step, 12) for i in range(count)]
    raise SweeperError(f"hydra.sweeper.params.{key}", source, "the grid sampler needs a finite set of "
                       "values", "use range(a, b, step) or choice(...) for this key, or another sampler")


def format_value(value: Any) -> str:
    """`value` as an override value that Hydra parses back to the same Python value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return Transformer.str(list(value) if isinstance(value, tuple) else value)
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    # Hydra's quoted strings: a backslash escapes only a quote or the backslashes before one (or the end)
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def override_line(key: str, value: str) -> str:
    return key if key.startswith("~") and value == "" else f"{key}={value}"


def distribution_from_config(key: str, spec: Any) -> BaseDistribution:
    """The plugin's pre-Hydra-1.2 `search_space` entry: {type: int|float|categorical, low, high, step, log,
    choices} (int and float bounds both included, as Optuna's)."""
    spec = dict(spec)
    kind = str(spec.get("type", "")).split(".")[-1]
    where = f"hydra.sweeper.search_space.{key}"
    try:
        if kind == "categorical":
            return CategoricalDistribution(list(spec["choices"]))
        low, high, step, log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
        if kind == "int":
            return IntDistribution(int(low), int(high), log=log, step=1 if log or step is None else int(step))
        if kind == "float":
            return FloatDistribution(float(low), float(high), log=log,
                                     step=None if log or step is None else float(step))
    except (KeyError, TypeError, ValueError) as error:
        raise SweeperError(where, spec, f"not a distribution ({error})",
                           "give type and low/high (int, float) or choices (categorical)") from None
    raise SweeperError(where, spec.get("type"), "unknown type", "use int, float or categorical")


def load_function(path: str) -> Callable[..., Any]:
    """A function by dotted path; `.module.fn` (the plugin's relative form) is `fn` of `module.py` beside the
    app's script (the script itself when it is `module`)."""
    if not path.startswith("."):
        return get_method(path)
    module, _, name = path[1:].rpartition(".")
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file and Path(main_file).stem == module:
        return getattr(main, name)
    file = (Path(main_file).parent if main_file else Path.cwd()) / f"{module}.py"
    spec = importlib.util.spec_from_file_location(module.replace("-", "_"), file)
    if spec is None or spec.loader is None or not file.is_file():
        raise ImportError(f"no file {file}")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, name)
