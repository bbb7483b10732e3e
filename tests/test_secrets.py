"""No password leaks (issue 19): a password in the tracking URI, in every URL form, appears in nothing a run prints
or writes: stdout, stderr (MLflow's own `View run ... at:` lines included), the checkpoint folder, Hydra's output
folder, the served artifacts, the tracking store's params, tags and run names. A real `mlflow server` on loopback
(it has no auth: a password in the URL is sent and ignored), the real `launch.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from mlflow.tracking import MlflowClient

from helpers import TINY, launch_args, launch_env
from mlflow_server import free_port, start_server, stop
from lra.redaction import redact

RUN = (*TINY, "dataset.train=32", "training.num_epochs=1")


@pytest.mark.parametrize("text, masked", [
    ("http://user:secret@host:5000/x", "http://user:***@host:5000/x"),
    ("http://:secret@host", "http://:***@host"),
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),  # a raw @: masked up to the last one
    ("http://u:s%40cr%3At@host", "http://u:***@host"),  # percent-encoded
    ("postgresql://lra@db/optuna?password=secret&sslmode=require",
     "postgresql://lra@db/optuna?password=***&sslmode=require"),
    ("http://host/path?token=abc#f", "http://host/path?token=***#f"),
    ("uri: 'http://u:p''q@h:1' x=y@z", "uri: 'http://u:***@h:1' x=y@z"),  # YAML's quoted form
    ("a http://u:1@h b https://v:2@k", "a http://u:***@h b https://v:***@k"),
    ("user@host sqlite:////a/b.db http://host:5000/path@x", "user@host sqlite:////a/b.db http://host:5000/path@x"),
])
def test_redact_masks_every_url_form(text: str, masked: str) -> None:
    from hydra_plugins.lra_optuna_sweeper._impl import _redact

    assert redact(text) == masked
    assert _redact(text) == masked  # the sweeper plugin's own copy (it stands alone) agrees


def _everything_written(*folders: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for folder in folders if folder.exists() for path in folder.rglob("*")
            if path.is_file() and path.name != "server.log"}


def _store_text(uri: str) -> tuple[str, list[str]]:
    """Every experiment, run name, param and tag of the store, as one text; the runs' statuses."""
    client = MlflowClient(uri)
    parts, statuses = [], []
    for experiment in client.search_experiments():
        parts.append(f"{experiment.name} {experiment.artifact_location} {experiment.tags}")
        for run in client.search_runs([experiment.experiment_id]):
            parts.append(f"{run.info.run_name} {run.info.artifact_uri} {run.data.params} {run.data.tags}")
            statuses.append(run.info.status)
    return "\n".join(parts), statuses


@pytest.mark.long
def test_no_password_in_anything_a_run_prints_or_writes(tmp_path: Path) -> None:
    server_folder = tmp_path / "server"
    server_folder.mkdir()
    port = free_port()
    host = f"127.0.0.1:{port}"
    secrets = {  # the password as typed -> the forms it must not appear in
        "u:pass@ (override)": ("tracking.uri", f"http://lra:Hunter2Secret@{host}", ["Hunter2Secret"]),
        ":pass@ (environment)": ("env", f"http://:Env7Secret@{host}", ["Env7Secret"]),
        "percent-encoded": ("tracking.uri", f"http://lra:Pct%40Secret9@{host}", ["Pct%40Secret9", "Pct@Secret9",
                                                                               "Secret9"]),
        "raw @": ("tracking.uri", f"http://lra:raw@At5Secret@{host}", ["raw@At5Secret", "At5Secret"]),
        "?password= (refused)": ("tracking.uri", f"http://{host}/?password=Query3Secret", ["Query3Secret"]),
    }
    server = start_server(server_folder, port)
    printed: dict[str, str] = {}
    codes: dict[str, int] = {}
    try:
        for seed, (case, (where, uri, _)) in enumerate(secrets.items()):
            env = launch_env(tmp_path)
            env.pop("MLFLOW_TRACKING_URI")
            overrides = [*RUN, f"training.seed={seed}"]
            if where == "env":
                env["MLFLOW_TRACKING_URI"] = uri
            else:
                overrides.append(f"tracking.uri={uri}")
            result = subprocess.run(launch_args(tmp_path, *overrides), cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=600)
            printed[case], codes[case] = result.stdout + result.stderr, result.returncode
        sweep = subprocess.run(
            launch_args(tmp_path, *RUN, "attention=softmax,tpr", f"tracking.uri=http://lra:Sweep4Secret@{host}",
                        multirun=True), cwd=tmp_path, env={**launch_env(tmp_path)}, capture_output=True, text=True,
            timeout=900)
        printed["sweep"], codes["sweep"] = sweep.stdout + sweep.stderr, sweep.returncode
        stored, statuses = _store_text(f"http://{host}")
    finally:
        stop(server)
    secrets["sweep"] = ("tracking.uri", "", ["Sweep4Secret"])

    for case, code in codes.items():
        expected = 2 if case.startswith("?password=") else 0
        assert code == expected, (case, printed[case][-3000:])
    assert "View run" in printed["u:pass@ (override)"] and f"lra:***@{host}" in printed["u:pass@ (override)"]
    assert "View run" in printed[":pass@ (environment)"] and f"http://:***@{host}" in printed[":pass@ (environment)"]
    refused = [line for line in printed["?password= (refused)"].splitlines() if line.strip()][-1]
    assert refused.startswith("error: tracking.uri=") and "password=***" in refused, refused
    files = _everything_written(tmp_path / "checkpoints", tmp_path / "outputs", tmp_path / "multirun",
                                server_folder)
    assert any(path.name == "config.yaml" and "model" in path.parts for path in files)  # the artifacts are there
    assert statuses == ["FINISHED"] * 7, statuses  # four runs, a sweep's parent and its two jobs
    leaks = []
    for case, (_, _, forms) in secrets.items():
        for form in forms:
            for what, text in {**{f"printed by {c}": t for c, t in printed.items()}, "the store": stored}.items():
                if form in text:
                    leaks.append(f"{form!r} ({case}) {what}")
            for path, data in files.items():
                if form.encode() in data or unquote(form).encode() in data:
                    leaks.append(f"{form!r} ({case}) in {path}")
    assert not leaks, "\n".join(leaks)


def test_the_stream_and_log_redaction_covers_prints_tracebacks_and_log_records(tmp_path: Path) -> None:
    """A process with `lra.redaction.install()`: print, a logged exception and an uncaught traceback."""
    code = (
        "import logging, sys\n"
        "from lra import redaction\n"
        "redaction.install()\n"
        "logging.basicConfig(filename=sys.argv[1], level=logging.INFO)\n"
        "logging.getLogger().addHandler(logging.StreamHandler(sys.stdout))\n"
        "print('View run x at: http://u:PrintSecret@h:1/#/runs/1')\n"
        "logging.info('store %s', 'postgresql://u:LogSecret@db/x')\n"
        "try:\n"
        "    raise RuntimeError('API request to http://u:ExcSecret@h:1/api failed')\n"
        "except RuntimeError:\n"
        "    logging.exception('failed')\n"
        "raise ValueError('sqlite:///x.db?password=UncaughtSecret')\n")
    log = tmp_path / "job.log"
    result = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "ValueError: sqlite:///x.db?password=***" in result.stderr
    everything = result.stdout + result.stderr + log.read_text()
    assert "u:***@h:1" in result.stdout and "u:***@db/x" in everything and "ExcSecret" not in everything
    for secret in ("PrintSecret", "LogSecret", "ExcSecret", "UncaughtSecret"):
        assert secret not in everything, secret
