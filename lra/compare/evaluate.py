"""`python -m lra.evaluate RUN_ID|FOLDER [--split test] [key=value ...]`: test a finished run without retraining.

The model is rebuilt from the run alone: its `model/` artifacts (the composed config and the best-dev weights that
`lra.record.artifacts` logged when it finished), or a folder holding them (`checkpoints/<key>/` or a downloaded
`model/`). The split is evaluated exactly as the trainer tested it (the same batch size, chunk size, precision and
truncation), so `--split test` reproduces the run's `test_accuracy`. Overrides (`data.source=...`,
`data.root=...`, `dataset.test=...`, `hardware.device=cpu`) evaluate it on other data or elsewhere. Prints
`<split>_accuracy=<value>` and logs `evaluate/<split>_accuracy` and `evaluate/<split>_loss` to the run (`--no-log`
to skip).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lra.config import resolve_device, resolve_precision, validate
from lra.data import load_splits
from lra.errors import ConfigError
from lra.record.artifacts import ARTIFACT_DIR, load_model_folder, load_weights
from lra.record.tracking import tracking_uri
from lra.run.step import autocast_context
from lra.run.train import build_model, evaluate

SPLITS = ("train", "dev", "test")
PREFIX = "evaluate"


def fetch_run_model(run_id: str, tracking_uri: str, into: Path) -> Path:
    """Download the run's `model/` artifacts into `into`; a ConfigError names what is missing."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient


    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ConfigError("run", run_id, f"no such MLflow run in {tracking_uri}",
                          "give a run id from that store (or --tracking-uri / MLFLOW_TRACKING_URI), or a folder "
                          "holding config.yaml and weights.safetensors") from None
    try:
        return Path(client.download_artifacts(run_id, ARTIFACT_DIR, str(into)))
    except (MlflowException, OSError):
        raise ConfigError("run", run_id, "has no model/ artifacts (it did not finish, or predates them)",
                          "evaluate a run that ended FINISHED, or retrain it") from None


def evaluate_model(cfg, weights: Path, meta: dict, split: str) -> dict[str, float]:
    """Rebuild, load and evaluate on `split` as lra.run.train tested: {"accuracy", "loss", "count"}."""
    import torch


    cfg = validate(cfg)
    device = resolve_device(cfg.hardware.device)
    precision = resolve_precision(cfg.training.mixed_precision, device)
    if cfg.hardware.num_threads is not None:
        torch.set_num_threads(cfg.hardware.num_threads)
    limit = cfg.model.max_seq_len - (1 if cfg.model.pooling_mode == "CLS" else 0) if cfg.data.truncate else None
    splits = load_splits(cfg.data, cfg.dataset)
    model = build_model(cfg)
    try:
        load_weights(model, weights)
    except RuntimeError as error:
        raise ConfigError("weights", str(weights), f"do not fit the config's model ({str(error).splitlines()[0]})",
                          "evaluate with the config the run logged (no model.* overrides)") from None
    model.to(device)
    chunk = meta.get("chunk_size")
    configured = cfg.gpu_memory[cfg.attention.name]
    chunk_size = int(chunk) if chunk is not None else (cfg.training.batch_size if configured == "auto"
                                                       else int(configured))
    stats = evaluate(model, splits[split], batch_size=cfg.training.batch_size, chunk_size=chunk_size, device=device,
                     autocast=autocast_context(device, precision), limit=limit)
    return {"accuracy": stats.accuracy, "loss": stats.loss, "count": stats.count}


def apply_overrides(cfg, overrides: Sequence[str]):
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item:
            raise ConfigError("override", item, "is not key=value", "write overrides as key=value, e.g. "
                              "data.root=data")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="an MLflow run id, or a folder with config.yaml and weights.safetensors "
                                    "(a run's checkpoints/<key>/ or its downloaded model/ artifacts)")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the run's config (data.*, dataset.*, "
                                                     "hardware.*)")
    parser.add_argument("--split", default="test", help="train, dev or test (default test)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                                                             "sqlite:///mlflow.db here)")
    parser.add_argument("--no-log", action="store_true", help="print only; log nothing to the run")
    args = parser.parse_intermixed_args(argv)
    try:
        return _run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.split not in SPLITS:
        raise ConfigError("--split", args.split, "unknown split", f"use one of: {', '.join(SPLITS)}")
    uri = tracking_uri(args.tracking_uri)
    folder = Path(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        if folder.is_dir():
            cfg, weights, meta = load_model_folder(folder)
        else:
            cfg, weights, meta = load_model_folder(fetch_run_model(args.run, uri, Path(tmp)))
            meta.setdefault("run_id", args.run)
        cfg = apply_overrides(cfg, args.overrides)
        result = evaluate_model(cfg, weights, meta, args.split)
    print(f"{args.split}_accuracy={result['accuracy']}")
    print(f"{args.split}_loss={result['loss']}  ({result['count']} samples)")
    run_id = meta.get("run_id")
    if run_id and not args.no_log:
        _log(uri, run_id, args.split, result, args.overrides)
        print(f"logged {PREFIX}/{args.split}_accuracy to MLflow run {run_id} ({uri})")
    return 0


def _log(uri: str, run_id: str, split: str, result: dict[str, Any], overrides: Sequence[str]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for key in ("accuracy", "loss"):
        client.log_metric(run_id, f"{PREFIX}/{split}_{key}", float(result[key]))
    if overrides:
        client.set_tag(run_id, f"{PREFIX}/{split}_overrides", " ".join(overrides))


if __name__ == "__main__":
    sys.exit(main())
