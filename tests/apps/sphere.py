"""The Hydra Optuna plugin's example app (its `example/sphere.py`), rewritten: minimise x^2 + y^2.

Its config, `conf/config.yaml`, is the plugin's, naming `hydra/sweeper: optuna`; the tests run it with only
`hydra/sweeper=lra_optuna` added on the command line. `error=true` makes every job raise.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg: DictConfig) -> float:
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return cfg.x**2 + cfg.y**2


if __name__ == "__main__":
    sphere()
