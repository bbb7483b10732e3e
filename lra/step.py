"""The accumulation-chunked step: the one place that splits a batch.

A batch of `training.batch_size` samples is split into chunks of at most `gpu_memory.<attention>` samples.
Each chunk's mean loss is weighted by its share of the batch (n_chunk / n_batch), so the accumulated gradient
is the full-batch mean gradient even when the last chunk is smaller; one optimiser step follows per batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

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
) -> StepStats:
    """One optimiser update from one batch, accumulated over chunks. Returns the full-batch loss and accuracy.
    `poison_loss` turns the loss into NaN (a testing aid for the divergence path)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n_batch = batch["labels"].shape[0]
    stats = StepStats()
    for chunk in split_batch(batch, chunk_size):
        labels = chunk["labels"]
        with autocast:
            logits = _forward(model, chunk)  # (b, num_classes)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        if poison_loss:
            loss = loss * float("nan")
        scaler.scale(loss * (labels.shape[0] / n_batch)).backward()
        stats.add(StepStats(loss.item() * labels.shape[0], int((logits.argmax(-1) == labels).sum()),
                            labels.shape[0]))
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
    """Loss sum and correct count of one batch in eval mode, chunked like training."""
    model.eval()
    stats = StepStats()
    for chunk in split_batch(batch, chunk_size):
        labels = chunk["labels"]
        with autocast:
            logits = _forward(model, chunk)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        stats.add(StepStats(loss.item(), int((logits.argmax(-1) == labels).sum()), labels.shape[0]))
    return stats
