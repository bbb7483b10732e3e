"""Peak memory at the allocator, for the trainer and the benchmarks (which import it from here).

`peak_memory(fn, device)`: bytes live during `fn()` above those live when it began (tensors made before it,
such as inputs and parameters, are not counted; what it leaves alive, such as gradients, is):
- CUDA: the caching allocator's `max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated.
- CPU: the torch CPU allocator's allocation and free events from torch.profiler (`profile_memory=True`),
  summed in time order to a running total whose maximum is the peak. Only tensor storage is counted, not the
  Python heap or memory the C library keeps after a free.

`model_peak_memory_mb`: the training step's footprint, the figure the report sizes its markers by. A process's
resident set says little on a CPU (torch's own libraries are about 0.5 GB of it, and the C library keeps freed
pages), so the trainer measures the model instead, once before training: parameters, plus the optimiser's
state (AdamW: two tensors the size of each trained parameter), plus the profiled peak of one forward and
backward pass of the largest chunk (activations, and the gradients it allocates). The RNG state and the
gradients are left as they were, so the run trains exactly as it would without the measurement.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lra.data import Split
from lra.run.batches import make_batch, to_device
from lra.run.step import Batch, trim_padding


@dataclass
class Peak:
    bytes: int
    ops: set[str]  # aten op names seen (CPU only; e.g. which scaled_dot_product kernel ran)


def peak_memory(fn: Callable[[], object], device: torch.device) -> Peak:
    """Peak bytes live during `fn()` above those live when it began (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return Peak(torch.cuda.max_memory_allocated(device) - before, set())
    return _cpu_peak(fn)


@contextlib.contextmanager
def _without_profiler_notes() -> Iterator[None]:
    """Kineto writes `USDT: ... profiler_start/stop` lines straight to file descriptor 2 (no setting turns them
    off): hold back fd 2 while profiling and pass on every other line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith("USDT:"):
                    sys.stderr.write(line)


def _cpu_peak(fn: Callable[[], object]) -> Peak:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _without_profiler_notes(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int]] = []  # (time ns, +bytes allocated / -bytes freed)
    ops: set[str] = set()
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
        elif event.name.startswith("aten::"):
            ops.add(event.name.removeprefix("aten::"))
        stack.extend(event.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return Peak(peak, ops)


def largest_chunk(split: Split, chunk_size: int, limit: Optional[int] = None) -> Batch:
    """The `chunk_size` longest training samples as one chunk: the step's worst case (each chunk is cut to its
    own longest sequence, so memory grows with the longest samples that meet in one chunk)."""
    lengths = np.asarray(split.lengths, dtype=np.int64)
    if split.lengths2 is not None:
        lengths = lengths + np.asarray(split.lengths2, dtype=np.int64)
    index = np.argsort(-lengths, kind="stable")[:max(1, min(chunk_size, len(lengths)))]
    return trim_padding(make_batch(split, index, limit))


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The optimiser's state once it has stepped: what it holds now, or for Adam(W) before its first step, two
    tensors like each trained parameter (exp_avg, exp_avg_sq)."""
    held = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))
    if held or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return held
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def model_peak_memory_mb(model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, *, chunk_size: int,
                         device: torch.device, autocast: contextlib.AbstractContextManager = contextlib.nullcontext(),
                         limit: Optional[int] = None) -> float:
    """Parameters + optimiser state + the peak of one fwd+bwd of the largest chunk, in MB (module docstring)."""
    chunk = to_device(largest_chunk(split, chunk_size, limit), device)
    grads = [p.grad for p in model.parameters()]
    was_training = model.training
    model.train()

    def step() -> None:
        with autocast:
            logits = model(chunk["input_ids"], chunk["mask"], chunk.get("input_ids_2"), chunk.get("mask_2"))
        F.cross_entropy(logits.float(), chunk["labels"]).backward()

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for p in model.parameters():
            p.grad = None
        try:
            dynamic = peak_memory(step, device).bytes
        finally:
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad
            model.train(was_training)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return (params + _state_bytes(model, optimizer) + dynamic) / 2**20
