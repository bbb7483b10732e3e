"""The sweep's parent MLflow run: one per `launch.py -m` command, so the UI groups the jobs of a sweep.

`SweepRunCallback` is a Hydra callback (`hydra.callbacks` in conf/config.yaml). Before the first job it
creates the parent run in the task's experiment and exports `LRA_SWEEP_ID` and `LRA_SWEEP_PARENT_RUN_ID`,
which the config's `sweep.id` and `sweep.parent_run_id` read, so every job's run carries the tag `sweep_id`
and `mlflow.parentRunId` whatever the launcher (in-process, joblib workers, SLURM jobs inherit the
environment). After the last job it ends the parent FINISHED; if the sweep raised (a failed job under the
basic sweeper, too many failed trials under lra_optuna, Ctrl-C or SIGTERM) Hydra never calls
`on_multirun_end`, so an `atexit` hook ends it FAILED (KILLED for a signal) instead, and prints no UI hint
after the sweep's own last line. Under lra_optuna the parent is opened only just before the first launch
(`open_parent_run`, called by the sweeper): a sweep refused at its start (a bad setting, an unreachable or
damaged Optuna storage, Ctrl-C) makes no run and leaves an earlier FINISHED parent as it was.

The sweep id is, in order: `sweep.id` if set (an override or $LRA_SWEEP_ID), the Optuna study name
(`hydra.sweeper.study_name`), else a new `YYYYmmdd-HHMMSS-xxxx`. A parent run already tagged with that id is
reused, so a resumed Optuna study keeps one parent.
"""

from __future__ import annotations

import atexit
import hashlib
import json
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

from lra.errors import ConfigError
from lra.parallel.interrupt import Interrupted
from lra.record.stores import check_tracking_store
from lra.record.tracking import ensure_experiment as ensure
from lra.record.tracking import tracking_uri, ui_command
from lra.redaction import redact

log = logging.getLogger(__name__)

ENV_SWEEP_ID = "LRA_SWEEP_ID"
ENV_PARENT_RUN_ID = "LRA_SWEEP_PARENT_RUN_ID"
PARENT_TAG = "lra.sweep_parent"  # "true" on a sweep's parent run; job runs lack it
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
WAIT_POLL_S = 5.0  # how often a grid job waiting for another process's run of its config looks again

_stop_signal: Optional[int] = None  # the SIGINT/SIGTERM that stopped this sweep, recorded by the handler
_to_announce: Optional[int] = None  # the signal `_interrupt` took: said in one line at exit


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def grid_sweep_id(config: DictConfig) -> str:
    """`<config name>-<8 hex>`: a hash of the composed config (unresolved, hydra node excluded), the command
    line's overrides and the sweep's parameters, so the same grid command run again finds its earlier sweep."""
    content = OmegaConf.to_container(config, resolve=False)
    content.pop("hydra", None)
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    identity = {"config": content,
                "overrides": list(OmegaConf.select(config, "hydra.overrides.task", default=None) or []),
                "params": OmegaConf.to_container(params, resolve=False) if OmegaConf.is_config(params) else params}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = str(OmegaConf.select(config, "hydra.job.config_name", default=None) or "config")
    return f"{'grid' if name == 'config' else name}-{digest}"


def sweep_id_of(config: DictConfig) -> str:
    """The sweep's id (see the module doc for the order)."""
    given = (OmegaConf.select(config, "sweep.id", default=None)
             or OmegaConf.select(config, "hydra.sweeper.study_name", default=None))
    if given:
        return str(given)
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) == BASIC_SWEEPER:
        return grid_sweep_id(config)
    return new_sweep_id()


def tracking_uri_of(cfg: DictConfig) -> str:
    """The store the jobs of this config write to (the trainer's rule, so both always agree)."""

    return tracking_uri(OmegaConf.select(cfg, "tracking.uri", default=None))


def experiment_of(cfg: DictConfig) -> str:
    """The experiment the jobs of this config log to: tracking.experiment, else the task name."""
    return str(OmegaConf.select(cfg, "tracking.experiment", default=None) or OmegaConf.select(cfg, "task"))


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as a training experiment (lra.record.tracking's rule)."""

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


# Sweepers that open the parent run themselves, just before their first launch (`open_parent_run`), so that a
# sweep refused at its start (a bad setting, an unusable Optuna storage) makes no run and changes no finished one.
DEFERRING_SWEEPERS = ("hydra_plugins.lra_optuna_sweeper.lra_optuna_sweeper.LraOptunaSweeper",)
_pending: Optional["SweepRunCallback"] = None  # this process's callback whose parent run is not open yet


def open_parent_run() -> Optional[str]:
    """Open the sweep's parent run if the callback deferred it (see DEFERRING_SWEEPERS); its id, or None when
    no callback of this process waits (the app has none, or a parent was handed in)."""
    return _pending.open() if _pending is not None else None


def _interrupt(signum: int, frame: Any) -> None:
    """Record the stop signal and end the sweep with one line: `Interrupted` is a SystemExit (130 / 143, no
    traceback) that the sweepers and `train()` treat as an interruption (trials released, runs KILLED)."""

    global _stop_signal, _to_announce
    _stop_signal = _to_announce = int(signum)
    raise Interrupted(signum, 0)


def _announce_interrupt() -> None:
    """At exit, after the parent run is ended: the one line a stopped sweep prints (registered before the
    parent's own exit hook, so it runs after it). A job stopped while it trained has said so itself."""
    if _to_announce is not None:
        print(f"interrupted ({signal.Signals(_to_announce).name}); run the same command to continue the sweep",
              file=sys.stderr, flush=True)


def interrupt_on_sigterm() -> Any:
    """Turn SIGTERM (kill, scancel) and SIGINT (Ctrl-C) into `Interrupted`, so a sweep releases its running
    trials and ends its parent run KILLED instead of leaving them RUNNING; returns the previous SIGTERM handler (None
    off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    signal.signal(signal.SIGINT, _interrupt)
    return signal.signal(signal.SIGTERM, _interrupt)


def record_stop_signals() -> None:
    """Wrap the Python handlers now installed for SIGINT and SIGTERM (a sweeper's own, which raise
    KeyboardInterrupt) so that the signal is recorded for the parent run before they run."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(signum)
        if not callable(current) or current is _interrupt or getattr(current, "lra_records", False):
            continue

        def recording(number: int, frame: Any, handler: Any = current) -> Any:
            global _stop_signal
            _stop_signal = int(number)
            return handler(number, frame)

        recording.lra_records = True  # type: ignore[attr-defined]
        signal.signal(signum, recording)


def stopped_by_signal() -> Optional[int]:
    """The SIGINT/SIGTERM that stopped this sweep process, if one did: recorded by `interrupt_on_sigterm`'s
    handler, or (at exit) read from an uncaught KeyboardInterrupt, which a sweeper's own handler may raise
    (`KeyboardInterrupt("signal 15")`)."""
    if _stop_signal is not None:
        return _stop_signal
    uncaught = getattr(sys, "last_value", None)  # set before atexit hooks run
    if isinstance(uncaught, KeyboardInterrupt):
        found = re.search(r"signal (\d+)", str(uncaught))
        return int(found.group(1)) if found else int(signal.SIGINT)
    return None


def trained_elsewhere(folder: Path) -> Optional[str]:
    """Who holds the lock of checkpoint folder `folder` (a process training that config), or None when free.
    The lock is an OS file lock (`.lock`, taken by `CheckpointStore.acquire`) that dies with its process."""
    lock_file = folder / ".lock"
    if not lock_file.exists():
        return None
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            owner = json.loads((folder / "owner.json").read_text())
            return f"process {owner['pid']} on {owner['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"
    lock.release()
    return None


def _wait_while_trained_elsewhere(folder: Path) -> None:
    said = False
    while (owner := trained_elsewhere(folder)) is not None:
        if not said:
            print(f"this config is being trained by {owner} ({folder}); waiting for it to end", file=sys.stderr,
                  flush=True)
            said = True
        time.sleep(WAIT_POLL_S)


def finished_run(client: Any, experiment_id: str, sweep_id: str, key: str) -> Optional[Any]:
    """The newest FINISHED job run of sweep `sweep_id` whose config has run key `key`."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"params.run_key = {_quote(key)} and tags.sweep_id = {_quote(sweep_id)} "
                       "and attributes.status = 'FINISHED'"),
        order_by=["attributes.end_time DESC"], max_results=1)
    return runs[0] if runs else None


def run_metrics(client: Any, run: Any) -> dict[str, float]:
    """What `train()` returned for a FINISHED run: its final metrics, with eval_accuracy and eval_loss those
    of the best-dev epoch (the first epoch with the highest dev accuracy, as training keeps it)."""
    metrics = {key: float(value) for key, value in run.data.metrics.items()}
    accuracy = client.get_metric_history(run.info.run_id, "eval_accuracy")
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_loss")}
    if accuracy:
        best = max(accuracy, key=lambda m: (m.value, -m.step))
        metrics["eval_accuracy"] = float(metrics.get("best_eval_accuracy", best.value))
        if best.step in losses:
            metrics["eval_loss"] = float(losses[best.step])
    return metrics


def completed_metrics(cfg: DictConfig, store: Any) -> Optional[dict[str, float]]:
    """For a job of a grid sweep run again: the metrics of the sweep's FINISHED run of this config (no new run),
    else None (train it). Waits first while another process trains the config (a job of the earlier command
    still running). Only for grid jobs (`sweep.id` set, no Optuna trial) with `checkpoint.resume` true;
    `store` is the config's `lra.run.checkpoint.CheckpointStore`. The caller takes the store's lock afterwards."""
    if not cfg.sweep.id or cfg.sweep.trial_number is not None or not cfg.checkpoint.resume:
        return None
    _wait_while_trained_elsewhere(Path(store.folder))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri_of(cfg))
    experiment = client.get_experiment_by_name(experiment_of(cfg))
    if experiment is None:
        return None
    run = finished_run(client, experiment.experiment_id, str(cfg.sweep.id), store.folder.name)
    if run is None:
        return None
    metrics = run_metrics(client, run)
    print(f"already completed in this sweep: MLflow run {run.info.run_id} (config {store.folder.name}); "
          f"not trained again (checkpoint.resume=false trains it anew)", flush=True)
    return metrics


class SweepRunCallback(Callback):
    """Creates the sweep's parent run before the first job and ends it after the last (see module doc)."""

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.sweep_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.owned = False  # False when the parent was handed in through $LRA_SWEEP_PARENT_RUN_ID
        self.pid: Optional[int] = None  # the sweeper's process
        self.config: Optional[DictConfig] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        global _pending
        self.sweep_id, self.pid, self.config = sweep_id_of(config), os.getpid(), config
        uri = tracking_uri_of(config)
        try:  # the store's schema is made here, once, before any job can race to make it
            check_tracking_store(uri, create=True)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        self.client = MlflowClient(uri)
        os.environ[ENV_SWEEP_ID] = self.sweep_id
        atexit.register(_announce_interrupt)  # before the parent's hook: runs after it, so its line is the last
        interrupt_on_sigterm()
        given = OmegaConf.select(config, "sweep.parent_run_id", default=None)
        if given:
            self.run_id, self.owned = str(given), False
            os.environ[ENV_PARENT_RUN_ID] = self.run_id
            log.info("sweep %s: parent MLflow run %s", self.sweep_id, self.run_id)
        elif OmegaConf.select(config, "hydra.sweeper._target_", default=None) in DEFERRING_SWEEPERS:
            _pending = self  # the sweeper calls open_parent_run() before its first launch
        else:
            self.open()

    def open(self) -> str:
        """Create the parent run, or reopen a resumed sweep's, and hand it to the jobs; once."""
        global _pending
        if self.run_id is not None:
            return self.run_id
        assert self.client is not None and self.config is not None
        _pending = None
        self.experiment_id = ensure_experiment(self.client, experiment_of(self.config))
        self.run_id, self.owned = self._open_parent(self.config), True
        atexit.register(self._finish_at_exit)
        os.environ[ENV_PARENT_RUN_ID] = self.run_id
        log.info("sweep %s: parent MLflow run %s", self.sweep_id, self.run_id)
        return self.run_id

    def _open_parent(self, config: DictConfig) -> str:
        parent = find_parent_run(self.client, self.experiment_id, self.sweep_id)
        if parent is not None:  # a resumed sweep (same study name, same grid command): keep its one parent
            self._reopen(parent)
            return parent.info.run_id
        tags = {"sweep_id": self.sweep_id, PARENT_TAG: "true", "task": str(OmegaConf.select(config, "task")),
                "sweep.command": redact(" ".join(sys.argv))[:5000],
                "sweep.sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_", default="")),
                "sweep.objective": str(OmegaConf.select(config, "sweep.objective", default=""))}
        mine = self.client.create_run(self.experiment_id, run_name=self.sweep_id, tags=tags).info.run_id
        first = find_parent_run(self.client, self.experiment_id, self.sweep_id)
        if first is not None and first.info.run_id != mine:  # another worker of this study created it first
            self.client.delete_run(mine)
            self._reopen(first)
            return first.info.run_id
        return mine

    def _reopen(self, parent: Any) -> None:
        for key in ("interrupted", "interrupt_signal"):
            if key in parent.data.tags:
                self.client.delete_tag(parent.info.run_id, key)
        self.client.update_run(parent.info.run_id, status="RUNNING")
        log.info("sweep %s: continuing its parent run %s (was %s)", self.sweep_id, parent.info.run_id,
                 parent.info.status)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.pid == os.getpid():  # a job in the sweeper's process: the sweeper's handlers are in place now
            record_stop_signals()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir", default=".")))
        if self.owned and (sweep_dir / "multirun.yaml").is_file():
            try:
                self.client.log_text(self.run_id, redact((sweep_dir / "multirun.yaml").read_text()),
                                     "multirun.yaml")
            except Exception as error:  # noqa: BLE001 - an artifact store problem must not fail the sweep
                log.warning("could not log multirun.yaml to the parent run: %s", error)
        self._finish("FINISHED")

    def _finish_at_exit(self) -> None:
        """The sweep raised: KILLED when a stop signal ended it, else FAILED."""
        signum = stopped_by_signal()
        self._finish("FAILED" if signum is None else "KILLED",
                     {} if signum is None else {"interrupted": "true",
                                                "interrupt_signal": signal.Signals(signum).name})

    def _finish(self, status: str, tags: Optional[dict[str, str]] = None) -> None:
        global _pending
        _pending = None
        if not self.owned or self.run_id is None:  # never opened: the sweep launched nothing, changed nothing
            return
        run_id, self.run_id = self.run_id, None
        atexit.unregister(self._finish_at_exit)
        try:
            for key, value in (tags or {}).items():
                self.client.set_tag(run_id, key, value)
            counts = Counter(run.info.status for run in child_runs(self.client, [self.experiment_id],
                                                                    self.sweep_id))
            for state in ("FINISHED", "FAILED", "KILLED", "RUNNING"):
                self.client.set_tag(run_id, f"jobs_{state.lower()}", str(counts.get(state, 0)))
            self.client.set_terminated(run_id, status=status)
            log.info("sweep %s ended %s: %s", self.sweep_id, status, dict(counts))
            if status == "FINISHED":  # a failed or stopped sweep ends on its own line

                print(f"Open the UI: {ui_command(self.client.tracking_uri, sweep_id=self.sweep_id)}")
        except Exception as error:  # noqa: BLE001 - at exit, report rather than mask the sweep's own error
            log.warning("could not end the sweep's parent run %s: %s", run_id, error)
