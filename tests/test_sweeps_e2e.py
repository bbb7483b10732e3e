"""Sweeps end to end: the real `launch.py -m` in subprocesses, real sqlite MLflow and Optuna stores, a tiny model.

All tests share one temporary store (and data cache); each sweep has its own id / study name."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lra.compare.report import make_report
from lra.sweep.callback import child_runs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset.train=32", "dataset.dev=16", "dataset.test=16", "training.batch_size=16", "training.num_epochs=2",
        "tracking.system_metrics=false"]
TINY_MODEL = ["model.embedding_dim=16", "model.transformer_hidden_dim=32", "model.num_head=2", "model.head_dim=8",
              "model.num_layers=1"]  # as sweeps/tiny.yaml
CALLBACK = "++hydra.callbacks.sweep_run._target_=lra.sweep.callback.SweepRunCallback"  # as in conf/config.yaml
FAST_HEARTBEAT = ["hydra.sweeper.heartbeat_interval=2", "hydra.sweeper.grace_period=10"]  # a loaded CI box
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Store:
    root: Path
    uri: str
    client: MlflowClient

    @property
    def optuna_url(self) -> str:  # the sweeper's default: beside mlflow.db
        return f"sqlite:///{self.root / 'optuna.db'}"

    def study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.optuna_url)

    def runs(self, sweep_id: str) -> list:
        return child_runs(self.client, [self.client.get_experiment_by_name("listops-small").experiment_id],
                          sweep_id)

    def command(self, name: str, config: str | None, overrides: tuple[str, ...]) -> list[str]:
        """launch.py with a sweep file (`-cd sweeps -cn config`), or as a plain `launch.py -m` (config None)."""
        head = ["-cd", str(REPO / "sweeps"), "-cn", config] if config else ["-m", *TINY_MODEL, CALLBACK]
        return [sys.executable, str(REPO / "launch.py"), *head, *TINY, f"data.root={self.root / 'data'}",
                f"checkpoint.dir={self.root / 'checkpoints' / name}",
                f"hydra.sweep.dir={self.root / 'multirun' / name}", *overrides]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LRA_SWEEP")}
        env["MLFLOW_TRACKING_URI"] = self.uri
        return env

    def launch(self, name: str, *overrides: str, config: str | None = "tiny") -> subprocess.CompletedProcess:
        return subprocess.run(self.command(name, config, overrides), cwd=self.root, env=self.environment(),
                              capture_output=True, text=True, timeout=400)

    def start(self, name: str, *overrides: str, config: str = "tiny_search") -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        return subprocess.Popen(self.command(name, config, overrides), cwd=self.root, env=self.environment(),
                                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _explain(result) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def _sweep_ids(output: str) -> tuple[str, str]:
    found = re.search(r"sweep (\S+): parent MLflow run (\w+)", output)
    assert found, output[-3000:]
    return found.group(1), found.group(2)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("sweeps")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # create the tables once, before parallel workers race to
    return Store(root, uri, client)


@pytest.fixture(scope="module")
def grid(store) -> tuple[str, str]:
    """`launch.py -m attention=softmax,tpr` on two joblib workers: (sweep id, parent run id)."""
    result = store.launch("grid", "attention=softmax,tpr", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                          config=None)
    assert result.returncode == 0, _explain(result)
    return _sweep_ids(result.stdout + result.stderr)


def test_multirun_gives_one_finished_run_per_job_under_one_parent(store, grid):
    sweep_id, parent_id = grid
    runs = store.runs(sweep_id)
    assert sorted(run.data.tags["attention"] for run in runs) == ["softmax", "tpr"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["task"] == "listops-small"
        assert run.data.tags["sweep_id"] == sweep_id
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert "test_accuracy" in run.data.metrics
    parent = store.client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs_finished"] == "2"
    assert parent.info.experiment_id == runs[0].info.experiment_id


def test_a_failing_job_does_not_stop_the_others_and_fails_the_sweep(store):
    result = store.launch("failing", "attention=softmax", "training.debug_nan_at_step=1,null")
    assert result.returncode != 0, _explain(result)  # the first job diverged ...
    sweep_id, parent_id = _sweep_ids(result.stdout + result.stderr)
    statuses = Counter(run.info.status for run in store.runs(sweep_id))
    assert statuses == {"FAILED": 1, "FINISHED": 1}  # ... and the second still ran
    assert store.client.get_run(parent_id).info.status == "FAILED"


def test_optuna_sweep_survives_a_diverging_trial(store):
    enqueue = ",".join(f"{{training.learning_rate: {lr}, training.debug_nan_at_step: {nan}}}"
                       for lr, nan in ((1e-3, "null"), (2e-3, 1), (3e-3, "null"), (4e-3, "null")))
    result = store.launch("diverge", "hydra.sweeper.study_name=diverge", "hydra.sweeper.n_trials=4",
                          "hydra/sweeper/pruner=nop", "training.debug_nan_at_step=null,1",
                          f"hydra.sweeper.enqueue=[{enqueue}]", config="tiny_search")
    assert result.returncode == 0, _explain(result)
    trials = store.study("diverge").get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert failed.params["training.debug_nan_at_step"] == 1
    assert "DivergedError" in failed.user_attrs["lra_fail_reason"]
    runs = {int(run.data.tags["optuna_trial"]): run for run in store.runs("diverge")}
    assert sorted(runs) == [0, 1, 2, 3]
    assert runs[failed.number].info.status == "FAILED"
    assert all(runs[t.number].info.status == "FINISHED" for t in trials if t.state == TrialState.COMPLETE)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for trial in complete:  # the value told to Optuna is the run's best dev accuracy
        assert trial.value == pytest.approx(max(m.value for m in store.client.get_metric_history(
            runs[trial.number].info.run_id, "eval_accuracy")))


def test_optuna_sweep_prunes_trials_from_inside_the_job(store):
    result = store.launch("prune", "hydra.sweeper.study_name=prune", "hydra.sweeper.n_trials=2",
                          "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01",
                          config="tiny_search")
    # every trial is pruned, so the study has no COMPLETE trial: one error line, exit 1 (issue 14)
    assert result.returncode == 1 and "has no COMPLETE trial" in result.stderr, _explain(result)
    trials = store.study("prune").get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.last_step == 1 for t in pruned)  # stopped after the first of two epochs
    runs = {int(run.data.tags["optuna_trial"]): run for run in store.runs("prune")}
    for trial in pruned:
        assert runs[trial.number].info.status == "KILLED"
        assert runs[trial.number].data.tags["pruned"] == "true"


@pytest.mark.parametrize("ends", [("training.num_epochs=1",), ("training.num_epochs=3", "training.max_steps=2")],
                         ids=["last-epoch", "max-steps"])
def test_the_pruner_never_prunes_a_trial_at_its_last_epoch(store, ends):
    """Issue 19: a trial that had run all its epochs was then marked PRUNED, its result thrown away. The same
    always-pruning rule as above, but the first report is the trial's last (one epoch, or max_steps reached in
    the first of three epochs: 32 samples, batches of 16): reported, never pruned, so COMPLETE."""
    name = "last-" + ends[-1].split(".")[-1].split("=")[0]
    result = store.launch(name, f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=2",
                          "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01", *ends,
                          config="tiny_search")
    assert result.returncode == 0, _explain(result)
    trials = store.study(name).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(list(t.intermediate_values) == [1] for t in trials)  # reported (epoch 1), and not pruned
    runs = {int(run.data.tags["optuna_trial"]): run for run in store.runs(name)}
    assert {run.info.status for run in runs.values()} == {"FINISHED"} and sorted(runs) == [0, 1]
    for trial in trials:
        assert trial.value == pytest.approx(runs[trial.number].data.metrics["best_eval_accuracy"])


def test_unknown_objective_stops_the_sweep_before_any_trial(store):
    result = store.launch("bad-objective", "hydra.sweeper.study_name=bad-objective", "sweep.objective=accuracy",
                          config="tiny_search")
    assert result.returncode == 2 and "error: sweep.objective='accuracy'" in result.stderr, _explain(result)
    assert "bad-objective" not in optuna.get_all_study_names(store.optuna_url)
    assert store.runs("bad-objective") == []


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _mid_epoch_checkpoint_of_a_later_trial(store: Store, folder: Path, first: int) -> dict:
    """A checkpoint saved inside an epoch by a job whose trial number is `first` or later (the kill then lands
    while that trial trains)."""
    import torch

    for path in folder.glob("*/last.pt"):
        try:
            state = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a file being replaced; the rename makes the next read whole
            continue
        if state["progress"]["batch_in_epoch"] > 0:
            trial = store.client.get_run(state["run_id"]).data.tags.get("optuna_trial")
            if trial is not None and int(trial) >= first:
                return state
    return {}


@pytest.mark.long  # about a minute on a loaded 2-core machine: two sweeps, one killed mid-trial
def test_a_killed_trial_is_resumed_by_the_same_command_into_its_run(store):
    """Issue 19: SIGKILL while a trial trains, then the same command: the study ended with 3 COMPLETE and 1
    FAIL for n_trials=4, the killed trial's checkpoint thrown away. Now the rerun takes the killed trial over
    (its process is gone), runs it again with its number and parameters, and its job resumes from its
    checkpoint into its MLflow run: n_trials COMPLETE, the killed trial's run FINISHED, continued, not
    restarted."""
    # 2 epochs of 24 steps, a checkpoint every 3: the kill lands inside an epoch of the second trial
    args = ("hydra.sweeper.study_name=resume", "hydra.sweeper.n_trials=3", "hydra/sweeper/pruner=nop",
            "dataset.train=384", "training.checkpoint_every=3", "training.log_every=2", *FAST_HEARTBEAT)
    checkpoints = store.root / "checkpoints" / "resume"
    first = store.start("resume", *args)
    state: dict = {}
    try:
        deadline = time.time() + 300
        while not state:
            assert first.poll() is None, (store.root / "resume.log").read_text()[-3000:]
            assert time.time() < deadline, "no mid-epoch checkpoint of trial 1 or later appeared"
            state = _mid_epoch_checkpoint_of_a_later_trial(store, checkpoints, first=1)
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed_run = store.client.get_run(state["run_id"])
    killed_number = int(killed_run.data.tags["optuna_trial"])
    assert killed_run.info.status == "RUNNING"  # SIGKILL: nobody could end it
    before = store.study("resume").get_trials()
    assert before[killed_number].state == TrialState.RUNNING
    logged_before = {m.step for m in store.client.get_metric_history(killed_run.info.run_id, "train_loss")}

    result = store.launch("resume", *args, config="tiny_search")  # the same command again
    assert result.returncode == 0, _explain(result)
    output = result.stdout + result.stderr
    assert f"trial {killed_number} was RUNNING but its sweeper (process" in output, output[-3000:]
    assert "resuming from" in output and f"resuming MLflow run {killed_run.info.run_id}" in output
    trials = store.study("resume").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # n_trials results, no FAIL, no fourth trial
    assert trials[killed_number].params == before[killed_number].params
    runs = store.runs("resume")
    assert sorted(int(run.data.tags["optuna_trial"]) for run in runs) == [0, 1, 2]  # one run per trial
    assert {run.info.status for run in runs} == {"FINISHED"}
    resumed = next(run for run in runs if int(run.data.tags["optuna_trial"]) == killed_number)
    assert resumed.info.run_id == killed_run.info.run_id  # the killed run, continued
    steps = sorted(m.step for m in store.client.get_metric_history(resumed.info.run_id, "train_loss"))
    total = int(resumed.data.params["resolved.total_steps"])
    assert logged_before and min(steps) <= min(logged_before) and max(steps) == total
    assert set(steps) == set(range(2, total + 1, 2))  # every logged step once, before the kill and after
    assert trials[killed_number].value == pytest.approx(resumed.data.metrics["best_eval_accuracy"])
    parents = store.client.search_runs([runs[0].info.experiment_id],
                                       "tags.sweep_id = 'resume' and tags.`lra.sweep_parent` = 'true'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the resumed sweep kept its parent


def test_two_workers_on_one_storage_lose_no_trial_and_no_run(store):
    args = ("hydra.sweeper.study_name=parallel", "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=nop",
            "hydra.sweeper.sampler.seed=null", *FAST_HEARTBEAT)
    workers = [store.start(f"parallel-{i}", *args) for i in range(2)]
    for worker in workers:
        assert worker.wait(timeout=400) == 0, (store.root / f"parallel-{workers.index(worker)}.log").read_text()
    trials = store.study("parallel").get_trials()
    launched = [t for t in trials if not t.user_attrs.get("lra_fail_reason", "").startswith("surplus")]
    assert len(launched) == 4 and all(t.state == TrialState.COMPLETE for t in launched)
    runs = store.runs("parallel")
    assert sorted(int(run.data.tags["optuna_trial"]) for run in runs) == sorted(t.number for t in launched)
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len({run.data.tags["mlflow.parentRunId"] for run in runs}) == 1  # both workers under one parent
    for log in ("parallel-0.log", "parallel-1.log"):  # each worker ran trials
        assert "COMPLETE" in (store.root / log).read_text()


def test_report_of_a_finished_sweep_reads_its_numbers_back_from_mlflow(store, grid):
    sweep_id, parent_id = grid
    rows, files = make_report(store.client, sweep_id=sweep_id, out=store.root / "report")
    assert [row.attention for row in rows] == ["softmax", "tpr"]
    for row, run in zip(rows, sorted(store.runs(sweep_id), key=lambda r: r.data.tags["attention"])):
        assert row.runs == 1 and row.task == "listops-small"
        assert row.mean("accuracy") == run.data.metrics["test_accuracy"]
        assert row.mean("speed") == run.data.metrics["samples_per_second"]
        assert row.mean("memory") == run.data.metrics["model_peak_memory_mb"]  # CPU: the model, not the RSS
    assert rows[0].ratios["accuracy"] == 1.0
    assert rows[1].ratios["speed"] == pytest.approx(rows[1].mean("speed") / rows[0].mean("speed"))
    logged = {item.path for item in store.client.list_artifacts(parent_id, "report")}
    assert logged == {f"report/{path.name}" for path in files} and len(files) == 3
