"""What the MLflow UI is given: training experiments, runs named by what they are, the task's data as the
dataset input, the UI hint once per sweep, and `python -m lra.ui` serving the sweep's view (a real sweep in a
real sqlite store, a real `mlflow server`). The rendered page is checked in test_ui_browser.py."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import TINY, launch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from ui_process import UIProcess

from lra.compare.ui import VIEW_TAG_PREFIX, Target, varying_params, view_state
from lra.record.tracking import (
    EXPERIMENT_KIND_TAG,
    TRAINING_KIND,
    ensure_experiment,
    manifest_digest,
    run_name,
    tracking_uri,
    ui_command,
)


def _cfg(**sweep):
    return OmegaConf.create({"task": "listops-small", "attention": {"name": "tpr"}, "training": {"seed": 2},
                             "tracking": {"run_name": None},
                             "sweep": {"trial_number": None, **sweep}})


def test_run_names_say_what_the_run_is():
    assert run_name(_cfg()) == "tpr-listops-small-s2"
    assert run_name(_cfg(trial_number=7)) == "tpr-listops-small-s2-t7"
    named = _cfg()
    named.tracking.run_name = "mine"
    assert run_name(named) == "mine"


def test_experiments_are_training_experiments_and_a_users_kind_stays(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    new = ensure_experiment(client, "listops-small")
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    assert ensure_experiment(client, "listops-small") == new
    untagged = client.create_experiment("text")  # made before this change: tagged when next used
    ensure_experiment(client, "text")
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    client.set_experiment_tag(untagged, EXPERIMENT_KIND_TAG, "genai_development")  # the user's choice
    ensure_experiment(client, "text")
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_ui_command_names_only_what_differs_from_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ui_command(tracking_uri(None)) == "python -m lra.ui"
    assert ui_command(tracking_uri(None), sweep_id="s1") == "python -m lra.ui --sweep-id s1"
    assert ui_command("sqlite:////elsewhere/mlflow.db", experiment="text") == \
        "python -m lra.ui --tracking-uri sqlite:////elsewhere/mlflow.db --experiment text"


class _Run:  # the two fields of an MLflow run that varying_params reads
    def __init__(self, params, tags=None, metrics=None):
        self.data = type("Data", (), {"params": params, "tags": tags or {}, "metrics": metrics or {}})()


def test_the_view_shows_what_varies_and_filters_the_sweeps_jobs():
    runs = [_Run({"attention.name": "softmax", "training.seed": "0", "training.learning_rate": "0.001",
                  "sweep.id": "s", "run_key": "a"}),
            _Run({"attention.name": "tpr", "attention.eps": "1e-06", "training.seed": "1",
                  "training.learning_rate": "0.01", "sweep.id": "s", "run_key": "b"},
                 tags={"optuna_trial": "1"}, metrics={"test_accuracy": 0.5})]
    assert varying_params(runs) == ["training.learning_rate"]  # not the seed, bookkeeping or a tpr-only option
    state = view_state(Target("1", "listops-small", "s", runs))
    assert state["searchFilter"] == "tags.sweep_id = 's' and tags.attention LIKE '%'"
    assert state["orderByKey"] == "metrics.`test_accuracy`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == ["tags.`attention`", "metrics.`test_accuracy`", "params.`training.seed`",
                                        "tags.`optuna_trial`", "tags.`pruned`", "params.`training.learning_rate`",
                                        "attributes.`Dataset`"]
    assert state["columnOrder"] == ["attributes.`Run Name`", *state["selectedColumns"]]  # left to right


@pytest.mark.slow
def test_a_sweep_as_the_ui_shows_it_and_lra_ui_serves_its_view(tmp_path):
    result = launch(tmp_path, *TINY, "attention=softmax,tpr", multirun=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    sweep_id = re.search(r"sweep (\S+): parent MLflow run", output).group(1)
    assert output.count("Open the UI:") == 1  # once per sweep, not after every job
    assert f"Open the UI: python -m lra.ui --sweep-id {sweep_id}" in result.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("listops-small")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    runs = client.search_runs([experiment.experiment_id], f"tags.sweep_id = '{sweep_id}' and tags.attention LIKE '%'")
    assert sorted(run.info.run_name for run in runs) == ["softmax-listops-small-s0", "tpr-listops-small-s0"]
    (manifest_file,) = (tmp_path / "data").glob("listops-generated/*/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    for run in runs:
        (dataset,) = [item.dataset for item in run.inputs.dataset_inputs]
        assert dataset.name == "listops-small" and dataset.digest == manifest_digest(manifest)
        assert json.loads(dataset.profile)["samples"] == {"train": 96, "dev": 32, "test": 40}
        assert json.loads(dataset.source) == {"uri": str(manifest_file.parent.resolve())}
        assert run.data.metrics["model_peak_memory_mb"] > 0

    ui = UIProcess(tmp_path, "--port", "0")
    try:
        runs_line = ui.wait_for("runs: ")
        assert f"sweep {sweep_id}: 2 runs (the latest" in "\n".join(ui.lines)
        url = runs_line.split(" ", 1)[1]
        base, fragment = url.split("/#", 1)
        with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
            assert response.status == 200
        path, query = fragment.split("?")
        params = dict(urllib.parse.parse_qsl(query))
        assert path == f"/experiments/{experiment.experiment_id}/runs"
        assert params["workflowType"] == "machine_learning"  # the "Machine learning" pages, not GenAI's
        served = MlflowClient(base)
        tags = served.get_experiment(experiment.experiment_id).tags
        view = json.loads(tags[VIEW_TAG_PREFIX + params["viewStateShareKey"]])
        state = json.loads(view["state"])
        shown = served.search_runs([experiment.experiment_id], state["searchFilter"])
        assert sorted(run.info.run_id for run in shown) == sorted(run.info.run_id for run in runs)
        assert {"tags.`attention`", "metrics.`test_accuracy`"} <= set(state["selectedColumns"])
        compare = ui.wait_for("compare: ")
        assert all(run.info.run_id in compare for run in runs)
    finally:
        assert ui.stop() == 0
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"{base}/health", timeout=5)


def test_lra_ui_refuses_a_store_that_does_not_exist(tmp_path):
    ui = UIProcess(tmp_path, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert ui.process.wait(timeout=120) == 2
    ui._reader.join(timeout=10)
    out = "\n".join(ui.lines)
    assert out.count("error: --tracking-uri=") == 1 and "fix: " in out
    assert not Path(tmp_path / "none.db").exists()
