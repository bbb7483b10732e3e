"""The attention registry: name -> per-head map `(q, k, v, mask) -> y` (the math: docs/attention.md).

`ATTENTIONS[name](num_heads, head_dim, **options)`; `forward(q, k, v, mask)` with q, k, v of shape
(B, heads, T, head_dim) and mask a bool (B, T), True for a real token; y has the shape of v.
A mechanism's options are the keyword-only arguments of its constructor (`attention_options`); the config
validator checks their names, types and values with `check_attention`, which builds the mechanism on the meta
device (no memory, no data), so a bad `attention.*` value is refused before any data is read or made.
Dropout is not part of a mechanism: the encoder block applies `attention_dropout` to the merged heads' output.
"""

import inspect
import numbers

import torch
from torch import nn

from lra.attention.hrr_bundled import HRRBundledAttention
from lra.attention.hrr_individual import HRRIndividualAttention
from lra.attention.hrr_quadratic import HRRQuadraticAttention
from lra.attention.softmax import SoftmaxAttention
from lra.attention.tpr import TPRAttention
from lra.errors import ConfigError

ATTENTIONS: dict[str, type[nn.Module]] = {
    "softmax": SoftmaxAttention,
    "hrr-individual": HRRIndividualAttention,
    "hrr-bundled": HRRBundledAttention,
    "hrr-quadratic": HRRQuadraticAttention,
    "tpr": TPRAttention,
}


def _mechanism(name: str) -> type[nn.Module]:
    if name not in ATTENTIONS:
        raise ConfigError(key="attention.name", value=name, problem="unknown attention",
                          fix=f"use one of: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name]


def attention_options(name: str) -> dict[str, object]:
    """The options `name` accepts, with their defaults (its constructor's keyword-only arguments)."""
    params = inspect.signature(_mechanism(name).__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_type(key: str, value: object, default: object) -> None:
    """A value of the default's kind: a bool for a bool option, a number for a number option (None defaults
    take what their constructor accepts)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key=key, value=value, problem="must be a boolean", fix=f"set {key} to true or false")
    elif isinstance(default, numbers.Real) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise ConfigError(key=key, value=value, problem=f"must be a number, not {type(value).__name__}",
                          fix=f"set {key} to a number (default {default})")


def check_attention(name: str, num_heads: int, head_dim: int, **options) -> None:
    """Every check `build_attention` makes (names, types, values), without memory or data: the mechanism is
    built on the meta device and dropped."""
    accepted = attention_options(name)
    for key, value in options.items():
        if key in accepted:
            _check_type(f"attention.{key}", value, accepted[key])
    with torch.device("meta"):
        build_attention(name, num_heads, head_dim, **options)


def build_attention(name: str, num_heads: int, head_dim: int, **options) -> nn.Module:
    """Build mechanism `name`; unknown names and options raise ConfigError naming the `attention.*` key."""
    accepted = attention_options(name)
    for key, value in options.items():
        if key not in accepted:
            fix = f"use one of: {', '.join(accepted)}" if accepted else f"remove it: {name} takes no options"
            raise ConfigError(key=f"attention.{key}", value=value,
                              problem=f"not an option of attention {name!r}", fix=fix)
    return ATTENTIONS[name](num_heads, head_dim, **options)


__all__ = ["ATTENTIONS", "attention_options", "build_attention", "check_attention"]
