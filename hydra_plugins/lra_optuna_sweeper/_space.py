"""The search space: Hydra's override grammar (as in the Hydra Optuna plugin) -> Optuna 5 distributions.

    key=interval(a, b)              FloatDistribution(a, b)
    key=tag(log, interval(a, b))    FloatDistribution(a, b, log=True)
    key=tag(int, interval(a, b))    IntDistribution(a, b)           (`int` and `log` may be combined)
    key=range(a, b[, step])         IntDistribution / FloatDistribution(a, last, step); b is excluded as in Python
    key=choice(x, y, ...) or x,y    CategoricalDistribution([x, y, ...])   (also for config groups: attention=a,b)
    key=shuffle(range(...))         CategoricalDistribution of the range's values
    key=value                       fixed: passed to every trial unchanged

Parsing reuses Hydra's own `OverridesParser`, so the syntax and its errors are Hydra's.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

_BARE = re.compile(r"[A-Za-z_][\w\-./]*")
_RESERVED = {"null", "true", "false", "nan", "inf", "none", "yes", "no", "on", "off"}


def distribution_of(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (`override.is_sweep_override()` must be True)."""
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator())
        for choice in choices:
            if not isinstance(choice, (str, int, float, bool, type(None))):
                raise ValueError(f"hydra.sweeper.params.{key}: choice values must be str, int, float, bool or "
                                 f"null; got {choice!r}; fix: quote it as a string")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"hydra.sweeper.params.{key}: {override.input_line} is empty; fix: start < stop")
        step = value.step
        if all(isinstance(v, int) for v in (value.start, value.stop, step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(math.ceil(value.start), math.floor(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"hydra.sweeper.params.{key}: unsupported sweep {override.input_line!r}; fix: use interval, "
                     "range, choice or a comma list")


def parse_search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Split `key=value` strings into the search space and the fixed overrides (later ones win)."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution_of(override)
        elif override.is_delete() and override.value() is None:
            fixed[key] = ""  # `~key` has no value
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


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
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    # Hydra's quoted strings: a backslash escapes only a quote or the backslashes before one (or the end)
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def override_line(key: str, value: str) -> str:
    return key if key.startswith("~") and value == "" else f"{key}={value}"
