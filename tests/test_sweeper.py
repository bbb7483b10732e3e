"""The lra_optuna sweeper's parts, in-process: search-space grammar, job outcomes, the job-side trial hook,
stale trials, storage defaults. The end-to-end sweeps are in test_sweeps_e2e.py."""

from __future__ import annotations

import math
import os
import socket
import subprocess
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

from hydra_plugins.lra_optuna_sweeper._errors import SweeperError  # noqa: E402
from hydra_plugins.lra_optuna_sweeper._impl import (  # noqa: E402
    FAIL_REASON_ATTR, HEARTBEAT_ATTR, RESUMES_ATTR, WORKER_ATTR, LraOptunaSweeperImpl, Plan, is_stale, outcome)
from hydra_plugins.lra_optuna_sweeper.app import SweepApp, default_direction, load_app  # noqa: E402
from hydra_plugins.lra_optuna_sweeper.config import LraOptunaSweeperConf  # noqa: E402
from lra.sweep.optuna_app import LraSweepApp as LraApp  # noqa: E402
from hydra_plugins.lra_optuna_sweeper._space import format_value, parse_search_space  # noqa: E402
from lra.sweep.callback import redact  # noqa: E402
from lra.sweep.trial import PRUNER_ATTR, make_storage, open_trial  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_search_space_uses_the_hydra_optuna_plugin_grammar():
    space = parse_search_space([
        "training.learning_rate=tag(log, interval(1e-5, 1e-2))",
        "model.dropout_prob=interval(0.0, 0.3)",
        "model.num_layers=range(1, 4)",
        "training.warmup_steps=range(0, 2000, 250)",
        "model.head_dim=tag(int, log, interval(8, 64))",
        "model.embedding_dim=int(interval(16, 64))",
        "training.batch_size=range(64, 16, -16)",
        "attention=softmax,tpr",
        "training.weight_decay=choice(0.0, 0.01, 0.1)",
        "training.num_epochs=2",
        "training.num_epochs=3",  # the later override wins
    ])
    dists = space.distributions
    assert dists["training.learning_rate"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert dists["model.dropout_prob"] == FloatDistribution(0.0, 0.3)
    assert dists["model.num_layers"] == IntDistribution(1, 4)  # range includes its end, as the plugin samples it
    assert dists["training.warmup_steps"] == IntDistribution(0, 2000, step=250)
    assert dists["model.head_dim"] == IntDistribution(8, 64, log=True)
    assert dists["model.embedding_dim"] == IntDistribution(16, 64)
    assert dists["training.batch_size"] == IntDistribution(16, 64, step=16)  # a descending range: the same set
    assert dists["attention"] == CategoricalDistribution(["softmax", "tpr"])
    assert dists["training.weight_decay"] == CategoricalDistribution([0.0, 0.01, 0.1])
    assert space.fixed == {"training.num_epochs": "3"}


def test_the_command_line_wins_over_params_both_ways():
    assert parse_search_space(["x=choice(1, 2)", "x=5"]).fixed == {"x": "5"}
    space = parse_search_space(["x=5", "x=choice(1, 2)"])
    assert space.fixed == {} and space.distributions == {"x": CategoricalDistribution([1, 2])}


def test_a_bad_search_space_is_one_line_naming_the_key():
    with pytest.raises(SweeperError, match=r"hydra.sweeper.params.x='range\(1, 3, 0\)': the step"):
        parse_search_space(["x=range(1, 3, 0)"])
    with pytest.raises(SweeperError, match=r"^y='interval\(1\)': cannot be parsed"):
        parse_search_space(["x=1", "y=interval(1)"])


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
    assert default_direction("peak_memory_mb") == "maximize"  # the plugin knows no memory metric
    assert LraApp(OmegaConf.create(LRA_CONFIG)).direction("peak_memory_mb") == "minimize"  # lra does


def _ret(status: JobStatus, value):
    ret = JobReturn()
    ret.status, ret._return_value = status, value
    return ret


def test_job_outcomes_map_to_trial_states():
    assert outcome(_ret(JobStatus.COMPLETED, 0.75)) == (TrialState.COMPLETE, [0.75], None)
    assert outcome(_ret(JobStatus.COMPLETED, (0.75, 12)), 2) == (TrialState.COMPLETE, [0.75, 12.0], None)
    assert outcome(_ret(JobStatus.COMPLETED, 0.75), 2)[0] == TrialState.FAIL  # one value for two objectives
    assert outcome(_ret(JobStatus.COMPLETED, (0.75, math.nan)), 2)[0] == TrialState.FAIL
    assert outcome(_ret(JobStatus.COMPLETED, "0.5,1"), 2)[0] == TrialState.FAIL
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


LRA_CONFIG = {"sweep": {"objective": "eval_accuracy"}, "tracking": {"uri": None, "experiment": None}, "task": "t"}


def _plan(url: str, name: str = "s", directions=("maximize",), objectives=("eval_accuracy",)) -> Plan:
    return Plan(parse_search_space(["x=interval(0, 1)"]), list(objectives), list(directions),
                {"_target_": "optuna.samplers.RandomSampler", "seed": 0}, None, 4, url, name, None)


def test_bad_sweeper_settings_name_their_key():
    with pytest.raises(SweeperError, match="hydra.sweeper.max_failure_rate"):
        _sweeper(max_failure_rate=1.5)
    with pytest.raises(SweeperError, match="hydra.sweeper.direction"):
        _sweeper(direction="up")
    with pytest.raises(SweeperError, match="hydra.sweeper.direction"):
        _sweeper(direction=["maximize", "sideways"])
    with pytest.raises(SweeperError, match="hydra.sweeper.grace_period"):
        _sweeper(heartbeat_interval=10.0, grace_period=5.0)


def test_objectives_and_their_directions_in_an_lra_app():
    app = LraApp(OmegaConf.create({"sweep": {"objective": ["eval_accuracy", "samples_per_second",
                                                           "peak_memory_mb"]}}))
    assert app.objectives() == ["eval_accuracy", "samples_per_second", "peak_memory_mb"]
    sweeper = _sweeper()
    sweeper.app = app
    assert sweeper._directions(app.objectives()) == ["maximize", "maximize", "minimize"]
    assert _sweeper(direction=["minimize"] * 3)._directions(app.objectives()) == ["minimize"] * 3
    with pytest.raises(SweeperError, match="one direction per objective"):
        _sweeper(direction="maximize")._directions(app.objectives())
    assert _sweeper()._directions(None) == ["minimize"]  # any other app: the plugin's default
    assert _sweeper(direction=["maximize", "minimize"])._directions(None) == ["maximize", "minimize"]
    for bad in ("accuracy", ["eval_accuracy", "eval_accuracy"], []):
        with pytest.raises(SweeperError, match="sweep.objective"):
            LraApp(OmegaConf.create({"sweep": {"objective": bad}})).objectives()


def test_the_app_is_the_one_the_config_names_else_the_neutral_one():
    neutral = type(load_app(None, OmegaConf.create({"x": 1, "y": 2})))
    # Hydra's plugin scan re-executes the plugin's modules, so the class may be a second copy of SweepApp: compare names.
    assert (neutral.__module__, neutral.__qualname__) == (SweepApp.__module__, SweepApp.__qualname__)
    assert isinstance(load_app("lra.sweep.optuna_app.LraSweepApp", OmegaConf.create(LRA_CONFIG)), LraApp)
    for bad in ("lra.sweep.optuna_app.Missing", "no_such_module.App", "lra.sweep.optuna_app.OmegaConf"):
        with pytest.raises(SweeperError, match="hydra.sweeper.app"):
            load_app(bad, OmegaConf.create(LRA_CONFIG))


def test_the_default_app_is_read_from_the_app_configs_sweeper_app_key():
    node = OmegaConf.merge({"sweeper_app": "lra.sweep.optuna_app.LraSweepApp"},
                           {"hydra": {"sweeper": OmegaConf.structured(LraOptunaSweeperConf)}})
    assert node.hydra.sweeper.app == "lra.sweep.optuna_app.LraSweepApp"
    assert OmegaConf.create({"hydra": {"sweeper": OmegaConf.structured(LraOptunaSweeperConf)}}).hydra.sweeper.app \
        is None


def test_default_storage_lies_beside_the_sqlite_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/runs/mlflow.db")
    sweeper = _sweeper()
    sweeper.config = OmegaConf.create({"tracking": {"uri": None}, "sweep": {}})
    sweeper.app = LraApp(sweeper.config)
    assert sweeper._storage_url() == f"sqlite:///{tmp_path}/runs/optuna.db"
    monkeypatch.chdir(tmp_path)
    other = _sweeper()  # any other app: optuna.db in the launch folder
    other.app = SweepApp(OmegaConf.create({}))
    assert other._storage_url() == f"sqlite:///{tmp_path}/optuna.db"
    assert _sweeper(storage="postgresql://db/optuna")._storage_url() == "postgresql://db/optuna"
    monkeypatch.chdir(tmp_path)
    assert _sweeper(storage="studies.log")._storage_url() == str(tmp_path / "studies.log")  # a journal file


def test_a_resumed_study_keeps_direction_and_takes_stale_trials_over(tmp_path, monkeypatch, request):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # a real, empty store
    url = f"sqlite:///{tmp_path}/optuna.db"
    sweeper = _sweeper(grace_period=300.0)  # longer than this test on a loaded machine
    sweeper.config = OmegaConf.create(LRA_CONFIG)
    sweeper.app = LraApp(sweeper.config)
    plan = _plan(url)
    study = sweeper._open_study(plan)
    silent = study.ask()  # a worker on another machine that was killed: its last heartbeat long ago
    study._storage.set_trial_user_attr(silent._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = study.ask()  # a worker of this machine whose process is gone: stale at once, whatever its heartbeat
    study._storage.set_trial_user_attr(killed._trial_id, HEARTBEAT_ATTR, time.time())
    study._storage.set_trial_user_attr(killed._trial_id, WORKER_ATTR, f"{socket.gethostname()}:{dead.stdout.strip()}")
    alive = study.ask()  # a worker that is alive
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    request.addfinalizer(worker.kill)
    study._storage.set_trial_user_attr(alive._trial_id, HEARTBEAT_ATTR, time.time())
    study._storage.set_trial_user_attr(alive._trial_id, WORKER_ATTR, f"{socket.gethostname()}:{worker.pid}")

    with pytest.raises(SweeperError, match="hydra.sweeper.direction"):
        sweeper._open_study(_plan(url, directions=["minimize"]))
    with pytest.raises(SweeperError, match="sweep.objective"):
        sweeper._open_study(_plan(url, objectives=["eval_loss"]))
    study = sweeper._open_study(plan)
    assert is_stale(study.get_trials()[killed.number], time.time(), sweeper.grace_period)
    taken = sweeper._settle_stale(study, plan, adopt=1)  # room for one: the other stale trial waits, RUNNING
    assert [t.number for t in taken] == [silent.number]
    assert taken[0].params == silent.params
    trials = {t.number: t for t in study.get_trials()}
    assert {t.state for t in trials.values()} == {TrialState.RUNNING}
    mine = trials[silent.number].user_attrs
    assert mine[WORKER_ATTR] == f"{socket.gethostname()}:{os.getpid()}" and mine[RESUMES_ATTR] == 1
    assert time.time() - mine[HEARTBEAT_ATTR] < 30
    assert sweeper._settle_stale(study, plan, adopt=1)[0].number == killed.number  # the next round
    assert sweeper._settle_stale(study, plan, adopt=1) == []  # the live worker's trial is left alone

    for trial in (silent, killed):  # their new worker (this process) dies too: released, then taken over again
        study._storage.set_trial_user_attr(trial._trial_id, HEARTBEAT_ATTR, 0.0)
    assert len(sweeper._settle_stale(study, plan, adopt=2)) == 2
    for _ in range(2):  # a trial whose workers keep dying (its config kills the machine) ends FAIL
        study._storage.set_trial_user_attr(killed._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
        sweeper._settle_stale(study, plan, adopt=1)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].user_attrs[FAIL_REASON_ATTR] == "interrupted: its workers were killed 3 times"
    assert trials[silent.number].state == trials[alive.number].state == TrialState.RUNNING


def test_a_stale_trial_on_a_storage_without_a_lock_ends_fail(tmp_path, monkeypatch):
    """Where no lock lets one worker alone take a trial over, a stale trial ends FAIL (as before issue 19)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    storage = make_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    stale = study.ask()
    study._storage.set_trial_user_attr(stale._trial_id, HEARTBEAT_ATTR, time.time() - 60)
    sweeper = _sweeper()
    sweeper.config = OmegaConf.create(LRA_CONFIG)
    sweeper.app = LraApp(sweeper.config)
    plan = _plan("mssql+pyodbc://nowhere/optuna")  # a database whose lock the sweeper does not use
    assert sweeper._settle_stale(study, plan, adopt=1) == []
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs[FAIL_REASON_ATTR].startswith("interrupted: no hear")


def test_a_filled_study_gets_no_more_trials(tmp_path):
    sweeper = _sweeper(n_trials=2)
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=make_storage(url), study_name="s")
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), 2.0)  # another worker already filled the study
    plan = _plan(url)
    plan.n_trials = 2
    assert sweeper._ask(study, plan, 1) == []  # counted under the storage's file lock: nothing asked
    assert len(study.get_trials()) == 2


def test_surplus_trials_on_a_storage_without_a_lock_are_not_launched(tmp_path):
    sweeper = _sweeper(n_trials=2)
    url = str(tmp_path / "journal.log")
    study = optuna.create_study(storage=make_storage(url), study_name="s")
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), 2.0)
    plan = _plan(url)
    plan.n_trials = 2
    plan.url = "mssql+pyodbc://nowhere/optuna"  # a database whose lock the sweeper does not use: the surplus rule
    assert sweeper._ask(study, plan, 1) == []
    surplus = study.get_trials()[-1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs[FAIL_REASON_ATTR].startswith("surplus")


def test_passwords_in_urls_are_redacted_from_logs_and_tags():
    assert redact("storage=postgresql://lra:s3cret@db:5432/optuna x=sqlite:////a/b.db") == \
        "storage=postgresql://lra:***@db:5432/optuna x=sqlite:////a/b.db"


def test_auto_sampler_and_pruner_follow_the_number_of_objectives():
    from hydra_plugins.lra_optuna_sweeper._samplers import resolve_pruner, resolve_sampler

    auto = {"_target_": "auto", "seed": 3, "n_startup_trials": 10, "n_ei_candidates": 24, "group": False,
            "constant_liar": True}
    assert resolve_sampler(auto, 1)["_target_"] == "optuna.samplers.TPESampler"
    assert resolve_sampler(auto, 2) == {"_target_": "optuna.samplers.NSGAIISampler", "seed": 3}
    tuned = {**auto, "n_ei_candidates": 5}  # a TPE key was set: TPE (multi-objective TPE) is kept
    assert resolve_sampler(tuned, 2)["_target_"] == "optuna.samplers.TPESampler"
    assert resolve_sampler({"_target_": "optuna.samplers.RandomSampler"}, 2)["_target_"].endswith("RandomSampler")
    median = {"_target_": "auto", "n_startup_trials": 5}
    assert resolve_pruner(median, 1)["_target_"] == "optuna.pruners.MedianPruner"
    assert resolve_pruner(median, 2) is None  # not asked for: no pruning with several objectives
    assert resolve_pruner({"_target_": "optuna.pruners.NopPruner"}, 2) is None
    with pytest.raises(SweeperError, match=r"hydra.sweeper.pruner._target_='optuna.pruners.MedianPruner': Optuna "
                                           r"prunes only single-objective studies.*fix: hydra/sweeper/pruner=nop"):
        resolve_pruner({"_target_": "optuna.pruners.MedianPruner"}, 2)


def test_a_bad_sampler_or_pruner_spec_is_one_line():
    from hydra_plugins.lra_optuna_sweeper._samplers import build_pruner, build_sampler

    with pytest.raises(SweeperError, match=r"hydra.sweeper.sampler._target_='optuna.samplers.TPESampler': cannot be "
                                           r"built"):
        build_sampler({"_target_": "optuna.samplers.TPESampler", "n_ei_candidatez": 3}, {})
    with pytest.raises(SweeperError, match="hydra.sweeper.pruner._target_"):
        build_pruner({"_target_": "optuna.pruners.NoSuchPruner"})


def test_jobs_of_a_multi_objective_study_never_report(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=make_storage(url), study_name="mo", directions=["maximize", "maximize"])
    trial = study.ask()
    reporter = open_trial({"storage": url, "study_name": "mo", "trial_number": trial.number})
    assert reporter.report(1, 0.5) is False  # Optuna has no intermediate values for several objectives
    assert study.get_trials()[0].intermediate_values == {}


def test_a_storage_config_is_instantiated_and_jobs_get_its_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    sweeper = _sweeper(storage=OmegaConf.create({"_target_": "optuna.storages.RDBStorage", "url": url,
                                                 "heartbeat_interval": 60}))
    assert sweeper._storage_url() == url
    assert isinstance(sweeper._make_storage(url), optuna.storages.RDBStorage)
    with pytest.raises(SweeperError, match="hydra.sweeper.storage"):
        _sweeper(storage=OmegaConf.create({"_target_": "optuna.storages.RDBStorage"}))._storage_url()


def test_the_pareto_sweep_composes_to_nsga_ii_over_five_attentions():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from hydra_plugins.lra_optuna_sweeper._samplers import resolve_pruner, resolve_sampler

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "sweeps"), version_base="1.3"):
        cfg = compose("pareto", overrides=[f"hydra.searchpath=[file://{REPO / 'conf'}]"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert list(cfg.sweep.objective) == ["eval_accuracy", "samples_per_second"]
    sweeper = cfg.hydra.sweeper
    assert resolve_sampler(OmegaConf.to_container(sweeper.sampler), 2)["_target_"] == "optuna.samplers.NSGAIISampler"
    assert resolve_pruner(OmegaConf.to_container(sweeper.pruner), 2) is None
    space = parse_search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(space.distributions["attention"].choices) == {"softmax", "hrr-individual", "hrr-bundled",
                                                            "hrr-quadratic", "tpr"}
    assert sweeper.custom_search_space == "lra.compare.pareto.attention_options"


def test_hrr_trials_draw_their_own_options_and_the_front_is_non_dominated():
    from lra.compare.pareto import attention_options, pareto_front

    study = optuna.create_study(directions=["maximize", "maximize"])
    space = {"attention": CategoricalDistribution(["softmax", "hrr-bundled"])}
    for name in ("softmax", "hrr-bundled"):
        study.enqueue_trial({"attention": name})
        trial = study.ask(fixed_distributions=space)
        attention_options(None, trial)
        extra = set(trial.params) - {"attention"}
        assert extra == (set() if name == "softmax" else {"attention.learn_scale", "attention.scale_init"})
    points = [(0.9, 10.0), (0.8, 20.0), (0.7, 15.0), (0.9, 5.0), (0.5, 30.0)]
    assert pareto_front(points, ["maximize", "maximize"]) == [0, 1, 4]
    assert pareto_front([(0.9, 600.0), (0.8, 650.0), (0.95, 700.0)], ["maximize", "minimize"]) == [0, 2]
