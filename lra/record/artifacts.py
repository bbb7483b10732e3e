"""The finished model as MLflow artifacts: its best-dev weights (safetensors, no pickle) and its composed config.

`log_model_artifacts` is called by `lra.run.train.train` once the best weights are back in the model and tested, just
before the run ends FINISHED. It writes `model/config.yaml`, `model/weights.safetensors` and `model/meta.json`
(run id, task, attention, the chunk size and the test accuracy the run measured) into the run's checkpoint folder
and logs that folder to the run as the artifact directory `model/`. `lra.evaluate` rebuilds the model from either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lra.errors import ConfigError

ARTIFACT_DIR = "model"
CONFIG = "config.yaml"
WEIGHTS = "weights.safetensors"
META = "meta.json"


def write_model_folder(folder: str | Path, model: torch.nn.Module, cfg: DictConfig, meta: Mapping[str, Any]) -> Path:
    """`folder/model/{config.yaml, weights.safetensors, meta.json}`; returns that `model/` folder."""
    from safetensors.torch import save_model

    out = Path(folder) / ARTIFACT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    save_model(getattr(model, "module", model), str(out / WEIGHTS))  # shared (tied) tensors are stored once
    (out / META).write_text(json.dumps(dict(meta), indent=1, sort_keys=True, default=str) + "\n")
    return out


def log_model_artifacts(tracker: Any, model: torch.nn.Module, cfg: DictConfig, folder: str | Path,
                        **meta: Any) -> Path:
    """Write the model folder under `folder` (the run's checkpoint folder) and log it to the tracker's run."""
    from mlflow.tracking import MlflowClient

    meta = {"run_id": tracker.run_id, "task": cfg.task, "attention": cfg.attention.name, **meta}
    out = write_model_folder(folder, model, cfg, meta)
    MlflowClient(tracker.uri).log_artifacts(tracker.run_id, str(out), artifact_path=ARTIFACT_DIR)
    return out


def load_model_folder(folder: str | Path) -> tuple[DictConfig, Path, dict[str, Any]]:
    """(config, weights file, meta) of a model folder (or of a checkpoint folder holding one)."""
    folder = Path(folder)
    if not (folder / WEIGHTS).exists() and (folder / ARTIFACT_DIR / WEIGHTS).exists():
        folder = folder / ARTIFACT_DIR
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).exists():

            raise ConfigError("run", str(folder), f"has no {name}",
                              f"give a folder with {CONFIG} and {WEIGHTS} (a run's checkpoints/<key>/ or model/)")
    meta = json.loads((folder / META).read_text()) if (folder / META).exists() else {}
    return OmegaConf.load(folder / CONFIG), folder / WEIGHTS, meta


def load_weights(model: torch.nn.Module, weights: str | Path) -> None:
    """Load `weights` into `model` strictly (tied tensors, stored once, are restored to every name)."""
    from safetensors.torch import load_model

    load_model(model, str(weights), strict=True)
