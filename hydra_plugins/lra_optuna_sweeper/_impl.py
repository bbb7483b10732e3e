"""The trial loop of `hydra/sweeper=lra_optuna`: Optuna 5 ask/tell around Hydra's launcher, for any Hydra app.

Each round asks up to `n_jobs` trials, launches them as one batch (in-process, joblib workers or SLURM jobs)
and tells every trial how its job ended:

    job returned a finite float           COMPLETE with that value
    (several objectives: a tuple/list of one finite float per direction)
    job raised optuna.TrialPruned         PRUNED   (the job asked its trial after an epoch and was told to stop)
    job raised anything else, or
    returned a non-finite / non-number    FAIL     (the sweep goes on until `max_failure_rate` is exceeded)

`n_trials` counts the study's trials in all, so the same command run again continues the study where it
stopped, and several workers on one storage share the work (they take turns to ask, under the storage's lock:
a file beside a file storage, an advisory lock on PostgreSQL; so together they start exactly `n_trials`).
While its jobs run, the sweeper marks their trials with a heartbeat and its `<host>:<pid>` (trial user
attributes); a stopped sweeper (SIGTERM, Ctrl-C) releases its trials. A RUNNING trial whose sweeper is gone
(released, a dead process of this machine, or no heartbeat for `grace_period` seconds) is settled by the next
sweeper: in an app whose own record says the job FINISHED it is told COMPLETE with the run's values; otherwise the
sweeper takes it over and runs it again with the same number and parameters, so its job resumes from that
config's checkpoint into its MLflow run and a killed search still ends with `n_trials` results (FAIL only on a
storage without a lock, or after `MAX_RESUMES` killed workers). Before it returns, the sweeper waits until no
trial of the study is RUNNING.

Everything that can be wrong with the settings, the search space, the sampler (a missing optional package)
or the pruner is found before the study is opened and reported as one `error:` line (exit 2); a study that
ends without any COMPLETE trial, or with too many failed ones, exits 1. What the app adds (its objectives,
storage, validation, record) comes through `app.SweepApp`, named by `hydra.sweeper.app`.
"""

from __future__ import annotations

import logging
import re
import secrets
import signal
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from ._errors import SweeperError, SweepFailed, user_errors
from ._reach import is_server_url, probe_server, reason
from ._samplers import (build_pruner, build_sampler, check_requirements, grid_size, grid_space, resolve_pruner,
                        resolve_sampler)
from ._space import (SearchSpace, distribution_from_config, format_value, load_function, override_line,
                     parse_search_space)
from ._trials import (FAIL_REASON_ATTR, HEARTBEAT_ATTR, RESUMES_ATTR, WORKER_ATTR, Heartbeat, interrupt_on_sigterm,
                      is_released, is_stale, last_heartbeat, outcome, worker_gone, worker_id)
from .app import SweepApp, load_app
from .storage import PRUNER_ATTR, can_lock, make_storage, storage_lock

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
MAX_RESUMES = 2  # a trial whose workers die every time (its config kills the machine) ends FAIL at the third
HYDRA_DEFAULT_SUBDIR = "${hydra.job.num}"


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


@dataclass
class Plan:
    """Everything decided and checked before the study is opened."""

    space: SearchSpace
    objectives: Optional[list[str]]  # metric names in an lra app; None elsewhere (the job's return value)
    directions: list[str]
    sampler: dict[str, Any]
    pruner: Optional[dict[str, Any]]
    n_trials: int
    url: str
    name: str
    extender: Optional[Callable[[DictConfig, optuna.Trial], None]]

    @property
    def label(self) -> str:
        return ",".join(self.objectives) if self.objectives else "value"


class LraOptunaSweeperImpl(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: Any, storage: Any, study_name: Optional[str],
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Optional[DictConfig],
                 enqueue: Sequence[Any], heartbeat_interval: float, grace_period: float,
                 validate: Optional[str] = "auto", custom_search_space: Optional[str] = None,
                 search_space: Optional[Mapping[str, Any]] = None, app: Optional[str] = None) -> None:
        if n_trials < 1:
            raise SweeperError("hydra.sweeper.n_trials", n_trials, "must be at least 1", "set a positive count")
        if n_jobs < 1:
            raise SweeperError("hydra.sweeper.n_jobs", n_jobs, "must be at least 1", "set a positive count")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise SweeperError("hydra.sweeper.max_failure_rate", max_failure_rate, "must lie in [0, 1]",
                               "0 stops at the first failed trial, 1 never stops")
        if grace_period <= heartbeat_interval:
            raise SweeperError("hydra.sweeper.grace_period", grace_period,
                               f"must exceed hydra.sweeper.heartbeat_interval={heartbeat_interval}",
                               "a few heartbeat intervals, e.g. 30 with an interval of 5")
        self.direction = self._direction_list(direction)
        self.sampler_spec = self._plain(sampler)
        self.pruner_spec = self._plain(pruner)
        self.storage = self._plain(storage)
        self.study_name = study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params
        self.search_space = self._plain(search_space)
        self.custom_search_space = custom_search_space
        self.enqueue = [self._plain(p) for p in (enqueue or [])]
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.validate = validate
        self.app_path = app
        self.job_idx = 0
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self.app: SweepApp = SweepApp(OmegaConf.create())  # the neutral app until the plan names the app's
        self.study: Optional[optuna.Study] = None

    @staticmethod
    def _plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node

    @staticmethod
    def _direction_list(direction: Any) -> Optional[list[str]]:
        if direction is None:
            return None
        items = list(direction) if isinstance(direction, (ListConfig, list, tuple)) else [direction]
        names = [str(getattr(item, "name", item)).split(".")[-1].lower() for item in items]
        if not names or any(name not in DIRECTIONS for name in names):
            shown = names if len(names) != 1 else names[0]
            raise SweeperError("hydra.sweeper.direction", shown, "unknown direction",
                               "use maximize, minimize, a list of them (several objectives) or null")
        return names

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.job_idx = 0
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- the plan: everything checked before the study opens ----------------------------------------------

    def _search_space(self, arguments: list[str]) -> SearchSpace:
        lines = [f"{key}={value}" for key, value in (self.params or {}).items()]
        space = parse_search_space(lines + list(arguments))
        if self.search_space:
            if self.params is not None:
                log.warning("hydra.sweeper.params and hydra.sweeper.search_space are both set: params is used")
            else:
                log.warning("hydra.sweeper.search_space is the plugin's deprecated form; prefer "
                            "hydra.sweeper.params (interval, range, choice)")
                old = {key: distribution_from_config(key, spec) for key, spec in self.search_space.items()}
                old = {key: dist for key, dist in old.items()
                       if key not in space.distributions and key not in space.fixed}
                space.distributions = {**old, **space.distributions}
        return space

    def _directions(self, objectives: Optional[list[str]]) -> list[str]:
        if objectives is None:
            return self.direction or ["minimize"]
        if self.direction is None:
            return [self.app.direction(name) for name in objectives]
        if len(self.direction) != len(objectives):
            raise SweeperError("hydra.sweeper.direction", self.direction if len(self.direction) > 1
                               else self.direction[0], f"{len(self.direction)} direction(s) for "
                               f"{len(objectives)} objective(s) {objectives}",
                               "one direction per objective, in order, or null (from each objective's name)")
        return list(self.direction)

    def _storage_url(self) -> str:
        spec = self.storage
        if isinstance(spec, Mapping):
            url = spec.get("url")
            if not url:
                raise SweeperError("hydra.sweeper.storage", spec, "a storage config needs its url",
                                   "give url: (e.g. sqlite:///optuna.db) or the URL alone")
            return str(url)
        if spec:
            url = str(spec)
            return url if "://" in url else str(Path(url).expanduser().resolve())  # a journal file
        return self.app.default_storage() or f"sqlite:///{Path.cwd() / 'optuna.db'}"

    def _extender(self) -> Optional[Callable[[DictConfig, optuna.Trial], None]]:
        if not self.custom_search_space:
            return None
        try:
            function = load_function(str(self.custom_search_space))
        except Exception as error:  # noqa: BLE001 - reported as the user's setting
            reason = " ".join(str(error).split())[:300]
            raise SweeperError("hydra.sweeper.custom_search_space", self.custom_search_space,
                               f"cannot be loaded ({reason})",
                               "a dotted path to a function fn(cfg, trial), e.g. my_app.configure") from None
        if not callable(function):
            raise SweeperError("hydra.sweeper.custom_search_space", self.custom_search_space, "not a function",
                               "point it at a function fn(cfg, trial)")
        return function

    def _plan(self, arguments: list[str]) -> Plan:
        assert self.config is not None
        space = self._search_space(arguments)
        self.app = load_app(self.app_path, self.config)
        objectives = self.app.objectives()
        directions = self._directions(objectives)
        sampler = resolve_sampler(self.sampler_spec, len(directions))
        pruner = resolve_pruner(self.pruner_spec, len(directions))
        check_requirements(str(sampler.get("_target_")))
        build_pruner(pruner)  # a bad pruner stops the sweep here; jobs build their own from the stored spec
        n_trials = self.n_trials
        if str(sampler.get("_target_")).endswith("GridSampler"):
            size = grid_size(grid_space(space.distributions, space.sources))
            if size < n_trials:
                log.info("n_trials %d capped to the grid's %d points", n_trials, size)
                n_trials = size
        url = self._storage_url()
        name = str(self.study_name or self.app.study_name() or new_sweep_id())
        plan = Plan(space, objectives, directions, sampler, pruner, n_trials, url, name, self._extender())
        self._validate_space(plan)
        return plan

    def _validate_space(self, plan: Plan) -> None:
        """Before the study is opened: compose a job at the low end of the search space (each choice's first
        value) and run `validate` on it, so a config error stops the sweep before any trial exists."""
        probe = {key: dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
                 for key, dist in plan.space.distributions.items()}
        overrides = self._overrides(plan, probe, 0)
        try:
            self.validate_batch_is_legal([overrides])
        except ConfigCompositionException as error:
            raise _composition_error(error, plan.space) from None
        target = self.validate
        if target == "auto":
            target = self.app.validator()
        if not target:
            return
        validate = get_method(target)
        assert self.hydra_context is not None and self.config is not None
        job = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(job):
            del job["hydra"]
        validate(job)

    # ---- the study ----------------------------------------------------------------------------------------

    def _make_storage(self, url: str) -> Any:
        if isinstance(self.storage, Mapping):
            from hydra.utils import instantiate

            with storage_lock(url):
                return instantiate(dict(self.storage))
        return make_storage(url)

    def _open_study(self, plan: Plan) -> optuna.Study:
        """The study, created or loaded; an unreachable server or a damaged storage is one line (no run
        exists yet: the parent MLflow run is opened before the first launch)."""
        if is_server_url(plan.url):
            why = probe_server(plan.url)
            if why is not None:
                raise SweeperError("hydra.sweeper.storage", _redact(plan.url), f"the Optuna storage cannot be "
                                   f"reached ({_redact(why)})", "start the database server, or check the URL's "
                                   "host, port, database and credentials; or hydra.sweeper.storage=null (a sqlite "
                                   "file beside mlflow.db)")
        try:
            return self._check_study(self._load_or_create(plan), plan)
        except SweeperError:
            raise
        except Exception as error:  # noqa: BLE001 - a damaged file or a failing server: one line, exit 1
            raise SweepFailed(f"hydra.sweeper.storage={_redact(plan.url)!r}: the Optuna storage cannot be opened "
                              f"({_redact(reason(error))}); fix: {_storage_fix(plan.url)}") from None

    def _load_or_create(self, plan: Plan) -> optuna.Study:
        storage = self._make_storage(plan.url)
        try:
            existing = len(storage.get_all_trials(storage.get_study_id_from_name(plan.name), deepcopy=False))
        except KeyError:
            existing = 0
        sampler = build_sampler(plan.sampler, plan.space.distributions, seed_offset=existing)
        with storage_lock(plan.url):
            for attempt in range(5):  # without a lock (filelock missing, another database) workers may race
                try:
                    return optuna.create_study(storage=storage, study_name=plan.name, directions=plan.directions,
                                               sampler=sampler, load_if_exists=True)
                except Exception as error:  # noqa: BLE001 - IntegrityError / locked database under the race
                    if attempt == 4:
                        raise
                    log.debug("create_study raced (%s); retrying", error)
                    time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _check_study(self, study: optuna.Study, plan: Plan) -> optuna.Study:
        """The loaded study matches the plan's directions and objectives; the pruner and enqueued points."""
        found = [d.name.lower() for d in study.directions]
        if found != plan.directions:
            raise SweeperError("hydra.sweeper.direction", plan.directions if len(plan.directions) > 1
                               else plan.directions[0], f"study {plan.name!r} was created to {found}",
                               "use the study's directions or a new hydra.sweeper.study_name")
        if plan.objectives is not None and study.metric_names != plan.objectives:
            if study.metric_names is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    study.set_metric_names(plan.objectives)
            else:
                raise SweeperError("sweep.objective", plan.objectives, f"study {plan.name!r} optimises "
                                   f"{study.metric_names}", "use its objectives or a new hydra.sweeper.study_name")
        study.set_user_attr(PRUNER_ATTR, plan.pruner)
        for params in self.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        return study

    # ---- the loop -----------------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        with user_errors():
            self._sweep(arguments)

    def _sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        plan = self._plan(arguments)
        study = self._open_study(plan)
        self.study = study
        log.info("study %r in %s: %s %s over %s, n_trials=%d, n_jobs=%d, sampler %s, pruner %s", plan.name,
                 _redact(plan.url), plan.directions, plan.label, sorted(plan.space.distributions), plan.n_trials,
                 self.n_jobs, type(study.sampler).__name__, (plan.pruner or {}).get("_target_"))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        heartbeat = Heartbeat(study._storage, self.heartbeat_interval)
        heartbeat.start()
        previous = interrupt_on_sigterm()
        counts: Counter[str] = Counter()
        announced = False
        try:
            while True:
                batch: list[Any] = self._settle_stale(study, plan, adopt=self.n_jobs)
                started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
                todo = min(self.n_jobs - len(batch), plan.n_trials - len(started))
                if todo > 0:
                    batch += self._ask(study, plan, todo)
                    if not batch and not can_lock(plan.url):
                        continue  # a surplus trial ended FAIL unlaunched: count again
                if not batch:  # the study is full: wait for the other workers' trials (they end, or go stale)
                    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    if not running:
                        break
                    if not announced:
                        log.info("waiting for %d RUNNING trials of other workers: %s", len(running),
                                 [t.number for t in running])
                        announced = True
                    time.sleep(min(self.heartbeat_interval, 5.0))
                    continue
                self._run_batch(study, plan, batch, heartbeat, counts)
                if counts["FAIL"] > self.max_failure_rate * plan.n_trials:
                    raise SweepFailed(
                        f"{counts['FAIL']} failed trials exceed hydra.sweeper.max_failure_rate="
                        f"{self.max_failure_rate} of n_trials={plan.n_trials}; see the FAIL reasons above")
        finally:
            heartbeat.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self._summarize(study, plan, sweep_dir, counts)

    def _run_batch(self, study: optuna.Study, plan: Plan, batch: list[Any], heartbeat: Heartbeat,
                   counts: Counter[str]) -> None:
        """Launch one job per trial (a new one, or one taken over from a killed worker) and tell each how it
        ended. A stop (SIGTERM, Ctrl-C, the sweep's exit) releases the trials: the next sweeper runs them again
        and their jobs resume from their checkpoints; any other error of the launcher ends them FAIL."""
        ids = [trial._trial_id for trial in batch]
        heartbeat.add(ids)
        try:
            overrides = [self._overrides(plan, trial.params, trial.number) for trial in batch]
            self.validate_batch_is_legal(overrides)  # Hydra composes every job before any starts
            if self.app is not None:
                self.app.before_launch()
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        except Exception as error:
            heartbeat.remove(ids)
            for trial in batch:
                self._end(study, trial, TrialState.FAIL, None, f"sweeper: {type(error).__name__}: {error}")
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: this process stops, the trials are not done
            heartbeat.release(ids)
            raise
        heartbeat.remove(ids)
        self.job_idx += len(batch)
        for trial, ret in zip(batch, returns):
            state, values, reason = outcome(ret, len(plan.directions))
            self._end(study, trial, state, values, reason)
            counts[state.name] += 1
            shown = f" {plan.label}={_short(values)}" if values is not None else ""
            log.info("trial %d %s%s %s", trial.number, state.name, shown, reason or trial.params)

    def _ask(self, study: optuna.Study, plan: Plan, k: int) -> list[optuna.Trial]:
        """Up to k new trials. The count and the ask happen under the storage's lock (its file, or its database's
        own lock), so parallel workers never start more than n_trials; where no lock exists a trial that another
        worker's ask pushed past n_trials ends FAIL unlaunched."""
        batch = []
        locked = can_lock(plan.url)
        for _ in range(k):
            with storage_lock(plan.url) if locked else _nothing():
                started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
                if locked and len(started) >= plan.n_trials:
                    break
                trial = study.ask(fixed_distributions=plan.space.distributions)
            if not locked:
                earlier = [t for t in study.get_trials(deepcopy=False)
                           if t.state != TrialState.WAITING and t.number < trial.number]
                if len(earlier) >= plan.n_trials:
                    self._end(study, trial, TrialState.FAIL, None, "surplus: other workers filled the study")
                    continue
            try:
                self._configure(trial, plan)
            except Exception as error:
                self._end(study, trial, TrialState.FAIL, None, f"custom_search_space: {type(error).__name__}: "
                                                               f"{error}")
                raise
            batch.append(trial)
        return batch

    def _configure(self, trial: optuna.Trial, plan: Plan) -> None:
        """As the plugin: fixed values as user attributes, then `custom_search_space(cfg, trial)`."""
        for key, value in plan.space.fixed.items():
            trial.set_user_attr(key, value)
        if plan.extender is not None:
            assert self.config is not None
            plan.extender(self.config, trial)
            overlap = sorted(set(trial.params) & set(plan.space.fixed))
            if overlap:
                raise SweeperError("hydra.sweeper.custom_search_space", self.custom_search_space,
                                   f"suggests {overlap}, which the command line or params fix",
                                   "suggest only keys that are not fixed (see trial.user_attrs)")

    def _overrides(self, plan: Plan, params: Mapping[str, Any], number: int) -> list[str]:
        lines = [override_line(key, value) for key, value in plan.space.fixed.items() if key not in params]
        lines += [plan.space.override(key, value) for key, value in params.items()]
        if self.app is not None:
            lines += self.app.job_overrides(plan.url, plan.name, number, format_value)
        if self._owns_subdir():
            lines.append(f"hydra.sweep.subdir=trial_{number}")
        return lines

    def _owns_subdir(self) -> bool:
        """Hydra's default subdir (the job number restarts with every command) becomes trial_<number>; a
        subdir the user set is left alone."""
        assert self.config is not None
        sweep = OmegaConf.to_container(self.config.hydra.sweep, resolve=False)
        return isinstance(sweep, dict) and sweep.get("subdir") == HYDRA_DEFAULT_SUBDIR

    def _end(self, study: optuna.Study, trial: Any, state: TrialState, values: Optional[list[float]],
             reason: Optional[str]) -> None:
        try:
            if reason is not None:
                study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            study.tell(trial.number, values=values, state=state, skip_if_finished=True)
        except RuntimeError as error:
            if "Study.stop" not in str(error):  # the grid sampler stops a study it sees complete; told anyway
                log.warning("could not tell trial %d %s: %s", trial.number, state.name, error)
        except Exception as error:  # noqa: BLE001 - e.g. ended FAIL as stale by another worker meanwhile
            log.warning("could not tell trial %d %s: %s", trial.number, state.name, error)

    # ---- killed workers -----------------------------------------------------------------------------------

    def _settle_stale(self, study: optuna.Study, plan: Plan, adopt: int) -> list[optuna.trial.FrozenTrial]:
        """Settle every RUNNING trial whose sweeper is gone (killed, or stopped: see `_trials`): COMPLETE with
        its values when its lra job's MLflow run FINISHED (the job ended before its sweeper could tell);
        else taken over, up to `adopt` of them, to be run again with the same number and parameters (the job
        resumes from its checkpoint into its MLflow run); the others stay RUNNING for the next round or
        worker. A trial is FAIL only where it cannot be taken over: a storage without a lock, or a trial whose
        workers were killed `MAX_RESUMES` times already."""
        adopted: list[optuna.trial.FrozenTrial] = []
        lockable = can_lock(plan.url)
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not is_stale(trial, now, self.grace_period):
                continue
            if self._complete_finished(study, plan, trial):
                continue
            resumes = int(trial.user_attrs.get(RESUMES_ATTR, 0))
            if lockable and (is_released(trial) or resumes < MAX_RESUMES):
                if len(adopted) < adopt:
                    claimed = self._claim(study, plan, trial)
                    if claimed is not None:
                        adopted.append(claimed)
                continue
            why = (f"its workers were killed {resumes + 1} times" if lockable
                   else f"no heartbeat for {now - last_heartbeat(trial, now):.0f} s")
            try:
                study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, f"interrupted: {why}")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except Exception:  # noqa: BLE001 - it finished meanwhile
                continue
            log.warning("trial %d was RUNNING without its worker (%s): FAIL", trial.number, why)
            if self.app is not None:
                try:
                    self.app.fail_orphan_runs(study.study_name, trial.number)
                except Exception as error:  # noqa: BLE001 - the study is the record; the run is a courtesy
                    log.warning("could not end the MLflow run of trial %d: %s", trial.number, error)
        return adopted

    def _claim(self, study: optuna.Study, plan: Plan,
               trial: optuna.trial.FrozenTrial) -> Optional[optuna.trial.FrozenTrial]:
        """Take a stale trial over, under the storage's lock (so one worker alone gets it): its heartbeat and
        worker become this sweeper's. None when another worker took it, or it ended, meanwhile."""
        with storage_lock(plan.url):
            fresh = study._storage.get_trial(trial._trial_id)
            now = time.time()
            if fresh.state != TrialState.RUNNING or not is_stale(fresh, now, self.grace_period):
                return None
            storage = study._storage
            if is_released(fresh):
                why = "its sweeper was stopped"
            else:
                worker = fresh.user_attrs.get(WORKER_ATTR)
                why = (f"its sweeper (process {worker}) has ended" if worker_gone(worker)
                       else f"its sweeper sent no heartbeat for {now - last_heartbeat(fresh, now):.0f} s")
                storage.set_trial_user_attr(fresh._trial_id, RESUMES_ATTR,
                                            int(fresh.user_attrs.get(RESUMES_ATTR, 0)) + 1)
            storage.set_trial_user_attr(fresh._trial_id, HEARTBEAT_ATTR, now)
            storage.set_trial_user_attr(fresh._trial_id, WORKER_ATTR, worker_id())
        log.warning("trial %d was RUNNING but %s: running it again with its parameters %s (its job resumes from "
                    "its checkpoint)", fresh.number, why, fresh.params)
        return fresh

    def _complete_finished(self, study: optuna.Study, plan: Plan, trial: optuna.trial.FrozenTrial) -> bool:
        if self.app is None or plan.objectives is None:
            return False
        try:
            values = self.app.finished_values(study.study_name, trial.number, plan.objectives)
        except Exception as error:  # noqa: BLE001 - an unreachable store: the trial cannot be settled from it
            log.warning("could not read the MLflow run of trial %d: %s", trial.number, error)
            return False
        if values is None:
            return False
        try:
            study.tell(trial.number, values=values, state=TrialState.COMPLETE)
        except Exception as error:  # noqa: BLE001 - another worker settled it meanwhile
            log.debug("trial %d settled meanwhile: %s", trial.number, error)
            return True
        log.warning("trial %d was RUNNING without its worker, but its job's MLflow run FINISHED: COMPLETE "
                    "with %s=%s", trial.number, plan.label, _short(values))
        return True

    # ---- the end ------------------------------------------------------------------------------------------

    def _summarize(self, study: optuna.Study, plan: Plan, sweep_dir: Path, counts: Counter[str]) -> None:
        """`optimization_results.yaml` with the plugin's keys (name, best_params/best_value or solutions) and
        ours; exit 1 when the study holds no COMPLETE trial."""
        trials = study.get_trials(deepcopy=False)
        states = Counter(t.state.name for t in trials)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {"name": "optuna"}
        if complete and len(plan.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info("best trial %d: %s=%.6g %s", best.number, plan.label, best.value, best.params)
        elif complete:
            front = sorted(study.best_trials, key=lambda t: t.number)
            results["solutions"] = [{"params": t.params, "values": list(t.values), "number": t.number}
                                    for t in front]
            log.info("Pareto front: %d trials", len(front))
            for t in front:
                log.info("    trial %d: %s=%s %s", t.number, plan.label, _short(t.values), t.params)
        results.update(study_name=study.study_name, objectives=plan.objectives or ["value"],
                       directions=plan.directions, n_trials=len(trials), states=dict(states),
                       this_run=dict(counts))
        path = sweep_dir / "optimization_results.yaml"
        OmegaConf.save(OmegaConf.create(results), path)
        log.info("study %s: %s; results in %s", study.study_name, dict(states), path)
        if self.app is not None:
            try:
                self.app.record(results, plan.objectives or ["value"], path)
            except Exception as error:  # noqa: BLE001 - the study holds the results either way
                log.warning("could not record the study's results on the parent run: %s", error)
        if not complete:
            raise SweepFailed(f"study {study.study_name!r} has no COMPLETE trial ({dict(states)}); see the "
                              "trials' reasons above (user attribute lra_fail_reason)")


def _composition_error(error: ConfigCompositionException, space: SearchSpace) -> SweeperError:
    """Hydra's multi-line composition error for a job of the sweep, as one line naming the key."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = re.search(r"'([^']+)'", lines[0]) if lines else None
    key = found.group(1) if found else "overrides"
    value = space.sources.get(key)
    fix = next((line for line in lines[1:] if line.lower().startswith(("to ", "use ", "did you"))),
               "check the key against the app's config")
    return SweeperError(key, value, lines[0].rstrip(".") if lines else str(error), fix)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _short(values: Optional[Sequence[float]]) -> str:
    if values is None:
        return "-"
    shown = [f"{v:.6g}" for v in values]
    return shown[0] if len(shown) == 1 else "(" + ", ".join(shown) + ")"


def _storage_fix(url: str) -> str:
    """How to get past a storage that cannot be opened: move a damaged file aside, or mend the server."""
    file = url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else url
    if "://" not in file:  # a sqlite file or a journal file
        return (f"move the damaged file aside (mv {file} {file}.broken) and run the command again to start the "
                "study anew, or restore it from a backup")
    return ("check that the database server runs and that the URL's host, port, database and credentials are "
            "right, or use hydra.sweeper.storage=null (a sqlite file beside mlflow.db)")


def _redact(text: str) -> str:
    """URL passwords (up to the netloc's last @, so a raw @ in one leaks nothing) and `password=` values masked
    (as `lra.redaction.redact`; this plugin stands alone)."""
    text = re.sub(r"(://[^:/?#@\s]*):[^/?#\s]*@", r"\1:***@", text)
    return re.sub(r"([?&;](?:password|passwd|pwd|pass|secret|token)=)[^&#\s'\"]*", r"\1***", text, flags=re.I)
