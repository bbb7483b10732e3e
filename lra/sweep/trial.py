"""The job's side of an Optuna sweep: report the eval metric after each epoch to this job's trial.

The sweeper (`hydra_plugins/lra_optuna_sweeper`) asks Optuna for a trial and hands the job three overrides,
`sweep.storage`, `sweep.study_name` and `sweep.trial_number`. The job opens that same trial in the storage,
reports to it after every evaluation and asks the study's pruner whether to stop. The sweeper alone tells the
trial its final state (COMPLETE, PRUNED or FAIL) once the job returns.

The pruner is not part of the job's config: the sweeper stores its spec in the study's user attributes
(`PRUNER_ATTR`), so that every job of a study, on any machine, prunes with the same rule. A study with several
objectives is never pruned (Optuna cannot): its jobs only link their MLflow run to the trial.

`finished_values` reads a trial's objective values back from its job's FINISHED MLflow run, so a sweeper that
reopens a study after a kill tells such a trial COMPLETE instead of FAIL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from hydra_plugins.lra_optuna_sweeper.storage import PRUNER_ATTR, RUN_ID_ATTR, make_storage  # noqa: F401
from lra.sweep.callback import run_metrics


def make_pruner(spec: Mapping[str, Any] | None) -> Any:
    """The pruner a `{"_target_": ..., **kwargs}` spec names; NopPruner when there is none."""
    import optuna
    from hydra.utils import instantiate

    if not spec or not spec.get("_target_"):
        return optuna.pruners.NopPruner()
    return instantiate(dict(spec))


class TrialReporter:
    """One running trial, opened from the job: `report(epoch, value)` returns True when the job should stop."""

    def __init__(self, trial: Any, objectives: int = 1) -> None:
        self.trial = trial
        self.number: int = trial.number
        self.prunable = objectives == 1  # Optuna has no intermediate values for several objectives
        self._run_id_recorded = False

    def report(self, step: int, value: float, final: bool = False) -> bool:
        """Report `value` (the optimised metric) at `step` (the epoch) and return the pruner's verdict.

        A non-finite value is not reported (the trainer raises for it anyway) and never prunes; nothing is
        reported in a study with several objectives. The `final` epoch is reported but never pruned: the trial
        has spent all its epochs, so stopping saves nothing and would throw its result away.
        """
        self._record_run_id()
        value = float(value)
        if not self.prunable or not math.isfinite(value):
            return False
        self.trial.report(value, step)
        return not final and bool(self.trial.should_prune())

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
    return TrialReporter(optuna.trial.Trial(study, trial_id), objectives=len(study.directions))


def run_values(client: Any, run: Any, objectives: Sequence[str]) -> Optional[list[float]]:
    """What `lra.run.train.train` returned for `objectives`, read from its FINISHED run (None if one is missing):
    eval_* are the best-dev epoch's values, the others the final ones (`lra.sweep.callback.run_metrics`)."""

    metrics = run_metrics(client, run)
    values = [metrics.get(name) for name in objectives]
    if any(value is None or not math.isfinite(value) for value in values):
        return None
    return [float(value) for value in values]


def finished_values(tracking_uri: str, experiment: str, study_name: str, number: int,
                    objectives: Sequence[str]) -> Optional[list[float]]:
    """The objective values of trial `number` of `study_name` if its job's MLflow run FINISHED, else None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    name = study_name.replace("'", "\\'")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=(f"tags.optuna_trial = '{int(number)}' and params.`sweep.study_name` = '{name}' "
                       "and attributes.status = 'FINISHED'"),
        order_by=["attributes.end_time DESC"])
    return run_values(client, runs[0], objectives) if runs else None
