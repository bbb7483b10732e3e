"""Passwords out of everything a run prints and writes.

`redact(text)` masks the secret of every URL in `text`: the password of `scheme://user:password@host` and of
`scheme://:password@host` (everything up to the netloc's LAST `@`, so a raw `@` inside a password leaks nothing),
percent-encoded or not, and query values such as `?password=...`, `&token=...`. `redact_tree` does the same to
every string of a config. `install()` puts `redact` between the process and its output: sys.stdout and sys.stderr
(MLflow's own `View run ... at: <tracking URI>` lines, tracebacks, warnings) and every logging record (the
console and Hydra's job log), so a password given in `tracking.uri` or `MLFLOW_TRACKING_URI` is never printed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf

MASK = "***"
# scheme://user:password@host: the user runs to the first ':', the password to the netloc's LAST '@' (greedy
# up to the first / ? # or white space, so a raw '@' inside a password leaks nothing of it)
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*):[^/?#\s]*@")
_SECRET_KEYS = r"password|passwd|pwd|pass|secret|token|access_token|api_key|apikey|access_key|sslpassword"
_QUERY = re.compile(rf"([?&;](?:{_SECRET_KEYS})=)[^&#\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the password of every URL and every secret query value replaced by ***."""
    if "@" not in text and "=" not in text:
        return text
    return _QUERY.sub(rf"\1{MASK}", _URL_PASSWORD.sub(rf"\1:{MASK}@", text))


def redact_tree(tree: Any) -> Any:
    """A plain config tree (dicts, lists, scalars) with every string redacted."""
    if isinstance(tree, str):
        return redact(tree)
    if isinstance(tree, Mapping):
        return {key: redact_tree(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [redact_tree(value) for value in tree]
    return tree


def redacted_yaml(cfg: DictConfig, resolve: bool = True) -> str:
    """`cfg` as YAML with every password of a URL in its values masked."""
    return OmegaConf.to_yaml(OmegaConf.create(redact_tree(OmegaConf.to_container(cfg, resolve=resolve))))


class RedactingStream:
    """A text stream that redacts what is written to it and passes everything else to the stream it wraps."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self._stream, name)


def _redacting_factory(make: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: let logging report it as it would
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.lra_redacting = True  # type: ignore[attr-defined]
    return factory


def install() -> None:
    """Redact this process's stdout, stderr and logging records from now on (idempotent). Handlers made later
    (Hydra's console handler) pick up the wrapped streams."""
    if not isinstance(sys.stdout, RedactingStream) and sys.stdout is not None:
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream) and sys.stderr is not None:
        sys.stderr = RedactingStream(sys.stderr)
    make = logging.getLogRecordFactory()
    if not getattr(make, "lra_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(make))
    for handler in logging.getLogger().handlers:  # handlers made before: point them at the wrapped streams
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stdout__, sys.__stderr__):
            handler.setStream(sys.stdout if handler.stream is sys.__stdout__ else sys.stderr)


def redact_files(paths: Iterable[Path]) -> None:
    """Mask the passwords in text files written by others (Hydra's records of the command line), in place."""
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        masked = redact(text)
        if masked != text:
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            tmp.write_text(masked)
            os.replace(tmp, path)
