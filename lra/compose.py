"""Compose the real Hydra config (`conf/`) in-process, as `launch.py` would: for tools, benchmarks and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for these overrides. Inside a running Hydra app (a training run that asks for a task
    preset), that app's Hydra is set aside while composing and put back after."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    if outer is not None:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)
