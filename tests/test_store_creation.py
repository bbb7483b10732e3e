"""No half-made store (issue 19): a local sqlite MLflow store or Optuna storage is whole or absent, whatever the
machine's load, a timer or a SIGKILL does to the process making it; a store found half-made or unreadable is
repaired, replaced or refused in one line. Real subprocesses, real MLflow and Optuna stores."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import REPO, TINY, launch

CHECK = ("import sys; from lra.record.stores import check_tracking_store; "
         "check_tracking_store(sys.argv[1], create=True, timeout=float(sys.argv[2]))")
IN_PLACE = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
OPTUNA = ("import sys; from hydra_plugins.lra_optuna_sweeper.storage import make_storage; "
          "make_storage(sys.argv[1])")


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "LRA_SWEEP"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def _check(uri: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(_python(CHECK, uri, str(timeout)), env=_env(), capture_output=True, text=True,
                          timeout=900)


def _head() -> str:
    from lra.record.local_store import head_revision

    return head_revision()


def _revision(db: Path) -> str | None:
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        connection.close()
    return rows[0][0] if rows else None


def _assert_usable(db: Path) -> None:
    """The store is at MLflow's head revision, has no temporary file beside it, and takes a run."""
    assert _revision(db) == _head()
    assert not list(db.parent.glob(f"{db.name}.tmp-*")), list(db.parent.iterdir())
    client = MlflowClient(f"sqlite:///{db}")
    run = client.create_run(client.create_experiment(f"e{time.time_ns()}"))
    client.log_metric(run.info.run_id, "m", 1.0)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


class BusyCores:
    """Busy-loop processes, two per core, for the duration of a `with` block: the load of a shared login node."""

    def __enter__(self) -> "BusyCores":
        self.processes = [subprocess.Popen(_python("while True: pass")) for _ in range(2 * (os.cpu_count() or 2))]
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def _kill_after(command: list[str], appears: Path, delay: float) -> int:
    """Start `command`, SIGKILL it `delay` s after `appears` exists (or after it ends); its return code."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = None
    while process.poll() is None:
        if seen is None and appears.exists():
            seen = time.monotonic()
        if seen is not None and time.monotonic() - seen >= delay:
            process.kill()
            break
        time.sleep(0.005)
    return process.wait()


@pytest.mark.slow
def test_an_unreadable_store_is_refused_in_one_line_whose_fix_names_a_new_path(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000)  # a store cut short by a full disk or a bad copy
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), *TINY, f"data.root={tmp_path / 'data'}",
                             f"checkpoint.dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'out'}"],
                            cwd=tmp_path, env={**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.strip()][-1:]
    assert line.startswith("error: tracking.uri=") and "not a readable MLflow store" in line, line
    assert f"mv {db} {db}.unreadable" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.long
def test_the_fix_of_an_unreadable_store_works(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"\x00garbage" * 1000)
    line = _check(f"sqlite:///{db}").stderr.strip().splitlines()[-1]
    fix = line.split("(mv ", 1)[1].split(")", 1)[0].split()
    os.replace(fix[0], fix[1])  # what the line says to type
    assert _check(f"sqlite:///{db}").returncode == 0
    _assert_usable(db)
    assert (tmp_path / "mlflow.db.unreadable").read_bytes().startswith(b"\x00garbage")


@pytest.mark.long
def test_a_store_made_on_a_loaded_machine_is_never_cut_short_by_the_timer(tmp_path: Path) -> None:
    """The first command in an empty folder under load: creation takes longer than any timer; a 1 ms one must
    not cut it short (20 s did, and left the file half-made)."""
    db = tmp_path / "mlflow.db"
    with BusyCores():
        started = time.monotonic()
        result = _check(f"sqlite:///{db}", timeout=0.001)
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "did not answer" not in result.stderr and not _warnings(result.stderr)
    _assert_usable(db)
    print(f"store made under load in {took:.1f} s")


@pytest.mark.long
def test_the_first_run_in_an_empty_folder_under_load_finishes(tmp_path: Path) -> None:
    with BusyCores():
        result = launch(tmp_path, *TINY, "dataset.train=32", "training.num_epochs=1", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "did not answer" not in result.stderr and not _warnings(result.stderr)
    _assert_usable(tmp_path / "mlflow.db")
    (run,) = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert run.info.status == "FINISHED"


@pytest.mark.long
def test_the_creating_process_killed_at_any_moment_of_its_migration_leaves_no_half_made_store(
        tmp_path: Path) -> None:
    """SIGKILL 0 s to 8 s after the temporary schema file appears (MLflow's migrations take 5-30 s here):
    the store is absent after the kill (never half-made), and the next command makes it whole."""
    delays = [0.0, 0.5, 2.0, 5.0, round(random.uniform(0.0, 8.0), 2)]
    print("kill delays", delays)
    mid_migration = 0
    for delay in delays:
        folder = tmp_path / f"kill-{delay}"
        folder.mkdir()
        db = folder / "mlflow.db"
        code = _kill_after_temporary(_python(CHECK, f"sqlite:///{db}", "20"), db, delay)
        assert not db.exists() or _revision(db) == _head(), (delay, code, _revision(db))
        mid_migration += code == -signal.SIGKILL and bool(list(folder.glob("mlflow.db.tmp-*")))
        again = _check(f"sqlite:///{db}")
        assert again.returncode == 0, (delay, again.stderr[-3000:])
        assert not _warnings(again.stderr), again.stderr
        _assert_usable(db)
    assert mid_migration >= 2, f"only {mid_migration} kills landed inside the migration"


def _kill_after_temporary(command: list[str], db: Path, delay: float) -> int:
    """Start `command` (which makes the store `db`), SIGKILL it `delay` s after its temporary file appears."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = None
    while process.poll() is None:
        if seen is None and list(db.parent.glob(f"{db.name}.tmp-*")):
            seen = time.monotonic()
        if seen is not None and time.monotonic() - seen >= delay:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    return process.wait()


def _half_made_by_mlflow_in_place(db: Path) -> str:
    """A store as MLflow's own in-place creation leaves it when killed mid-migration (what lra did before):
    SIGKILL once the file is at an intermediate revision; that revision."""
    process = subprocess.Popen(_python(IN_PLACE, f"sqlite:///{db}"), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    head, revision = _head(), None
    while process.poll() is None:
        if db.exists():
            try:
                revision = _revision(db)
            except sqlite3.Error:
                revision = None
            if revision is not None and revision != head:
                time.sleep(0.2)  # inside the migrations that follow
                process.kill()
                break
        time.sleep(0.01)
    process.wait()
    revision = _revision(db)
    assert revision is not None and revision != head, "the in-place creation ended before it could be killed"
    return revision


@pytest.mark.long
def test_a_store_left_half_made_is_replaced_or_repaired_with_one_warning_and_the_run_finishes(
        tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    revision = _half_made_by_mlflow_in_place(db)
    result = launch(tmp_path, *TINY, "dataset.train=32", "training.num_epochs=1", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = _warnings(result.stderr)
    (aside,) = tmp_path.glob("mlflow.db.half-made-*")
    assert f"the MLflow store {db} was half-made (schema revision {revision}" in warning, warning
    assert str(aside) in warning and ("moved to" in warning or "upgraded" in warning)
    assert "Traceback" not in result.stderr
    _assert_usable(db)
    runs = MlflowClient(f"sqlite:///{db}").search_runs(["1"])
    assert [run.info.status for run in runs] == ["FINISHED"]
    again = launch(tmp_path, *TINY, "dataset.train=32", "training.num_epochs=1", "training.seed=1", timeout=900)
    assert again.returncode == 0 and not _warnings(again.stderr), again.stderr[-3000:]


@pytest.mark.long
def test_a_store_of_an_intermediate_revision_is_upgraded_keeping_its_runs(tmp_path: Path) -> None:
    """A store whose migrations stopped between two revisions (nothing half-applied): MLflow's upgrade finishes
    it on a copy; the runs stay, the file as found is kept beside it, one warning line."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    db = tmp_path / "mlflow.db"
    revisions = [r.revision for r in ScriptDirectory.from_config(_get_alembic_config("")).walk_revisions()]
    middle = revisions[len(revisions) // 2]
    engine = create_sqlalchemy_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(str(engine.url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, middle)
        connection.exec_driver_sql("INSERT INTO experiments (experiment_id, name, artifact_location, "
                                   "lifecycle_stage) VALUES (7, 'kept', 'file:///x', 'active')")
    engine.dispose()
    result = _check(f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = _warnings(result.stderr)
    assert f"schema revision {middle}" in warning and "upgraded, the file as found is kept as" in warning
    _assert_usable(db)
    assert MlflowClient(f"sqlite:///{db}").get_experiment("7").name == "kept"
    assert _revision(next(tmp_path.glob("mlflow.db.half-made-*"))) == middle


def test_an_optuna_storage_whose_creator_is_killed_at_any_moment_is_whole_or_absent(tmp_path: Path) -> None:
    import optuna

    from hydra_plugins.lra_optuna_sweeper.storage import make_storage

    for delay in (0.0, 0.02, 0.1, 0.3, round(random.uniform(0.0, 0.5), 3)):
        db = tmp_path / f"optuna-{delay}.db"
        _kill_after_temporary(_python(OPTUNA, f"sqlite:///{db}"), db, delay)
        if db.exists():  # the rename happened before the kill: the storage is complete
            connection = sqlite3.connect(db)
            assert connection.execute("SELECT count(*) FROM version_info").fetchone() == (1,)
            connection.close()
        study = optuna.create_study(storage=make_storage(f"sqlite:///{db}"), study_name="s")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
        assert not list(tmp_path.glob(f"{db.name}.tmp-*"))


def test_an_optuna_storage_left_half_made_by_an_in_place_creation_is_completed(tmp_path: Path) -> None:
    """Optuna's own in-place creation (what the sweeper did before) killed at several moments: the next opening
    completes the storage (Optuna's creation is idempotent) and a study runs on it."""
    import optuna

    from hydra_plugins.lra_optuna_sweeper.storage import make_storage

    in_place = "import sys, optuna; optuna.storages.RDBStorage(sys.argv[1])"
    for delay in (0.0, 0.05, 0.15, 0.4):
        db = tmp_path / f"optuna-{delay}.db"
        _kill_after(_python(in_place, f"sqlite:///{db}"), db, delay)
        study = optuna.create_study(storage=make_storage(f"sqlite:///{db}"), study_name="s")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        assert study.trials[0].state.name == "COMPLETE"
