"""The plugin class Hydra discovers; the work is in `_impl` (imported only when a sweep starts)."""

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import LraOptunaSweeperConf  # noqa: F401 - registers the config in the ConfigStore


class LraOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from ._errors import user_errors
        from ._impl import LraOptunaSweeperImpl

        with user_errors():  # a bad setting: one `error:` line, exit 2
            self.sweeper = LraOptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Optional[Any]:
        return self.sweeper.sweep(arguments)
