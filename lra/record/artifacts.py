"""The finished model as MLflow artifacts: its best-dev weights (safetensors, no pickle) and its composed config.

`log_model_artifacts` is called by `lra.run.train.train` once the best weights are back in the model and tested, just
before the run ends FINISHED. It writes `model/config.yaml`, `model/weights.safetensors` and `model/meta.json`
(run id, task, attention, the chunk size and the test accuracy the run measured) into the run's checkpoint folder
and logs that folder to the run as the artifact directory `model/`. `lra.evaluate` rebuilds the model from either.
The config is written with every password of a URL in it masked (`lra.redaction`). A disk that fills up while
either folder is written ends the run with one `DiskFullError` line and no partial file left; the same command
run again tests the best weights again and logs them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lra.errors import ConfigError
from lra.disk import on_full_disk
from lra.redaction import redacted_yaml

ARTIFACT_DIR = "model"
CONFIG = "config.yaml"
WEIGHTS = "weights.safetensors"
META = "meta.json"


def _weights_bytes(model: torch.nn.Module) -> int:
    """The bytes of the model's tensors, each shared (tied) storage once: what weights.safetensors needs."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
    return sum(storages.values())


def _room_fix(folder: Path) -> str:
    return f"free space in {folder}, then run the same command: it tests the best weights again and logs them"


def write_model_folder(folder: str | Path, model: torch.nn.Module, cfg: DictConfig, meta: Mapping[str, Any]) -> Path:
    """`folder/model/{config.yaml, weights.safetensors, meta.json}`; returns that `model/` folder. Each file is
    written to a temporary name and renamed; DiskFullError (nothing partial left) when the disk fills up."""
    from safetensors.torch import save_model

    model = getattr(model, "module", model)
    out = Path(folder) / ARTIFACT_DIR
    texts = {CONFIG: redacted_yaml(cfg), META: json.dumps(dict(meta), indent=1, sort_keys=True, default=str) + "\n"}
    needed = sum(len(text.encode()) for text in texts.values()) + _weights_bytes(model)
    temporary = {name: out / f"{name}.tmp-{os.getpid()}" for name in (CONFIG, WEIGHTS, META)}
    with on_full_disk(out, needed, f"the model files ({', '.join(temporary)})", _room_fix(out),
                      leftovers=temporary.values()):
        out.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, WEIGHTS, META):
            if name == WEIGHTS:
                save_model(model, str(temporary[name]))  # shared (tied) tensors are stored once
            else:
                temporary[name].write_text(texts[name])
            os.replace(temporary[name], out / name)
    return out


def log_model_artifacts(tracker: Any, model: torch.nn.Module, cfg: DictConfig, folder: str | Path,
                        **meta: Any) -> Path:
    """Write the model folder under `folder` (the run's checkpoint folder) and log it to the tracker's run."""
    from mlflow.tracking import MlflowClient

    meta = {"run_id": tracker.run_id, "task": cfg.task, "attention": cfg.attention.name, **meta}
    out = write_model_folder(folder, model, cfg, meta)
    client = MlflowClient(tracker.uri)
    target = tracker.artifact_folder()
    if target is None:  # a server's artifact store: its own disk, its own errors
        client.log_artifacts(tracker.run_id, str(out), artifact_path=ARTIFACT_DIR)
        return out
    files = [path for path in out.iterdir() if path.is_file()]
    needed = sum(path.stat().st_size for path in files)
    with on_full_disk(target / ARTIFACT_DIR, needed, f"the model artifacts ({', '.join(p.name for p in files)})",
                      _room_fix(target / ARTIFACT_DIR), leftovers=[target / ARTIFACT_DIR / p.name for p in files]):
        client.log_artifacts(tracker.run_id, str(out), artifact_path=ARTIFACT_DIR)
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
