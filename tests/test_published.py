"""Published figures beside measured ones: `lra.compare.published` and the table `python -m lra.report` adds."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lra.compare.published import published_table, to_markdown
from lra.compare.report import main as report_main


def _run(client: MlflowClient, experiment_id: str, task: str, attention: str, accuracy: float,
         published: dict | None) -> None:
    run = client.create_run(experiment_id, tags={"task": task, "attention": attention})
    for key, value in (published or {}).items():
        client.log_param(run.info.run_id, f"published.{key}", str(value))
    client.log_metric(run.info.run_id, "test_accuracy", accuracy)
    client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('published') / 'mlflow.db'}"
    client = MlflowClient(uri)
    text = client.create_experiment("text")
    pathx = client.create_experiment("pathfinder128")
    lra = {"experiment": "lra-transformer-text", "test_accuracy": 64.27, "verified": True,
           "source": "LRA Table 1"}
    for accuracy in (0.60, 0.62):  # two seeds: mean 61.00
        _run(client, text, "text", "softmax", accuracy, lra)
    _run(client, text, "text", "hrr-bundled", 0.66,
         {"experiment": "hrrformer-text", "test_accuracy": 65.38, "verified": True, "source": "Hrrformer README"})
    _run(client, pathx, "pathfinder128", "softmax", 0.5,
         {"experiment": "lra-transformer-pathx", "test_accuracy": None, "verified": False, "source": "LRA (FAIL)"})
    _run(client, text, "text", "tpr", 0.55, None)  # no experiment: not in the published table
    return uri, client


def test_published_beside_measured_with_the_difference(store) -> None:
    _, client = store
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rows = {row["experiment"]: row for row in published_table(runs)}
    assert set(rows) == {"lra-transformer-text", "hrrformer-text", "lra-transformer-pathx"}
    lra = rows["lra-transformer-text"]
    assert lra["runs"] == 2 and lra["measured"] == pytest.approx(61.0)
    assert lra["published"] == 64.27 and lra["difference"] == pytest.approx(61.0 - 64.27)
    assert rows["hrrformer-text"]["difference"] == pytest.approx(66.0 - 65.38)
    assert rows["lra-transformer-pathx"]["published"] is None and rows["lra-transformer-pathx"]["difference"] is None
    table = to_markdown(rows.values())
    assert "| lra-transformer-text | text | softmax | 2 | 61.00 | 64.27 | -3.27 | LRA Table 1 |" in table
    assert "| lra-transformer-pathx | pathfinder128 | softmax | 1 | 50.00 | – | – | LRA (FAIL) (unverified) |" in table


def test_the_report_shows_the_published_table(store, tmp_path: Path, capsys) -> None:
    uri, _ = store
    assert report_main(["--tracking-uri", uri, "--all", "--out", str(tmp_path / "out"), "--no-log"]) == 0
    printed = capsys.readouterr().out
    written = (tmp_path / "out" / "comparison.md").read_text()
    for text in (printed, written):
        assert "| hrrformer-text | text | hrr-bundled | 1 | 66.00 | 65.38 | +0.62 |" in text
        assert "published (%)" in text and "## text" in text and "| tpr | 1 |" in text  # the comparison is there too
