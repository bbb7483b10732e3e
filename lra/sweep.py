"""The sweep's parent MLflow run: one per `launch.py -m` command, so the UI groups the jobs of a sweep.

`SweepRunCallback` is a Hydra callback (`hydra.callbacks` in conf/config.yaml). Before the first job it
creates the parent run in the task's experiment and exports `LRA_SWEEP_ID` and `LRA_SWEEP_PARENT_RUN_ID`,
which the config's `sweep.id` and `sweep.parent_run_id` read, so every job's run carries the tag `sweep_id`
and `mlflow.parentRunId` whatever the launcher (in-process, joblib workers, SLURM jobs inherit the
environment). After the last job it ends the parent FINISHED; if the sweep raised (a failed job under the
basic sweeper, too many failed trials under lra_optuna, Ctrl-C or SIGTERM) Hydra never calls
`on_multirun_end`, so an `atexit` hook ends it FAILED instead.

The sweep id is, in order: `sweep.id` if set (an override or $LRA_SWEEP_ID), the Optuna study name
(`hydra.sweeper.study_name`), else a new `YYYYmmdd-HHMMSS-xxxx`. A parent run already tagged with that id is
reused, so a resumed Optuna study keeps one parent.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

ENV_SWEEP_ID = "LRA_SWEEP_ID"
ENV_PARENT_RUN_ID = "LRA_SWEEP_PARENT_RUN_ID"
PARENT_TAG = "lra.sweep_parent"  # "true" on a sweep's parent run; job runs lack it


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def redact(text: str) -> str:
    """`text` with the passwords of URLs (`scheme://user:password@host`) replaced by ***."""
    return re.sub(r"://([^:/@\s]+):[^@\s]*@", r"://\1:***@", text)


def tracking_uri_of(cfg: DictConfig) -> str:
    """The store the jobs of this config write to (the trainer's rule, so both always agree)."""
    from lra.tracking import tracking_uri

    return tracking_uri(OmegaConf.select(cfg, "tracking.uri", default=None))


def experiment_of(cfg: DictConfig) -> str:
    """The experiment the jobs of this config log to: tracking.experiment, else the task name."""
    return str(OmegaConf.select(cfg, "tracking.experiment", default=None) or OmegaConf.select(cfg, "task"))


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as a training experiment (lra.tracking's rule)."""
    from lra.tracking import ensure_experiment as ensure

    return ensure(client, name)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def find_parent_run(client: Any, experiment_id: str, sweep_id: str) -> Optional[Any]:
    """The sweep's parent run: the first created if parallel workers of one study raced to create several."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.sweep_id = {_quote(sweep_id)} and tags.`{PARENT_TAG}` = 'true'",
    )
    return min(runs, key=lambda run: (run.info.start_time, run.info.run_id)) if runs else None


def child_runs(client: Any, experiment_ids: list[str], sweep_id: str) -> list[Any]:
    """The job runs of a sweep (every run tagged with its id, the parent excluded)."""
    runs = client.search_runs(experiment_ids, filter_string=f"tags.sweep_id = {_quote(sweep_id)}",
                              max_results=50000)
    return [run for run in runs if run.data.tags.get(PARENT_TAG) != "true"]


def fail_orphan_runs(tracking_uri: str, experiment: str, study_name: str, trial_number: int) -> int:
    """End FAILED the RUNNING MLflow runs of an interrupted trial (its job was killed); returns how many."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=(f"tags.optuna_trial = '{int(trial_number)}' and params.`sweep.study_name` = "
                       f"{_quote(study_name)} and attributes.status = 'RUNNING'"),
    )
    for run in runs:
        client.set_tag(run.info.run_id, "interrupted", "true")
        client.set_terminated(run.info.run_id, status="FAILED")
    return len(runs)


def interrupt_on_sigterm() -> Any:
    """Turn SIGTERM (kill, scancel) into KeyboardInterrupt, so a sweep ends its running trials FAIL and its
    parent run FAILED instead of leaving them RUNNING; returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


class SweepRunCallback(Callback):
    """Creates the sweep's parent run before the first job and ends it after the last (see module doc)."""

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.sweep_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.owned = False  # False when the parent was handed in through $LRA_SWEEP_PARENT_RUN_ID

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        sweep_id = (OmegaConf.select(config, "sweep.id", default=None)
                    or OmegaConf.select(config, "hydra.sweeper.study_name", default=None) or new_sweep_id())
        self.sweep_id = str(sweep_id)
        self.client = MlflowClient(tracking_uri_of(config))
        self.experiment_id = ensure_experiment(self.client, experiment_of(config))
        given = OmegaConf.select(config, "sweep.parent_run_id", default=None)
        if given:
            self.run_id, self.owned = str(given), False
        else:
            self.run_id, self.owned = self._open_parent(config), True
            atexit.register(self._finish, "FAILED")
        os.environ[ENV_SWEEP_ID] = self.sweep_id
        os.environ[ENV_PARENT_RUN_ID] = self.run_id
        interrupt_on_sigterm()
        log.info("sweep %s: parent MLflow run %s", self.sweep_id, self.run_id)

    def _open_parent(self, config: DictConfig) -> str:
        parent = find_parent_run(self.client, self.experiment_id, self.sweep_id)
        if parent is not None:  # a resumed sweep (same study name): keep its one parent
            self.client.update_run(parent.info.run_id, status="RUNNING")
            return parent.info.run_id
        tags = {"sweep_id": self.sweep_id, PARENT_TAG: "true", "task": str(OmegaConf.select(config, "task")),
                "sweep.command": redact(" ".join(sys.argv))[:5000],
                "sweep.sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_", default="")),
                "sweep.objective": str(OmegaConf.select(config, "sweep.objective", default=""))}
        mine = self.client.create_run(self.experiment_id, run_name=self.sweep_id, tags=tags).info.run_id
        first = find_parent_run(self.client, self.experiment_id, self.sweep_id)
        if first is not None and first.info.run_id != mine:  # another worker of this study created it first
            self.client.delete_run(mine)
            self.client.update_run(first.info.run_id, status="RUNNING")
            return first.info.run_id
        return mine

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir", default=".")))
        if self.owned and (sweep_dir / "multirun.yaml").is_file():
            try:
                self.client.log_artifact(self.run_id, str(sweep_dir / "multirun.yaml"))
            except Exception as error:  # noqa: BLE001 - an artifact store problem must not fail the sweep
                log.warning("could not log multirun.yaml to the parent run: %s", error)
        self._finish("FINISHED")

    def _finish(self, status: str) -> None:
        if not self.owned or self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        atexit.unregister(self._finish)
        try:
            counts = Counter(run.info.status for run in child_runs(self.client, [self.experiment_id],
                                                                    self.sweep_id))
            for state in ("FINISHED", "FAILED", "KILLED", "RUNNING"):
                self.client.set_tag(run_id, f"jobs_{state.lower()}", str(counts.get(state, 0)))
            self.client.set_terminated(run_id, status=status)
            log.info("sweep %s ended %s: %s", self.sweep_id, status, dict(counts))
            from lra.tracking import ui_command  # the UI hint, once per sweep (its jobs print none)

            print(f"Open the UI: {ui_command(self.client.tracking_uri, sweep_id=self.sweep_id)}")
        except Exception as error:  # noqa: BLE001 - at exit, report rather than mask the sweep's own error
            log.warning("could not end the sweep's parent run %s: %s", run_id, error)
