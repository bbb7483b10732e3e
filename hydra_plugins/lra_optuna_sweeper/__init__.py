"""lra_optuna: a Hydra sweeper driving Optuna 5 through ask/tell (`hydra/sweeper=lra_optuna`).

Modules: `config` (the sweeper's config, its sampler and pruner groups, registered in Hydra's ConfigStore),
`lra_optuna_sweeper` (the plugin class Hydra discovers), `_impl` (the trial loop), `_space` (the search space
grammar). The job's side of a trial is `lra.trial`.
"""
