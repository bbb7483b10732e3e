"""`python -m lra.report` on a store written here: like compared with like (groups by the whole config but the
seed, naming what differs), the latest sweep by default, a folder per sweep never overwritten, a plot whose
markers and labels all lie inside, memory that means something on the device. (The report of a real sweep is
checked in test_sweeps_e2e.py.)"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from lra.compare.report import Row, build_rows, content_boxes, draw, main, make_report

BASE = {"task": "listops-small", "training.learning_rate": "0.001", "training.num_epochs": "2",
        "resolved.device": "cpu", "checkpoint.dir": "ckpt", "run_key": "x", "data.root": "data"}
# attention -> [(seed, test_accuracy, samples_per_second, model_peak_memory_mb)]
GRID = {"softmax": [("0", 0.40, 100.0, 50.0), ("1", 0.44, 110.0, 50.0)],
        "tpr": [("0", 0.30, 300.0, 20.0), ("1", 0.36, 330.0, 30.0)]}


def _run(client, exp, *, attention, seed, accuracy, speed=None, memory=None, sweep=None, parent=None,
         status="FINISHED", rss=500.0, **params):
    tags = {"task": "listops-small", "attention": attention}
    if sweep:
        tags["sweep_id"] = sweep
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, tags=tags).info.run_id
    for key, value in {**BASE, "attention.name": attention, "training.seed": seed, "sweep.id": str(sweep),
                       "run_key": f"{attention}{seed}",  # what follows from the mechanism is not a difference:
                       "resolved.num_parameters": "108" if attention == "tpr" else "100", **params}.items():
        client.log_param(run, key, value)
    client.log_metric(run, "test_accuracy", accuracy)
    client.log_metric(run, "peak_memory_mb", rss)  # the process's RSS on a CPU: never the report's memory
    if speed is not None:
        client.log_metric(run, "samples_per_second", speed)
    if memory is not None:
        client.log_metric(run, "model_peak_memory_mb", memory)
    client.set_terminated(run, status)
    return run


def _sweep(client, exp, sweep):
    return client.create_run(exp, tags={"sweep_id": sweep, "lra.sweep_parent": "true",
                                        "task": "listops-small", "sweep.command": f"launch.py -m ({sweep})"}
                             ).info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("listops-small", artifact_location=(folder / "artifacts").as_uri())
    old = _sweep(client, exp, "s1")
    for attention, seeds in GRID.items():
        for seed, accuracy, speed, memory in seeds:
            _run(client, exp, attention=attention, seed=seed, accuracy=accuracy, speed=speed, memory=memory,
                 sweep="s1", parent=old)
    _run(client, exp, attention="tpr", seed="2", accuracy=0.99, sweep="s1", status="FAILED")  # never counts
    time.sleep(0.01)
    search = _sweep(client, exp, "s2")  # the latest: an Optuna-like search, learning rates differ
    for lr, accuracy in (("0.01", 0.20), ("0.0003", 0.25)):
        _run(client, exp, attention="tpr", seed="0", accuracy=accuracy, speed=200.0, memory=25.0, sweep="s2",
             parent=search, **{"training.learning_rate": lr})
    client.set_terminated(old, "FINISHED")
    client.set_terminated(search, "FINISHED")
    return client, uri, old, search, folder


def test_rows_are_means_over_seeds_with_ratios_to_softmax_and_the_models_memory(store):
    client, _, parent, _, folder = store
    rows, files = make_report(client, sweep_id="s1", out=folder / "out")
    assert [(row.task, row.attention, row.runs, row.differs) for row in rows] == [
        ("listops-small", "softmax", 2, {}), ("listops-small", "tpr", 2, {})]
    softmax, tpr = rows
    assert sorted(tpr.seeds) == ["0", "1"]
    assert tpr.mean("accuracy") == pytest.approx(0.33)
    assert tpr.std() == pytest.approx(statistics.stdev([0.30, 0.36]))
    assert tpr.ratios["accuracy"] == pytest.approx(0.33 / 0.42)
    assert tpr.ratios["speed"] == pytest.approx(315.0 / 105.0)
    assert tpr.mean("memory") == pytest.approx(25.0)  # model_peak_memory_mb, not the 500 MB resident set
    assert tpr.ratios["memory"] == pytest.approx(25.0 / 50.0)
    assert softmax.ratios == {"accuracy": 1.0, "speed": 1.0, "memory": 1.0}

    markdown = (folder / "out" / "comparison.md").read_text()
    assert "| 2 | tpr | 2 | 0,1 | 0.3300 ± 0.0424 | 0.79 | 315.0 | 3.00 | 25.0 | 0.50 |" in markdown
    assert "config |" not in markdown  # nothing but the attention differs
    with (folder / "out" / "comparison.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["attention"] for r in table] == ["softmax", "tpr"]
    assert float(table[1]["test_accuracy_mean"]) == pytest.approx(0.33)
    assert table[1]["memory_measure"] == "model peak (cpu)"
    assert (folder / "out" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    logged = {item.path for item in client.list_artifacts(parent, "report")}
    assert logged == {"report/comparison.md", "report/comparison.csv", "report/comparison.png"}


def test_runs_that_differ_in_more_than_the_seed_are_never_pooled(store):
    client, _, _, _, folder = store
    rows, _ = make_report(client, experiments=["listops-small"], out=folder / "all", log_to_parent=False)
    described = [(row.attention, row.differs, row.runs) for row in rows]
    assert described == [
        ("tpr", {"training.learning_rate": "0.0003"}, 1),
        ("softmax", {"training.learning_rate": "0.001"}, 2),
        ("tpr", {"training.learning_rate": "0.001"}, 2),
        ("tpr", {"training.learning_rate": "0.01"}, 1),
    ]
    assert rows[2].ratios["accuracy"] == pytest.approx(0.33 / 0.42)  # to the softmax of the same config
    assert rows[0].ratios["accuracy"] is None  # no softmax ran at that learning rate
    markdown = (folder / "all" / "comparison.md").read_text()
    assert "differ in more than the attention: `training.learning_rate`" in markdown
    assert "| 4 | tpr | training.learning_rate=0.01 | 1 | 0 | 0.2000 |" in markdown


def test_the_cuda_allocators_peak_is_the_memory_of_a_gpu_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("listops-small", artifact_location=(tmp_path / "a").as_uri())
    _run(client, exp, attention="softmax", seed="0", accuracy=0.5, memory=3.0, rss=900.0,
         **{"resolved.device": "cuda"})
    _run(client, exp, attention="softmax", seed="0", accuracy=0.4, rss=700.0)  # CPU, no model measure
    gpu, cpu = sorted(build_rows(client.search_runs([exp])), key=lambda row: row.config["resolved.device"],
                      reverse=True)
    assert gpu.memory == [900.0] and gpu.differs == {"resolved.device": "cuda"}
    assert cpu.memory == [] and cpu.memory_measures == {"not measured"}


def test_no_arguments_report_the_latest_sweep_into_its_own_folder_never_over_an_earlier_one(store, monkeypatch,
                                                                                          capsys):
    _, uri, _, search, folder = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(folder)
    assert main(["--no-log"]) == 0
    printed = capsys.readouterr().out
    assert "the latest sweep: s2 (launch.py -m (s2))" in printed
    assert "Sweep `s2`, the latest in the store." in (folder / "reports" / "s2" / "comparison.md").read_text()
    assert "| 2 | tpr | training.learning_rate=0.01 | 1 |" in printed
    assert main(["--no-log"]) == 0  # again: a new folder beside the first
    assert "reports/s2-2/comparison.md" in capsys.readouterr().out
    assert (folder / "reports" / "s2" / "comparison.md").is_file()

    assert main(["--sweep-id", "s1", "--out", str(folder / "reports" / "s2"), "--no-log"]) == 2
    assert capsys.readouterr().err.count("error: --out=") == 1
    assert main(["--sweep-id", "s1", "--out", str(folder / "reports" / "s2"), "--no-log", "--overwrite"]) == 0
    assert main(["--experiment", "nothing", "--no-log"]) == 2
    assert "error: --experiment=nothing: no such experiment" in capsys.readouterr().err
    assert main(["--sweep-id", "nothing", "--no-log"]) == 1


def test_the_plot_keeps_every_marker_and_label_inside(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    rows = []
    for i, (attention, speed, accuracy, memory) in enumerate([
            ("softmax", 10.0, 0.99, 4000.0), ("hrr-individual", 2.0, 0.10, 3900.0), ("hrr-bundled", 900.0, 0.5, 5.0),
            ("hrr-quadratic", 11.0, 0.98, 3000.0), ("tpr", 1000.0, 0.11, 4100.0)]):
        row = Row("listops-small", attention, {}, accuracy=[accuracy, accuracy + 0.01], speed=[speed],
                  memory=[memory], memory_measures={"model peak (cpu)"})
        row.number = i + 1
        rows.append(row)
    assert draw(rows, tmp_path / "plot.png") == []  # nothing sticks out after the limits were widened
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_content_boxes_see_a_clipped_marker():
    """The check itself: a marker at the very corner of fixed limits is reported outside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.scatter([1.0], [1.0], s=600)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.canvas.draw()
    frame = ax.get_window_extent()
    (box,) = content_boxes(ax)
    assert box.x1 > frame.x1 and box.y1 > frame.y1
    plt.close(fig)


def test_report_help_works():
    result = subprocess.run([sys.executable, "-m", "lra.report", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--sweep-id" in result.stdout and "--tracking-uri" in result.stdout
