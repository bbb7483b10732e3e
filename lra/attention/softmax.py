"""Softmax attention (Vaswani et al. 2017) through `scaled_dot_product_attention`.

S_ij = q_i·k_j / sqrt(H) + b_j, y_i = Σ_j softmax_j(S)_ij v_j. The bool key mask lets the platform's
fused kernels serve it (O(TH) memory where they exist). Runs in the input dtype (bf16 under autocast).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from lra.attention.common import sdpa_key_mask


class SoftmaxAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        # q, k, v: (B, h, T, H); mask: (B, T) bool, True = real token
        return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_key_mask(mask))  # (B, h, T, H)
