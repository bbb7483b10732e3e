"""The accumulation-chunked step: the one place that splits a batch.

A batch of `training.batch_size` samples is split into chunks of at most `gpu_memory.<attention>` samples.
Each chunk's mean loss is weighted by its share of the batch (n_chunk / n_batch), so the accumulated gradient
is the full-batch mean gradient even when the last chunk is smaller; one optimiser step follows per batch.

Under several processes (`lra.parallel.distributed`) each rank holds its share of the global batch and weights each
chunk by its share of the GLOBAL batch (n_chunk / n_global); the gradients are all-reduced as a sum once per
step, in the backward of the rank's last chunk (DistributedDataParallel's `no_sync` on the others), so the
update equals the one-process update whatever the world size, uneven shares included. A rank whose share is
empty still joins that all-reduce, with a zero-weighted forward of a one-token dummy sample. The loss and
accuracy sums are all-reduced too, so every rank returns the global batch's figures and every rank takes the
same decision on a non-finite loss. With fp16, the GradScaler unscales, steps and updates once per batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lra.parallel.distributed import Distributed

Batch = dict[str, torch.Tensor]

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepStats:
    """Sums over the samples of a batch (or of many): mean loss = loss_sum / count."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0

    def add(self, other: "StepStats") -> None:
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.count += other.count

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.count)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.count)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISION_DTYPES[precision])


def split_batch(batch: Batch, chunk_size: int) -> Iterator[Batch]:
    """Consecutive chunks of at most chunk_size samples; each is trimmed to its own longest sequence."""
    n = batch["labels"].shape[0]
    for start in range(0, n, chunk_size):
        chunk = {key: value[start:start + chunk_size] for key, value in batch.items()}
        yield trim_padding(chunk)


def trim_padding(batch: Batch) -> Batch:
    """Drop the columns where every sample is padding. Every mechanism is padding invariant (tested), and the
    padding sits at the end, so this is exact and saves the work of the padded tail."""
    out = dict(batch)
    for ids, mask in (("input_ids", "mask"), ("input_ids_2", "mask_2")):
        if mask in batch:
            length = int(batch[mask].sum(dim=1).max().item())
            out[ids], out[mask] = batch[ids][:, :max(1, length)], batch[mask][:, :max(1, length)]
    return out


def _forward(model: nn.Module, chunk: Batch) -> torch.Tensor:
    return model(chunk["input_ids"], chunk["mask"], chunk.get("input_ids_2"), chunk.get("mask_2"))


def dummy_batch(like: Batch) -> Batch:
    """One sample of one real token (id 1, label 0) with `like`'s keys, dtypes and device: the input of the
    zero-weighted forward of a rank whose share of a batch is empty."""
    out = {}
    for key, value in like.items():
        if key.startswith(("mask", "input_ids")):
            out[key] = torch.ones(1, 1, dtype=value.dtype, device=value.device)
        else:
            out[key] = torch.zeros(1, *value.shape[1:], dtype=value.dtype, device=value.device)
    return out


def _no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DistributedDataParallel's `no_sync` unless this backward is the one that all-reduces."""
    return contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()


def train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    chunk_size: int,
    autocast: contextlib.AbstractContextManager,
    scaler: torch.amp.GradScaler,
    grad_clip: float = 0.0,
    label_smoothing: float = 0.0,
    poison_loss: bool = False,
    dist: Optional[Distributed] = None,
    global_size: Optional[int] = None,
) -> StepStats:
    """One optimiser update from one batch, accumulated over chunks. Returns the full-batch loss and accuracy.
    `poison_loss` turns the loss into NaN (a testing aid for the divergence path).
    Several processes: `model` is `lra.parallel.distributed.wrap`'s, `batch` this rank's share, `global_size` the
    number of samples in the global batch (default: this batch's), `dist` this process's context."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n_batch = global_size if global_size is not None else batch["labels"].shape[0]
    chunks = list(split_batch(batch, chunk_size))
    weight_one = 1.0
    if not chunks and dist is not None and dist.active:  # an empty share still joins the all-reduce
        chunks, weight_one = [dummy_batch(batch)], 0.0
    stats = StepStats()
    for i, chunk in enumerate(chunks):
        labels = chunk["labels"]
        with _no_sync(model, sync=i == len(chunks) - 1):  # forward and backward: DDP prepares in forward
            with autocast:
                logits = _forward(model, chunk)  # (b, num_classes)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
            if poison_loss:
                loss = loss * float("nan")
            scaler.scale(loss * (weight_one * labels.shape[0] / n_batch)).backward()
        if weight_one:
            stats.add(StepStats(loss.item() * labels.shape[0], int((logits.argmax(-1) == labels).sum()),
                                labels.shape[0]))
    if dist is not None and dist.active:
        loss_sum, correct, count = dist.all_reduce_sum([stats.loss_sum, stats.correct, stats.count])
        stats = StepStats(loss_sum, int(correct), int(count))
    if not torch.isfinite(torch.tensor(stats.loss_sum)):
        optimizer.zero_grad(set_to_none=True)
        return stats  # the caller ends the run FAILED; no update from a diverged loss
    scaler.unscale_(optimizer)  # once per step, before clipping (a no-op unless fp16)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return stats


@torch.no_grad()
def eval_step(
    model: nn.Module, batch: Batch, *, chunk_size: int, autocast: contextlib.AbstractContextManager
) -> StepStats:
    """Loss sum and correct count of one batch in eval mode, chunked like training (this process only;
    `evaluate_batches` sums over ranks)."""
    model.eval()
    stats = StepStats()
    for chunk in split_batch(batch, chunk_size):
        labels = chunk["labels"]
        with autocast:
            logits = _forward(model, chunk)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        stats.add(StepStats(loss.item(), int((logits.argmax(-1) == labels).sum()), labels.shape[0]))
    return stats


def evaluate_batches(model: nn.Module, batches: Iterable[Batch], *, chunk_size: int,
                     autocast: contextlib.AbstractContextManager, device: torch.device,
                     dist: Optional[Distributed] = None) -> StepStats:
    """Loss and accuracy over `batches` (this rank's shares, `lra.run.batches.iterate_batches(..., shard=...)`),
    summed over ranks once at the end: every sample counted once whatever the world size."""
    model = getattr(model, "module", model)  # the plain model: an evaluation never waits for the other ranks
    stats = StepStats()
    for batch in batches:
        if batch["labels"].shape[0]:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            stats.add(eval_step(model, batch, chunk_size=chunk_size, autocast=autocast))
    if dist is not None and dist.active:
        loss_sum, correct, count = dist.all_reduce_sum([stats.loss_sum, stats.correct, stats.count])
        stats = StepStats(loss_sum, int(correct), int(count))
    return stats
