"""All MLflow calls: one run per job, tags, params, metrics, the composed config, and the final status."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"


def tracking_uri(configured: Optional[str]) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the launch directory (absolute,
    so parallel workers in other folders write to the same store)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri {uri} "
            f"--workers 1 --host 127.0.0.1 --port 5000")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def _set_experiment(name: str) -> None:
    for attempt in range(5):  # parallel workers may race to create the same experiment
        try:
            mlflow.set_experiment(name)
            return
        except Exception:  # noqa: BLE001 - mlflow raises several types for the race
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


class RunTracker:
    """One MLflow run for one job. `start` creates it, or reopens `resume_run_id` after a kill."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.uri = tracking_uri(cfg.tracking.uri)
        self.run_id: Optional[str] = None

    def start(self, resume_run_id: Optional[str] = None) -> str:
        mlflow.set_tracking_uri(self.uri)
        cfg = self.cfg
        experiment = cfg.tracking.experiment or cfg.task
        _set_experiment(experiment)
        if resume_run_id is not None:
            run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=cfg.tracking.system_metrics)
            self.run_id = run.info.run_id
            log.info("resuming MLflow run %s", self.run_id)
            return self.run_id
        tags = {"attention": cfg.attention.name, "task": cfg.task}
        if cfg.sweep.id:
            tags["sweep_id"] = str(cfg.sweep.id)
        if cfg.sweep.parent_run_id:
            tags["mlflow.parentRunId"] = str(cfg.sweep.parent_run_id)
        if cfg.sweep.trial_number is not None:
            tags["optuna_trial"] = str(cfg.sweep.trial_number)
        run = mlflow.start_run(run_name=cfg.tracking.run_name, tags=tags,
                               log_system_metrics=cfg.tracking.system_metrics)
        self.run_id = run.info.run_id
        container = OmegaConf.to_container(cfg, resolve=True)
        mlflow.log_params({key: str(value) for key, value in flatten(container).items()})
        mlflow.log_text(OmegaConf.to_yaml(cfg), "config.yaml")
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({key: str(value) for key, value in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({key: str(value) for key, value in tags.items()})

    def end(self, status: str) -> None:
        """status: FINISHED (training completed), FAILED (diverged or raised) or KILLED (pruned)."""
        if self.run_id is not None and mlflow.active_run() is not None:
            mlflow.end_run(status=status)

    def status(self) -> str:
        return MlflowClient(self.uri).get_run(self.run_id).info.status
