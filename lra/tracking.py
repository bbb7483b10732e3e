"""All MLflow calls: one run per job, tags, params, metrics, the composed config, and the final status."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lra.stores import redact

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store failed during a run (a server outage, a removed or locked file)."""

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

    def why_not_resumable(self, run_id: str) -> Optional[str]:
        """Why the checkpoint's run `run_id` cannot be continued in this store and experiment (None if it can)."""
        client = MlflowClient(self.uri)
        where = redact(self.uri)
        try:
            run = client.get_run(run_id)
        except MlflowException:
            return f"the checkpoint's MLflow run {run_id} is not in {where}"
        if run.info.lifecycle_stage == "deleted":
            return f"the checkpoint's MLflow run {run_id} was deleted from {where}"
        experiment = self.cfg.tracking.experiment or self.cfg.task
        found = client.get_experiment(run.info.experiment_id).name
        if found != experiment:
            return f"the checkpoint's MLflow run {run_id} belongs to experiment {found!r}, not {experiment!r}"
        return None

    def start(self, resume_run_id: Optional[str] = None, tags: Optional[Mapping[str, str]] = None) -> str:
        """Reopen `resume_run_id`, or create a new run (with `tags` beside the standard ones)."""
        mlflow.set_tracking_uri(self.uri)
        cfg = self.cfg
        experiment = cfg.tracking.experiment or cfg.task
        _set_experiment(experiment)
        if resume_run_id is not None:
            run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=cfg.tracking.system_metrics)
            self.run_id = run.info.run_id
            log.info("resuming MLflow run %s", self.run_id)
            return self.run_id
        tags = {"attention": cfg.attention.name, "task": cfg.task, **(tags or {})}
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
        mlflow.log_params({key: redact(str(value)) for key, value in flatten(container).items()})
        mlflow.log_text(redact(OmegaConf.to_yaml(cfg)), "config.yaml")
        return self.run_id

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every store failure reads the same to the trainer
            reason = redact(" ".join(str(error).split()))[:200] or type(error).__name__
            raise TrackingError(f"the MLflow store {redact(self.uri)} failed to {what} ({reason})") from error

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log params", mlflow.log_params, {key: str(value) for key, value in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log metrics", mlflow.log_metrics, {key: float(value) for key, value in metrics.items()},
                   step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call("set tags", mlflow.set_tags, {key: str(value) for key, value in tags.items()})

    def end(self, status: str, tags: Optional[Mapping[str, Any]] = None) -> None:
        """status: FINISHED (training completed), FAILED (diverged or raised) or KILLED (pruned, interrupted).
        Best effort: the run's end must not hide the error that ended it."""
        if self.run_id is None or mlflow.active_run() is None:
            return
        try:
            if tags:
                mlflow.set_tags({key: str(value) for key, value in tags.items()})
            mlflow.end_run(status=status)
        except Exception as error:  # noqa: BLE001 - the store is down: the run stays RUNNING until resumed
            log.warning("could not end MLflow run %s as %s: %s", self.run_id, status, redact(str(error)))
            try:
                mlflow.end_run(status=status)  # at least forget the active run in this process
            except Exception:  # noqa: BLE001
                pass

    def status(self) -> str:
        return MlflowClient(self.uri).get_run(self.run_id).info.status
