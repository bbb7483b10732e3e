"""The whole training step (`lra.run.step.train_step`: chunked fwd+bwd, AdamW) per attention and chunk size, and the
data loader against it.

The config is the real one (`conf/`, composed in-process with the task and any overrides), so the model, batch
size and precision are the task's. For each attention, chunk = batch, batch/2 and batch/4 run interleaved with
every other attention's in rotating rounds; round r gives every candidate the same batch (random training
samples), so the ratios compare like with like. The loader (`lra.run.batches.make_batch` over random indices, then
`to_device`) is timed in the same rounds; its share of the step is the loading time over the step time at
chunk = batch (the trainer loads synchronously, so this is the time it adds).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from lra.bench.attention import environment
from lra.bench.measure import interleaved, peak_memory, ratios
from lra.compose import compose_config
from lra.config import resolve_device, resolve_precision, validate
from lra.data import load_splits
from lra.run.batches import make_batch, to_device
from lra.run.step import autocast_context, train_step
from lra.run.train import build_model, build_optimizer

LOADER = "data"


def compose(overrides: list[str]) -> DictConfig:
    """The composed and validated run config, as `launch.py` would see it."""

    return validate(compose_config(overrides))


def chunk_sizes(batch_size: int) -> list[int]:
    """batch, batch/2, batch/4 (rounded down, at least 1, each once)."""
    return list(dict.fromkeys(max(1, batch_size // d) for d in (1, 2, 4)))


def run_step_bench(cfgs: dict[str, DictConfig], *, repeats: int = 10, warmup: int = 2, seed: int = 0,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """cfgs: attention name -> composed config (same task and batch size). Returns the JSON-ready result."""

    first = next(iter(cfgs.values()))
    t, hw = first.training, first.hardware
    device = resolve_device(hw.device)
    precision = resolve_precision(t.mixed_precision, device)
    if hw.num_threads is not None:
        torch.set_num_threads(hw.num_threads)
    limit = first.model.max_seq_len - (first.model.pooling_mode == "CLS") if first.data.truncate else None
    split = load_splits(first.data, first.dataset, seed=t.seed)["train"]
    B = min(int(t.batch_size), len(split))
    rng = np.random.default_rng(seed)
    indices = [rng.choice(len(split), B, replace=False) for _ in range(warmup + repeats + 1)]
    batches = [to_device(make_batch(split, idx, limit), device) for idx in indices]

    steps: dict[str, Callable[[], object]] = {}
    keys: dict[str, tuple[str, int]] = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(t.seed)
        model = build_model(cfg).to(device)
        optimizer = build_optimizer(model, cfg.training.learning_rate, cfg.training.weight_decay,
                                    cfg.training.optimizer)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        autocast = autocast_context(device, precision)
        for chunk in chunk_sizes(B):
            calls = iter(range(10**9))

            def step(model=model, optimizer=optimizer, scaler=scaler, autocast=autocast, chunk=chunk, calls=calls,
                     clip=float(cfg.training.grad_clip), smoothing=float(cfg.training.label_smoothing)):
                batch = batches[next(calls) % len(batches)]  # the n-th call of every candidate: the same batch
                train_step(model, batch, optimizer, chunk_size=chunk, autocast=autocast, scaler=scaler,
                           grad_clip=clip, label_smoothing=smoothing)
            key = f"{name}@{chunk}"
            steps[key], keys[key] = step, (name, chunk)
    load_rng = np.random.default_rng(seed + 1)
    steps[LOADER] = lambda: to_device(make_batch(split, load_rng.choice(len(split), B, replace=False), limit), device)

    log(f"{len(steps) - 1} step candidates + the loader, {warmup} warm-up and {repeats} timed rounds")
    timings = interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    rows = []
    for key, (name, chunk) in keys.items():
        peak = peak_memory(steps[key], device)
        rows.append({"attention": name, "chunk": chunk, "time_median_s": timings[key].median,
                     "time_min_s": timings[key].min, "times_s": timings[key].times, "peak_memory_bytes": peak.bytes})
    for r in rows:
        base = next(b for b in rows if b["attention"] == r["attention"] and b["chunk"] == B)
        r.update(ratios(r, base))
    load = timings[LOADER]
    data = {"batch_time_median_s": load.median, "batch_time_min_s": load.min, "times_s": load.times,
            "samples_per_s": B / load.median}
    fraction = {}
    for r in rows:
        if r["chunk"] == B:
            fraction[r["attention"]] = {"step_samples_per_s": B / r["time_median_s"],
                                        "fraction": load.median / r["time_median_s"]}
    setup = {"task": first.task, "batch_size": B, "chunks": chunk_sizes(B), "precision": precision,
             "attentions": list(cfgs), "repeats": repeats, "warmup": warmup, "seed": seed,
             "model": dict(first.model), "dataset": dict(first.dataset)}
    env = environment(device)
    env["timing"] = "wall clock of one train_step, candidates interleaved in rotating rounds, median and min"
    return {"benchmark": "step", "setup": setup, "environment": env, "results": rows, "data": data,
            "data_fraction": fraction}
