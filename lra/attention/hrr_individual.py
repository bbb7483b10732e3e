"""hrr-individual: each key binds its own value, each query unbinds every binding.

  S_ij = s·cos(q_i† ⊛ (k_j ⊛ v_j), v_j) + b_j;  y_i = Σ_j softmax_j(S)_ij v_j
Never the T×T×H tensor: by Parseval, with Q̂, K̂, V̂ the rfft spectra and ω_f the bin weights,
  num_ij  = (1/H) Σ_f ω_f (Re Q̂_if Re K̂_jf + Im Q̂_if Im K̂_jf) |V̂_jf|²   (one real GEMM over H features)
  |v̂_ij|² = (1/H) Σ_f ω_f |Q̂_if|² |K̂_jf|² |V̂_jf|²                         (one real GEMM over F features)
so S = (s·num / |v_j|_eps) ⊙ rsqrt(|v̂|² + eps²) + b. The per-token features are built with autograd
(`_features`, recomputed in the backward pass rather than kept); the T×T part runs in
`_ScoresSoftmaxValues`, a custom autograd function over blocks of queries that saves only its inputs and the
row log-sum-exp and recomputes the scores in the backward pass (flash-attention style): O(T·block) memory
instead of O(T²), and fewer passes over T×T data. `block_size=0` selects the plain autograd form (every T×T
intermediate kept), the reference for tests.

Block size: the default (None) takes as many query rows as keep one (B, h, rows, T) score buffer near
2^21 entries (8 MB in float32, a size the caches can still help with), at least 16 rows: per-op overhead
is amortised the same way at every batch size, and the memory stays bounded. Measured with
`python -m lra.bench attention --lengths 1024 4096 --threads 1` (B=1, h=8, H=64, T=4096, fwd+bwd,
median): rows 32 / 64 / 128 took 2.10 / 1.91 / 1.90x softmax's time and 2.9 / 2.9 / 3.1x its memory.
"""

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from lra.attention import hrr
from lra.attention.common import CosineScale, check_positive, full_precision, key_bias
from lra.errors import ConfigError


def _features(q: Tensor, k: Tensor, v: Tensor, scale: Tensor, eps: float) -> tuple[Tensor, ...]:
    """Query and key features whose products give the scores: num features (B, h, T, H), den features
    (B, h, T, F)."""
    H = q.shape[-1]
    (q_re, q_im), (k_re, k_im), (v_re, v_im) = ((X.real, X.imag) for X in map(hrr.spectrum, (q, k, v)))
    weight = hrr.parseval_weights(H, q.dtype, q.device) / H  # (F,)
    v_power = v_re.square() + v_im.square()  # |V̂_jf|², (B, h, T, F)
    v_norm = torch.sqrt(v.square().sum(-1, keepdim=True) + eps * eps)  # |v_j|_eps, (B, h, T, 1)
    k_weight = weight * v_power / v_norm  # ω_f |V̂_jf|² / (H |v_j|_eps)
    q_num = scale * _coordinates(q_re, q_im, H)  # s folded in
    k_num = _coordinates(k_re * k_weight, k_im * k_weight, H)
    q_den = q_re.square() + q_im.square()  # |Q̂|²
    k_den = weight * (k_re.square() + k_im.square()) * v_power
    return q_num, k_num, q_den, k_den


def _coordinates(re: Tensor, im: Tensor, H: int) -> Tensor:
    """The H real coordinates of an rfft spectrum (..., F): [Re_0..Re_{F-1}, Im_1..Im_{H-F}].

    Im of the DC bin (and of the Nyquist bin when H is even) is always 0 for a real signal, so dropping it
    leaves exactly H columns: the num GEMM runs over H, not 2F, features (64 rather than 66 at H=64).
    """
    F = re.shape[-1]
    return torch.cat([re, im[..., 1:1 + H - F]], dim=-1)


def scores_softmax_values_plain(q_num, k_num, q_den, k_den, bias, v, eps: float) -> Tensor:
    """y = softmax(q_num k_numᵀ ⊙ rsqrt(q_den k_denᵀ + eps²) + bias) v with autograd: O(T²) saved."""
    num = q_num @ k_num.transpose(-1, -2)  # (B, h, T, T)
    den = q_den @ k_den.transpose(-1, -2)  # (B, h, T, T): |v̂_ij|²
    scores = num * torch.rsqrt(den + eps * eps) + bias
    return torch.softmax(scores, dim=-1) @ v  # (B, h, T, H)


class _ScoresSoftmaxValues(torch.autograd.Function):
    """The same map as `scores_softmax_values_plain`, blocked over queries with recomputation.

    Saves its inputs, y and the row log-sum-exp; the backward pass recomputes each block's scores.
    `bias` is None when no key is padded (one pass less per block). In-place ops keep each block to
    one or two live (B, h, block, T) buffers.
    """

    @staticmethod
    def forward(ctx, q_num, k_num, q_den, k_den, bias, v, eps: float, block: int):
        T = q_num.shape[-2]
        y = v.new_empty(*q_num.shape[:-1], v.shape[-1])  # (B, h, T, H)
        lse = v.new_empty(*q_num.shape[:-1], 1)  # (B, h, T, 1)
        work = _workspace(v, block, T, 2)  # allocated once: no fresh page-faulted buffer per block and op
        for i in range(0, T, block):
            sl = slice(i, i + block)
            r, scores = _views(work, min(block, T - i))  # (B, h, b, T)
            _inv_norm(q_den[..., sl, :], k_den, eps, out=r)
            torch.matmul(q_num[..., sl, :], k_num.transpose(-1, -2), out=scores).mul_(r)  # s·cos
            if bias is not None:
                scores.add_(bias)
            top = scores.amax(dim=-1, keepdim=True)
            probs = scores.sub_(top).exp_()  # unnormalised
            total = probs.sum(dim=-1, keepdim=True)
            y[..., sl, :] = (probs @ v).div_(total)
            lse[..., sl, :] = top + total.log()
        ctx.save_for_backward(q_num, k_num, q_den, k_den, bias, v, y, lse)
        ctx.eps, ctx.block = eps, block
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        q_num, k_num, q_den, k_den, bias, v, y, lse = ctx.saved_tensors
        eps, block, T = ctx.eps, ctx.block, q_num.shape[-2]
        dq_num, dq_den = torch.empty_like(q_num), torch.empty_like(q_den)
        # key-side gradients accumulate transposed, (B, h, ., T): each block adds (.×b)(b×T) in place with
        # baddbmm, a plain GEMM on the contiguous score block. The (T×b)(b×.) form with a transposed block ran
        # at a fifth of the GEMM rate for 66 columns and allocated a T×. temporary per block.
        dk_num_t, dk_den_t, dv_t = (x.new_zeros(*x.shape[:-2], x.shape[-1], T) for x in (k_num, k_den, v))
        delta = (dy * y).sum(-1, keepdim=True)  # (B, h, T, 1): Σ_j P_ij dP_ij
        work = _workspace(v, block, T, 4)
        for i in range(0, T, block):
            sl = slice(i, i + block)
            r, cos, probs, d_num = _views(work, min(block, T - i))  # (B, h, b, T) each
            _inv_norm(q_den[..., sl, :], k_den, eps, out=r)  # rsqrt(|v̂_ij|² + eps²)
            torch.matmul(q_num[..., sl, :], k_num.transpose(-1, -2), out=cos).mul_(r)  # num ⊙ r = s·cos
            # P, rounded as in the forward pass: (s·cos + b) - lse
            if bias is None:
                torch.sub(cos, lse[..., sl, :], out=probs)
            else:
                torch.add(cos, bias, out=probs).sub_(lse[..., sl, :])
            probs.exp_()
            _accumulate(dv_t, dy[..., sl, :], probs)
            torch.matmul(dy[..., sl, :], v.transpose(-1, -2), out=d_num)
            d_num.sub_(delta[..., sl, :]).mul_(probs).mul_(r)  # dS ⊙ r
            d_den = cos.mul_(d_num).mul_(r)  # dS ⊙ num ⊙ r³, times -1/2 below
            dq_num[..., sl, :] = d_num @ k_num
            _accumulate(dk_num_t, q_num[..., sl, :], d_num)
            dq_den[..., sl, :] = (d_den @ k_den).mul_(-0.5)
            _accumulate(dk_den_t, q_den[..., sl, :], d_den, alpha=-0.5)
        # transposed views, not copies: the ops of `_features` and autograd's accumulation take any strides
        dk_num, dk_den, dv = (x.transpose(-1, -2) for x in (dk_num_t, dk_den_t, dv_t))
        return dq_num, dk_num, dq_den, dk_den, None, dv, None, None


def _accumulate(acc_t: Tensor, a: Tensor, scores: Tensor, alpha: float = 1.0) -> None:
    """acc_t += alpha · aᵀ scores in place: acc_t (B, h, n, T), a (B, h, b, n), scores (B, h, b, T)."""
    flat = lambda x: x.reshape(-1, *x.shape[-2:])  # noqa: E731  (B·h, ., .) views: baddbmm is 3-D only
    flat(acc_t).baddbmm_(flat(a).transpose(-1, -2), flat(scores), alpha=alpha)


def _inv_norm(q_den: Tensor, k_den: Tensor, eps: float, out: Tensor) -> Tensor:
    """rsqrt(|v̂_ij|² + eps²) for a block of queries, in place on the GEMM's output `out`."""
    return torch.matmul(q_den, k_den.transpose(-1, -2), out=out).add_(eps * eps).rsqrt_()


def _workspace(v: Tensor, block: int, T: int, n: int) -> list[Tensor]:
    """n (B, h, block, T) buffers for one call. Fresh T×T-sized tensors per block and op cost page faults
    (glibc serves blocks this large by mmap and returns them on free): reusing them took fwd+bwd at T=4096
    from 3.1x to 2.2x softmax's time (1 thread)."""
    return [v.new_empty(*v.shape[:-2], min(block, T), T) for _ in range(n)]


def _views(work: list[Tensor], rows: int) -> list[Tensor]:
    """Contiguous (B, h, rows, T) views at the start of each buffer (the last block may be shorter)."""
    B, h, _, T = work[0].shape
    return [w.view(-1)[: B * h * rows * T].view(B, h, rows, T) for w in work]


BLOCK_ENTRIES = 2**21  # score entries per block when block_size is None


def auto_block_rows(batch: int, heads: int, T: int) -> int:
    return min(T, max(16, BLOCK_ENTRIES // (batch * heads * T)))


class HRRIndividualAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, *, scale_init: float = 10.0, learn_scale: bool = True,
                 eps: float = 1e-6, block_size: int | None = None) -> None:
        super().__init__()
        check_positive("eps", eps)
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                       or block_size < 0):
            raise ConfigError(key="attention.block_size", value=block_size, problem="must be null or an int >= 0",
                              fix="null (auto), query rows per block, or 0 for the plain autograd form")
        self.num_heads, self.head_dim, self.eps, self.block_size = num_heads, head_dim, eps, block_size
        self.scale = CosineScale(num_heads, scale_init, learn_scale)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        with full_precision(q) as dt:
            q, k, v32 = q.to(dt), k.to(dt), v.to(dt)
            # the features' own autograd intermediates (spectra, powers) are recomputed in the backward pass
            # rather than kept: cheap O(T·H log H) work against about a quarter of the peak memory at T=4096
            features = checkpoint(_features, q, k, v32, self.scale(dt, q.device), self.eps,
                                  use_reentrant=False, preserve_rng_state=False)
            bias = key_bias(mask, dt)  # (B, 1, 1, T)
            if self.block_size == 0:
                y = scores_softmax_values_plain(*features, bias, v32, self.eps)
            else:
                B, h, T, _ = q.shape
                rows = self.block_size or auto_block_rows(B, h, T)
                bias = None if bool(mask.all()) else bias
                y = _ScoresSoftmaxValues.apply(*features, bias, v32, self.eps, rows)
        return y.to(v.dtype)
