"""Compose the real Hydra config in-process, for tests that call `train(cfg)` directly."""

from lra.compose import compose_config as compose  # noqa: F401
