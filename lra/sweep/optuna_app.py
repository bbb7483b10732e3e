"""What lra adds to an Optuna sweep (`hydra/sweeper=lra_optuna`), through the plugin's `SweepApp` interface.

The objective(s) come from `sweep.objective` (each with its direction), every job gets its trial
(`sweep.storage`, `sweep.study_name`, `sweep.trial_number`) so it reports after each epoch and can be pruned, a
job config is checked with `lra.config.validate` before the study opens, the Optuna storage sits beside the
sqlite MLflow store, the MLflow runs of interrupted trials are settled, the sweep's parent MLflow run is opened only before the
first launch, and the study's result is recorded on it. `conf/config.yaml` names this class as `sweeper_app`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from mlflow.tracking import MlflowClient
from omegaconf import ListConfig, OmegaConf

from hydra_plugins.lra_optuna_sweeper._errors import SweeperError
from hydra_plugins.lra_optuna_sweeper.app import SweepApp
from lra.config import OBJECTIVES
from lra.sweep.callback import (ENV_PARENT_RUN_ID, ENV_SWEEP_ID, experiment_of, fail_orphan_runs, open_parent_run,
                                tracking_uri_of)
from lra.sweep.trial import finished_values

MINIMIZED = ("peak_memory_mb",)  # besides *_loss: metrics where lower is better


class LraSweepApp(SweepApp):
    """The lra side of a sweep over `config` (the sweeper's composed config)."""

    def objectives(self) -> list[str]:
        """`sweep.objective` as a list of metric names the trainer returns (one or several)."""
        raw = OmegaConf.select(self.config, "sweep.objective", default=None)
        names = list(raw) if isinstance(raw, (ListConfig, list, tuple)) else [raw]
        shown = OmegaConf.to_container(raw) if isinstance(raw, ListConfig) else raw
        if not names:
            raise SweeperError("sweep.objective", shown, "no objective", f"one of {', '.join(OBJECTIVES)}")
        for name in names:
            if name not in OBJECTIVES:
                raise SweeperError("sweep.objective", shown, f"{name!r} is not a metric the trainer reports",
                                   f"one or a list of {', '.join(OBJECTIVES)}")
        if len(set(names)) != len(names):
            raise SweeperError("sweep.objective", shown, "an objective is listed twice", "list each once")
        return [str(name) for name in names]

    def direction(self, objective: str) -> str:
        return "minimize" if objective.endswith("loss") or objective in MINIMIZED else "maximize"

    def validator(self) -> str:
        return "lra.config.validate"

    def study_name(self) -> Optional[str]:
        return os.environ.get(ENV_SWEEP_ID)  # set by lra's SweepRunCallback before the sweep starts

    def tracking_uri(self) -> str:
        return tracking_uri_of(self.config)

    def default_storage(self) -> str:
        uri = self.tracking_uri()
        folder = Path(uri[len("sqlite:///"):]).resolve().parent if uri.startswith("sqlite:///") else Path.cwd()
        return f"sqlite:///{folder / 'optuna.db'}"

    def job_overrides(self, url: str, name: str, number: int, quote: Any) -> list[str]:
        return [f"sweep.storage={quote(url)}", f"sweep.study_name={quote(name)}", f"sweep.trial_number={number}"]

    def finished_values(self, study_name: str, number: int, objectives: Sequence[str]) -> Optional[list[float]]:
        """The objective values of a trial whose job's MLflow run FINISHED (None if it did not)."""
        return finished_values(self.tracking_uri(), experiment_of(self.config), study_name, number, objectives)

    def fail_orphan_runs(self, study_name: str, number: int) -> None:
        fail_orphan_runs(self.tracking_uri(), experiment_of(self.config), study_name, number)

    def before_launch(self) -> None:
        """The sweep's parent MLflow run is opened only now, before the first jobs start."""
        open_parent_run()

    def record(self, results: dict[str, Any], objectives: Sequence[str], results_file: Path) -> None:
        """The study's result on the sweep's parent run: trial counts, the best trial or the Pareto front."""
        parent = os.environ.get(ENV_PARENT_RUN_ID)
        if not parent:
            return
        client = MlflowClient(self.tracking_uri())
        for state, count in results["states"].items():
            client.set_tag(parent, f"trials_{state.lower()}", str(count))
        if "best_value" in results:
            client.log_metric(parent, f"best_{objectives[0]}", float(results["best_value"]))
            client.set_tag(parent, "best_trial", str(results["best_trial"]))
            client.set_tag(parent, "best_params", str(results["best_params"])[:5000])
        if "solutions" in results:
            front = [{"trial": s["number"], **dict(zip(objectives, s["values"]))} for s in results["solutions"]]
            client.set_tag(parent, "pareto_front", json.dumps(front)[:5000])
            client.set_tag(parent, "pareto_trials", ",".join(str(s["number"]) for s in results["solutions"]))
            client.log_metric(parent, "pareto_size", len(front))
        client.log_artifact(parent, str(results_file))
