"""One run: `python launch.py [overrides]`; a sweep: `python launch.py -m ...`. See README.md."""

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from lra.errors import ConfigError


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """Train one model; return the metric a sweeper optimises (sweep.objective)."""
    from lra.config import validate

    try:
        validate(cfg)  # before the heavier imports below: a bad config fails fast
        from lra.train import train  # imported here so that --help and --cfg stay fast

        metrics = train(cfg)
    except ConfigError as error:
        if _is_multirun():
            raise  # the sweeper records a failed job and goes on
        logging.getLogger("lra").error("config error: %s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    objective = cfg.sweep.objective  # a list: a multi-objective Optuna sweep, one value per objective
    return tuple(metrics[name] for name in objective) if OmegaConf.is_list(objective) else metrics[objective]


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    main()
