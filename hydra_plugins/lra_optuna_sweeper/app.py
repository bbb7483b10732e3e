"""What an app may add to a sweep: the plugin's one interface to the Hydra app it sweeps.

The sweeper works for any Hydra app as it is: the objective is the job's return value, the storage a sqlite
file in the launch folder, nothing is validated beyond Hydra's composition. An app that knows more plugs in a
subclass of `SweepApp` by its dotted path, `hydra.sweeper.app=my_app.sweeping.MyApp`, or once for every sweep
in its primary config as the top-level key `sweeper_app` (the sweeper's default reads it). The sweeper builds it
with the composed config, `MyApp(config)`, and calls the hooks below; each has a neutral default.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from ._errors import SweeperError


def default_direction(objective: str) -> str:
    """minimize a loss, maximize anything else (an app may know better: `SweepApp.direction`)."""
    return "minimize" if objective.endswith("loss") else "maximize"


class SweepApp:
    """The neutral app: every hook says "nothing to add"."""

    def __init__(self, config: DictConfig) -> None:
        self.config = config

    def objectives(self) -> Optional[list[str]]:
        """The metric names the job returns, in order (None: one unnamed value)."""
        return None

    def direction(self, objective: str) -> str:
        return default_direction(objective)

    def validator(self) -> Optional[str]:
        """A dotted path to `fn(job_cfg)` that raises on a bad job config (`validate: auto` uses it)."""
        return None

    def study_name(self) -> Optional[str]:
        """The study's name when `hydra.sweeper.study_name` is null (None: a new time-stamped name)."""
        return None

    def default_storage(self) -> Optional[str]:
        """The storage URL when `hydra.sweeper.storage` is null (None: sqlite optuna.db in the launch folder)."""
        return None

    def job_overrides(self, url: str, name: str, number: int, quote: Any) -> list[str]:
        """Overrides handing each job its trial (storage URL, study name, trial number)."""
        return []

    def finished_values(self, study_name: str, number: int, objectives: Sequence[str]) -> Optional[list[float]]:
        """A trial's objective values from the app's own record, when its job finished but its sweeper died."""
        return None

    def fail_orphan_runs(self, study_name: str, number: int) -> None:
        """A trial was found killed: end whatever the app recorded for it as running."""

    def before_launch(self) -> None:
        """Called once, just before the first jobs are launched (a refused start has launched nothing)."""

    def record(self, results: dict[str, Any], objectives: Sequence[str], results_file: Path) -> None:
        """The study's result, for the app's own record (the plugin writes optimization_results.yaml)."""


def _derives_from_sweep_app(cls: type) -> bool:
    """By name, not identity: Hydra's plugin scan executes this module again, so an app imported before the scan
    subclasses another copy of `SweepApp` than the one this module holds."""
    return any((base.__module__, base.__qualname__) == (SweepApp.__module__, SweepApp.__qualname__)
               for base in cls.__mro__)


def load_app(path: Optional[str], config: DictConfig) -> SweepApp:
    """The app named by `hydra.sweeper.app` (a dotted path to a SweepApp subclass), else the neutral one."""
    if not path:
        return SweepApp(config)
    module_name, _, class_name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise SweeperError("hydra.sweeper.app", path, f"cannot be imported ({reason})",
                           "a dotted path to a SweepApp subclass, e.g. my_app.sweeping.MyApp, or null") from None
    if not (isinstance(cls, type) and _derives_from_sweep_app(cls)):
        raise SweeperError("hydra.sweeper.app", path, "is not a subclass of "
                           "hydra_plugins.lra_optuna_sweeper.app.SweepApp", "subclass SweepApp")
    return cls(config)
