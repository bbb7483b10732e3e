"""The sweeper's lra extras and its storage under concurrency, end to end: real `launch.py` and example-app
subprocesses, real sqlite MLflow and Optuna stores, a tiny model.

- a multi-objective lra sweep (`sweep.objective=[eval_accuracy,samples_per_second]`): NSGA-II by default, each
  trial told the values its job returned, the Pareto front in the results file, on the parent run and drawn by
  `python -m lra.report`; pruning asked for with several objectives refused with one line;
- a RUNNING trial whose job's MLflow run FINISHED (its sweeper was killed before it could tell) is told
  COMPLETE with the run's values when the study is reopened, not FAIL;
- a trial run again after its job was killed before its first checkpoint ends the killed job's run FAILED;
- three sweepers started at once on a fresh folder share one new sqlite study: all finish, n_trials COMPLETE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import TINY, launch, launch_env
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hydra_plugins.lra_optuna_sweeper._impl import HEARTBEAT_ATTR, LraOptunaSweeperImpl, Plan  # noqa: E402
from lra.sweep.optuna_app import LraSweepApp  # noqa: E402
from hydra_plugins.lra_optuna_sweeper._space import parse_search_space  # noqa: E402
from hydra_plugins.lra_optuna_sweeper.storage import make_storage  # noqa: E402
from lra.compare.pareto import dominates  # noqa: E402
from lra.compare.report import make_report  # noqa: E402
from lra.sweep.callback import child_runs  # noqa: E402
from lra.sweep.trial import run_values  # noqa: E402

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJECTIVES = ["eval_accuracy", "samples_per_second"]


def explain(result) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def sweep(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`launch.py -cd sweeps -cn tiny_search` in `tmp` (its own stores), with the TINY model and data."""
    args = [sys.executable, str(REPO / "launch.py"), "-cd", str(REPO / "sweeps"), "-cn", "tiny_search",
            f"hydra.sweep.dir={tmp / 'multirun'}", f"data.root={tmp / 'data'}",
            f"checkpoint.dir={tmp / 'checkpoints'}", "hardware.num_threads=1",
            *(o for o in TINY if not o.startswith(("training.num_epochs", "task="))), *overrides]
    return subprocess.run(args, cwd=tmp, env=launch_env(tmp), capture_output=True, text=True, timeout=600)


def test_multi_objective_lra_sweep_writes_and_draws_its_pareto_front(tmp_path):
    result = sweep(tmp_path, f"sweep.objective=[{','.join(OBJECTIVES)}]", "hydra.sweeper.study_name=mo",
                   "hydra.sweeper.n_trials=3", "attention=softmax,tpr")
    assert result.returncode == 0, explain(result)
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.metric_names == OBJECTIVES
    assert "NSGAIISampler" in result.stdout + result.stderr  # auto: NSGA-II for several objectives
    trials = study.get_trials()
    assert len(trials) == 3 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert all(t.intermediate_values == {} for t in trials)  # no pruning: nothing reported

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("listops-small").experiment_id
    runs = {int(r.data.tags["optuna_trial"]): r for r in child_runs(client, [experiment], "mo")}
    assert sorted(runs) == [0, 1, 2] and {r.info.status for r in runs.values()} == {"FINISHED"}
    for trial in trials:  # what the job returned (a tuple) is what the trial was told, and what its run holds
        assert trial.values == pytest.approx(run_values(client, runs[trial.number], OBJECTIVES))
        assert runs[trial.number].data.tags["attention"] == trial.params["attention"]

    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    assert results.name == "optuna" and "best_value" not in results
    front = sorted(s["number"] for s in results.solutions)
    assert front == sorted(t.number for t in study.best_trials)
    for a in results.solutions:
        for b in results.solutions:
            assert not dominates(list(a["values"]), list(b["values"]), ["maximize", "maximize"])
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["pareto_trials"] == ",".join(str(n) for n in sorted(front))
    assert [row["trial"] for row in json.loads(parent.data.tags["pareto_front"])] == front
    assert parent.data.metrics["pareto_size"] == len(front)

    rows, files = make_report(client, sweep_id="mo", out=tmp_path / "report")
    assert {path.name for path in files} >= {"pareto.md", "pareto.png"}
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 0
    table = (tmp_path / "report" / "pareto.md").read_text()
    assert "Pareto front of dev accuracy and throughput" in table
    assert sum(line.startswith("| ") and line[2].isdigit() for line in table.splitlines()) == len(front)


def test_pruning_asked_for_with_several_objectives_is_one_line(tmp_path):
    result = sweep(tmp_path, "sweep.objective=[eval_accuracy,peak_memory_mb]", "hydra/sweeper/pruner=median",
                   "hydra.sweeper.study_name=mo-pruned")
    assert result.returncode == 2, explain(result)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: hydra.sweeper.pruner._target_='optuna.pruners.MedianPruner': Optuna prunes only "
                           "single-objective studies") and "fix: hydra/sweeper/pruner=nop" in last
    db = tmp_path / "optuna.db"
    assert not db.exists() or "mo-pruned" not in optuna.get_all_study_names(f"sqlite:///{db}")


def test_a_stale_running_trial_whose_run_finished_is_told_complete(tmp_path, monkeypatch):
    """The state a killed sweeper leaves when a job of its batch had already finished: the trial RUNNING
    without heartbeats, its job's MLflow run FINISHED. Reopening the study tells it COMPLETE with the run's
    values (issue 14), where it used to end FAIL "interrupted"."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    objectives = ["eval_accuracy", "eval_loss", "samples_per_second"]
    study = optuna.create_study(storage=make_storage(url), study_name="settle",
                                directions=["maximize", "minimize", "maximize"])
    trial = study.ask()
    done = launch(tmp_path, *TINY, f"sweep.storage={url}", "sweep.study_name=settle",
                  f"sweep.trial_number={trial.number}")  # the job, run as its sweeper would have
    assert done.returncode == 0, explain(done)
    study._storage.set_trial_user_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - 600)  # its sweeper died
    assert study.get_trials()[0].state == TrialState.RUNNING

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    sweeper = LraOptunaSweeperImpl(sampler=None, pruner=None, direction=None, storage=url, study_name="settle",
                                   n_trials=1, n_jobs=1, max_failure_rate=0.5, params=None, enqueue=[],
                                   heartbeat_interval=1.0, grace_period=3.0, validate=None)
    sweeper.config = OmegaConf.create({"sweep": {"objective": objectives}, "task": "listops-small",
                                       "tracking": {"uri": None, "experiment": None}})
    sweeper.app = LraSweepApp(sweeper.config)
    plan = Plan(parse_search_space([]), objectives, ["maximize", "minimize", "maximize"],
                {"_target_": "optuna.samplers.RandomSampler"}, None, 1, url, "settle", None)
    assert sweeper._settle_stale(study, plan, adopt=1) == []  # settled from its run: nothing to run again
    settled = study.get_trials()[0]
    assert settled.state == TrialState.COMPLETE

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["optuna_trial"] == str(trial.number)
    metrics = run.data.metrics
    assert settled.values[0] == pytest.approx(metrics["best_eval_accuracy"])
    accuracy = client.get_metric_history(run.info.run_id, "eval_accuracy")
    best_step = max(accuracy, key=lambda m: (m.value, -m.step)).step
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")}[best_step]
    assert settled.values[1] == pytest.approx(loss)
    assert settled.values[2] == pytest.approx(metrics["samples_per_second"])


def test_a_trial_run_again_without_a_checkpoint_ends_the_run_of_its_killed_job(tmp_path):
    """A trial taken over from a killed sweeper whose job died before its first checkpoint starts a new MLflow
    run; the killed job's run, RUNNING for ever otherwise, ends FAILED (tagged interrupted)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=make_storage(url), study_name="again", direction="maximize")
    trial = study.ask()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("listops-small")
    dead = client.create_run(experiment, tags={"optuna_trial": str(trial.number)}).info.run_id  # the killed job's
    client.log_param(dead, "sweep.study_name", "again")
    done = launch(tmp_path, *TINY, f"sweep.storage={url}", "sweep.study_name=again",
                  f"sweep.trial_number={trial.number}")
    assert done.returncode == 0, explain(done)
    runs = {run.info.run_id: run for run in client.search_runs([experiment])}
    assert len(runs) == 2
    assert runs[dead].info.status == "FAILED" and runs[dead].data.tags["interrupted"] == "true"
    (new,) = [run for run_id, run in runs.items() if run_id != dead]
    assert new.info.status == "FINISHED" and new.data.tags["optuna_trial"] == str(trial.number)


def test_three_sweepers_started_at_once_on_a_fresh_folder_share_one_new_study(tmp_path):
    """Issue 14: two Optuna workers started together on a fresh folder used to burn the study as FAIL
    trials. Three sphere sweepers start at the same moment on a folder with no optuna.db."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LRA_SWEEP")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    workers = []
    for i in range(3):
        command = [sys.executable, str(REPO / "tests" / "apps" / "sphere.py"), "--multirun",
                   "hydra/sweeper=lra_optuna", f"hydra.sweep.dir={tmp_path / f'multirun-{i}'}",
                   "hydra.sweeper.n_trials=9", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=null",
                   "hydra.sweeper.heartbeat_interval=2", "hydra.sweeper.grace_period=60"]
        log = (tmp_path / f"worker-{i}.log").open("w")
        workers.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=400) == 0, (tmp_path / f"worker-{i}.log").read_text()[-3000:]
    trials = optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()
    assert len(trials) == 9 and {t.state for t in trials} == {TrialState.COMPLETE}
    ran = [(tmp_path / f"worker-{i}.log").read_text().count(" COMPLETE value=") for i in range(3)]
    assert sum(ran) == 9
