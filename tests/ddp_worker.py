"""A few chunked steps and an evaluation on one process or as one rank of many (`torchrun ... ddp_worker.py
OUT [--device cpu|cuda|auto] [--attention NAME]`): the same code either way, so a test compares the two. Rank 0
saves what it ends with to OUT."""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch

from lra.data import Split
from lra.model import LRAClassifier
from lra.parallel.distributed import Distributed, setup, teardown, wrap
from lra.run.batches import epoch_order, global_batch_size, iterate_batches, num_batches, to_device
from lra.run.step import evaluate_batches, train_step

N, T, BATCH, CHUNK = 21, 20, 5, 2  # batches of 5, 5, 5, 5, 1: shares 3/2 (chunks 2+1 / 2) and 1/0 on 2 ranks


def split(seed: int = 1) -> Split:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T + 1, N)
    tokens = rng.integers(1, 11, (N, T)) * (np.arange(T)[None, :] < lengths[:, None])
    return Split(tokens=tokens, lengths=lengths, labels=rng.integers(0, 3, N).astype(np.int64))


def model(attention: str = "softmax") -> LRAClassifier:
    torch.manual_seed(0)
    return LRAClassifier(vocab_size=11, max_seq_len=24, embedding_dim=16, transformer_hidden_dim=32, head_dim=8,
                         num_head=2, num_layers=2, dropout_prob=0.0, attention_dropout=0.0, pooling_mode="MEAN",
                         num_classes=3, learn_pos_emb=True, tied_weights=False, attention=attention)


def run(ctx: Distributed, attention: str = "softmax", epochs: int = 2) -> dict:
    data, net = split(), model(attention).to(ctx.device)
    trained = wrap(net, ctx)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=False)
    losses = []
    for epoch in range(epochs):
        order = epoch_order(N, 0, epoch)
        for b, batch in enumerate(iterate_batches(data, BATCH, order=order, shard=ctx.shard)):
            stats = train_step(trained, to_device(batch, ctx.device), optimizer, chunk_size=CHUNK,
                               autocast=contextlib.nullcontext(), scaler=scaler, grad_clip=1.0, dist=ctx,
                               global_size=global_batch_size(N, BATCH, b))
            losses.append((stats.loss_sum, stats.correct, stats.count))
    assert len(losses) == epochs * num_batches(N, BATCH)
    dev = evaluate_batches(trained, iterate_batches(data, 4, shard=ctx.shard), chunk_size=3,
                           autocast=contextlib.nullcontext(), device=ctx.device, dist=ctx)
    return {"params": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "losses": losses,
            "dev": (dev.loss_sum, dev.correct, dev.count), "world_size": ctx.world_size}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attention", default="softmax")
    args = parser.parse_args()
    torch.set_num_threads(1)
    context = setup(args.device)
    try:
        result = run(context, args.attention)
        result["backend"] = context.backend
        if context.is_main:
            torch.save(result, args.out)
    except BaseException:
        teardown(context)
        raise
    teardown(context, clean=True)
