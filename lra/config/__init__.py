"""The config layer: the schema and its validation (`schema`), the command-line checks that run before Hydra
(`overrides`) and the checks against the machine and the data (`preflight`).

Every user error is raised here, before any work starts. The names callers need are re-exported here.
"""

from lra.config.preflight import check_against_data, check_machine
from lra.config.schema import (DEVICES, OBJECTIVES, PRECISIONS, SCHEDULERS, Schema, resolve_device,
                               resolve_precision, validate)

__all__ = ["DEVICES", "OBJECTIVES", "PRECISIONS", "SCHEDULERS", "Schema", "check_against_data", "check_machine",
           "resolve_device", "resolve_precision", "validate"]
