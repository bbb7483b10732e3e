"""The trial loop of `hydra/sweeper=lra_optuna`: Optuna 5 ask/tell around Hydra's launcher.

Each round asks up to `n_jobs` trials, launches them as one batch (in-process, joblib workers or SLURM jobs)
and tells every trial how its job ended:

    job returned a finite float          COMPLETE with that value
    job raised optuna.TrialPruned        PRUNED   (the job asked `lra.trial` after an epoch and was told to stop)
    job raised anything else, or
    returned a non-finite / non-number   FAIL     (the sweep goes on until `max_failure_rate` is exceeded)

`n_trials` counts the study's trials in all, so the same command run again continues the study where it
stopped, and several workers on one storage share the work. While its jobs run, the sweeper marks their trials
with a heartbeat (a trial user attribute); a RUNNING trial without one for `grace_period` seconds belongs to a
killed worker and is ended FAIL (its MLflow run too). Before it returns, the sweeper waits until no trial of
the study is RUNNING, so a finished command never leaves one behind.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from lra.errors import ConfigError
from lra.sweep import (ENV_PARENT_RUN_ID, ENV_SWEEP_ID, experiment_of, fail_orphan_runs, interrupt_on_sigterm,
                       new_sweep_id, redact, tracking_uri_of)
from lra.trial import PRUNER_ATTR, make_storage

from ._space import format_value, override_line, parse_search_space

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "lra_heartbeat"      # trial user attribute: time.time() of the sweeper's last mark
FAIL_REASON_ATTR = "lra_fail_reason"  # trial user attribute: why a trial ended FAIL
MINIMIZED = ("peak_memory_mb",)       # besides *_loss: metrics where lower is better


class SweepAborted(RuntimeError):
    """Too many trials failed: the sweep stops and the command exits non-zero."""


def known_metrics() -> tuple[str, ...]:
    """The metrics a job can return (what `lra.train.train` returns)."""
    from lra.config import OBJECTIVES

    return OBJECTIVES


def default_direction(objective: str) -> str:
    return "minimize" if objective.endswith("loss") or objective in MINIMIZED else "maximize"


def outcome(ret: JobReturn) -> tuple[TrialState, Optional[float], Optional[str]]:
    """How a job ended, as the trial state, its value and (for FAIL) the reason."""
    if ret.status == JobStatus.FAILED:
        error = ret._return_value
        if isinstance(error, optuna.TrialPruned) or type(error).__name__ == "TrialPruned":
            return TrialState.PRUNED, None, None
        return TrialState.FAIL, None, f"{type(error).__name__}: {error}"[:2000]
    if ret.status != JobStatus.COMPLETED:
        return TrialState.FAIL, None, f"job status {ret.status}"
    try:
        value = float(ret.return_value)
    except (TypeError, ValueError):
        return TrialState.FAIL, None, f"the job returned {ret.return_value!r}, not a number"
    if not math.isfinite(value):
        return TrialState.FAIL, None, f"the job returned {value}"
    return TrialState.COMPLETE, value, None


class _Heartbeat:
    """A daemon thread that marks the trials this sweeper is running, every `interval` seconds."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lra-optuna-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def add(self, trial_ids: Sequence[int]) -> None:
        with self.lock:
            self.trial_ids.update(trial_ids)
        self._beat(trial_ids)

    def remove(self, trial_ids: Sequence[int]) -> None:
        with self.lock:
            self.trial_ids.difference_update(trial_ids)

    def _beat(self, trial_ids: Sequence[int]) -> None:
        now = time.time()
        for trial_id in trial_ids:
            try:
                self.storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, now)
            except Exception:  # noqa: BLE001 - finished meanwhile, or a busy database: try again next beat
                pass

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            self._beat(ids)


class LraOptunaSweeperImpl(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: Optional[str], storage: Optional[str],
                 study_name: Optional[str], n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: Optional[DictConfig], enqueue: Sequence[Any], heartbeat_interval: float,
                 grace_period: float, validate: Optional[str] = None) -> None:
        if n_trials < 1:
            raise ConfigError("hydra.sweeper.n_trials", n_trials, "must be at least 1", "set a positive count")
        if n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_jobs", n_jobs, "must be at least 1", "set a positive count")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError("hydra.sweeper.max_failure_rate", max_failure_rate, "must lie in [0, 1]",
                              "0 stops at the first failed trial, 1 never stops")
        if direction not in (None, "maximize", "minimize"):
            raise ConfigError("hydra.sweeper.direction", direction, "unknown direction",
                              "use maximize, minimize or null (from the objective's name)")
        if grace_period <= heartbeat_interval:
            raise ConfigError("hydra.sweeper.grace_period", grace_period,
                              f"must exceed hydra.sweeper.heartbeat_interval={heartbeat_interval}",
                              "a few heartbeat intervals, e.g. 30 with an interval of 5")
        self.sampler_spec = OmegaConf.to_container(sampler, resolve=True) if sampler is not None else None
        self.pruner_spec = OmegaConf.to_container(pruner, resolve=True) if pruner is not None else None
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params
        self.enqueue = [OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else dict(p)
                        for p in (enqueue or [])]
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.validate = validate
        self.job_idx = 0
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- set-up: objective, storage, study -------------------------------------------------------------

    def _objective(self) -> str:
        objective = OmegaConf.select(self.config, "sweep.objective", default=None)
        metrics = known_metrics()
        if objective not in metrics:
            raise ConfigError("sweep.objective", objective, "not a metric the trainer reports",
                              f"one of {', '.join(metrics)}")
        return str(objective)

    def _storage_url(self) -> str:
        if self.storage:
            url = str(self.storage)
            return url if "://" in url else str(Path(url).expanduser().resolve())  # a journal file
        uri = tracking_uri_of(self.config)
        folder = Path(uri[len("sqlite:///"):]).resolve().parent if uri.startswith("sqlite:///") else Path.cwd()
        return f"sqlite:///{folder / 'optuna.db'}"

    def _open_study(self, url: str, name: str, direction: str) -> optuna.Study:
        storage = make_storage(url)
        for attempt in range(5):  # parallel workers race to create the study
            try:
                study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                            load_if_exists=True)
                break
            except Exception as error:  # noqa: BLE001 - IntegrityError / locked database under the race
                if attempt == 4:
                    raise
                log.debug("create_study raced (%s); retrying", error)
                time.sleep(0.5 * (attempt + 1))
        if study.direction.name.lower() != direction:
            raise ConfigError("hydra.sweeper.direction", direction,
                              f"study {name!r} in {redact(url)} was created to {study.direction.name.lower()}",
                              "use the study's direction or a new hydra.sweeper.study_name")
        existing = len(study.get_trials(deepcopy=False))
        spec = dict(self.sampler_spec or {"_target_": "optuna.samplers.TPESampler"})
        if spec.get("seed") is not None:  # a resumed study must not replay the first run's random points
            spec["seed"] = int(spec["seed"]) + existing
        study.sampler = instantiate(spec)
        study.set_user_attr(PRUNER_ATTR, self.pruner_spec)
        for params in self.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        return study

    # ---- the loop ---------------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        search = [f"{key}={value}" for key, value in (self.params or {}).items()] + list(arguments)
        space, fixed = parse_search_space(search)
        objective = self._objective()
        direction = self.direction or default_direction(objective)
        url = self._storage_url()
        name = str(self.study_name or os.environ.get(ENV_SWEEP_ID) or new_sweep_id())
        self._validate_space(space, fixed, url, name)
        study = self._open_study(url, name, direction)
        self.study = study
        log.info("study %r in %s: %s %s over %s, n_trials=%d, n_jobs=%d, sampler %s, pruner %s", name, redact(url),
                 direction, objective, sorted(space), self.n_trials, self.n_jobs, type(study.sampler).__name__,
                 (self.pruner_spec or {}).get("_target_"))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        heartbeat = _Heartbeat(study._storage, self.heartbeat_interval)
        heartbeat.start()
        previous = interrupt_on_sigterm()
        counts: Counter[str] = Counter()
        try:
            while True:
                self._fail_stale(study)
                started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
                todo = self.n_trials - len(started)
                if todo <= 0:
                    break
                batch = self._ask(study, space, min(self.n_jobs, todo))
                if not batch:
                    continue
                ids = [trial._trial_id for trial in batch]
                heartbeat.add(ids)
                try:
                    overrides = [self._overrides(trial.params, trial.number, fixed, url, name) for trial in batch]
                    self.validate_batch_is_legal(overrides)  # Hydra composes every job before any starts
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                except BaseException as error:
                    for trial in batch:
                        self._end(study, trial, TrialState.FAIL, None, f"sweeper: {type(error).__name__}: {error}")
                    raise
                finally:
                    heartbeat.remove(ids)
                self.job_idx += len(batch)
                for trial, ret in zip(batch, returns):
                    state, value, reason = outcome(ret)
                    self._end(study, trial, state, value, reason)
                    counts[state.name] += 1
                    log.info("trial %d %s%s %s", trial.number, state.name,
                             f" {objective}={value:.6g}" if value is not None else "",
                             reason or trial.params)
                if counts["FAIL"] > self.max_failure_rate * self.n_trials:
                    raise SweepAborted(
                        f"{counts['FAIL']} failed trials exceed hydra.sweeper.max_failure_rate="
                        f"{self.max_failure_rate} of n_trials={self.n_trials}; see the FAIL reasons above")
            self._wait_for_running(study)
        finally:
            heartbeat.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self._summarize(study, objective, sweep_dir, counts)

    def _ask(self, study: optuna.Study, space: dict[str, Any], k: int) -> list[optuna.Trial]:
        """Up to k new trials; one that another worker's ask pushed past n_trials ends FAIL unlaunched."""
        batch = []
        for _ in range(k):
            trial = study.ask(fixed_distributions=space)
            earlier = [t for t in study.get_trials(deepcopy=False)
                       if t.state != TrialState.WAITING and t.number < trial.number]
            if len(earlier) >= self.n_trials:
                self._end(study, trial, TrialState.FAIL, None, "surplus: other workers filled the study")
                continue
            batch.append(trial)
        return batch

    @staticmethod
    def _overrides(params: dict[str, Any], number: int, fixed: dict[str, str], url: str, name: str) -> list[str]:
        lines = [override_line(key, value) for key, value in fixed.items() if key not in params]
        lines += [f"{key}={format_value(value)}" for key, value in params.items()]
        lines += [f"sweep.storage={format_value(url)}", f"sweep.study_name={format_value(name)}",
                  f"sweep.trial_number={number}", f"hydra.sweep.subdir=trial_{number}"]
        return lines

    def _validate_space(self, space: dict[str, Any], fixed: dict[str, str], url: str, name: str) -> None:
        """Before the study is opened: compose a job at the low end of the search space (each choice's first
        value) and run `validate` on it, so a config error stops the sweep before any trial exists."""
        probe = {key: dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
                 for key, dist in space.items()}
        overrides = self._overrides(probe, 0, fixed, url, name)
        self.validate_batch_is_legal([overrides])
        if not self.validate:
            return
        validate = get_method(self.validate)
        assert self.hydra_context is not None
        job = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(job):
            del job["hydra"]
        validate(job)

    def _end(self, study: optuna.Study, trial: Any, state: TrialState, value: Optional[float],
             reason: Optional[str]) -> None:
        try:
            if reason is not None:
                study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            study.tell(trial, values=value, state=state, skip_if_finished=True)
        except Exception as error:  # noqa: BLE001 - e.g. ended FAIL as stale by another worker meanwhile
            log.warning("could not tell trial %d %s: %s", trial.number, state.name, error)

    # ---- killed workers ---------------------------------------------------------------------------------

    def _fail_stale(self, study: optuna.Study) -> None:
        """End FAIL every RUNNING trial whose worker stopped marking it (killed), and its MLflow run."""
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            start = trial.datetime_start.timestamp() if trial.datetime_start else now
            last = float(trial.user_attrs.get(HEARTBEAT_ATTR, start))
            if now - last <= self.grace_period:
                continue
            try:
                study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR,
                                                   f"interrupted: no heartbeat for {now - last:.0f} s")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except Exception:  # noqa: BLE001 - it finished meanwhile
                continue
            log.warning("trial %d was RUNNING without a heartbeat for %.0f s (its worker was killed): FAIL",
                        trial.number, now - last)
            try:
                fail_orphan_runs(tracking_uri_of(self.config), experiment_of(self.config), study.study_name,
                                 trial.number)
            except Exception as error:  # noqa: BLE001 - the study is the record; the run is a courtesy
                log.warning("could not end the MLflow run of trial %d: %s", trial.number, error)

    def _wait_for_running(self, study: optuna.Study) -> None:
        """Return only when no trial of the study is RUNNING (other workers' trials end, or go stale)."""
        announced = False
        while True:
            self._fail_stale(study)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            if not announced:
                log.info("waiting for %d RUNNING trials of other workers: %s", len(running),
                         [t.number for t in running])
                announced = True
            time.sleep(min(self.heartbeat_interval, 5.0))

    # ---- the end ----------------------------------------------------------------------------------------

    def _summarize(self, study: optuna.Study, objective: str, sweep_dir: Path, counts: Counter[str]) -> None:
        trials = study.get_trials(deepcopy=False)
        states = Counter(t.state.name for t in trials)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {"study_name": study.study_name, "objective": objective,
                                   "direction": study.direction.name.lower(), "n_trials": len(trials),
                                   "states": dict(states), "this_run": dict(counts)}
        if complete:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            log.info("best trial %d: %s=%.6g %s", best.number, objective, best.value, best.params)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("study %s: %s", study.study_name, dict(states))
        parent = os.environ.get(ENV_PARENT_RUN_ID)
        if not parent:
            return
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri_of(self.config))
            for state, n in states.items():
                client.set_tag(parent, f"trials_{state.lower()}", str(n))
            if complete:
                client.log_metric(parent, f"best_{objective}", float(results["best_value"]))
                client.set_tag(parent, "best_trial", str(results["best_trial"]))
                client.set_tag(parent, "best_params", str(results["best_params"])[:5000])
            client.log_artifact(parent, str(sweep_dir / "optimization_results.yaml"))
        except Exception as error:  # noqa: BLE001 - the study holds the results either way
            log.warning("could not record the study's results on the parent run %s: %s", parent, error)
