"""Every config composes and runs: each file of conf/task/ and conf/experiment/ trains two steps with a tiny model,
release tasks on small files written here in the release formats (tests/data_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    cifar_record,
    lra_to_string,
    lra_tree,
    png_bytes,
    write_aan,
    write_cifar,
    write_imdb,
    write_listops,
    write_pathfinder,
)
from mlflow.tracking import MlflowClient

from lra.compose import CONF_DIR, compose_config

pytestmark = pytest.mark.slow

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PATH_X = ("pathfinder128", "pathfinder128-generated", "lra-transformer-pathx", "hrrformer-pathx")


def marked(names):
    """16,384-token configs take about 30 s each on a 2-core CPU: `long` (run by .ci/run), the rest `slow`."""
    return [pytest.param(name, marks=pytest.mark.long) if name in PATH_X else name for name in names]
TINY_MODEL = ("model.embedding_dim=16", "model.transformer_hidden_dim=16", "model.num_head=2", "model.head_dim=8",
              "model.num_layers=1")
TWO_STEPS = ("training.max_steps=2", "training.log_every=1", "training.num_eval_steps=1",
             "tracking.system_metrics=false", "hardware.num_threads=1", "hardware.device=cpu")


def _pathfinder(folder: Path, size: int) -> Path:
    rng = np.random.default_rng(size)
    images = [(i % 2, png_bytes(rng.integers(0, 256, (size, size)))) for i in range(20)]  # 16/2/2
    return write_pathfinder(folder, "curv_contour_length_14", {0: images}, release_dir=f"pathfinder{size}")


def _reviews(split: str, n: int) -> dict[str, dict[str, bytes]]:
    return {f"{split}/{label}": {f"{i}_{7 if label == 'pos' else 2}.txt": f"a {label} review {i} ".encode() * 9
                                 for i in range(n)} for label in ("pos", "neg")}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    """data.source per release loader (and resolution): small files in the release formats."""
    tmp = tmp_path_factory.mktemp("release")
    expr = [lra_to_string(lra_tree(["[MAX", i % 10, 9, ["[MIN", 4, 7]])) for i in range(8)]
    rows = [(e, 9) for e in expr]
    rng = np.random.default_rng(0)
    cifar = [cifar_record(i % 10, rng.integers(0, 256, (32, 32, 3))) for i in range(8)]
    aan = [(i % 2, f"a{i}", f"b{i}", f"paper {i} text " * 20, f"other paper {i}") for i in range(8)]
    return {
        "listops": write_listops(tmp / "listops-1000", {"train": rows, "val": rows[:4], "test": rows[4:]}),
        "text": write_imdb(tmp / "imdb", {**_reviews("train", 10), **_reviews("test", 4)}),
        "retrieval": write_aan(tmp / "aan", {"train": aan, "eval": aan[:4], "test": aan[4:]}),
        "image": write_cifar(tmp / "cifar", [cifar] * 5, cifar),
        **{f"pathfinder{size}": _pathfinder(tmp, size) for size in (32, 64, 128)},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


def _overrides(selector: str, release: dict[str, Path], store: Path) -> list[str]:
    cfg = compose_config([selector])
    data = cfg.data
    key = data.loader if data.loader != "pathfinder" else f"pathfinder{data.resolution}"
    source = [f"data.source={release[key]}"] if key in release else []
    long_sequences = (data.get("resolution") or 0) >= 64
    sizes = ("dataset.train=4", "dataset.dev=2", "dataset.test=2")
    return [selector, *TINY_MODEL, *TWO_STEPS, *sizes, *source,
            f"training.batch_size={2 if long_sequences else 4}", f"data.root={store / 'data'}",
            f"checkpoint.dir={store / 'checkpoints'}", f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
            f"tracking.run_name={selector.replace('=', ':')}", "gpu_memory.softmax=2", "gpu_memory.hrr-bundled=2"]


def _train_two_steps(selector: str, release: dict[str, Path], store: Path) -> None:
    from lra.run.train import train

    cfg = compose_config(_overrides(selector, release, store))
    metrics = train(cfg)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.task).experiment_id],
                                filter_string=f"attributes.run_name = '{selector.replace('=', ':')}'")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    return run


@pytest.mark.parametrize("task", marked(TASKS))
def test_every_task_trains_two_steps(task: str, release, store) -> None:
    _train_two_steps(f"task={task}", release, store)


@pytest.mark.parametrize("experiment", marked(EXPERIMENTS))
def test_every_experiment_trains_two_steps_and_logs_its_published_figure(experiment: str, release, store) -> None:
    run = _train_two_steps(f"experiment={experiment}", release, store)
    params = run.data.params
    assert params["published.experiment"] == experiment
    composed = compose_config([f"experiment={experiment}"]).published
    assert params["published.test_accuracy"] == str(composed.test_accuracy)
    assert composed.source and (composed.test_accuracy is None or 10.0 < composed.test_accuracy < 100.0)


def test_experiment_files_hold_only_deltas_and_name_their_source() -> None:
    for name in EXPERIMENTS:
        text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n# "), name  # a comment names the source
        assert "Published:" in text and "published:\n  experiment: " + name in text, name
        assert "dataset:" not in text and "hardware:" not in text and "tracking:" not in text, name
