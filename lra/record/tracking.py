"""All MLflow calls: one run per job, tags, params, metrics, the composed config, the dataset, and the final status.

Experiments are created tagged as training experiments (`mlflow.experimentKind`), runs are named by what they
are (`<attention>-<task>-s<seed>`, `-t<trial>` in Optuna searches), and the task's prepared data is the run's
dataset input (name, the manifest's digest, split sizes), so the MLflow UI's runs table says what each run is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import unquote, urlparse

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lra.data import read_prepared_manifest
from lra.disk import DiskFullError, on_full_disk
from lra.record.stores import check_tracking_store
from lra.redaction import redact, redacted_yaml

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


def ui_command(uri: str, *, experiment: Optional[str] = None, sweep_id: Optional[str] = None) -> str:
    """The command that opens the MLflow UI on this store, at this experiment and sweep (`python -m lra.ui`)."""
    command = "python -m lra.ui"
    if uri != tracking_uri(None):
        command += f" --tracking-uri {redact(uri)}"  # a password stays out of the console
    if sweep_id:
        command += f" --sweep-id {sweep_id}"
    elif experiment:
        command += f" --experiment {experiment}"
    return command


def ui_hint(cfg: DictConfig, uri: str) -> Optional[str]:
    """The run's last line, `Open the UI: python -m lra.ui ...`; None for a job inside a multirun (the sweep
    prints it once when it ends)."""

    if _in_multirun():
        return None
    return f"Open the UI: {ui_command(uri, experiment=cfg.tracking.experiment or cfg.task)}"


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# MLflow 3's experiment kind: the Python client never sets it; the UI's kind selector writes it. Ours are model
# training ("Machine learning"), not GenAI apps. (3.17's UI picks its pages from its workflow switch, which
# `python -m lra.ui` sets in the URL it prints; the tag records the kind for the selector and other clients.)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as a training experiment unless it already has a
    kind (a user's choice in the UI stays). Parallel workers may race to create it: retried."""
    for attempt in range(5):
        try:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
            if EXPERIMENT_KIND_TAG not in experiment.tags:
                client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
            return experiment.experiment_id
        except Exception:  # noqa: BLE001 - RESOURCE_ALREADY_EXISTS or a locked sqlite file
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def run_name(cfg: DictConfig) -> str:
    """tracking.run_name, else `<attention>-<task>-s<seed>`, with `-t<trial>` for a trial of an Optuna search."""
    if cfg.tracking.run_name:
        return str(cfg.tracking.run_name)
    name = f"{cfg.attention.name}-{cfg.task}-s{cfg.training.seed}"
    if cfg.sweep.trial_number is not None:
        name += f"-t{cfg.sweep.trial_number}"
    return name


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """A short hash of the prepared data's manifest (its identity, source fingerprint, arrays and counts; not
    when or how fast it was prepared): equal digests, equal data."""
    stable = {key: value for key, value in manifest.items() if key not in ("prepared_at", "prepare_seconds")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:10]


def task_dataset(cfg: DictConfig) -> Optional[Any]:
    """The run's MLflow dataset: the task's name, the prepared data's digest, its folder as the source, and as
    profile the samples used per split and those available. None if the data is not prepared."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource


    found = read_prepared_manifest(cfg.data, cfg.dataset)
    if found is None:
        return None
    folder, manifest = found
    used = {split: int(cfg.dataset[split]) for split in ("train", "dev", "test")}
    available = {split: int(info.get("count", 0)) for split, info in manifest.get("splits", {}).items()}
    profile = {"samples": used, "available": available, "loader": manifest.get("loader")}

    class TaskDataset(MetaDataset):
        @property
        def profile(self) -> Any:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile)}

    return TaskDataset(LocalArtifactDatasetSource(str(folder.resolve())), name=str(cfg.task),
                       digest=manifest_digest(manifest))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def log_dataset(dataset: Any, attempts: int = 4) -> None:
    """Log `dataset` as the active run's training input, retrying a failed insert.

    MLflow's stores look a dataset up by (experiment, name, digest) and insert it when missing, in one transaction
    that does not lock the table: runs of one sweep that start together race, and the loser's insert breaks the
    unique key (PostgreSQL `UniqueViolation`, sqlite `UNIQUE constraint failed`). The transaction rolls back whole,
    and the retry finds the winner's row and only links it to the run.
    """
    for attempt in range(1, attempts + 1):
        try:
            mlflow.log_input(dataset, context="train")
            return
        except MlflowException as error:
            if attempt == attempts:
                raise
            log.info("logging the dataset failed (%s); retrying", " ".join(str(error).split())[:120])
            time.sleep(0.2 * attempt)


def _set_experiment(uri: str, name: str) -> None:
    mlflow.set_experiment(experiment_id=ensure_experiment(MlflowClient(uri), name))


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
        check_tracking_store(self.uri, create=True)  # a new sqlite file gets its schema under the creation lock
        mlflow.set_tracking_uri(self.uri)
        cfg = self.cfg
        experiment = cfg.tracking.experiment or cfg.task
        _set_experiment(self.uri, experiment)
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
        run = mlflow.start_run(run_name=run_name(cfg), tags=tags, log_system_metrics=cfg.tracking.system_metrics)
        self.run_id = run.info.run_id
        container = OmegaConf.to_container(cfg, resolve=True)
        mlflow.log_params({key: redact(str(value)) for key, value in flatten(container).items()})
        self._log_config()
        dataset = task_dataset(cfg)
        if dataset is not None:
            log_dataset(dataset)
        return self.run_id

    def artifact_folder(self) -> Optional[Path]:
        """The run's artifact folder when it is on this machine (None for a server's artifact store)."""
        uri = MlflowClient(self.uri).get_run(self.run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            return None
        return Path(unquote(parsed.path) if parsed.scheme == "file" else uri)

    def _log_config(self) -> None:
        """The composed config as the artifact config.yaml (passwords masked). A full disk ends the new run
        FAILED with DiskFullError, its partial file removed."""
        text = redacted_yaml(self.cfg, resolve=False)
        folder = self.artifact_folder()
        if folder is None:
            mlflow.log_text(text, "config.yaml")
            return
        fix = f"free space in {folder.parent.parent} (the experiment's artifact folder), then run the same command"
        try:
            with on_full_disk(folder, len(text.encode()), "config.yaml", fix, leftovers=[folder / "config.yaml"]):
                mlflow.log_text(text, "config.yaml")
        except DiskFullError:
            mlflow.end_run("FAILED")
            raise

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
