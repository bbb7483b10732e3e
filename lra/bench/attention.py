"""fwd+bwd time and peak memory of each attention mechanism over sequence lengths.

At each length all candidates (and a large float32 GEMM, the machine's matmul rate) run interleaved in one
process; figures are given as ratios to softmax. A candidate is a registry name with optional options,
`name[:key=value,...]` (e.g. `hrr-individual:block_size=0`, the plain autograd form), optionally wrapped in
`torch.compile`. Inputs: q, k, v of shape (B, heads, T, head_dim), float32, every token real; the backward
pass gets a fixed random output gradient.

Each row carries the mechanism's analytic fwd+bwd FLOPs (`lra.bench.flops`), the FLOP rate they imply, and
that rate as a fraction of the float32 GEMM's rate measured in the same rounds. Softmax's FLOPs: QKᵀ and PV
are 2·T²·H each per head, 4·B·h·T²·H forward, three times that for fwd+bwd.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lra.attention import ATTENTIONS, build_attention
from lra.bench.flops import attention_flops
from lra.bench.measure import interleaved, memory_method, peak_memory, ratios, sdpa_kernels, timed
from lra.errors import ConfigError

MATMUL = "matmul"  # the GEMM candidate's key in the rotation
MATMUL_N = 2048  # its default square size: 17 GFLOP, well past the caches of a CPU


@dataclass(frozen=True)
class Candidate:
    """One mechanism as benchmarked: registry name, options, whether compiled. `label` names it in output."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    compiled: bool = False

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return self.name + (f":{opts}" if opts else "") + (" +compile" if self.compiled else "")


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_candidate(spec: str) -> Candidate:
    """`name[:key=value,...]` -> Candidate; unknown names and options raise ConfigError."""
    name, _, opts = spec.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError("--mechanisms", spec, f"option {item!r} has no value",
                              "write options as name:key=value,key=value")
        options[key] = _value(value)
    build_attention(name, 1, 8, **options)  # validates the name and the options
    return Candidate(name, options)


def flops_softmax_fwd_bwd(batch: int, heads: int, length: int, head_dim: int) -> float:
    return attention_flops("softmax", batch, heads, length, head_dim)


def _fwd_bwd(module: Callable, q, k, v, mask, grad_out) -> Callable[[], None]:
    def step() -> None:
        for x in (q, k, v):
            x.grad = None
        module(q, k, v, mask).backward(grad_out)
    return step


def _matmul(device: torch.device, n: int) -> tuple[Callable[[], None], float]:
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    return (lambda: a @ b), 2.0 * n**3


def run_attention_bench(candidates: list[Candidate], *, lengths: list[int], batch: int = 1, heads: int = 8,
                        head_dim: int = 64, repeats: int = 5, warmup: int = 1, device: torch.device | None = None,
                        seed: int = 0, matmul_size: int = MATMUL_N,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every candidate at every length; returns the JSON-ready result (see `summarise`)."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    labels = [c.label for c in candidates]
    if len(set(labels)) != len(labels):
        raise ConfigError("--mechanisms", labels, "a candidate is listed twice", "list each once")
    modules = {}
    for c in candidates:  # one module per candidate for all lengths (a compiled one recompiles per new shape)
        module = build_attention(c.name, heads, head_dim, **c.options).to(device)
        modules[c.label] = torch.compile(module) if c.compiled else module
    gemm, gemm_flops = _matmul(device, matmul_size)
    rows, matmul = [], {}
    for T in lengths:
        q, k, v = (torch.randn(batch, heads, T, head_dim, device=device, requires_grad=True) for _ in range(3))
        mask = torch.ones(batch, T, dtype=torch.bool, device=device)
        grad_out = torch.randn(batch, heads, T, head_dim, device=device)
        steps = {label: _fwd_bwd(m, q, k, v, mask, grad_out) for label, m in modules.items()}
        steps[MATMUL] = gemm
        compile_s = {}
        for c in candidates:  # compile (first call per shape) outside the timed rounds, and record its time
            if c.compiled:
                compile_s[c.label] = timed(steps[c.label], device)
        log(f"T={T}: {len(candidates)} candidates + {MATMUL}, {warmup} warm-up and {repeats} timed rounds")
        timings = interleaved(steps, repeats=repeats, warmup=warmup, device=device)
        matmul[T] = {"flops": gemm_flops, "time_median_s": timings[MATMUL].median,
                     "time_min_s": timings[MATMUL].min, "times_s": timings[MATMUL].times}
        for c in candidates:
            for x in (q, k, v):
                x.grad = None
            peak = peak_memory(steps[c.label], device)
            t = timings[c.label]
            rows.append({"mechanism": c.label, "name": c.name, "options": c.options, "compiled": c.compiled,
                         "T": T, "time_median_s": t.median, "time_min_s": t.min, "times_s": t.times,
                         "compile_s": compile_s.get(c.label), "peak_memory_bytes": peak.bytes,
                         "sdpa_kernels": sdpa_kernels(peak.ops)})
        del q, k, v, grad_out, steps
    setup = {"lengths": lengths, "batch": batch, "heads": heads, "head_dim": head_dim, "repeats": repeats,
             "warmup": warmup, "seed": seed, "dtype": "float32", "mask": "every token real",
             "matmul_size": matmul_size,
             "candidates": labels}
    return summarise(rows, matmul, setup, device)


def environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "python": platform.python_version(), "machine": platform.machine(), "memory_method": memory_method(device),
           "timing": "wall clock of fwd+bwd, candidates interleaved in rotating rounds, median and min after warm-up"}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _exponent(y1: float, y2: float, x1: float, x2: float) -> float | None:
    if min(y1, y2) <= 0 or x1 == x2:
        return None
    return math.log(y2 / y1) / math.log(x2 / x1)


def summarise(rows: list[dict], matmul: dict, setup: dict, device: torch.device) -> dict[str, Any]:
    """Add ratios to the reference (softmax, else the first candidate), scaling exponents between the two largest
    lengths, and softmax's fraction of the matmul rate measured in the same rounds."""
    labels = setup["candidates"]
    ref = "softmax" if "softmax" in labels else labels[0]
    by = {(r["mechanism"], r["T"]): r for r in rows}
    for r in rows:
        base = by[(ref, r["T"])]
        r.update(ratios(r, base))
        gemm = matmul[r["T"]]
        r["flops"] = attention_flops(r["name"], setup["batch"], setup["heads"], r["T"], setup["head_dim"])
        r["flops_per_s"] = r["flops"] / r["time_median_s"] if r["flops"] else None
        r["gemm_fraction"] = r["flops_per_s"] / (gemm["flops"] / gemm["time_median_s"]) if r["flops"] else None
    lengths = sorted(setup["lengths"])
    scaling = {}
    if len(lengths) >= 2:
        T1, T2 = lengths[-2], lengths[-1]
        for label in labels:
            a, b = by[(label, T1)], by[(label, T2)]
            scaling[label] = {"T1": T1, "T2": T2,
                              "time_exponent": _exponent(a["time_median_s"], b["time_median_s"], T1, T2),
                              "memory_exponent": _exponent(a["peak_memory_bytes"], b["peak_memory_bytes"], T1, T2)}
    peak_fraction = {}
    for T in lengths:
        if ("softmax", T) not in by:
            break
        s, m = by[("softmax", T)], matmul[T]
        flops = flops_softmax_fwd_bwd(setup["batch"], setup["heads"], T, setup["head_dim"])
        peak_fraction[str(T)] = {
            "softmax_flops": flops,
            "softmax_flops_per_s": flops / s["time_median_s"],
            "matmul_flops_per_s": m["flops"] / m["time_median_s"],
            "matmul_peak_flops_per_s": m["flops"] / m["time_min_s"],
            "fraction": (flops / s["time_median_s"]) / (m["flops"] / m["time_median_s"]),
            "fraction_of_peak": (flops / s["time_min_s"]) / (m["flops"] / m["time_min_s"]),
        }
    return {"benchmark": "attention", "reference": ref, "setup": setup, "environment": environment(device),
            "results": rows, "scaling": scaling, "matmul": {str(T): v for T, v in matmul.items()},
            "softmax_matmul_fraction": peak_fraction}


def default_candidates(names: list[str] | None, compile_: bool) -> list[Candidate]:
    specs = names or list(ATTENTIONS)
    base = [parse_candidate(s) for s in specs]
    if not compile_:
        return base
    return base + [Candidate(c.name, c.options, compiled=True) for c in base]
