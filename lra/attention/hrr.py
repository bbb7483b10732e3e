"""Holographic Reduced Representations (Plate 1995) in a few torch.fft lines.

Vectors live on the last dim (size H). `F` is the real FFT; `irfft(..., n=H)` makes odd H work.
Callers run these in float32 or float64 (see `common.full_precision`): torch.fft has no bf16.
"""

import torch
from torch import Tensor


def spectrum(x: Tensor) -> Tensor:
    """F(x): the real FFT along the last dim, (..., H) -> complex (..., H // 2 + 1)."""
    return torch.fft.rfft(x, dim=-1)


def from_spectrum(xf: Tensor, n: int) -> Tensor:
    return torch.fft.irfft(xf, n=n, dim=-1)


def bind(a: Tensor, b: Tensor) -> Tensor:
    """a ⊛ b: circular convolution, (a ⊛ b)[n] = sum_p a[p] b[(n - p) mod H]."""
    return from_spectrum(spectrum(a) * spectrum(b), a.shape[-1])


def involution(a: Tensor) -> Tensor:
    """a†[n] = a[-n mod H], the approximate inverse; in the spectrum it is the complex conjugate."""
    return torch.roll(a.flip(-1), shifts=1, dims=-1)


def unbind(q: Tensor, s: Tensor) -> Tensor:
    """q† ⊛ s = irfft(conj(F(q)) F(s)): reads out of s what was bound to q."""
    return from_spectrum(spectrum(q).conj() * spectrum(s), q.shape[-1])


def parseval_weights(head_dim: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """ω_f over the rfft bins: 1 for DC (and Nyquist when H is even), 2 for bins whose mirror is dropped.

    With them, <a, b> = (1/H) Σ_f ω_f Re(A_f conj(B_f)) for real a, b and their rfft spectra A, B.
    """
    w = torch.full((head_dim // 2 + 1,), 2.0, dtype=dtype, device=device)
    w[0] = 1.0
    if head_dim % 2 == 0:
        w[-1] = 1.0
    return w
