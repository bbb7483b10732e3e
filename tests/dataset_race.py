"""Runs that log one dataset at the same moment: the race MLflow's stores lose without `lra.record.tracking.log_dataset`.

Each worker is its own spawned process with its own MLflow run in one fresh experiment; a barrier releases
them together into the dataset lookup-then-insert."""

from __future__ import annotations

import multiprocessing
import uuid
from multiprocessing.synchronize import Barrier
from typing import Any

from mlflow.tracking import MlflowClient


def _log_after_barrier(uri: str, experiment_id: str, folder: str, barrier: Barrier, results: Any) -> None:
    try:
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        from lra.record.tracking import log_dataset

        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment_id=experiment_id)
        dataset = MetaDataset(LocalArtifactDatasetSource(folder), name="listops-small", digest="0123456789")
        with mlflow.start_run():
            barrier.wait(timeout=120)
            log_dataset(dataset)
        results.put("logged")
    except Exception as error:  # noqa: BLE001 - the parent reports what each worker saw
        barrier.abort()  # the others must not wait for a worker that is gone
        results.put(f"{type(error).__name__}: {' '.join(str(error).split())[:200]}")


def log_one_dataset_at_once(uri: str, folder: str, workers: int) -> tuple[str, list[str]]:
    """Start `workers` runs in a new experiment of `uri`; all log one dataset at once. Returns the experiment's
    id and what each worker saw ("logged" or the error)."""
    experiment_id = MlflowClient(uri).create_experiment(f"race-{uuid.uuid4().hex[:8]}")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_log_after_barrier, args=(uri, experiment_id, folder, barrier, results))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    seen = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return experiment_id, seen
