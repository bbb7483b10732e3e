"""Batches from a data Split: seeded order per epoch (so a resumed run sees the same batches), masks from
lengths, and the optional cut to `model.max_seq_len` when the task allows truncation.

Under several processes every rank walks the same global order in global batches of `training.batch_size`
and takes its own contiguous share of each (`lra.parallel.distributed.shard_bounds`: 10 on 3 ranks are 4, 3, 3), so
the samples of a step, and so the update, do not depend on the world size; a rank's share may be empty.
Evaluation shards its batches the same way: every sample is seen once, and the sums are all-reduced."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from lra.data import Split
from lra.parallel.distributed import shard_bounds
from lra.run.step import Batch


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of one epoch: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


def num_batches(num_samples: int, batch_size: int) -> int:
    return -(-num_samples // batch_size)


def _tokens(tokens: np.ndarray, lengths: np.ndarray, index: np.ndarray, limit: Optional[int]):
    ids = np.asarray(tokens[index])
    lens = np.asarray(lengths[index]).astype(np.int64)
    if limit is not None and ids.shape[1] > limit:
        ids, lens = ids[:, :limit], np.minimum(lens, limit)
    width = max(1, int(lens.max()) if len(lens) else 1)  # the padded tail beyond the longest sample is never needed
    ids = torch.from_numpy(ids[:, :width].astype(np.int64))
    # the mask in numpy: a torch comparison would go through the intra-op thread pool, slow for small arrays
    mask = torch.from_numpy(np.arange(width)[None, :] < lens[:, None])
    return ids, mask


def make_batch(split: Split, index: np.ndarray, limit: Optional[int] = None) -> Batch:
    """Gather the samples at `index` into tensors: input_ids (B, T) long, mask (B, T) bool, labels (B,).
    An empty index gives a batch of zero samples (a rank's empty share)."""
    index = np.sort(index)  # sorted reads are faster on memory-mapped files; order within a batch is irrelevant
    ids, mask = _tokens(split.tokens, split.lengths, index, limit)
    batch = {"input_ids": ids, "mask": mask, "labels": torch.from_numpy(np.asarray(split.labels[index], np.int64))}
    if split.tokens2 is not None:
        batch["input_ids_2"], batch["mask_2"] = _tokens(split.tokens2, split.lengths2, index, limit)
    return batch


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    order: Optional[torch.Tensor] = None,
    start: int = 0,
    max_batches: Optional[int] = None,
    limit: Optional[int] = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Batches in `order` (default: the split's order) from batch number `start`; the last one may be short.
    shard = (rank, world_size): each global batch's share of this rank (possibly empty)."""
    indices = order.numpy() if order is not None else np.arange(len(split))
    stop = num_batches(len(indices), batch_size)
    if max_batches is not None:
        stop = min(stop, max_batches)
    for b in range(start, stop):
        global_batch = indices[b * batch_size:(b + 1) * batch_size]
        first, last = shard_bounds(len(global_batch), *shard)
        yield make_batch(split, global_batch[first:last], limit)


def global_batch_size(num_samples: int, batch_size: int, b: int) -> int:
    """The number of samples in global batch b (the last one of an epoch may be short)."""
    return max(0, min(batch_size, num_samples - b * batch_size))


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
