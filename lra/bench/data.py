"""`python -m lra.data bench`: how fast batches come out of a Split, and how fast the generators draw.

Batch gathering is timed on each task's real array shape and dtype (random tokens in a .npy under a temporary
folder, so no release files are needed), both copied into memory and memory-mapped: random indices of one batch,
sorted (as `lra.run.batches` does), gathered and converted to int64 torch tensors with masks, as the trainer does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from lra.data import LOADERS, Split, sequence_length, snakes
from lra.data.params import parse
from lra.data.store import token_dtype
from lra.data.tasks import task_names, task_preset, task_presets
from lra.run.batches import make_batch

# Token dtypes of the prepared arrays: the smallest that holds the loader's ids, except for bytes (text,
# retrieval), whose arrays are uint8 unless a document holds the byte 0xFF (as the real releases do not).
BYTE_LOADERS = ("text", "retrieval")
MAX_BYTES = 1 << 28  # the synthetic token array per task is capped at 256 MB (rows gathered at random either way)


def shape(task: str) -> tuple[int, int, np.dtype, bool]:
    """(samples, length T, token dtype, two documents) of `task`'s train split, from its conf/task file."""

    preset = task_preset(task)
    data = preset["data"]
    loader = LOADERS[data["loader"]]
    dtype = np.dtype(np.uint8) if loader.name in BYTE_LOADERS else token_dtype(loader.vocab_size - 1)
    return preset["dataset"]["train"], sequence_length(data), dtype, loader.name == "retrieval"


def distinct_shapes(tasks) -> list[str]:
    """The first task of each distinct array shape (the default set to time)."""
    seen, out = set(), []
    for task in tasks:
        key = shape(task)
        if key not in seen:
            seen.add(key)
            out.append(task)
    return out


def synthetic_split(folder: Path, n: int, T: int, dtype, dual: bool, rng: np.random.Generator):
    def tokens(name: str) -> np.ndarray:
        arr = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(n, T))
        for start in range(0, n, 4096):
            stop = min(n, start + 4096)
            arr[start:stop] = rng.integers(1, 200, (stop - start, T), dtype=np.int64).astype(dtype)
        arr.flush()
        del arr
        return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    lengths = rng.integers(T // 4, T + 1, n).astype(np.int32)
    labels = rng.integers(0, 2, n).astype(np.int64)
    if dual:
        return Split(tokens("a"), lengths, labels, tokens("b"), lengths[::-1].copy())
    return Split(tokens("a"), lengths, labels)


def gather_rate(split, batch: int, seconds: float, rng: np.random.Generator, trainer: bool = False) -> float:
    """Samples per second of gathering random batches: `Split.batch` (numpy gather, int64 tensors), or with
    `trainer` the trainer's `lra.run.batches.make_batch` (also masks from lengths)."""
    if trainer:
        one = make_batch
    else:
        def one(s, index):
            return s.batch(np.sort(index))
    n = len(split)
    for _ in range(20):
        one(split, rng.integers(0, n, batch))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one(split, rng.integers(0, n, batch))
        done += batch
    return done / (time.perf_counter() - start)


def bench_gather(tasks: list[str], batch: int, seconds: float) -> list[tuple]:
    """Per task: (task, shape, in memory, in memory through lra.run.batches (or None), memory-mapped) samples/s."""

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            n, T, dtype, dual = shape(task)
            n = min(n, max(1000, MAX_BYTES // (T * np.dtype(dtype).itemsize)))  # Path-X's train split is 5 GB
            folder = Path(tmp) / task
            folder.mkdir()
            mapped_split = synthetic_split(folder, n, T, dtype, dual, rng)
            mapped = gather_rate(mapped_split, batch, seconds / 2, rng)
            split = Split(*(None if a is None else np.array(a) for a in (
                mapped_split.tokens, mapped_split.lengths, mapped_split.labels, mapped_split.tokens2,
                mapped_split.lengths2)))
            rate = gather_rate(split, batch, seconds, rng)
            through = gather_rate(split, batch, seconds, rng, trainer=True)
            rows.append((task, f"{n}x{T}{'x2' if dual else ''} {np.dtype(dtype).name}", rate, through, mapped))
            del split, mapped_split
    return rows


def bench_generators(images: int, workers: int | None) -> list[tuple[str, float]]:
    rows = []
    generated = [(task, spec["data"]) for task, spec in task_presets().items()
                 if spec["data"]["loader"] == snakes.PathfinderGenerated.name]
    for task, data in generated:
        _, _, p = parse(data, LOADERS)
        snakes.geometry(p)
        start = time.perf_counter()
        snakes.generate_images(p, images, seed=0, workers=workers)
        rows.append((task, images / (time.perf_counter() - start)))
    return rows


def main(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.generators:
        for task, rate in bench_generators(args.images, args.workers):
            print(f"{task:24s} {rate:10.0f} images/s ({args.images} images, workers={args.workers or 'all cores'})")

    tasks = args.tasks or distinct_shapes(task_names())
    print(f"batch {args.batch}, samples/s (ms per batch); torch threads {torch.get_num_threads()}")
    print(f"{'task':18s} {'array':26s} {'Split.batch':>22s} {'lra.run.batches.make_batch':>24s} {'memory-mapped':>22s}")
    for task, shape, rate, through, mapped in bench_gather(tasks, args.batch, args.seconds):
        cells = [f"{r:10.0f} ({1e3 * args.batch / r:6.3f})" if r else f"{'-':>19s}" for r in (rate, through, mapped)]
        print(f"{task:18s} {shape:26s} {cells[0]:>22s} {cells[1]:>24s} {cells[2]:>22s}")
    return 0
