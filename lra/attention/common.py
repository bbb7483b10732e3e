"""Helpers shared by the mechanisms: precision regions, key masks, the learnable cosine scale."""

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lra.errors import ConfigError


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the FFT and cosine paths: at least float32 (bf16/fp16 go up, float64 stays)."""
    return torch.promote_types(dtype, torch.float32)


@contextlib.contextmanager
def full_precision(x: Tensor) -> Iterator[torch.dtype]:
    """Autocast off for the block; yields the dtype to compute in (callers `.to()` it and cast back).

    torch.fft has no bf16 kernel and fp16 FFTs need power-of-two sizes, and a cosine in bf16 loses
    the small differences the HRR read-out depends on.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield compute_dtype(x.dtype)


def large_negative(dtype: torch.dtype) -> float:
    """A finite, dtype-aware stand-in for -inf (a literal -1e9 overflows in fp16)."""
    return torch.finfo(dtype).min


def attendable(mask: Tensor) -> Tensor:
    """The keys a query may attend to: the real tokens, or every token of a sequence with none.

    No softmax row then sees only large negatives (some SDPA backends return NaN for an all-False row,
    and a row of equal huge negatives loses its scores to rounding). The outputs of a sequence with no
    real token are padding and never read.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


def key_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive bias (B, 1, 1, T): 0 at attendable keys, a large negative number at padding."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    neg = torch.full((), large_negative(dtype), dtype=dtype, device=mask.device)
    return torch.where(attendable(mask), zero, neg)[:, None, None, :]


def sdpa_key_mask(mask: Tensor) -> Tensor:
    """Bool key mask (B, 1, 1, T) for scaled_dot_product_attention."""
    return attendable(mask)[:, None, None, :]


def row_normalise(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(|x|^2 + eps^2) along the last dim: the factor of the separable eps-cosine."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps * eps)


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key=f"attention.{name}", value=value, problem="must be > 0",
                          fix=f"set attention.{name} to a positive number")


class CosineScale(nn.Module):
    """Per-head scale s of a cosine score, log-parameterised and clamped at `max_scale`.

    Swin Transformer V2 (Liu et al. 2022, arXiv:2111.09883) scaled cosine attention: s = exp(min(t, log 100)).
    With `learn_scale=False` s is the constant `scale_init` exactly (no exp/log round trip, no clamp).
    """

    max_scale = 100.0

    def __init__(self, num_heads: int, scale_init: float, learn_scale: bool) -> None:
        super().__init__()
        check_positive("scale_init", scale_init)
        self.learn_scale = learn_scale
        self.num_heads, self.scale_init, self.learn_scale = num_heads, float(scale_init), learn_scale
        if learn_scale:
            self.log_scale = nn.Parameter(torch.full((num_heads,), math.log(scale_init)))

    def forward(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The scale as (heads, 1, 1) in `dtype`, ready to broadcast over (B, heads, T, .)."""
        if not self.learn_scale:  # a Python float: exact in float64, immune to model.to(dtype)
            return torch.full((self.num_heads, 1, 1), self.scale_init, dtype=dtype, device=device)
        return self.log_scale.clamp(max=math.log(self.max_scale)).exp().to(dtype)[:, None, None]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, scale_init={self.scale_init}, learn_scale={self.learn_scale}"
