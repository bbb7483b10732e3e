"""`python -m lra.evaluate`: a finished run's model, rebuilt from its artifacts alone, reproduces its test accuracy."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TINY, launch, launch_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def evaluate(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lra.evaluate", *args], check=False, cwd=tmp, env=launch_env(tmp),
                          capture_output=True, text=True, timeout=300)


def value(stdout: str, key: str) -> float:
    (line,) = [line for line in stdout.splitlines() if line.startswith(f"{key}=")]
    return float(line.split("=", 1)[1].split()[0])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    # tied weights and a chunk smaller than the batch: shared tensors and chunked evaluation must round-trip
    result = launch(tmp, *TINY, "model.tied_weights=true", "gpu_memory.softmax=5")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])
    assert run.info.status == "FINISHED"
    return tmp, client, run


def test_the_run_logs_its_config_and_safetensors_weights(finished):
    tmp, client, run = finished
    names = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert names == {"model/config.yaml", "model/weights.safetensors", "model/meta.json"}
    local = Path(client.download_artifacts(run.info.run_id, "model", str(tmp / "dl")))
    meta = json.loads((local / "meta.json").read_text())
    assert meta["run_id"] == run.info.run_id and meta["chunk_size"] == 5 and meta["attention"] == "softmax"
    assert meta["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert (local / "weights.safetensors").read_bytes()[:8] != b"PK\x03\x04"  # not a zip/pickle torch file
    assert run.data.params["published.test_accuracy"] == "None"  # the published node is logged with every run


def test_evaluate_run_id_reproduces_the_test_accuracy_exactly_and_logs_it(finished):
    tmp, client, run = finished
    result = evaluate(tmp, run.info.run_id)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = value(result.stdout, "test_accuracy")
    assert accuracy == run.data.metrics["test_accuracy"]
    assert value(result.stdout, "test_loss") == pytest.approx(run.data.metrics["test_loss"], rel=1e-12)
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["evaluate/test_accuracy"] == accuracy
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.long
def test_evaluate_a_checkpoint_folder_other_splits_and_overrides(finished):
    tmp, client, run = finished
    (folder,) = [p for p in (tmp / "checkpoints").iterdir() if (p / "model").is_dir()]
    result = evaluate(tmp, str(folder), "--no-log")
    assert result.returncode == 0, result.stderr[-3000:]
    assert value(result.stdout, "test_accuracy") == run.data.metrics["test_accuracy"]
    dev = evaluate(tmp, str(folder / "model"), "--split", "dev", "dataset.dev=20", "--no-log")
    assert dev.returncode == 0, dev.stderr[-3000:]
    assert "(20 samples)" in dev.stdout and 0.0 <= value(dev.stdout, "dev_accuracy") <= 1.0
    assert "evaluate/dev_accuracy" not in client.get_run(run.info.run_id).data.metrics


@pytest.mark.long
def test_user_errors_are_one_line_and_exit_2(finished):
    tmp, _, run = finished
    missing = evaluate(tmp, "0123456789abcdef0123456789abcdef")
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("error: run='0123456789abcdef0123456789abcdef': no such MLflow run") and "fix:" in line
    bad = evaluate(tmp, run.info.run_id, "--split", "valid")
    assert bad.returncode == 2 and "error: --split='valid': unknown split" in bad.stderr
    wrong = evaluate(tmp, run.info.run_id, "model.embedding_dim=32", "--no-log")
    assert wrong.returncode == 2 and "do not fit the config's model" in wrong.stderr


def test_helpers_repo_is_this_checkout():
    assert (REPO / "lra" / "evaluate.py").exists()
