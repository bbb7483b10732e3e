"""Interleaved timing and allocator-level peak memory, the two measures every benchmark here uses.

Timing: each candidate runs once per round and the rounds repeat (A B C, B C A, C A B, ...: the order rotates
so that no candidate always follows the same one), so drift of the machine (other jobs, clock changes) hits
all candidates alike. Warm-up rounds are discarded; the median and min of the timed rounds are reported, and
only ratios between candidates of one run mean much on a shared machine. CUDA is synchronised around each call.

Peak memory (bytes live above what was live when the call began; tensors made before it, such as inputs and
parameters, are not counted, what it leaves alive, such as gradients, is):
- CUDA: the caching allocator's `max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated.
- CPU: the torch CPU allocator's allocation and free events from torch.profiler (`profile_memory=True`),
  summed in time order to a running total whose maximum is the peak. Only tensor storage is counted, not the
  Python heap or memory the C library keeps after a free.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from lra.run.memory import Peak, peak_memory  # noqa: F401 - the benchmarks' peak memory is the trainer's measure

MEMORY_METHODS = {
    "cuda": "CUDA caching allocator: max_memory_allocated - memory_allocated before the call",
    "cpu": "torch CPU allocator events (torch.profiler, profile_memory=True): peak of the running sum of "
           "allocations minus frees during the call",
}


def memory_method(device: torch.device) -> str:
    return MEMORY_METHODS["cuda" if device.type == "cuda" else "cpu"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall times of one candidate's timed calls, and its first (warm-up) call, which includes compilation."""

    times: list[float] = field(default_factory=list)
    first_s: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of time / base time in the same round. Both ran on the same input moments apart, so
    what varies between rounds (a batch's length, the machine's load) cancels within each pair: steadier than a
    ratio of medians when the rounds differ by more than the candidates do."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def ratios(row: dict, base: dict) -> dict[str, float | None]:
    """A result row's time and memory as ratios to the reference row measured in the same rounds."""
    return {"time_ratio": row["time_median_s"] / base["time_median_s"],
            "time_ratio_min": row["time_min_s"] / base["time_min_s"],
            "time_ratio_paired": paired_ratio(row["times_s"], base["times_s"]),
            "memory_ratio": row["peak_memory_bytes"] / base["peak_memory_bytes"] if base["peak_memory_bytes"] else None}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(candidates: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int,
                device: torch.device) -> dict[str, Timing]:
    """Time each candidate `repeats` times after `warmup` untimed calls, all in rotating rounds."""
    names = list(candidates)
    out = {name: Timing() for name in names}
    for r in range(warmup + repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds = timed(candidates[name], device)
            if out[name].first_s is None:
                out[name].first_s = seconds
            if r >= warmup:
                out[name].times.append(seconds)
    return out


def sdpa_kernels(ops: set[str]) -> list[str]:
    """The scaled_dot_product_attention forward kernels among `ops` (says whether a fused kernel served)."""
    return sorted(op for op in ops if op.startswith("_scaled_dot_product") and "backward" not in op)
