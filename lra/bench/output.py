"""Tables (markdown), JSON files and MLflow logging of benchmark results."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from lra.record.tracking import tracking_uri

EXPERIMENT = "bench"


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


TEXT_COLUMNS = {"mechanism", "attention", "SDPA kernel", "figure", "verdict", "check", "result", "figures"}


def _giga(x: float | None) -> float | None:
    return None if x is None else x / 1e9


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Text columns left-aligned, numbers right-aligned."""
    align = ["---" if h in TEXT_COLUMNS else "---:" for h in header]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def attention_report(result: dict[str, Any]) -> str:
    """The printed report of `lra.bench attention`: one table per length, scaling, matmul fraction."""
    s, env, ref = result["setup"], result["environment"], result["reference"]
    out = [f"fwd+bwd, B={s['batch']}, heads={s['heads']}, head_dim={s['head_dim']}, {s['dtype']}, {s['mask']}; "
           f"torch {env['torch']} on {env['device']}, {env['threads']} threads",
           f"time: {env['timing']} ({s['warmup']} warm-up, {s['repeats']} timed)",
           f"peak memory: {env['memory_method']}",
           f"ratios to {ref} measured in the same rounds: time ratio = of medians; ratio of mins = of fastest runs; "
           "paired = median of the per-round ratios",
           "GFLOP: the mechanism's analytic fwd+bwd count (lra.bench.flops); of GEMM rate: GFLOP/s over the "
           f"{s['matmul_size']}x{s['matmul_size']} float32 GEMM's GFLOP/s (median) in the same rounds"]
    compiled = any(r["compiled"] for r in result["results"])
    for T in s["lengths"]:
        header = ["mechanism", "median ms", "min ms", "GFLOP", "GFLOP/s", "of GEMM rate", "time ratio",
                  "ratio of mins", "paired ratio", "peak MB", "memory ratio", "SDPA kernel"]
        header += ["compile s"] if compiled else []
        rows = []
        for r in (r for r in result["results"] if r["T"] == T):
            row = [r["mechanism"], _f(1e3 * r["time_median_s"], ".1f"), _f(1e3 * r["time_min_s"], ".1f"),
                   _f(_giga(r.get("flops")), ".3g"), _f(_giga(r.get("flops_per_s")), ".3g"),
                   _f(r.get("gemm_fraction"), ".3f"), _f(r["time_ratio"], ".3f"), _f(r["time_ratio_min"], ".3f"),
                   _f(r["time_ratio_paired"], ".3f"),
                   _f(r["peak_memory_bytes"] / 2**20, ".1f"), _f(r["memory_ratio"], ".3f"),
                   ", ".join(r["sdpa_kernels"]) or "-"]
            rows.append(row + ([_f(r["compile_s"], ".1f")] if compiled else []))
        out += ["", f"T={T}", markdown_table(header, rows)]
    if result["scaling"]:
        any_ = next(iter(result["scaling"].values()))
        out += ["", f"scaling exponent between T={any_['T1']} and T={any_['T2']}: log(y2/y1) / log(T2/T1)",
                markdown_table(["mechanism", "time exponent", "memory exponent"],
                               [[m, _f(v["time_exponent"], ".2f"), _f(v["memory_exponent"], ".2f")]
                                for m, v in result["scaling"].items()])]
    if result["softmax_matmul_fraction"]:
        rows = [[T, _f(v["softmax_flops_per_s"] / 1e9, ".1f"), _f(v["matmul_flops_per_s"] / 1e9, ".1f"),
                 _f(v["matmul_peak_flops_per_s"] / 1e9, ".1f"), _f(v["fraction"], ".3f")]
                for T, v in result["softmax_matmul_fraction"].items()]
        n = s["matmul_size"]
        out += ["", f"softmax fwd+bwd (12·B·h·T²·H FLOPs) against a {n}x{n} float32 GEMM in the same rounds",
                markdown_table(["T", "softmax GFLOP/s", "GEMM GFLOP/s (median)", "GEMM GFLOP/s (best)",
                                "fraction of GEMM rate"], rows)]
    return "\n".join(out)


def step_report(result: dict[str, Any]) -> str:
    """The printed report of `lra.bench step`."""
    s, env = result["setup"], result["environment"]
    out = [f"training step (fwd+bwd+AdamW) of the whole model, task {s['task']}, batch {s['batch_size']}, "
           f"precision {s['precision']}; torch {env['torch']} on {env['device']}, {env['threads']} threads",
           f"time: {env['timing']} ({s['warmup']} warm-up, {s['repeats']} timed)",
           f"peak memory: {env['memory_method']}",
           "ratios to chunk = batch measured in the same rounds (paired = median of the per-round ratios, each "
           "round one batch for all); data: lra.run.batches.make_batch over random indices, timed in the same rounds"]
    header = ["attention", "chunk", "median ms", "min ms", "time ratio", "ratio of mins", "paired ratio", "peak MB",
              "memory ratio"]
    rows = [[r["attention"], str(r["chunk"]), _f(1e3 * r["time_median_s"], ".1f"), _f(1e3 * r["time_min_s"], ".1f"),
             _f(r["time_ratio"], ".3f"), _f(r["time_ratio_min"], ".3f"), _f(r["time_ratio_paired"], ".3f"),
             _f(r["peak_memory_bytes"] / 2**20, ".1f"), _f(r["memory_ratio"], ".3f")]
            for r in result["results"]]
    out += ["", markdown_table(header, rows)]
    d = result["data"]
    rows = [[a, _f(v["step_samples_per_s"], ".0f"), _f(d["samples_per_s"], ".0f"), _f(100 * v["fraction"], ".2f")]
            for a, v in result["data_fraction"].items()]
    out += ["", f"data loading: {_f(d['samples_per_s'], '.0f')} samples/s "
                f"({_f(1e3 * d['batch_time_median_s'], '.3f')} ms per batch of {s['batch_size']})",
            markdown_table(["attention", "step samples/s (chunk = batch)", "loader samples/s",
                            "loading % of step time"], rows)]
    return "\n".join(out)


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def _metric_key(text: str) -> str:
    """MLflow metric names allow alphanumerics, _ - . space and /; the rest becomes _."""
    return re.sub(r"[^\w\-. /]", "_", text)


def log_to_mlflow(result: dict[str, Any], params: dict[str, Any], metrics: list[tuple[str, float, int]],
                  run_name: str) -> str:
    """One run in experiment `bench` ($MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here): params, metrics
    (name, value, step), and the result JSON as the artifact `<run_name>.json`. Returns the run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(None))
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"benchmark": result["benchmark"], "device": result["environment"]["device"]})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for name, value, step in metrics:
            if value is not None and math.isfinite(value):
                mlflow.log_metric(_metric_key(name), float(value), step=step)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(write_json(result, Path(tmp) / f"{run_name}.json")))
        return run.info.run_id


def attention_metrics(result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Per candidate and length (step = T), plus the scaling exponents and softmax's matmul fraction."""
    m = []
    for r in result["results"]:
        label, T = r["mechanism"], r["T"]
        m += [(f"time_ms/{label}", 1e3 * r["time_median_s"], T), (f"time_ratio/{label}", r["time_ratio"], T),
              (f"time_ratio_paired/{label}", r["time_ratio_paired"], T),
              (f"peak_memory_mb/{label}", r["peak_memory_bytes"] / 2**20, T),
              (f"memory_ratio/{label}", r["memory_ratio"], T),
              (f"gemm_fraction/{label}", r.get("gemm_fraction"), T)]
    for label, v in result["scaling"].items():
        m += [(f"time_exponent/{label}", v["time_exponent"], 0), (f"memory_exponent/{label}", v["memory_exponent"], 0)]
    for T, v in result["softmax_matmul_fraction"].items():
        m.append(("softmax_matmul_fraction", v["fraction"], int(T)))
    return m


def step_metrics(result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Per attention and chunk (step = chunk), plus the data loading fraction."""
    m = []
    for r in result["results"]:
        a, c = r["attention"], r["chunk"]
        m += [(f"step_ms/{a}", 1e3 * r["time_median_s"], c), (f"time_ratio/{a}", r["time_ratio"], c),
              (f"time_ratio_paired/{a}", r["time_ratio_paired"], c),
              (f"peak_memory_mb/{a}", r["peak_memory_bytes"] / 2**20, c)]
    for a, v in result["data_fraction"].items():
        m.append((f"data_fraction/{a}", v["fraction"], 0))
    m.append(("loader_samples_per_second", result["data"]["samples_per_s"], 0))
    return m
