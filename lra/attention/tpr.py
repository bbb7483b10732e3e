"""Tensor product representation binding = linear attention.

Smolensky (1990); Katharopoulos et al. (2020) arXiv:2006.16236; Schlag et al. (2021) arXiv:2102.11174.
Binding keeps the full outer product k vᵀ, so unbinding with q is exact: (k vᵀ)ᵀ q = (q·k) v.
  M = Σ_j m_j φ(k_j) v_jᵀ (H×H),  z = Σ_j m_j φ(k_j),  y_i = Mᵀ φ(q_i) / (φ(q_i)·z + eps),  φ = elu + 1.
M is one φ(K)ᵀV product per head, accumulated in float32 (autocast off).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from lra.attention.common import check_positive, full_precision


def feature_map(x: Tensor) -> Tensor:
    """φ = elu + 1: positive, so the normaliser φ(q)·z is positive."""
    return F.elu(x) + 1.0


class TPRAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        check_positive("eps", eps)
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        with full_precision(q) as dt:
            phi_q = feature_map(q.to(dt))  # (B, h, T, H)
            phi_k = feature_map(k.to(dt)).masked_fill(~mask[:, None, :, None], 0.0)  # padding never bound
            memory = phi_k.transpose(-1, -2) @ v.to(dt)  # (B, h, H, H): Σ_j φ(k_j) v_jᵀ
            z = phi_k.sum(dim=-2, keepdim=True)  # (B, h, 1, H)
            num = phi_q @ memory  # (B, h, T, H)
            den = (phi_q * z).sum(dim=-1, keepdim=True) + self.eps  # (B, h, T, 1)
            y = num / den
        return y.to(v.dtype)
