"""Analytic FLOP counts of each attention mechanism's fwd+bwd, for its achieved share of the GEMM rate.

Counted: the matrix products that define each mechanism, 2 FLOPs per multiply-add, for B sequences of T tokens,
h heads of size H (F = H // 2 + 1 rfft bins). The forward's products are counted once and the backward's as
twice the forward (a GEMM's two input gradients), so fwd+bwd = 3 x forward, the convention of the
FlashAttention papers. Not counted: element-wise work, softmax, norms, FFTs (O(T·H·log H)) and the recomputation
that memory-saving backward passes do (flash kernels, hrr-individual's blocks). The count is a yardstick for
"how close to the machine's GEMM rate does this run", not a measure of the work the kernels did.

| mechanism | forward FLOPs per head | products |
|---|---|---|
| softmax | 4·T²·H | Q Kᵀ and P V |
| hrr-individual | 2·T²·(2H + F) | scores' numerator over H features, |v̂|² over F features, P V |
| hrr-quadratic | 4·T²·H + 4·T·H² | the bundle read-out ((mK)ᵀV, q R), then softmax attention |
| hrr-bundled | 4·T·H² | the bundle read-out ((mK)ᵀV, q R) |
| tpr | 4·T·H² | φ(K)ᵀ V and φ(Q) M |
"""

from __future__ import annotations

from typing import Callable

FORWARD: dict[str, Callable[[int, int], float]] = {  # (T, H) -> forward FLOPs of one head of one sequence
    "softmax": lambda T, H: 4 * T * T * H,
    "hrr-individual": lambda T, H: 2 * T * T * (2 * H + H // 2 + 1),
    "hrr-quadratic": lambda T, H: 4 * T * T * H + 4 * T * H * H,
    "hrr-bundled": lambda T, H: 4 * T * H * H,
    "tpr": lambda T, H: 4 * T * H * H,
}


def attention_flops(name: str, batch: int, heads: int, length: int, head_dim: int) -> float | None:
    """fwd+bwd FLOPs of mechanism `name` (a registry name; options do not change the count), None if unknown."""
    forward = FORWARD.get(name)
    return None if forward is None else 3.0 * batch * heads * forward(length, head_dim)
