"""The attention registry: name -> per-head map `(q, k, v, mask) -> y` (the math: docs/attention.md).

`ATTENTIONS[name](num_heads, head_dim, **options)`; `forward(q, k, v, mask)` with q, k, v of shape
(B, heads, T, head_dim) and mask a bool (B, T), True for a real token; y has the shape of v.
A mechanism's options are the keyword-only arguments of its constructor (`attention_options`), so the
config validator can check `attention.*` keys without building anything. Dropout is not part of a
mechanism: the encoder block applies `attention_dropout` to the merged heads' output.
"""

import inspect

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


def build_attention(name: str, num_heads: int, head_dim: int, **options) -> nn.Module:
    """Build mechanism `name`; unknown names and options raise ConfigError naming the `attention.*` key."""
    accepted = attention_options(name)
    for key, value in options.items():
        if key not in accepted:
            fix = f"use one of: {', '.join(accepted)}" if accepted else f"remove it: {name} takes no options"
            raise ConfigError(key=f"attention.{key}", value=value,
                              problem=f"not an option of attention {name!r}", fix=fix)
    return ATTENTIONS[name](num_heads, head_dim, **options)


__all__ = ["ATTENTIONS", "attention_options", "build_attention"]
