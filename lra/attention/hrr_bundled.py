"""hrr-bundled: the Hrrformer (Alam et al., ICML 2023, arXiv:2305.19534), with two corrections.

  β = Σ_j m_j (k_j ⊛ v_j);  v̂_i = q_i† ⊛ β;  a_i = s·cos(v̂_i, v_i) + b_i;
  w = softmax over tokens i;  y_i = w_i v_i
Corrections to the released code: padding is masked out of the bundle β (the bindings are masked,
never v, since cos(·, 0) is 0/0), and the cosine has an eps per vector. s = 1 reproduces the paper.
Its effective attention matrix is diagonal: it gates each token's own value.

Form: no FFT. β is the sum of the wrapped diagonals of the H×H matrix (mK)ᵀV and unbinding is one GEMM
with R[p, n] = β[(n + p) mod H]. It is O(TH²) against the FFT form's O(TH log H), but GEMMs beat the
small FFTs: fwd+bwd of the read-out at B=1, 8 heads, H=64 on 2 CPU cores took 0.74x (T=1024) and 0.57x
(T=4096) of the FFT form's time, and less memory (`scripts/bench_attention_scratch.py --extra`).
`bundle_readout_fft` stays as the cross-check in the tests.
"""

import torch
from torch import Tensor, nn

from lra.attention import hrr
from lra.attention.common import CosineScale, check_positive, full_precision, key_bias, row_normalise


def bundle_readout_fft(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """v̂_i = q_i† ⊛ Σ_j m_j (k_j ⊛ v_j) through the spectra. q, k, v: (B, h, T, H) -> (B, h, T, H)."""
    k = k.masked_fill(~mask[:, None, :, None], 0.0)  # mask the bindings, never v
    beta_f = (hrr.spectrum(k) * hrr.spectrum(v)).sum(dim=-2, keepdim=True)  # (B, h, 1, F)
    return hrr.from_spectrum(hrr.spectrum(q).conj() * beta_f, q.shape[-1])  # (B, h, T, H)


def bundle_readout_gemm(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """The same read-out with no FFT: β from the wrapped diagonals of (mK)ᵀV, v̂ = q R."""
    H = q.shape[-1]
    k = k.masked_fill(~mask[:, None, :, None], 0.0)
    outer = k.transpose(-1, -2) @ v  # (B, h, H, H): Σ_j k_j[p] v_j[r]
    p = torch.arange(H, device=q.device)
    diag = (p[None, :] - p[:, None]) % H  # [p, n] -> (n - p) mod H
    beta = outer.gather(-1, diag.expand(outer.shape)).sum(dim=-2)  # (B, h, H): β[n] = Σ_p outer[p, n-p]
    shift = (p[None, :] + p[:, None]) % H  # [p, n] -> (n + p) mod H
    return q @ beta[..., shift]  # (B, h, T, H): v̂[n] = Σ_p q[p] β[n + p]


class HRRBundledAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, *, scale_init: float = 1.0, learn_scale: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        check_positive("eps", eps)
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.scale = CosineScale(num_heads, scale_init, learn_scale)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        with full_precision(q) as dt:
            q, k, v32 = q.to(dt), k.to(dt), v.to(dt)
            v_hat = bundle_readout_gemm(q, k, v32, mask)  # (B, h, T, H)
            cos = (row_normalise(v_hat, self.eps) * row_normalise(v32, self.eps)).sum(-1)  # (B, h, T)
            scores = self.scale(dt, q.device)[..., 0] * cos + key_bias(mask, dt)[:, :, 0, :]  # (B, h, T)
            w = torch.softmax(scores, dim=-1)  # over tokens i
            y = w[..., None] * v32
        return y.to(v.dtype)
