"""Each task's `data` node, the sample counts it uses and the model sizes its data need.

`conf/task/<name>.yaml` carries the same `data` node (the `dataset` sizes and model values are listed here for
`python -m lra.data` and for reference). Values and where they come from:
- LRA code: google-research/long-range-arena `lra_benchmarks/` (generators, input pipelines, configs).
- seed: Nystromformer's `LRA/code/lra_config.py` (the sample counts of listops, image, retrieval, text).
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

TASKS: dict[str, dict[str, Any]] = {
    # ListOps, generated locally with the LRA generator (flags of lra_benchmarks/data/listops.py)
    "listops": {
        "data": {"loader": "listops-generated", "max_depth": 10, "max_args": 10, "min_length": 500,
                 "max_length": 2000},
        "dataset": {"train": 96000, "dev": 2000, "test": 2000},  # LRA generator defaults = seed
        "model": {"vocab_size": 16, "max_seq_len": 2000, "num_classes": 10},
    },
    # ListOps from the release files (lra_release/listops-1000)
    "listops-release": {
        "data": {"loader": "listops", "max_length": 2000},
        "dataset": {"train": 96000, "dev": 2000, "test": 2000},
        "model": {"vocab_size": 16, "max_seq_len": 2000, "num_classes": 10},
    },
    # the default experiment: shallow trees (depth <= 3), 11..122 tokens; a small transformer passes 0.4 in an
    # epoch (majority class 0.16)
    "listops-small": {
        "data": {"loader": "listops-generated", "max_depth": 3, "max_args": 10, "min_length": 10,
                 "max_length": 128},
        "dataset": {"train": 10000, "dev": 1000, "test": 1000},
        "model": {"vocab_size": 16, "max_seq_len": 128, "num_classes": 10},
    },
    # depth <= 6, 101..511 tokens (mean 193): a longer CPU run
    "listops-medium": {
        "data": {"loader": "listops-generated", "max_depth": 6, "max_args": 10, "min_length": 100,
                 "max_length": 512},
        "dataset": {"train": 20000, "dev": 2000, "test": 2000},
        "model": {"vocab_size": 16, "max_seq_len": 512, "num_classes": 10},
    },
    "text": {
        "data": {"loader": "text", "max_length": 4000, "dev_split": "test", "truncate": True},
        "dataset": {"train": 25000, "dev": 25000, "test": 25000},  # seed; LRA validates on test
        "model": {"vocab_size": 257, "max_seq_len": 4000, "num_classes": 2},
    },
    "text-small": {
        "data": {"loader": "text", "max_length": 512, "dev_split": "train", "dev_fraction": 0.1,
                 "truncate": True},
        "dataset": {"train": 5000, "dev": 1000, "test": 1000},
        "model": {"vocab_size": 257, "max_seq_len": 512, "num_classes": 2},
    },
    "retrieval": {
        "data": {"loader": "retrieval", "max_length": 4000, "truncate": True},
        "dataset": {"train": 147086, "dev": 18090, "test": 17437},  # seed (= the release's line counts)
        "model": {"vocab_size": 257, "max_seq_len": 4000, "num_classes": 2},
    },
    "retrieval-small": {
        "data": {"loader": "retrieval", "max_length": 512, "truncate": True},
        "dataset": {"train": 10000, "dev": 1000, "test": 1000},
        "model": {"vocab_size": 257, "max_seq_len": 512, "num_classes": 2},
    },
    "image": {
        "data": {"loader": "image", "dev_fraction": 0.1},
        "dataset": {"train": 45000, "dev": 5000, "test": 10000},  # seed = LRA's train[:90%]/train[90%:]/test
        "model": {"vocab_size": 257, "max_seq_len": 1024, "num_classes": 10},
    },
    "image-small": {
        "data": {"loader": "image-digits", "split_seed": 0},
        "dataset": {"train": 1437, "dev": 179, "test": 181},  # all 1797 digits, 80/10/10
        "model": {"vocab_size": 18, "max_seq_len": 64, "num_classes": 10},
    },
    "pathfinder32": {
        "data": {"loader": "pathfinder", "resolution": 32, "difficulty": "hard", "split_seed": 0},
        "dataset": {"train": 160000, "dev": 20000, "test": 20000},  # 80/10/10 of 200k (less any empty images)
        "model": {"vocab_size": 257, "max_seq_len": 1024, "num_classes": 2},
    },
    "pathfinder32-generated": {
        "data": {"loader": "pathfinder-generated", "resolution": 32, "contour_length": 14, "distractor_length": 4,
                 "num_distractor_snakes": 5, "paddle_length": 2, "paddle_thickness": 0.5, "paddle_margin": 1,
                 "marker_radius": 1.5, "seed_distance": 7, "continuity": 1.0, "padding": 1},
        "dataset": {"train": 160000, "dev": 20000, "test": 20000},
        "model": {"vocab_size": 257, "max_seq_len": 1024, "num_classes": 2},
    },
    # 16x16 (256 tokens), two 4-paddle targets and two 2-paddle distractors: a Pathfinder a CPU can train on
    "pathfinder-small": {
        "data": {"loader": "pathfinder-generated", "resolution": 16, "contour_length": 4, "distractor_length": 2,
                 "num_distractor_snakes": 2, "paddle_length": 2, "paddle_thickness": 0.5, "paddle_margin": 1,
                 "marker_radius": 1.5, "seed_distance": 5, "continuity": 1.0, "padding": 1},
        "dataset": {"train": 10000, "dev": 1000, "test": 1000},
        "model": {"vocab_size": 257, "max_seq_len": 256, "num_classes": 2},
    },
}


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def prepare_command(loader: str, params: Any, root: str, source: str | None = None) -> str:
    """The `python -m lra.data` command that makes the arrays a `data` node with `loader` and `params` needs."""
    wanted = dataclasses.asdict(params)
    best, best_diff = None, None
    for task, spec in TASKS.items():
        data = spec["data"]
        if data["loader"] != loader:
            continue
        diff = {k: v for k, v in wanted.items() if data.get(k, _default(params, k)) != v}
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = task, diff
    verb = "generate" if TASKS.get(best, {}).get("data", {}).get("loader", "").endswith("generated") else "prepare"
    parts = ["python", "-m", "lra.data", verb, best or loader]
    if verb == "prepare" and loader != "image-digits":
        parts += ["--source", source or "PATH"]
    if root != "data":
        parts += ["--root", root]
    for key, value in (best_diff or {}).items():
        parts += ["--set", f"{key}={_format(value)}"]
    return shlex.join(parts).replace("'PATH'", "PATH")


def _default(params: Any, key: str) -> Any:
    for field in dataclasses.fields(params):
        if field.name == key:
            return field.default
    return None
