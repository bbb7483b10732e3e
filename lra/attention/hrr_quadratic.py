"""hrr-quadratic: the clean-up-memory reading of an HRR bundle.

  v̂_i = q_i† ⊛ Σ_j m_j (k_j ⊛ v_j);  S_ij = s·cos(v̂_i, v_j) + b_j;  y_i = Σ_j softmax_j(S)_ij v_j
One noisy read-out per query, compared with every value. The eps-cosine is separable, so this is
softmax attention on s·v̂/|v̂|_eps (queries) and v/|v|_eps (keys) with scale 1: SDPA serves it with a
bool key mask in O(TH) memory where a fused kernel exists. Cosine scores lie in [-1, 1], so s is a
learnable per-head scale, initialised at 10 and clamped at 100 (Swin V2, arXiv:2111.09883).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from lra.attention.common import CosineScale, check_positive, full_precision, row_normalise, sdpa_key_mask
from lra.attention.hrr_bundled import bundle_readout_gemm


class HRRQuadraticAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, *, scale_init: float = 10.0, learn_scale: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        check_positive("eps", eps)
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.scale = CosineScale(num_heads, scale_init, learn_scale)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        with full_precision(q) as dt:
            q, k, v32 = q.to(dt), k.to(dt), v.to(dt)
            v_hat = bundle_readout_gemm(q, k, v32, mask)  # (B, h, T, H)
            queries = self.scale(dt, q.device) * row_normalise(v_hat, self.eps)
            keys = row_normalise(v32, self.eps)
            y = F.scaled_dot_product_attention(queries, keys, v32, attn_mask=sdpa_key_mask(mask), scale=1.0)
        return y.to(v.dtype)
