"""Peak memory at the allocator, for the trainer and the benchmarks (which import it from here).

`peak_memory(fn, device)`: bytes live during `fn()` above those live when it began (tensors made before it,
such as inputs and parameters, are not counted; what it leaves alive, such as gradients, is):
- CUDA: the caching allocator's `max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated.
- CPU: the torch CPU allocator's allocation and free events from torch.profiler (`profile_memory=True`),
  summed in time order to a running total whose maximum is the peak. Only tensor storage is counted, not the
  Python heap or memory the C library keeps after a free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


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


def _cpu_peak(fn: Callable[[], object]) -> Peak:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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
