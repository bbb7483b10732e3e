"""The LRA classifier: embeddings, the shared pre-LN encoder block, pooling, heads, the dual encoder.

Only the per-head map `(q, k, v, mask) -> y` differs between mechanisms (`lra.attention`); everything
else is this file. Faithful to Nystromformer's LRA code (the seed's origin) where nothing says otherwise: the
head's activation is ReLU (`model.head_activation`; gelu for the Hrrformer's head) and token embeddings start at
N(0, 0.02) like the learned positions (`model.embedding_init_std`; null keeps PyTorch's N(0, 1)).

Two deliberate choices, kept on purpose: MEAN pooling is masked (padding never enters the mean), and
`attention_dropout` acts on the mechanism's output y (merged heads, before the output projection), the same for
all five mechanisms since tpr and hrr-bundled have no attention matrix to drop; `dropout_prob` acts on the
embeddings, on each residual branch and inside the MLP.
No autocast here: the training step wraps the forward; FFT and cosine paths force float32 themselves.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lra.attention import build_attention
from lra.errors import ConfigError

POOLING_MODES = ("MEAN", "CLS")
# The classifier head's activation: LRA (lra_benchmarks/models/layers/common_layers.py) and Nystromformer
# (LRA/code/model_wrapper.py, SCHead) use ReLU; the Hrrformer's scripts use GELU.
HEAD_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Fixed sin/cos position table (Vaswani et al. 2017), (length, dim); odd dims work."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class EncoderBlock(nn.Module):
    """Pre-LN block: x + drop(out(attn_drop(attention(q, k, v)))), then x + MLP(LN(x))."""

    def __init__(self, *, embedding_dim: int, transformer_hidden_dim: int, head_dim: int, num_head: int,
                 dropout_prob: float, attention_dropout: float, attention: str, attention_options: dict,
                 attention_grad_checkpointing: bool) -> None:
        super().__init__()
        self.num_head, self.head_dim = num_head, head_dim
        self.grad_checkpointing = attention_grad_checkpointing
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.qkv = nn.Linear(embedding_dim, 3 * num_head * head_dim)
        self.attention = build_attention(attention, num_head, head_dim, **attention_options)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.out = nn.Linear(num_head * head_dim, embedding_dim)
        self.dropout = nn.Dropout(dropout_prob)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, transformer_hidden_dim), nn.GELU(), nn.Dropout(dropout_prob),
            nn.Linear(transformer_hidden_dim, embedding_dim), nn.Dropout(dropout_prob))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.num_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, H)
        if self.grad_checkpointing and torch.is_grad_enabled():
            y = checkpoint(self.attention, q, k, v, mask, use_reentrant=False)
        else:
            y = self.attention(q, k, v, mask)  # (B, h, T, H)
        y = self.attention_dropout(y.transpose(1, 2).reshape(B, T, self.num_head * self.head_dim))
        x = x + self.dropout(self.out(y))
        return x + self.mlp(self.norm2(x))


class LRAClassifier(nn.Module):
    """Transformer encoder classifier for the LRA tasks; `dual_encoder` for retrieval (two documents)."""

    def __init__(self, *, vocab_size: int, max_seq_len: int, embedding_dim: int, transformer_hidden_dim: int,
                 head_dim: int, num_head: int, num_layers: int, dropout_prob: float, attention_dropout: float,
                 pooling_mode: str, num_classes: int, learn_pos_emb: bool, tied_weights: bool,
                 attention: str, attention_options: dict | None = None,
                 attention_grad_checkpointing: bool = False, dual_encoder: bool = False,
                 head_activation: str = "relu", embedding_init_std: float | None = 0.02) -> None:
        super().__init__()
        if pooling_mode not in POOLING_MODES:
            raise ConfigError(key="model.pooling_mode", value=pooling_mode, problem="unknown pooling mode",
                              fix=f"use one of: {', '.join(POOLING_MODES)}")
        if head_activation not in HEAD_ACTIVATIONS:
            raise ConfigError(key="model.head_activation", value=head_activation, problem="unknown activation",
                              fix=f"use one of: {', '.join(HEAD_ACTIVATIONS)}")
        self.max_seq_len, self.pooling_mode, self.dual_encoder = max_seq_len, pooling_mode, dual_encoder
        num_positions = max_seq_len + (pooling_mode == "CLS")  # the CLS slot comes on top of max_seq_len
        self.token_emb = nn.Embedding(vocab_size, embedding_dim)
        if embedding_init_std is not None:  # Nystromformer: normal_(word_embeddings.weight, std=0.02)
            nn.init.normal_(self.token_emb.weight, std=embedding_init_std)
        if learn_pos_emb:
            self.pos_emb = nn.Parameter(torch.randn(num_positions, embedding_dim) * 0.02)
        else:
            self.register_buffer("pos_emb", sinusoidal_positions(num_positions, embedding_dim), persistent=False)
        self.cls_token = nn.Parameter(torch.randn(embedding_dim) * 0.02) if pooling_mode == "CLS" else None
        self.emb_dropout = nn.Dropout(dropout_prob)

        def block() -> EncoderBlock:
            return EncoderBlock(
                embedding_dim=embedding_dim, transformer_hidden_dim=transformer_hidden_dim, head_dim=head_dim,
                num_head=num_head, dropout_prob=dropout_prob, attention_dropout=attention_dropout,
                attention=attention, attention_options=attention_options or {},
                attention_grad_checkpointing=attention_grad_checkpointing)

        shared = block() if tied_weights else None
        # tied: the one block object n times (parameters() counts it once)
        self.blocks = nn.ModuleList([shared if tied_weights else block() for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(embedding_dim)
        features = 4 * embedding_dim if dual_encoder else embedding_dim  # [u, v, u*v, u-v]
        self.head = nn.Sequential(nn.Linear(features, transformer_hidden_dim), HEAD_ACTIVATIONS[head_activation](),
                                  nn.Linear(transformer_hidden_dim, num_classes))

    def encode(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """One document: (B, T) ids and bool mask -> pooled (B, embedding_dim)."""
        B, T = input_ids.shape
        mask = mask.to(torch.bool)
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model.max_seq_len={self.max_seq_len}; "
                             f"truncate the input or raise model.max_seq_len")
        x = self.token_emb(input_ids)  # (B, T, E)
        if self.cls_token is not None:  # prepend, never overwrite a real token
            x = torch.cat([self.cls_token.to(x.dtype).expand(B, 1, -1), x], dim=1)  # (B, T + 1, E)
            mask = F.pad(mask, (1, 0), value=True)
        x = self.emb_dropout(x + self.pos_emb[: x.shape[1]])
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.final_norm(x)
        if self.pooling_mode == "CLS":
            return x[:, 0]
        x = x.masked_fill(~mask[..., None], 0.0)  # masked mean: padding never enters
        return x.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)

    def forward(self, input_ids: Tensor, mask: Tensor, input_ids_2: Tensor | None = None,
                mask_2: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes). The dual encoder needs the second document and uses the one encoder."""
        u = self.encode(input_ids, mask)
        if not self.dual_encoder:
            return self.head(u)
        if input_ids_2 is None or mask_2 is None:
            raise ValueError("the dual encoder (retrieval) needs input_ids_2 and mask_2")
        v = self.encode(input_ids_2, mask_2)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
