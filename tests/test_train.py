"""End-to-end runs of `launch.py` and of `train(cfg)`: tracking, determinism, divergence."""

import math
from pathlib import Path

import mlflow
import pytest
from helpers import TINY, launch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

METRICS = {"train_loss", "train_accuracy", "lr", "eval_loss", "eval_accuracy", "test_accuracy",
           "samples_per_second", "peak_memory_mb"}


def _runs(tmp: Path, experiment: str = "listops-small"):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    return client, client.search_runs([exp.experiment_id])


def test_one_run_lands_finished_with_tags_params_metrics_and_config(tmp_path: Path) -> None:
    result = launch(tmp_path, *TINY, "attention=tpr")
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = _runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["attention"] == "tpr" and run.data.tags["task"] == "listops-small"
    assert METRICS <= set(run.data.metrics), set(run.data.metrics)
    assert run.data.params["training.batch_size"] == "16"
    assert run.data.params["gpu_memory.tpr"] == "32"
    assert run.data.params["model.max_seq_len"] == "128"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) >= 3 and all(math.isfinite(m.value) for m in history)  # per step, every log_every
    assert len(client.get_metric_history(run.info.run_id, "eval_accuracy")) == 2  # once per epoch
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml",
                                               dst_path=str(tmp_path / "got"),
                                               tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = Path(path).read_text()
    assert "attention:\n  name: tpr" in config
    assert run.info.run_id in result.stdout
    assert "Open the UI: python -m lra.ui --experiment listops-small" in result.stdout


def test_divergence_ends_the_run_failed_with_the_step_logged(tmp_path: Path) -> None:
    result = launch(tmp_path, *TINY, "training.debug_nan_at_step=3")
    assert result.returncode != 0
    assert "non-finite loss nan at step 3" in result.stderr
    client, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]
    losses = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert any(m.step == 3 and math.isnan(m.value) for m in losses)


def test_same_seed_gives_the_same_run_and_another_seed_does_not(tmp_path: Path) -> None:
    from train_helpers import compose

    from lra.run.train import train

    base = [*TINY, f"data.root={tmp_path / 'data'}", f"checkpoint.dir={tmp_path / 'ck'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "checkpoint.resume=false"]
    first = train(compose(base))
    second = train(compose(base))
    other = train(compose([*base, "training.seed=1"]))
    for key in ("test_accuracy", "test_loss", "eval_accuracy"):
        assert first[key] == second[key]
    assert first["test_loss"] != other["test_loss"]


def test_auto_chunk_size_is_probed_logged_and_used(tmp_path: Path) -> None:
    """hardware=auto with a CPU budget too small for the whole batch: a smaller chunk is chosen, logged, used."""
    result = launch(tmp_path, "dataset.train=64", "dataset.dev=32", "dataset.test=32", "training.num_epochs=1",
                    "tracking.system_metrics=false", "hardware=auto", "hardware.memory_budget_mb=30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpu_memory.softmax=auto: auto chunk size" in result.stdout
    _, runs = _runs(tmp_path)
    chunk = int(runs[0].data.params["resolved.chunk_size"])
    assert 1 <= chunk < 32  # the default model's batch of 32 needs about 40 MB: more than 0.8 x 30 MB
    assert runs[0].info.status == "FINISHED"
