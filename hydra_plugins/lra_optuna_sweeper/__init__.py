"""lra_optuna: a Hydra sweeper driving Optuna 5 through ask/tell (`hydra/sweeper=lra_optuna`), for any Hydra app.

Modules: `config` (the sweeper's config, its sampler and pruner groups, registered in Hydra's ConfigStore),
`lra_optuna_sweeper` (the plugin class Hydra discovers), `_impl` (the trial loop), `_space` (the search space
grammar), `_samplers` (samplers and pruners built and checked before any trial), `storage` (storages opened
safely by parallel processes; shared with the jobs), `_lra` (lra's extras, used only in an lra app), `_errors`
(one-line user errors). The job's side of a trial is `lra.sweep.trial`. None of it imports lra at load.
"""
