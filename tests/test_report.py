"""`python -m lra.report` on a store written here: the numbers, the files, the parent run's artifacts, --help.
(The report of a real sweep is checked in test_sweeps_e2e.py.)"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from lra.report import main, make_report

RUNS = {  # attention -> [(test_accuracy, samples_per_second, peak_memory_mb)] over seeds
    "softmax": [(0.40, 100.0, 50.0), (0.44, 110.0, 50.0)],
    "tpr": [(0.30, 300.0, 20.0), (0.36, 330.0, 30.0)],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("listops-small", artifact_location=(folder / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"sweep_id": "s1", "lra.sweep_parent": "true", "task": "listops-small"})
    for attention, seeds in RUNS.items():
        for accuracy, speed, memory in seeds:
            run = client.create_run(exp, tags={"sweep_id": "s1", "mlflow.parentRunId": parent.info.run_id,
                                               "task": "listops-small", "attention": attention})
            for name, value in (("test_accuracy", accuracy), ("samples_per_second", speed),
                                ("peak_memory_mb", memory)):
                client.log_metric(run.info.run_id, name, value)
            client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(exp, tags={"sweep_id": "s1", "task": "listops-small", "attention": "tpr"})
    client.log_metric(failed.info.run_id, "test_accuracy", 0.99)  # FAILED runs never count
    client.set_terminated(failed.info.run_id, "FAILED")
    other = client.create_run(exp, tags={"sweep_id": "s2", "task": "listops-small", "attention": "tpr"})
    client.log_metric(other.info.run_id, "test_accuracy", 0.01)  # another sweep
    client.set_terminated(other.info.run_id, "FINISHED")
    return client, uri, parent.info.run_id, folder


def test_report_rows_are_means_over_seeds_with_ratios_to_softmax(store):
    client, _, parent, folder = store
    rows, files = make_report(client, sweep_id="s1", out=folder / "out")
    assert [(row.task, row.attention, row.runs) for row in rows] == [("listops-small", "softmax", 2),
                                                                   ("listops-small", "tpr", 2)]
    softmax, tpr = rows
    assert tpr.mean("accuracy") == pytest.approx(0.33)
    assert tpr.std() == pytest.approx(statistics.stdev([0.30, 0.36]))
    assert tpr.ratios["accuracy"] == pytest.approx(0.33 / 0.42)
    assert tpr.ratios["speed"] == pytest.approx(315.0 / 105.0)
    assert tpr.ratios["memory"] == pytest.approx(25.0 / 50.0)
    assert softmax.ratios == {"accuracy": 1.0, "speed": 1.0, "memory": 1.0}

    markdown = (folder / "out" / "comparison.md").read_text()
    assert "| listops-small | tpr | 2 | 0.3300 ± 0.0424 | 0.79 | 315.0 | 3.00 | 25.0 | 0.50 |" in markdown
    with (folder / "out" / "comparison.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["attention"] for r in table] == ["softmax", "tpr"]
    assert float(table[1]["test_accuracy_mean"]) == pytest.approx(0.33)
    assert (folder / "out" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    logged = {item.path for item in client.list_artifacts(parent, "report")}
    assert logged == {"report/comparison.md", "report/comparison.csv", "report/comparison.png"}


def test_report_cli_reads_the_store_named_by_the_environment(store, monkeypatch, capsys):
    _, uri, _, folder = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["--experiment", "listops-small", "--out", str(folder / "all"), "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert "| listops-small | tpr | 3 |" in printed  # both sweeps: s1's two seeds and s2's run
    assert main(["--sweep-id", "nothing", "--out", str(folder / "none"), "--no-log"]) == 1


def test_report_help_works():
    result = subprocess.run([sys.executable, "-m", "lra.report", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--sweep-id" in result.stdout and "--tracking-uri" in result.stdout
