"""The sweeper's config (`hydra/sweeper=lra_optuna`) and its sampler and pruner choices.

Pick a sampler or pruner in a sweep yaml's defaults (`- override hydra/sweeper/pruner: threshold`) or on the
command line (`hydra/sweeper/pruner=nop`); set their arguments under `hydra.sweeper.sampler` / `.pruner`.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    multivariate: bool = False
    constant_liar: bool = False  # true: parallel workers avoid sampling next to each other's running trials


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 1


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5   # no pruning until this many trials have finished
    n_warmup_steps: int = 1     # nor before this epoch (jobs report epochs 1, 2, ...)
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 1
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class ThresholdPrunerConf:
    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Optional[float] = None  # prune a trial whose reported value falls below this
    upper: Optional[float] = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class LraOptunaSweeperConf:
    _target_: str = "hydra_plugins.lra_optuna_sweeper.lra_optuna_sweeper.LraOptunaSweeper"
    _recursive_: bool = False  # the sampler and pruner arrive as specs: the pruner's is stored in the study
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    # maximize | minimize; null: minimize for *_loss and peak_memory_mb, else maximize
    direction: Optional[str] = None
    # null: sqlite file optuna.db beside the sqlite MLflow store (else in the launch directory);
    # a URL with :// is an RDB storage (sqlite:///..., postgresql://...); anything else a journal file path
    storage: Optional[str] = None
    # null: the sweep id; the same name again continues the study until n_trials trials exist
    study_name: Optional[str] = None
    n_trials: int = 20             # trials in the study in all, whatever their end (COMPLETE, PRUNED, FAIL)
    n_jobs: int = 1                # trials per launcher batch (run in parallel by joblib / submitit launchers)
    max_failure_rate: float = 0.5  # stop (exit 1) once more than this fraction of n_trials failed here
    params: Optional[Dict[str, Any]] = None  # the search space: key -> interval(...) | range(...) | choice(...)
    enqueue: List[Dict[str, Any]] = field(default_factory=list)  # points tried first, e.g. a known good config
    heartbeat_interval: float = 5.0  # seconds between the sweeper's "still running" marks on its trials
    grace_period: float = 30.0       # a RUNNING trial without a mark for this long was killed: FAIL it
    # `cfg -> None` run on a job config at the low end of the search space before the study is opened
    # (raise to stop the sweep before any trial exists); null: only Hydra's composition check
    validate: Optional[str] = "lra.config.validate"


_SAMPLERS = {"tpe": TPESamplerConf, "random": RandomSamplerConf, "cmaes": CmaEsSamplerConf, "qmc": QMCSamplerConf}
_PRUNERS = {"nop": NopPrunerConf, "median": MedianPrunerConf, "percentile": PercentilePrunerConf,
            "threshold": ThresholdPrunerConf, "hyperband": HyperbandPrunerConf,
            "successive_halving": SuccessiveHalvingPrunerConf}

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="lra_optuna", node=LraOptunaSweeperConf, provider="lra_optuna_sweeper")
for _name, _node in _SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="lra_optuna_sweeper")
for _name, _node in _PRUNERS.items():
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="lra_optuna_sweeper")
