"""A sweep's side in lra: the parent MLflow run of a `launch.py -m` command (`callback`) and the Optuna trial
side of one job (`trial`)."""
