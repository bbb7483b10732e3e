"""`python -m lra.ui`: the MLflow UI on the store the runs used, opened on the comparison of a sweep.

Starts `mlflow server` on that store (the trainer's rule: --tracking-uri, else $MLFLOW_TRACKING_URI, else
sqlite:///mlflow.db here) on loopback with one worker and MLflow's job runner off (it starts in about 10 s on
2 cores instead of about 40), waits until /health answers, and prints the URL of the experiment's runs view set
up for the comparison. A tracking URI that is already a server (http...) is used as it is.

What the URL sets up, as far as MLflow 3.17's URLs allow: the "Machine learning" pages (`workflowType`; the
UI's GenAI overview is its default), and a saved view of the experiment (`viewStateShareKey`, an experiment
tag `mlflow.sharedViewState.<key>` the UI also lists under "Views") holding the filter on the sweep's job runs,
the sort by test accuracy and the columns: attention, test/dev accuracy, samples/s, memory, seed and the
params that vary across the sweep (an Optuna search's space). The compare page of the sweep's runs is printed
too. With no arguments: the latest run's experiment and sweep.

    python -m lra.ui                                   # the latest sweep (or run), port 5000
    python -m lra.ui --sweep-id 20260101-120000-ab12   # one sweep
    python -m lra.ui --experiment listops-small --port 5001
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from lra.record.tracking import tracking_uri

PARENT_TAG = "lra.sweep_parent"  # as lra.sweep.callback.PARENT_TAG (not imported: lra.sweep.callback pulls Hydra's callbacks)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow UI's saved views (experiment tags)
HEALTH_TIMEOUT_S = 180.0
# Params that say nothing about how a run differs from another (paths, bookkeeping, the sweep itself).
IGNORED_PARAM_PREFIXES = ("sweep.", "tracking.", "checkpoint.", "run_key", "data.root", "data.source", "published.")
# In this order from the left (after the run's name); the process's RSS (`peak_memory_mb`) only for GPU runs,
# where it is the allocator's peak.
BASE_COLUMNS = (("tags", "attention"), ("metrics", "test_accuracy"), ("metrics", "eval_accuracy"),
                ("metrics", "samples_per_second"), ("metrics", "model_peak_memory_mb"),
                ("metrics", "peak_memory_mb"), ("params", "training.seed"))
SEARCH_COLUMNS = (("tags", "optuna_trial"), ("tags", "pruned"))
RUN_NAME_COLUMN = "attributes.`Run Name`"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _column(kind: str, key: str) -> str:
    """A column id as the MLflow UI writes it (`tags.\\`attention\\``)."""
    return f"{kind}.`{key}`"


@dataclass
class Target:
    """What the UI opens: an experiment, and in it a sweep's job runs (or all its runs)."""

    experiment_id: str
    experiment: str
    sweep_id: Optional[str]
    runs: list[Any] = field(default_factory=list)  # the job runs shown (parents excluded)


def _job_runs(client: Any, experiment_ids: Sequence[str], filter_string: str = "",
              max_results: int = 5000) -> list[Any]:
    runs = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=max_results,
                              order_by=["attributes.start_time DESC"])
    return [run for run in runs if run.data.tags.get(PARENT_TAG) != "true" and "attention" in run.data.tags]


def resolve_target(client: Any, experiment: Optional[str] = None, sweep_id: Optional[str] = None) -> Target:
    """The experiment and sweep to open: as given, else those of the most recent run in the store."""
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise LookupError(f"--experiment={experiment}: no such experiment in the store")
        experiments = [found]
    else:
        experiments = client.search_experiments()
    ids = [exp.experiment_id for exp in experiments]
    names = {exp.experiment_id: exp.name for exp in experiments}
    if sweep_id is not None:
        runs = _job_runs(client, ids, f"tags.sweep_id = {_quote(sweep_id)}")
        if not runs:
            raise LookupError(f"--sweep-id={sweep_id}: no run of this sweep in the store")
    else:
        latest = _job_runs(client, ids, max_results=50)
        if not latest:
            raise LookupError("no runs in the store yet")
        sweep_id = latest[0].data.tags.get("sweep_id")
        query = f"tags.sweep_id = {_quote(sweep_id)}" if sweep_id else ""
        runs = _job_runs(client, [latest[0].info.experiment_id], query)
    experiment_id = runs[0].info.experiment_id
    return Target(experiment_id, names[experiment_id], sweep_id,
                  [run for run in runs if run.info.experiment_id == experiment_id])


def varying_params(runs: Sequence[Any], limit: int = 8) -> list[str]:
    """The params whose values differ between the runs (a search's space, a grid's axes), seed excluded."""
    keys = sorted({key for run in runs for key in run.data.params})
    out = []
    for key in keys:
        if key.startswith(IGNORED_PARAM_PREFIXES) or key in ("training.seed", "attention.name"):
            continue
        if key.startswith(("attention.", "resolved.")):  # per mechanism: compared among runs of one mechanism
            by_attention: dict[Optional[str], set] = {}
            for run in runs:
                by_attention.setdefault(run.data.params.get("attention.name"), set()).add(run.data.params.get(key))
            if all(len(values) == 1 for values in by_attention.values()):
                continue
        elif len({run.data.params.get(key) for run in runs}) == 1:
            continue
        out.append(key)
    return out[:limit]


def view_state(target: Target) -> dict[str, Any]:
    """The runs view's state (the keys MLflow's UI saves in a view): filter, sort, columns."""
    metrics = {key for run in target.runs for key in run.data.metrics}
    on_gpu = any(run.data.params.get("resolved.device", "").startswith("cuda") for run in target.runs)
    columns = [_column(kind, key) for kind, key in BASE_COLUMNS
               if kind != "metrics" or (key in metrics and (key != "peak_memory_mb" or on_gpu))]
    if any("optuna_trial" in run.data.tags for run in target.runs):
        columns += [_column(kind, key) for kind, key in SEARCH_COLUMNS]
    columns += [_column("params", key) for key in varying_params(target.runs)]
    columns.append(_column("attributes", "Dataset"))
    search = "tags.attention LIKE '%'"  # job runs only: a sweep's parent run has no attention
    if target.sweep_id:
        search = f"tags.sweep_id = {_quote(target.sweep_id)} and {search}"
    return {"searchFilter": search, "orderByKey": _column("metrics", "test_accuracy"), "orderByAsc": False,
            "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
            "columnWidths": {RUN_NAME_COLUMN: 260}, "groupBy": None,
            "groupsExpanded": {}, "viewMaximized": False, "runListHidden": False}


def view_key(target: Target) -> str:
    """One saved view per sweep (or per experiment), rewritten each time: `lra-<sweep id>`."""
    return "lra-" + re.sub(r"[^A-Za-z0-9_.-]", "_", target.sweep_id or target.experiment)


def save_view(client: Any, target: Target) -> str:
    """Write the view as the UI's saved view (an experiment tag) and return its key."""
    key = view_key(target)
    now = int(time.time() * 1000)
    name = f"lra: sweep {target.sweep_id}" if target.sweep_id else f"lra: {target.experiment}"
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(view_state(target))}
    client.set_experiment_tag(target.experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope))
    return key


def runs_url(base: str, experiment_id: str, key: Optional[str] = None) -> str:
    query = {"workflowType": "machine_learning"}
    if key:
        query["viewStateShareKey"] = key
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query)}"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    query = urllib.parse.urlencode({"runs": json.dumps(list(run_ids), separators=(",", ":")),
                                    "experiments": json.dumps([experiment_id], separators=(",", ":")),
                                    "workflowType": "machine_learning"})
    return f"{base.rstrip('/')}/#/compare-runs?{query}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Server:
    """`mlflow server` on a store, in its own process group (stopped with it): the fast flags, one worker."""

    def __init__(self, uri: str, host: str = "127.0.0.1", port: int = 5000, log: Optional[Path] = None) -> None:
        self.uri, self.host, self.port, self.log = uri, host, port, log
        self.process: Optional[subprocess.Popen] = None

    @property
    def base(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        program = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
        return [*program, "server", "--backend-store-uri", self.uri, "--workers", "1", "--host", self.host,
                "--port", str(self.port)]

    def start(self, timeout: float = HEALTH_TIMEOUT_S) -> "Server":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        out = self.log.open("w") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-2000:] if self.log else ""
                raise RuntimeError(f"mlflow server exited {self.process.returncode}{': ' + tail if tail else ''}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer {self.base}/health within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _error(key: str, value: object, problem: str, fix: str) -> int:
    print(f"error: {key}={value}: {problem}; fix: {fix}", file=sys.stderr)
    return 2


def _store_exists(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.ui", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None,
                        help="the store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    parser.add_argument("--experiment", default=None, help="the experiment (default: the latest run's)")
    parser.add_argument("--sweep-id", default=None, help="the sweep to compare (default: the latest run's)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to serve on (default: loopback only)")
    parser.add_argument("--port", type=int, default=5000, help="default 5000; 0, or a busy port: a free one")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient


    uri = tracking_uri(args.tracking_uri)
    if not _store_exists(uri):
        return _error("--tracking-uri", uri, "no MLflow store there yet",
                      "run `python launch.py` in this folder first, or point --tracking-uri at the store the runs used")
    if uri.startswith(("http://", "https://")):
        server, base = None, uri
    else:
        port = args.port
        if port == 0 or not _port_free(args.host, port):
            port = free_port(args.host)
            if args.port:
                print(f"port {args.port} is in use; serving on {port}")
        server = Server(uri, args.host, port)
        print(f"starting the MLflow UI on {uri} ...", flush=True)
        try:
            server.start()
        except RuntimeError as error:
            return _error("--tracking-uri", uri, str(error), "check the store URI, or start `mlflow server` by hand")
        base = server.base
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too, as Ctrl-C does
    try:
        client = MlflowClient(base)
        try:
            target = resolve_target(client, args.experiment, args.sweep_id)
        except LookupError as error:
            option, _, problem = str(error).partition(": ")
            if not problem:
                print(f"MLflow UI: {base} ({option})", flush=True)
            else:
                key, _, value = option.partition("=")
                return _error(key, value, problem, "see the ids in `python -m lra.report` or the UI")
        else:
            key = save_view(client, target)
            what = f"sweep {target.sweep_id}" if target.sweep_id else "all runs"
            print(f"experiment {target.experiment}, {what}: {len(target.runs)} runs"
                  + ("" if args.sweep_id or args.experiment else " (the latest; --sweep-id to choose another)"))
            print(f"compare: {compare_url(base, target.experiment_id, [r.info.run_id for r in target.runs])}")
            print(f"runs: {runs_url(base, target.experiment_id, key)}", flush=True)
        if server is None:
            return 0
        print("Ctrl-C stops the server.", flush=True)
        server.process.wait()
        return 0 if server.process.returncode in (0, -signal.SIGTERM) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
