"""`launch.py` trains a few steps on every small task, on real files in the release formats."""

from pathlib import Path

import pytest
from data_fixtures import write_aan, write_imdb
from helpers import launch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

FEW_STEPS = ("training.max_steps=2", "training.batch_size=4", "training.log_every=1", "training.num_eval_steps=1",
             "model.embedding_dim=16", "model.transformer_hidden_dim=32", "model.num_head=2", "model.head_dim=8",
             "model.num_layers=1", "tracking.system_metrics=false", "hardware.num_threads=1")


def _reviews(split: str, n: int) -> dict[str, dict[str, bytes]]:
    return {f"{split}/{label}": {f"{i}_{7 if label == 'pos' else 2}.txt": f"review {i} {label} ".encode() * (i + 3)
                                 for i in range(n)} for label in ("pos", "neg")}


def _sources(tmp: Path) -> dict[str, Path]:
    imdb = write_imdb(tmp / "imdb", {**_reviews("train", 8), **_reviews("test", 4)})
    rows = [(i % 2, f"a{i}", f"b{i}", f"paper {i} text " * 40, f"other paper {i}") for i in range(12)]
    aan = write_aan(tmp / "aan", {"train": rows, "eval": rows[:6], "test": rows[6:]})
    return {"text-small": imdb, "retrieval-small": aan}


SMALL_TASKS = {
    "listops-small": ("dataset.train=16", "dataset.dev=8", "dataset.test=8"),
    "listops-medium": ("dataset.train=16", "dataset.dev=8", "dataset.test=8"),
    "image-small": ("dataset.train=16", "dataset.dev=8", "dataset.test=8"),
    "pathfinder-small": ("dataset.train=16", "dataset.dev=8", "dataset.test=8"),
    "text-small": ("dataset.train=12", "dataset.dev=2", "dataset.test=8"),
    "retrieval-small": ("dataset.train=12", "dataset.dev=6", "dataset.test=6"),
}


@pytest.mark.parametrize("task", sorted(SMALL_TASKS))
def test_a_few_steps_on_each_small_task(tmp_path: Path, task: str) -> None:
    source = _sources(tmp_path).get(task)
    extra = [f"data.source={source}"] if source else []
    result = launch(tmp_path, f"task={task}", *FEW_STEPS, *SMALL_TASKS[task], *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(task).experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0


def test_a_missing_data_source_fails_before_training_with_the_prepare_command(tmp_path: Path) -> None:
    result = launch(tmp_path, "task=text-small", *FEW_STEPS)
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "data.source" in line and "aclImdb" in line and "python -m lra.data prepare text-small" in line, line
    assert not (tmp_path / "mlflow.db").exists()
