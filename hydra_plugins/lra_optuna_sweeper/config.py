"""The sweeper's config (`hydra/sweeper=lra_optuna`) and its sampler and pruner choices.

Pick a sampler or pruner in a sweep yaml's defaults (`- override hydra/sweeper/sampler: nsgaii`) or on the
command line (`hydra/sweeper/pruner=nop`); set their arguments under `hydra.sweeper.sampler` / `.pruner`. Every
sampler lists its Optuna 5 constructor's keys, so none needs a `+`; their defaults are Optuna's. The default
choice of each group is `auto`: TPE and the median pruner for one objective, NSGA-II and no pruning for
several. Nothing here imports Optuna or lra, so Hydra's start-up and `--help` stay light.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    consider_prior: Optional[bool] = None  # null: Optuna's default (these four are deprecated in Optuna 5)
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    gamma: Optional[Any] = None       # a callable: {_target_: ...} or null
    weights: Optional[Any] = None
    multivariate: Optional[bool] = None
    group: bool = False
    warn_independent_sampling: Optional[bool] = None
    constant_liar: bool = True        # parallel workers avoid sampling next to each other's running trials
    constraints_func: Optional[Any] = None


@dataclass
class AutoSamplerConf(TPESamplerConf):
    """TPE for one objective; NSGA-II (with `seed`) for several, unless a TPE key was changed."""

    _target_: str = "auto"


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    independent_sampler: Optional[Any] = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Optional[str] = None
    popsize: Optional[int] = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False
    source_trials: Optional[Any] = None


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation: Optional[Any] = None
    mutation_prob: Optional[float] = None
    crossover: Optional[Any] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Optional[Any] = None
    elite_population_selection_strategy: Optional[Any] = None
    child_generation_strategy: Optional[Any] = None
    after_trial_strategy: Optional[Any] = None


@dataclass
class NSGAIIISamplerConf(NSGAIISamplerConf):
    _target_: str = "optuna.samplers.NSGAIIISampler"
    reference_points: Optional[Any] = None
    dividing_parameter: int = 3


@dataclass
class GridSamplerConf:
    """The grid is the search space (every range and choice value); n_trials is capped by its size."""

    _target_: str = "optuna.samplers.GridSampler"
    seed: Optional[int] = None


@dataclass
class GPSamplerConf:
    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    independent_sampler: Optional[Any] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    constraints_func: Optional[Any] = None
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"
    scramble: bool = False
    independent_sampler: Optional[Any] = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class BruteForceSamplerConf:
    _target_: str = "optuna.samplers.BruteForceSampler"
    seed: Optional[int] = None
    avoid_premature_stop: bool = False


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5   # no pruning until this many trials have finished
    n_warmup_steps: int = 1     # nor before this epoch (jobs report epochs 1, 2, ...)
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class AutoPrunerConf(MedianPrunerConf):
    """The median rule for one objective; no pruning for several (Optuna prunes single-objective studies only)."""

    _target_: str = "auto"


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


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
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class WilcoxonPrunerConf:
    _target_: str = "optuna.pruners.WilcoxonPruner"
    p_threshold: float = 0.1
    n_startup_steps: int = 2


@dataclass
class LraOptunaSweeperConf:
    _target_: str = "hydra_plugins.lra_optuna_sweeper.lra_optuna_sweeper.LraOptunaSweeper"
    _recursive_: bool = False  # the sampler and pruner arrive as specs: built and checked before any trial
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "auto"}, {"pruner": "auto"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    # maximize | minimize, or a list of them (several objectives); null: from the objective's name in an lra
    # app (minimize *_loss and peak_memory_mb, else maximize), minimize in any other app
    direction: Any = None
    # null: sqlite file optuna.db beside the sqlite MLflow store (else in the launch directory);
    # a URL with :// is an RDB storage (sqlite:///..., postgresql://...); anything else a journal file path;
    # or a storage config ({_target_: optuna.storages.RDBStorage, url: ..., ...})
    storage: Any = None
    # null: the sweep id; the same name again continues the study until n_trials trials exist
    study_name: Optional[str] = None
    n_trials: int = 20             # trials in the study in all, whatever their end (COMPLETE, PRUNED, FAIL)
    n_jobs: int = 1                # trials per launcher batch (run in parallel by joblib / submitit launchers)
    max_failure_rate: float = 0.5  # stop (exit 1) once more than this fraction of n_trials failed here
    params: Optional[Dict[str, Any]] = None  # the search space: key -> interval(...) | range(...) | choice(...)
    # `fn(cfg, trial)`, called with each trial after `params` are sampled: suggest more with trial.suggest_*
    # (a dotted path; `.module.fn` is looked up in the app's own script folder)
    custom_search_space: Optional[str] = None
    # the plugin's pre-Hydra-1.2 form: key -> {type: int|float|categorical, low, high, step, log, choices}
    search_space: Optional[Dict[str, Any]] = None
    enqueue: List[Dict[str, Any]] = field(default_factory=list)  # points tried first, e.g. a known good config
    heartbeat_interval: float = 5.0  # seconds between the sweeper's "still running" marks on its trials
    grace_period: float = 30.0       # a RUNNING trial without a mark for this long was killed: FAIL it
    # `cfg -> None` run on a job config at the low end of the search space before the study is opened (raise
    # to stop the sweep before any trial exists); auto: the app's validator (`SweepApp.validator`: lra's is
    # lra.config.validate), else nothing; null: only Hydra's composition check
    validate: Optional[str] = "auto"
    # the app's hooks (objectives, storage, validation, its own record of trials): a dotted path to a subclass
    # of hydra_plugins.lra_optuna_sweeper.app.SweepApp; by default the app config's top-level `sweeper_app` key,
    # if it has one (lra's conf/config.yaml names lra.sweep.optuna_app.LraSweepApp); null: the neutral app
    app: Optional[str] = "${oc.select:sweeper_app,null}"


_SAMPLERS = {"auto": AutoSamplerConf, "tpe": TPESamplerConf, "motpe": TPESamplerConf, "random": RandomSamplerConf,
             "cmaes": CmaEsSamplerConf, "nsgaii": NSGAIISamplerConf, "nsgaiii": NSGAIIISamplerConf,
             "grid": GridSamplerConf, "gp": GPSamplerConf, "qmc": QMCSamplerConf,
             "bruteforce": BruteForceSamplerConf}
_PRUNERS = {"auto": AutoPrunerConf, "nop": NopPrunerConf, "median": MedianPrunerConf,
            "percentile": PercentilePrunerConf, "threshold": ThresholdPrunerConf,
            "hyperband": HyperbandPrunerConf, "successive_halving": SuccessiveHalvingPrunerConf,
            "wilcoxon": WilcoxonPrunerConf}

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="lra_optuna", node=LraOptunaSweeperConf, provider="lra_optuna_sweeper")
for _name, _node in _SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="lra_optuna_sweeper")
for _name, _node in _PRUNERS.items():
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="lra_optuna_sweeper")
