"""`python -m lra.bench gpu`: everything that needs a GPU, in one command and one table.

1. the GPU tests (`pytest -m gpu tests/test_gpu.py`: bf16 and fp16 steps, one GradScaler step per batch, the
   CUDA memory metric, `gpu_memory.<attention>: auto` on CUDA, DDP over NCCL on one GPU, torchrun on one GPU),
   each test's outcome read from pytest's JUnit XML;
2. the attention benchmark on the GPU (every mechanism, fwd+bwd, time, FLOP rate, fraction of the GEMM rate,
   peak memory);
3. the training-step benchmark on the GPU (every attention, chunk = batch, batch/2, batch/4).

One markdown table follows: check, outcome, figures. The exit status is 1 when a test failed. Without a visible
CUDA device nothing runs and the command says so.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

from lra.attention import ATTENTIONS
from lra.bench.attention import default_candidates, run_attention_bench
from lra.bench.output import markdown_table
from lra.bench.step import compose, run_step_bench

TESTS = Path(__file__).resolve().parents[2] / "tests" / "test_gpu.py"


def run_tests(path: Path = TESTS, extra: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Run the GPU tests in a pytest subprocess; one {test, outcome, detail} per test case."""
    if not path.exists():
        return [{"test": str(path), "outcome": "missing", "detail": "run from a checkout of the repository"}]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", str(path), "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={junit}", *extra], cwd=path.parents[1], capture_output=True, text=True)
        if not junit.exists():
            return [{"test": str(path), "outcome": "error", "detail": (done.stdout + done.stderr)[-500:]}]
        return parse_junit(junit.read_text())


def parse_junit(text: str) -> list[dict[str, str]]:
    rows = []
    for case in ET.fromstring(text).iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                detail = " ".join((node.get("message") or node.text or "").split())[:200]
                break
        rows.append({"test": case.get("name", "?"), "outcome": outcome, "detail": detail})
    return rows


def run_gpu_check(*, lengths: list[int], task: str, repeats: int, warmup: int, overrides: list[str],
                  log: Callable[[str], None] = print, tests: bool = True, device: str = "cuda",
                  **attention_sizes: int) -> dict[str, Any]:
    """The tests, then both benchmarks on `device` (cuda; cpu only to try the command's plumbing); the
    JSON-ready result. attention_sizes: batch, heads, head_dim, matmul_size of the attention benchmark."""
    import torch


    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result: dict[str, Any] = {"benchmark": "gpu", "gpu": name, "torch": torch.__version__,
                              "cuda": torch.version.cuda}
    if tests:
        log(f"GPU tests: pytest -m gpu {TESTS}")
        result["tests"] = run_tests()
    log(f"attention benchmark on {result['gpu']} at T = {lengths}")
    result["attention"] = run_attention_bench(default_candidates(None, False), lengths=lengths, device=device,
                                              repeats=repeats, warmup=warmup, log=log, **attention_sizes)
    cfgs = {attention: compose([f"task={task}", f"attention={attention}", f"hardware.device={device.type}",
                                *overrides]) for attention in ATTENTIONS}
    log(f"step benchmark on {result['gpu']}, task {task}")
    result["step"] = run_step_bench(cfgs, repeats=repeats, warmup=warmup, log=log)
    return result


def gpu_table(result: dict[str, Any]) -> str:
    """One table: each test's outcome, then each benchmark figure."""
    rows = [[f"test {t['test']}", t["outcome"], t["detail"] or "-"] for t in result.get("tests", [])]
    for r in result["attention"]["results"]:
        frac = r.get("gemm_fraction")
        rows.append([f"attention {r['mechanism']} T={r['T']}", "measured",
                     f"{1e3 * r['time_median_s']:.2f} ms fwd+bwd, "
                     + (f"{r['flops_per_s'] / 1e12:.2f} TFLOP/s, {frac:.3f} of GEMM rate, " if frac else "")
                     + f"{r['peak_memory_bytes'] / 2**20:.0f} MB, x{r['time_ratio']:.2f} softmax's time"])
    step = result["step"]
    for r in step["results"]:
        rows.append([f"step {r['attention']} chunk={r['chunk']}", "measured",
                     f"{1e3 * r['time_median_s']:.2f} ms per batch of {step['setup']['batch_size']} "
                     f"({step['setup']['precision']}), {r['peak_memory_bytes'] / 2**20:.0f} MB, "
                     f"x{r['time_ratio']:.2f} chunk=batch's time"])
    head = (f"{result['gpu']}, torch {result['torch']}, CUDA {result['cuda']}; attention: fwd+bwd float32, "
            f"GEMM rate of a {result['attention']['setup']['matmul_size']}-square float32 matmul in the same rounds")
    return head + "\n" + markdown_table(["check", "result", "figures"], rows)


def failed(result: dict[str, Any]) -> bool:
    return any(t["outcome"] in ("failed", "error", "missing") for t in result.get("tests", []))
