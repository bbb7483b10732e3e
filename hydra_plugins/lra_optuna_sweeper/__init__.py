"""lra_optuna: a Hydra sweeper driving Optuna 5 through ask/tell (`hydra/sweeper=lra_optuna`), for any Hydra app.

Modules: `config` (the sweeper's config, its sampler and pruner groups, registered in Hydra's ConfigStore),
`lra_optuna_sweeper` (the plugin class Hydra discovers), `_impl` (the trial loop), `_space` (the search space
grammar), `_samplers` (samplers and pruners built and checked before any trial), `storage` (storages opened
safely by parallel processes; shared with the jobs), `app` (the interface an app plugs its extras into,
`hydra.sweeper.app`), `_errors` (one-line user errors). It imports nothing of lra: lra plugs in from its side
(`lra.sweep.optuna_app`, the job's side of a trial in `lra.sweep.trial`).
"""
