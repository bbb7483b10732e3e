"""Throwaway benchmark of the five mechanisms (fwd+bwd); `python -m lra.bench` will replace it.

Time: median and minimum wall time of fwd+bwd over interleaved repetitions (all mechanisms in each round,
one process); the minimum is the steadier one on a shared machine.
Memory: peak bytes live in the torch CPU allocator during one fwd+bwd above what was live before it,
read from the profiler's allocation events (`total_allocated`, torch.profiler with profile_memory=True);
inputs and parameters are allocated before and not counted. Both are given as ratios to softmax.

    python scripts/bench_attention_scratch.py --seq-lens 1024 4096
"""

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lra.attention import ATTENTIONS, build_attention
from lra.attention.hrr_bundled import bundle_readout_fft, bundle_readout_gemm


def peak_bytes(fn) -> tuple[int, set[str]]:
    """Peak extra bytes held by the CPU allocator while fn runs (profiler allocation events), and the
    SDPA kernels that ran (so the table can say whether softmax got the fused kernel)."""
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    totals, kernels = [0], set()

    def walk(event):
        if event.tag == _EventType.Allocation:
            totals.append(event.extra_fields.total_allocated)  # running total since the profile began
        elif event.name.startswith("aten::_scaled_dot_product") and "backward" not in event.name:
            kernels.add(event.name.removeprefix("aten::"))
        for child in event.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    return max(totals), kernels


def make_step(fn, inputs):
    def step():
        for x in inputs:
            x.grad = None
        fn(*inputs).square().mean().backward()
    return step


def run(steps: dict, reps: int, warmup: int = 1) -> tuple[dict, dict]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(reps):  # interleaved: each round runs every candidate once
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    peaks, kernels = {}, {}
    for name, step in steps.items():
        peaks[name], kernels[name] = peak_bytes(step)
    return {n: (statistics.median(t), min(t)) for n, t in times.items()}, peaks, kernels


def table(title: str, med: dict, peaks: dict, kernels: dict, base: str) -> None:
    print(f"\n{title}")
    print("| mechanism | median ms | min ms | time ratio (median) | time ratio (min) | peak MB | memory ratio "
          "| SDPA kernel |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for n, (mid, low) in med.items():
        print(f"| {n} | {mid * 1e3:.1f} | {low * 1e3:.1f} | {mid / med[base][0]:.3f} | {low / med[base][1]:.3f} "
              f"| {peaks[n] / 2**20:.1f} | {peaks[n] / max(peaks[base], 1):.3f} "
              f"| {', '.join(sorted(kernels[n])) or '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mechanisms", nargs="+", default=list(ATTENTIONS))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--extra", action="store_true",
                    help="also hrr-individual with block_size=0 (plain two-GEMM autograd form) and "
                         "hrr-bundled's two read-out forms")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={args.batch}, "
          f"heads={args.heads}, H={args.head_dim}, fwd+bwd, {args.reps} interleaved reps, float32")
    for T in args.seq_lens:
        shape = (args.batch, args.heads, T, args.head_dim)
        q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
        mask = torch.ones(args.batch, T, dtype=torch.bool)
        modules = {n: build_attention(n, args.heads, args.head_dim) for n in args.mechanisms}
        if args.extra:
            modules["hrr-individual block_size=0"] = build_attention("hrr-individual", args.heads, args.head_dim,
                                                                     block_size=0)
        steps = {n: make_step(lambda q, k, v, m=m: m(q, k, v, mask), (q, k, v)) for n, m in modules.items()}
        if args.extra:
            steps["bundled read-out: fft"] = make_step(lambda q, k, v: bundle_readout_fft(q, k, v, mask), (q, k, v))
            steps["bundled read-out: gemm"] = make_step(lambda q, k, v: bundle_readout_gemm(q, k, v, mask), (q, k, v))
        med, peaks, kernels = run(steps, args.reps)
        base = "softmax" if "softmax" in med else next(iter(med))
        table(f"T={T} (ratios to {base})", med, peaks, kernels, base)


if __name__ == "__main__":
    main()
