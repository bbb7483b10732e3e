"""The job's side of an Optuna sweep: report the eval metric after each epoch to this job's trial.

The sweeper (`hydra_plugins/lra_optuna_sweeper`) asks Optuna for a trial and hands the job three overrides,
`sweep.storage`, `sweep.study_name` and `sweep.trial_number`. The job opens that same trial in the storage,
reports to it after every evaluation and asks the study's pruner whether to stop. The sweeper alone tells the
trial its final state (COMPLETE, PRUNED or FAIL) once the job returns.

The pruner is not part of the job's config: the sweeper stores its spec in the study's user attributes
(`PRUNER_ATTR`), so that every job of a study, on any machine, prunes with the same rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

PRUNER_ATTR = "lra_pruner"  # study user attribute: {"_target_": "optuna.pruners.MedianPruner", ...}
RUN_ID_ATTR = "mlflow_run_id"  # trial user attribute: the MLflow run of the job that ran the trial
SQLITE_TIMEOUT_S = 60  # parallel workers share one sqlite file; wait for its lock instead of failing


def make_storage(url: str) -> Any:
    """An Optuna storage from a URL: any SQLAlchemy URL (`sqlite:///...`, `postgresql://...`) is an RDB
    storage; anything else is the path of a journal file (`JournalFileBackend`, for NFS without a database)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" not in url:
        return JournalStorage(JournalFileBackend(url))
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    for attempt in range(5):  # workers that start together race to create the tables of a new storage
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception:  # noqa: BLE001 - IntegrityError on alembic_version, or a locked sqlite file
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def make_pruner(spec: Mapping[str, Any] | None) -> Any:
    """The pruner a `{"_target_": ..., **kwargs}` spec names; NopPruner when there is none."""
    import optuna
    from hydra.utils import instantiate

    if not spec or not spec.get("_target_"):
        return optuna.pruners.NopPruner()
    return instantiate(dict(spec))


class TrialReporter:
    """One running trial, opened from the job: `report(epoch, value)` returns True when the job should stop."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.number: int = trial.number
        self._run_id_recorded = False

    def report(self, step: int, value: float) -> bool:
        """Report `value` (the optimised metric) at `step` (the epoch) and return the pruner's verdict.

        A non-finite value is not reported (the trainer raises for it anyway) and never prunes.
        """
        self._record_run_id()
        value = float(value)
        if not math.isfinite(value):
            return False
        self.trial.report(value, step)
        return bool(self.trial.should_prune())

    def _record_run_id(self) -> None:
        """Link the trial to the job's active MLflow run, so a study can be read next to its runs."""
        if self._run_id_recorded:
            return
        self._run_id_recorded = True
        try:
            import mlflow

            run = mlflow.active_run()
            if run is not None:
                self.trial.set_user_attr(RUN_ID_ATTR, run.info.run_id)
        except Exception:  # a missing link must never stop training
            pass


def open_trial(sweep: Mapping[str, Any]) -> TrialReporter | None:
    """The trial this job runs, from the `sweep` config node; None unless the Optuna sweeper launched the job
    (`sweep.storage`, `sweep.study_name` and `sweep.trial_number` all set)."""
    storage_url = sweep.get("storage")
    study_name = sweep.get("study_name")
    number = sweep.get("trial_number")
    if storage_url is None or study_name is None or number is None:
        return None
    import optuna

    storage = make_storage(str(storage_url))
    study_id = storage.get_study_id_from_name(str(study_name))
    pruner = make_pruner(storage.get_study_user_attrs(study_id).get(PRUNER_ATTR))
    # The job suggests nothing: its parameters arrived as overrides. A random sampler keeps Trial() cheap.
    study = optuna.load_study(
        study_name=str(study_name), storage=storage, pruner=pruner, sampler=optuna.samplers.RandomSampler()
    )
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
    return TrialReporter(optuna.trial.Trial(study, trial_id))
