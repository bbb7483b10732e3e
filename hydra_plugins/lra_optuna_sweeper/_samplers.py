"""Samplers and pruners from their config specs, built and checked before any trial is asked.

Optuna imports a sampler's optional packages lazily (CMA-ES's `cmaes`, GP's `torch` and `scipy`, QMC's
`scipy`), so a missing one used to surface as a traceback in the middle of `ask`, with the trial left RUNNING.
`build_sampler` imports them first and turns a missing package, an unknown key or any other failure to build
into one `SweeperError` line.
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any, Mapping, Optional, Sequence

from ._errors import SweeperError
from ._space import grid_values

REQUIRES = {  # sampler -> the optional packages (modules) it needs, and the pip package to install
    "optuna.samplers.CmaEsSampler": (("cmaes", "cmaes"),),
    "optuna.samplers.GPSampler": (("torch", "torch"), ("scipy.optimize", "scipy"), ("scipy.stats.qmc", "scipy")),
    "optuna.samplers.QMCSampler": (("scipy.stats.qmc", "scipy"),),
}
SAMPLER_KEY = "hydra.sweeper.sampler"
PRUNER_KEY = "hydra.sweeper.pruner"


def _tpe_defaults() -> dict[str, Any]:
    from .config import TPESamplerConf

    return {f.name: f.default for f in fields(TPESamplerConf) if f.name not in ("_target_", "seed")}


def resolve_sampler(spec: Optional[Mapping[str, Any]], n_objectives: int) -> dict[str, Any]:
    """The concrete spec: `auto` is TPE for one objective, NSGA-II for several (TPE if a TPE key was set)."""
    spec = dict(spec or {"_target_": "auto"})
    if spec.get("_target_") != "auto":
        return spec
    tpe = {key: value for key, value in spec.items() if key != "_target_"}
    if n_objectives > 1 and all(tpe.get(key) == value for key, value in _tpe_defaults().items()):
        return {"_target_": "optuna.samplers.NSGAIISampler", "seed": tpe.get("seed")}
    return {"_target_": "optuna.samplers.TPESampler", **tpe}


def resolve_pruner(spec: Optional[Mapping[str, Any]], n_objectives: int) -> Optional[dict[str, Any]]:
    """The concrete spec (None: no pruning); a pruner asked for with several objectives is refused."""
    spec = dict(spec or {})
    target = spec.get("_target_")
    if target == "auto":
        if n_objectives > 1:
            return None
        spec["_target_"] = "optuna.pruners.MedianPruner"
        return spec
    if not target or target == "optuna.pruners.NopPruner":
        return None
    if n_objectives > 1:
        raise SweeperError(f"{PRUNER_KEY}._target_", target,
                           f"Optuna prunes only single-objective studies and this one has {n_objectives} "
                           "objectives", "hydra/sweeper/pruner=nop (or auto), or a single objective")
    return spec


def check_requirements(target: str, key: str = SAMPLER_KEY) -> None:
    for module, package in REQUIRES.get(target, ()):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise SweeperError(f"{key}._target_", target, f"needs the package {package!r}, which cannot be "
                               f"imported ({error})", f"pip install {package}, or pick another sampler "
                               "(hydra/sweeper/sampler=tpe)") from None


def _instantiate(spec: Mapping[str, Any], key: str) -> Any:
    from hydra.utils import instantiate

    try:
        return instantiate(dict(spec))
    except Exception as error:  # noqa: BLE001 - any failure to build is the user's config
        cause = error.__cause__ or error
        reason = " ".join(str(cause).split())[:300] or type(cause).__name__
        raise SweeperError(f"{key}._target_", spec.get("_target_"), f"cannot be built ({reason})",
                           f"check the keys under {key} against Optuna's documentation of that class") from None


def grid_space(distributions: Mapping[str, Any], sources: Optional[Mapping[str, str]] = None) -> dict[str, list[Any]]:
    if not distributions:
        raise SweeperError("hydra.sweeper.params", {}, "the grid sampler needs a search space",
                           "give hydra.sweeper.params or sweep overrides (choice, range)")
    return {key: grid_values(key, dist, (sources or {}).get(key, "interval(...)"))
            for key, dist in distributions.items()}


def grid_size(grid: Mapping[str, Sequence[Any]]) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size


def build_sampler(spec: Mapping[str, Any], distributions: Mapping[str, Any], seed_offset: int = 0) -> Any:
    """The sampler a concrete spec names (the grid filled from the search space); a resumed study's seed is
    moved on by the trials it already holds, so it does not replay the first run's points."""
    spec = dict(spec)
    target = str(spec.get("_target_"))
    check_requirements(target)
    if spec.get("seed") is not None:
        spec["seed"] = int(spec["seed"]) + seed_offset
    if target.endswith("GridSampler"):
        spec["search_space"] = grid_space(distributions)
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _instantiate(spec, SAMPLER_KEY)


def build_pruner(spec: Optional[Mapping[str, Any]]) -> Any:
    """The pruner of a concrete spec (NopPruner for None): built once here so a bad spec stops the sweep."""
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    return _instantiate(spec, PRUNER_KEY)
