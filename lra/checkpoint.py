"""Atomic checkpoints and resume.

Each distinct config gets its own folder (a hash of the config without the keys that do not change the
result), so the same command run again finds its checkpoint. Files are written to a temporary name and
renamed, so a kill never leaves a half-written checkpoint, and read with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

# Keys that do not change what a run computes: where it logs, where it saves, how it reports progress. Of the
# sweep node only the Optuna trial stays: two trials with equal parameters are still two runs.
_NOT_IN_IDENTITY = ("tracking", "checkpoint")
_NOT_IN_IDENTITY_LEAVES = (("hardware", "num_threads"), ("training", "log_every"), ("training", "checkpoint_every"),
                           ("sweep", "id"), ("sweep", "parent_run_id"), ("sweep", "storage"))

LAST = "last.pt"
BEST = "best.pt"


def run_key(cfg: DictConfig) -> str:
    """A short stable hash of everything that determines the run's result."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_IN_IDENTITY:
        tree.pop(key, None)
    for parent, leaf in _NOT_IN_IDENTITY_LEAVES:
        tree.get(parent, {}).pop(leaf, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """The folder of one run: `last.pt` (everything needed to resume) and `best.pt` (best-dev weights)."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.folder = Path(root) / key

    def load_last(self) -> Optional[dict[str, Any]]:
        path = self.folder / LAST
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def save_last(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(state, self.folder / LAST)

    def save_best(self, model_state: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(model_state, self.folder / BEST)

    def load_best(self) -> Optional[dict[str, torch.Tensor]]:
        path = self.folder / BEST
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
