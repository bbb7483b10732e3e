"""User errors of the sweeper: one line `error: <key>=<value>: <problem>; fix: <fix>`, exit 2, before any trial.

`SweeperError` formats like `lra.errors.ConfigError` without importing lra (the plugin stands alone);
`user_errors()` turns either (anything with `key`, `problem` and `fix`) into that line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2


class SweeperError(ValueError):
    """A bad sweeper setting or search space, found before any trial is asked."""

    def __init__(self, key: str, value: object, problem: str, fix: str) -> None:
        self.key, self.value, self.problem, self.fix = key, value, problem, fix
        super().__init__(f"{key}={value!r}: {problem}; fix: {fix}")


class SweepFailed(RuntimeError):
    """The study ended without a result (too many failed trials, or none COMPLETE): exit 1 with one line."""


def is_user_error(error: BaseException) -> bool:
    return all(hasattr(error, name) for name in ("key", "problem", "fix")) and isinstance(error, ValueError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error or a failed sweep as one line on stderr and exit (2 or 1) instead of a traceback."""
    try:
        yield
    except SweepFailed as error:
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - only user errors are turned into a line
        if not is_user_error(error):
            raise
        log.error("config error: %s", error)
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
