"""The lra_optuna sweeper's parts, in-process: search-space grammar, job outcomes, the job-side trial hook,
stale trials, storage defaults. The end-to-end sweeps are in test_sweeps_e2e.py."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # launch.py finds hydra_plugins/ beside it; an in-process test needs the root too
    sys.path.insert(0, str(REPO))

from hydra_plugins.lra_optuna_sweeper._impl import (  # noqa: E402
    FAIL_REASON_ATTR, HEARTBEAT_ATTR, LraOptunaSweeperImpl, default_direction, outcome)
from hydra_plugins.lra_optuna_sweeper._space import format_value, parse_search_space  # noqa: E402
from lra.errors import ConfigError  # noqa: E402
from lra.sweep import redact  # noqa: E402
from lra.trial import PRUNER_ATTR, make_storage, open_trial  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_search_space_uses_the_hydra_optuna_plugin_grammar():
    space, fixed = parse_search_space([
        "training.learning_rate=tag(log, interval(1e-5, 1e-2))",
        "model.dropout_prob=interval(0.0, 0.3)",
        "model.num_layers=range(1, 5)",
        "training.warmup_steps=range(0, 2001, 250)",
        "model.head_dim=tag(int, log, interval(8, 64))",
        "attention=softmax,tpr",
        "training.weight_decay=choice(0.0, 0.01, 0.1)",
        "training.num_epochs=2",
        "training.num_epochs=3",  # the later override wins
    ])
    assert space["training.learning_rate"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert space["model.dropout_prob"] == FloatDistribution(0.0, 0.3)
    assert space["model.num_layers"] == IntDistribution(1, 4)  # range excludes its stop, as in Python
    assert space["training.warmup_steps"] == IntDistribution(0, 2000, step=250)
    assert space["model.head_dim"] == IntDistribution(8, 64, log=True)
    assert space["attention"] == CategoricalDistribution(["softmax", "tpr"])
    assert space["training.weight_decay"] == CategoricalDistribution([0.0, 0.01, 0.1])
    assert fixed == {"training.num_epochs": "3"}


@pytest.mark.parametrize("value", [None, True, False, 3, -2, 1e-5, 0.1, 2.0, "softmax", "hrr-individual", "true",
                                   "null", "1e-3", "a b", "sqlite:////tmp/x/optuna.db", "it's", "back\\slash",
                                   "end\\", "q\\'x"])
def test_format_value_parses_back_to_the_same_value(value):
    parsed = OverridesParser.create().parse_overrides([f"key={format_value(value)}"])[0].value()
    assert parsed == value and type(parsed) is type(value)


def test_direction_follows_the_metric_name():
    assert default_direction("eval_accuracy") == "maximize"
    assert default_direction("samples_per_second") == "maximize"
    assert default_direction("eval_loss") == "minimize"
    assert default_direction("peak_memory_mb") == "minimize"


def _ret(status: JobStatus, value):
    ret = JobReturn()
    ret.status, ret._return_value = status, value
    return ret


def test_job_outcomes_map_to_trial_states():
    assert outcome(_ret(JobStatus.COMPLETED, 0.75)) == (TrialState.COMPLETE, 0.75, None)
    assert outcome(_ret(JobStatus.FAILED, optuna.TrialPruned("epoch 1")))[0] == TrialState.PRUNED
    state, value, reason = outcome(_ret(JobStatus.FAILED, RuntimeError("training diverged")))
    assert (state, value) == (TrialState.FAIL, None) and "training diverged" in reason
    assert outcome(_ret(JobStatus.COMPLETED, math.nan))[0] == TrialState.FAIL
    assert outcome(_ret(JobStatus.COMPLETED, math.inf))[0] == TrialState.FAIL
    assert outcome(_ret(JobStatus.COMPLETED, None))[0] == TrialState.FAIL


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_job_reports_to_its_own_trial_and_is_pruned(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else str(tmp_path / "optuna.log")
    study = optuna.create_study(storage=make_storage(url), study_name="s", direction="maximize")
    study.set_user_attr(PRUNER_ATTR, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5})
    trial = study.ask()

    assert open_trial({"storage": None, "study_name": None, "trial_number": None}) is None
    reporter = open_trial({"storage": url, "study_name": "s", "trial_number": trial.number})
    assert reporter.report(0, 0.9) is False
    assert reporter.report(1, math.nan) is False  # not reported; the trainer raises for it
    assert reporter.report(2, 0.1) is True
    frozen = study.get_trials()[0]
    assert frozen.state == TrialState.RUNNING  # only the sweeper ends a trial
    assert frozen.intermediate_values == {0: 0.9, 2: 0.1}


def _sweeper(**overrides) -> LraOptunaSweeperImpl:
    settings = dict(sampler=None, pruner=None, direction=None, storage=None, study_name=None, n_trials=4,
                    n_jobs=1, max_failure_rate=0.5, params=None, enqueue=[], heartbeat_interval=1.0,
                    grace_period=3.0, validate=None)
    settings.update(overrides)
    return LraOptunaSweeperImpl(**settings)


def test_bad_sweeper_settings_name_their_key():
    with pytest.raises(ConfigError, match="hydra.sweeper.max_failure_rate"):
        _sweeper(max_failure_rate=1.5)
    with pytest.raises(ConfigError, match="hydra.sweeper.direction"):
        _sweeper(direction="up")
    with pytest.raises(ConfigError, match="hydra.sweeper.grace_period"):
        _sweeper(heartbeat_interval=10.0, grace_period=5.0)


def test_unknown_objective_is_refused_before_any_trial():
    sweeper = _sweeper()
    sweeper.config = OmegaConf.create({"sweep": {"objective": "accuracy"}})
    with pytest.raises(ConfigError, match="sweep.objective"):
        sweeper._objective()


def test_default_storage_lies_beside_the_sqlite_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/runs/mlflow.db")
    sweeper = _sweeper()
    sweeper.config = OmegaConf.create({"tracking": {"uri": None}})
    assert sweeper._storage_url() == f"sqlite:///{tmp_path}/runs/optuna.db"
    assert _sweeper(storage="postgresql://db/optuna")._storage_url() == "postgresql://db/optuna"
    monkeypatch.chdir(tmp_path)
    assert _sweeper(storage="studies.log")._storage_url() == str(tmp_path / "studies.log")  # a journal file


def test_a_resumed_study_keeps_direction_and_fails_stale_trials(tmp_path, monkeypatch):
    orphans = []  # the MLflow runs of killed trials are ended FAILED too (a real store: test_sweeps_e2e.py)
    monkeypatch.setattr("hydra_plugins.lra_optuna_sweeper._impl.fail_orphan_runs",
                        lambda uri, experiment, study, number: orphans.append((experiment, study, number)))
    url = f"sqlite:///{tmp_path}/optuna.db"
    sweeper = _sweeper()
    sweeper.config = OmegaConf.create({"tracking": {"uri": None, "experiment": None}, "task": "t"})
    study = sweeper._open_study(url, "s", "maximize")
    killed = study.ask()  # a worker that was killed: RUNNING, its last heartbeat long ago
    study._storage.set_trial_user_attr(killed._trial_id, HEARTBEAT_ATTR, time.time() - 60)
    alive = study.ask()  # a worker that is alive
    study._storage.set_trial_user_attr(alive._trial_id, HEARTBEAT_ATTR, time.time())

    with pytest.raises(ConfigError, match="hydra.sweeper.direction"):
        sweeper._open_study(url, "s", "minimize")
    study = sweeper._open_study(url, "s", "maximize")
    sweeper._fail_stale(study)
    states = {t.number: t for t in study.get_trials()}
    assert states[killed.number].state == TrialState.FAIL
    assert states[killed.number].user_attrs[FAIL_REASON_ATTR].startswith("interrupted")
    assert states[alive.number].state == TrialState.RUNNING
    assert orphans == [("t", "s", killed.number)]


def test_surplus_trials_of_racing_workers_are_not_launched(tmp_path):
    sweeper = _sweeper(n_trials=2)
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path}/optuna.db"), study_name="s")
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), 2.0)  # another worker already filled the study
    assert sweeper._ask(study, {"x": FloatDistribution(0, 1)}, 1) == []
    surplus = study.get_trials()[-1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs[FAIL_REASON_ATTR].startswith("surplus")


def test_passwords_in_urls_are_redacted_from_logs_and_tags():
    assert redact("storage=postgresql://lra:s3cret@db:5432/optuna x=sqlite:////a/b.db") == \
        "storage=postgresql://lra:***@db:5432/optuna x=sqlite:////a/b.db"
