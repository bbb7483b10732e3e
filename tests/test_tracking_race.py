"""Runs of one sweep that start together log the same dataset at once: every run gets it, the store keeps one
copy. Without the retry in `lra.record.tracking.log_dataset` most of these workers fail with MLflow's
`UNIQUE constraint failed: datasets...` (a grid's jobs failed this way on PostgreSQL in CI)."""

from __future__ import annotations

from pathlib import Path

from dataset_race import log_one_dataset_at_once
from mlflow.tracking import MlflowClient


def test_six_runs_logging_one_dataset_at_once_all_get_it_and_the_store_keeps_one(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the schema, before the workers race for something else
    experiment_id, seen = log_one_dataset_at_once(uri, str(tmp_path), workers=6)
    assert seen == ["logged"] * 6, seen
    runs = MlflowClient(uri).search_runs([experiment_id])
    assert len(runs) == 6
    digests = {(entry.dataset.name, entry.dataset.digest) for run in runs for entry in run.inputs.dataset_inputs}
    assert digests == {("listops-small", "0123456789")}
    assert all(len(run.inputs.dataset_inputs) == 1 for run in runs)
