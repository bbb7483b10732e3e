"""The automatic chunk size: the largest number of samples whose fwd+bwd fits a memory budget, with a margin.
Training uses it for `gpu_memory.<attention>: auto`; `python -m lra.bench budget` prints its choice.

`auto_chunk_size(model, example_batch, device=..., autocast=..., max_chunk=batch_size, memory_budget_mb=...)`
probes fwd+bwd (cross-entropy on the logits, as the training step does) at chunk = 1, 2, 4, ... up to
`max_chunk`, then binary-searches between the largest power of two that fits and the first that does not.
A chunk fits when its measured peak plus `reserved_mb` is at most `margin` × the budget:
- CUDA: the budget is the free device memory (`torch.cuda.mem_get_info`, plus what torch's cache holds
  unused), capped at `memory_budget_mb` when one is given; a probe that runs out of memory does not fit.
- CPU: the budget is `memory_budget_mb` (default: the machine's available memory), the peak is measured
  with the CPU allocator's events (`lra.run.memory`).
The peak of a probe counts the activations and the parameter gradients; `reserved_mb` (default: twice the
parameters, AdamW's two moments, not yet allocated when training starts) is added to it. The probe does not
trim padding, so pass a batch at the task's full length (`full_length_batch`): the worst case of every chunk.
Probing leaves the model as it was: same mode, same gradients, and the RNG (dropout) state restored, so a
seeded run draws the same numbers with or without the probe.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lra.errors import ConfigError
from lra.run.memory import peak_memory
from lra.run.step import Batch

log = logging.getLogger(__name__)
MB = 2**20


@dataclass
class BudgetResult:
    """The chosen chunk and how it was found: `probes` maps chunk -> measured peak MB (None: out of memory)."""

    chunk: int
    budget_mb: float
    margin: float
    reserved_mb: float
    probes: dict[int, float | None] = field(default_factory=dict)

    def describe(self) -> str:
        tried = ", ".join(f"{c}: {'OOM' if p is None else f'{p:.0f} MB'}" for c, p in sorted(self.probes.items()))
        return (f"auto chunk size {self.chunk} (fits {self.margin:g} x {self.budget_mb:.0f} MB budget with "
                f"{self.reserved_mb:.0f} MB reserved; fwd+bwd peaks {tried})")


def full_length_batch(n: int, seq_len: int, vocab_size: int, num_classes: int, *, dual_encoder: bool = False,
                      device: torch.device | str = "cpu", seed: int = 0) -> Batch:
    """`n` samples of random tokens, every position real: the worst case a chunk can meet. With CLS pooling
    pass seq_len = model.max_seq_len - 1 (the CLS slot comes on top)."""
    g = torch.Generator().manual_seed(seed)

    def ids() -> torch.Tensor:
        return torch.randint(1, max(2, vocab_size), (n, seq_len), generator=g).to(device)

    mask = torch.ones(n, seq_len, dtype=torch.bool, device=device)
    batch = {"input_ids": ids(), "mask": mask, "labels": torch.randint(0, num_classes, (n,), generator=g).to(device)}
    if dual_encoder:
        batch["input_ids_2"], batch["mask_2"] = ids(), mask.clone()
    return batch


def _rows(batch: Batch, n: int) -> Batch:
    """The first n samples, the batch repeated as often as needed to have n."""
    have = batch["labels"].shape[0]
    reps = -(-n // have)
    return {k: (v.repeat(reps, *([1] * (v.dim() - 1))) if reps > 1 else v)[:n] for k, v in batch.items()}


def _available_mb(device: torch.device, memory_budget_mb: float | None) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        available = (free + cached) / MB
        return available if memory_budget_mb is None else min(available, float(memory_budget_mb))
    if memory_budget_mb is not None:
        return float(memory_budget_mb)
    try:
        import psutil

        return psutil.virtual_memory().available / MB
    except ImportError:  # /proc/meminfo's MemAvailable, in KiB
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 1024


def _oom_errors() -> tuple[type[BaseException], ...]:
    return (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (torch.cuda.OutOfMemoryError,)


def _probe(model: nn.Module, batch: Batch, device: torch.device, autocast) -> float | None:
    """Peak MB of one fwd+bwd on `batch`, or None when the device ran out of memory."""
    def fwd_bwd() -> None:
        with autocast:
            logits = model(batch["input_ids"], batch["mask"], batch.get("input_ids_2"), batch.get("mask_2"))
        F.cross_entropy(logits.float(), batch["labels"]).backward()

    try:
        return peak_memory(fwd_bwd, device).bytes / MB
    except _oom_errors():
        return None
    finally:
        for p in model.parameters():
            p.grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()


def probe_chunk_size(model: nn.Module, example_batch: Batch, *, device: torch.device | str,
                     autocast: contextlib.AbstractContextManager | None = None, max_chunk: int,
                     memory_budget_mb: float | None = None, margin: float = 0.8, reserved_mb: float | None = None,
                     key: str = "hardware.memory_budget_mb") -> BudgetResult:
    """`auto_chunk_size` with the details: the budget and every probe's peak."""
    device = torch.device(device)
    if max_chunk < 1:
        raise ConfigError("training.batch_size", max_chunk, "max_chunk must be at least 1", "use a batch size >= 1")
    if not 0 < margin <= 1:
        raise ConfigError("margin", margin, "must be in (0, 1]", "use e.g. 0.8 (keep 20% free)")
    if memory_budget_mb is not None and memory_budget_mb <= 0:
        raise ConfigError(key, memory_budget_mb, "must be > 0 MB", f"set {key} to the megabytes a chunk may use")
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    params = list(model.parameters())
    if reserved_mb is None:
        reserved_mb = 2 * sum(p.numel() * p.element_size() for p in params) / MB
    budget = _available_mb(device, memory_budget_mb)
    result = BudgetResult(chunk=0, budget_mb=budget, margin=margin, reserved_mb=reserved_mb)

    def fits(chunk: int) -> bool:
        peak = _probe(model, _rows(example_batch, chunk), device, autocast)
        result.probes[chunk] = peak
        return peak is not None and peak + reserved_mb <= margin * budget

    was_training, grads = model.training, [p.grad for p in params]
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        for p in params:
            p.grad = None
        model.train()
        with torch.random.fork_rng(devices=devices):
            sizes = [c for c in (2**i for i in range(max_chunk.bit_length())) if c < max_chunk] + [max_chunk]
            lo, hi = 0, None  # largest chunk that fits, smallest that does not
            for chunk in sizes:
                if not fits(chunk):
                    hi = chunk
                    break
                lo = chunk
            while hi is not None and hi - lo > 1 and lo > 0:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    finally:
        model.train(was_training)
        for p, g in zip(params, grads):
            p.grad = g
    if lo == 0:
        need = result.probes.get(1)
        raise ConfigError(key, memory_budget_mb if memory_budget_mb is not None else f"auto ({budget:.0f} MB)",
                          "one sample's fwd+bwd does not fit "
                          + (f"({need:.0f} MB + {reserved_mb:.0f} MB reserved > {margin:g} x {budget:.0f} MB)"
                             if need is not None else "(out of memory)"),
                          f"raise {key}, or use a shorter model.max_seq_len, a smaller model or a leaner attention")
    result.chunk = lo
    return result


def auto_chunk_size(model: nn.Module, example_batch: Batch, *, device: torch.device | str,
                    autocast: contextlib.AbstractContextManager | None = None, max_chunk: int,
                    memory_budget_mb: float | None = None, margin: float = 0.8, reserved_mb: float | None = None,
                    key: str = "hardware.memory_budget_mb") -> int:
    """The largest chunk (samples per fwd+bwd, <= max_chunk) whose peak memory fits `margin` x the budget.

    model: on `device`, with its parameters (the optimizer may not exist yet).
    example_batch: a Batch (input_ids, mask, labels[, input_ids_2, mask_2]) on `device`, at the longest length
        the run will see (`full_length_batch`); repeated as needed to make larger chunks.
    autocast: the training step's context (`lra.run.step.autocast_context(device, precision)`); None = float32.
    max_chunk: the batch size (a chunk never exceeds it).
    memory_budget_mb: CPU: the budget (None: the machine's available memory); CUDA: a cap on the free memory.
    margin: the share of the budget a chunk's peak may use. reserved_mb: added to every peak (None: 2x params).
    key: the config key named in the error raised when not even one sample fits (a ConfigError).
    """
    result = probe_chunk_size(model, example_batch, device=device, autocast=autocast, max_chunk=max_chunk,
                              memory_budget_mb=memory_budget_mb, margin=margin, reserved_mb=reserved_mb, key=key)
    log.info(result.describe())
    return result.chunk
