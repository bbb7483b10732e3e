"""The many-machine stores on a real PostgreSQL server: two Optuna workers started at once share one study on a
`postgresql://` storage, and a grid's jobs log through an `mlflow server` whose backend store is PostgreSQL.
The password stays out of every URL (libpq reads $PGPASSWORD, as docs/cluster.md advises), and is never found
in a logged param, tag, artifact or log line.

The server: `.ci/services/postgres.sh` (sourced by .ci/run) exports LRA_TEST_POSTGRES_URL. Without it these
tests skip, except under CI, where they fail. Minutes each: marked long."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port, stop, wait_until_up
from optuna.trial import TrialState

from lra.sweep.callback import PARENT_TAG, child_runs

pytestmark = pytest.mark.long

REPO = Path(__file__).resolve().parents[1]
TINY = ("dataset.train=32", "dataset.dev=16", "dataset.test=16", "training.batch_size=16", "training.num_epochs=2",
        "tracking.system_metrics=false", "hardware.num_threads=1")
FAST_HEARTBEAT = ("hydra.sweeper.heartbeat_interval=2", "hydra.sweeper.grace_period=20")


class Postgres:
    """The test server: fresh databases on it, their URLs without the password, and the env that has it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url, self.user, self.password = url, parts.username, parts.password or ""
        self.host, self.port = parts.hostname, parts.port or 5432
        self.created: list[str] = []

    def _admin(self, sql: str) -> None:
        import psycopg  # the driver SQLAlchemy opens for postgresql:// URLs

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(sql)

    def database(self, prefix: str) -> str:
        """A new empty database; its URL without the password."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("LRA_SWEEP", "MLFLOW_"))}
        env.update(PGPASSWORD=self.password, OMP_NUM_THREADS="1")
        return env

    def drop_all(self) -> None:
        for name in self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def postgres():
    url = os.environ.get("LRA_TEST_POSTGRES_URL")
    if not url:
        message = ("LRA_TEST_POSTGRES_URL is unset: start a throwaway server with "
                   "`cleanup_steps=(); . .ci/services/postgres.sh` (run the cleanup_steps after)")
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run these tests)")
        pytest.skip(message)
    server = Postgres(url)
    assert server.password, "LRA_TEST_POSTGRES_URL must carry the password (the tests keep it out of every URL)"
    yield server
    server.drop_all()


def launch_args(root: Path, sweep_dir: str, config: str, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "launch.py"), "-cd", str(REPO / "sweeps"), "-cn", config, *TINY,
            f"data.root={root / 'data'}", f"checkpoint.dir={root / 'checkpoints'}",
            f"hydra.sweep.dir={root / sweep_dir}", *overrides]


def texts_under(folder: Path) -> dict[Path, str]:
    """Every readable text file below `folder` (logs, Hydra's job folders, submitit's logs)."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix not in (".pkl", ".pt", ".npy", ".db"):
            try:
                found[path] = path.read_text()
            except UnicodeDecodeError:
                continue
    return found


def test_two_optuna_workers_started_at_once_share_one_study_on_postgresql(tmp_path, postgres):
    storage = postgres.database("optuna")
    overrides = (f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=two-workers",
                 "hydra.sweeper.n_trials=6", "hydra/sweeper/pruner=nop", "hydra.sweeper.sampler.seed=null",
                 *FAST_HEARTBEAT)
    env = {**postgres.env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    workers = []
    for name in ("worker-a", "worker-b"):  # the same command in two shells, at the same moment
        log = (tmp_path / f"{name}.log").open("w")
        workers.append(subprocess.Popen(launch_args(tmp_path, name, "tiny_search", *overrides), cwd=tmp_path,
                                        env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [worker.wait(1200) for worker in workers]
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("worker-a", "worker-b")}
    assert codes == [0, 0], "\n".join(text[-4000:] for text in logs.values())

    os.environ["PGPASSWORD"] = postgres.password  # the workers' URL had none: libpq reads it from here
    try:
        trials = optuna.load_study(study_name="two-workers", storage=storage).get_trials()
    finally:
        os.environ.pop("PGPASSWORD")
    states = Counter(trial.state for trial in trials)
    by_worker = {name: {int(n) for n in re.findall(r"trial (\d+) COMPLETE", text)} for name, text in logs.items()}
    named = {state.name: count for state, count in states.items()}
    print(f"two workers on one PostgreSQL study: {len(trials)} trials, states {named}, COMPLETE by worker: "
          f"{ {name: sorted(numbers) for name, numbers in by_worker.items()} }")
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0  # none left RUNNING
    assert states[TrialState.COMPLETE] == 6  # n_trials, all trained (no pruner, nothing diverges)
    assert len(trials) == 6, named  # asked under PostgreSQL's advisory lock: no trial past n_trials, no FAIL
    complete = {trial.number: trial for trial in trials if trial.state == TrialState.COMPLETE}
    assert all(by_worker.values()), by_worker  # both workers ran trials of the one study ...
    assert by_worker["worker-a"].isdisjoint(by_worker["worker-b"])  # ... each its own ...
    assert by_worker["worker-a"] | by_worker["worker-b"] == set(complete)  # ... and none was lost

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = child_runs(client, [client.get_experiment_by_name("listops-small").experiment_id], "two-workers")
    finished = {int(run.data.tags["optuna_trial"]): run for run in runs if run.info.status == "FINISHED"}
    assert set(finished) == set(complete)  # every COMPLETE trial is a FINISHED run, with the value it told
    for number, trial in complete.items():
        assert trial.value == pytest.approx(finished[number].data.metrics["best_eval_accuracy"])
    for run in runs:
        assert postgres.password not in str(run.data.params) + str(run.data.tags)
    for path, text in texts_under(tmp_path).items():
        assert postgres.password not in text, path


def test_a_grid_logs_through_an_mlflow_server_on_postgresql(tmp_path, postgres):
    backend = postgres.database("mlflow")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    server_log = tmp_path / "server.log"
    server = subprocess.Popen(
        [*command, "server", "--backend-store-uri", backend, "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env={**postgres.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(base, server, server_log, timeout=240)
        env = {**postgres.env(), "MLFLOW_TRACKING_URI": base}
        env.pop("PGPASSWORD")  # the jobs reach only the server, never the database
        result = subprocess.run(
            launch_args(tmp_path, "grid", "tiny", "attention=softmax,tpr", "training.seed=0,1",
                        "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2"),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        output = result.stdout + result.stderr
        sweep_id, parent_id = re.findall(r"sweep (\S+): parent MLflow run (\w+)", output)[-1]
        assert "4 jobs, 2 at once (CPU, CPU)" in output

        client = MlflowClient(base)
        experiment = client.get_experiment_by_name("listops-small")
        runs = child_runs(client, [experiment.experiment_id], sweep_id)
        assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
        assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in runs)
        assert sorted((run.data.tags["attention"], run.data.params["training.seed"]) for run in runs) == \
            [("softmax", "0"), ("softmax", "1"), ("tpr", "0"), ("tpr", "1")]
        assert {run.data.params["resolved.cuda_visible_devices"] for run in runs} == {""}  # CPU slots: no GPU
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and parent.data.tags[PARENT_TAG] == "true"
        assert parent.data.tags["jobs_finished"] == "4"

        everything = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
        for run in everything:  # no password in any param, tag or text artifact of any run
            assert postgres.password not in str(run.data.params) + str(run.data.tags), run.info.run_id
        artifacts = texts_under(tmp_path / "artifacts")
        assert any(path.name == "config.yaml" for path in artifacts)
        logs = {**artifacts, **texts_under(tmp_path / "grid")}
        logs[server_log] = server_log.read_text()
        logs[Path("<stdout+stderr>")] = output
        for path, text in logs.items():
            assert postgres.password not in text, path
    finally:
        stop(server)


def test_runs_logging_one_dataset_at_once_on_postgresql_all_get_it(tmp_path, postgres, monkeypatch):
    """The race a grid's jobs lost in CI (`UniqueViolation` on `dataset_pk`), on the database itself."""
    from dataset_race import log_one_dataset_at_once

    uri = postgres.database("race")
    monkeypatch.setenv("PGPASSWORD", postgres.password)  # the spawned workers inherit it
    MlflowClient(uri).search_experiments()  # the schema, before the workers race for something else
    experiment_id, seen = log_one_dataset_at_once(uri, str(tmp_path), workers=6)
    assert seen == ["logged"] * 6, seen
    runs = MlflowClient(uri).search_runs([experiment_id])
    assert [len(run.inputs.dataset_inputs) for run in runs] == [1] * 6


def test_the_sweepers_lock_on_postgresql_is_held_by_one_session_at_a_time(postgres, monkeypatch):
    """`storage_lock` on a PostgreSQL URL is the database's advisory lock: a second holder waits for the first,
    and a holder whose connection dies releases it."""
    import threading
    import time

    from hydra_plugins.lra_optuna_sweeper.storage import can_lock, storage_lock

    url = postgres.database("lock")
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    assert can_lock(url)
    events: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait(30)
        with storage_lock(url):
            events.append("second acquired")

    thread = threading.Thread(target=second)
    thread.start()
    with storage_lock(url):
        events.append("first acquired")
        held.set()
        time.sleep(2.0)  # the second waits on the server all this time
        events.append("first released")
    thread.join(30)
    assert events == ["first acquired", "first released", "second acquired"]

    holder = subprocess.Popen(  # a worker killed while it holds the lock
        [sys.executable, "-c", "import sys, time; from hydra_plugins.lra_optuna_sweeper.storage import storage_lock\n"
         "with storage_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)", url],
        cwd=REPO, env={**postgres.env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        started = time.monotonic()
        with storage_lock(url):
            waited = time.monotonic() - started
    finally:
        holder.kill()
    assert waited < 30, waited  # the server dropped the dead session's lock
