"""The one exception type for user mistakes: a config or data problem found before any work starts."""


class Verbatim(str):
    """A value shown as the user typed it (an override's text after `=`), not quoted as a Python string."""

    def __repr__(self) -> str:
        return str(self)


class ConfigError(ValueError):
    """A bad config value or missing input, reported as one line: key path, value, and the fix."""

    def __init__(self, key: str, value: object, problem: str, fix: str) -> None:
        self.key, self.value, self.problem, self.fix = key, value, problem, fix
        super().__init__(f"{key}={value!r}: {problem}; fix: {fix}")
