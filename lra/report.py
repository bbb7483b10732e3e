"""`python -m lra.report`: the LRA-style comparison of attentions, read back from the MLflow tracking store.

One row per (task, attention) over the FINISHED runs selected (by experiment and/or sweep id): test accuracy
mean +- std over the runs (seeds), training throughput and peak memory, each also as a ratio to softmax on the
same task. Writes `comparison.md`, `comparison.csv` and `comparison.png` (accuracy against throughput per task,
marker area by peak memory) and logs them to the sweep's parent run under `report/`.

    python -m lra.report --sweep-id 20260101-120000-ab12          # one sweep (the clean comparison)
    python -m lra.report --experiment listops-small --out reports/listops
    python -m lra.report --tracking-uri http://127.0.0.1:5000 --sweep-id ...
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

ATTENTION_ORDER = ("softmax", "hrr-individual", "hrr-bundled", "hrr-quadratic", "tpr")
BASELINE = "softmax"
PARENT_TAG = "lra.sweep_parent"  # as lra.sweep.PARENT_TAG (not imported: --help stays light)
COLUMNS = ("task", "attention", "runs", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_ratio",
           "samples_per_second", "samples_per_second_ratio", "peak_memory_mb", "peak_memory_mb_ratio",
           "sweep_ids")


@dataclass
class Row:
    task: str
    attention: str
    accuracy: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)
    sweep_ids: set[str] = field(default_factory=set)
    ratios: dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return len(self.accuracy)

    def mean(self, name: str) -> Optional[float]:
        values = getattr(self, name)
        return statistics.fmean(values) if values else None

    def std(self) -> Optional[float]:
        return statistics.stdev(self.accuracy) if len(self.accuracy) > 1 else None


def _attention_key(name: str) -> tuple[int, str]:
    return (ATTENTION_ORDER.index(name) if name in ATTENTION_ORDER else len(ATTENTION_ORDER), name)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def select_runs(client: Any, experiments: Sequence[str], sweep_id: Optional[str]) -> list[Any]:
    """FINISHED job runs (parent runs excluded) of the named experiments (all when none), of one sweep if given."""
    if experiments:
        found = [client.get_experiment_by_name(name) for name in experiments]
        missing = [name for name, exp in zip(experiments, found) if exp is None]
        if missing:
            raise SystemExit(f"error: no experiment named {', '.join(missing)} in the tracking store")
        ids = [exp.experiment_id for exp in found]
    else:
        ids = [exp.experiment_id for exp in client.search_experiments()]
    if not ids:
        return []
    query = "attributes.status = 'FINISHED'"
    if sweep_id:
        query += f" and tags.sweep_id = {_quote(sweep_id)}"
    runs, token = [], None
    while True:
        page = client.search_runs(ids, filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [run for run in runs if run.data.tags.get(PARENT_TAG) != "true"
            and "task" in run.data.tags and "attention" in run.data.tags]


def build_rows(runs: Iterable[Any]) -> list[Row]:
    """Group runs by (task, attention); ratios are to softmax on the same task (None without a softmax row)."""
    rows: dict[tuple[str, str], Row] = {}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if "test_accuracy" not in metrics:
            continue
        key = (tags["task"], tags["attention"])
        row = rows.setdefault(key, Row(*key))
        row.accuracy.append(metrics["test_accuracy"])
        if "samples_per_second" in metrics:
            row.speed.append(metrics["samples_per_second"])
        if "peak_memory_mb" in metrics:
            row.memory.append(metrics["peak_memory_mb"])
        if tags.get("sweep_id"):
            row.sweep_ids.add(tags["sweep_id"])
    ordered = sorted(rows.values(), key=lambda r: (r.task, _attention_key(r.attention)))
    for row in ordered:
        base = rows.get((row.task, BASELINE))
        for name in ("accuracy", "speed", "memory"):
            mine, theirs = row.mean(name), base.mean(name) if base else None
            row.ratios[name] = mine / theirs if mine is not None and theirs else None
    return ordered


def _num(value: Optional[float], digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def to_markdown(rows: Sequence[Row]) -> str:
    lines = ["| task | attention | runs | test accuracy | × softmax | samples/s | × softmax | peak memory (MB) | "
             "× softmax |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        accuracy = _num(row.mean("accuracy"), 4)
        if row.std() is not None:
            accuracy += f" ± {row.std():.4f}"
        lines.append(f"| {row.task} | {row.attention} | {row.runs} | {accuracy} | {_num(row.ratios['accuracy'], 2)} "
                     f"| {_num(row.mean('speed'), 1)} | {_num(row.ratios['speed'], 2)} "
                     f"| {_num(row.mean('memory'), 1)} | {_num(row.ratios['memory'], 2)} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            values = [row.task, row.attention, row.runs, row.mean("accuracy"), row.std(), row.ratios["accuracy"],
                      row.mean("speed"), row.ratios["speed"], row.mean("memory"), row.ratios["memory"],
                      " ".join(sorted(row.sweep_ids))]
            writer.writerow(["" if value is None else value for value in values])


def draw(rows: Sequence[Row], path: Path) -> None:
    """Accuracy against throughput, one panel per task; marker area by peak memory; error bars: std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({row.task for row in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), squeeze=False)
    memories = [row.mean("memory") for row in rows if row.mean("memory")]
    largest = max(memories) if memories else 1.0
    colors = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks):
        for row in (r for r in rows if r.task == task):
            x, y = row.mean("speed") or 0.0, row.mean("accuracy")
            area = 60 + 600 * (row.mean("memory") or 0.0) / largest
            color = colors(_attention_key(row.attention)[0] % 10)
            ax.errorbar(x, y, yerr=row.std() or 0.0, fmt="none", ecolor=color, capsize=3, alpha=0.7)
            ax.scatter([x], [y], s=area, color=color, alpha=0.75, edgecolors="black", linewidths=0.5,
                       label=f"{row.attention} ({_num(row.mean('memory'), 0)} MB)")
            ax.annotate(row.attention, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.set_title(task)
        ax.set_xlabel("training throughput (samples/s)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        legend = ax.legend(fontsize=7, loc="best", title="marker area: peak memory", title_fontsize=7)
        for handle in legend.legend_handles:
            handle.set_sizes([40])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parent_runs(client: Any, runs: Sequence[Any], sweep_id: Optional[str]) -> list[str]:
    """The parent run ids of the sweep(s) behind the report: of `sweep_id`, else of the one sweep all runs share."""
    sweep_ids = {run.data.tags.get("sweep_id") for run in runs}
    if sweep_id is None:
        if len(sweep_ids) != 1 or None in sweep_ids:
            return []
        sweep_id = sweep_ids.pop()
    experiment_ids = sorted({run.info.experiment_id for run in runs})
    found = client.search_runs(experiment_ids, filter_string=(f"tags.sweep_id = {_quote(sweep_id)} and "
                                                              f"tags.`{PARENT_TAG}` = 'true'"))
    return [run.info.run_id for run in found]


def make_report(client: Any, *, experiments: Sequence[str] = (), sweep_id: Optional[str] = None,
                out: Path = Path("reports"), log_to_parent: bool = True) -> tuple[list[Row], list[Path]]:
    """Select, tabulate, write and (optionally) log to the parent run; returns the rows and the files."""
    runs = select_runs(client, experiments, sweep_id)
    rows = build_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    markdown, table, picture = out / "comparison.md", out / "comparison.csv", out / "comparison.png"
    from lra.published import published_table, to_markdown as published_markdown

    published = published_table(runs)  # experiments' paper figures beside ours (lra/published.py)
    markdown.write_text(to_markdown(rows) + ("\n" + published_markdown(published) if published else ""))
    write_csv(rows, table)
    files = [markdown, table]
    if rows:
        draw(rows, picture)
        files.append(picture)
    from lra.pareto import report_front  # a multi-objective sweep's front: pareto.md, pareto.png (lra/pareto.py)

    files += report_front(runs, out)
    if log_to_parent and rows:
        for run_id in parent_runs(client, runs, sweep_id):
            for path in files:
                client.log_artifact(run_id, str(path), artifact_path="report")
    return rows, files


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.report",
        description="Compare attentions from the MLflow tracking store: test accuracy mean ± std over seeds, "
                    "samples/s and peak memory per task and attention, each also as a ratio to softmax. Writes "
                    "comparison.md, comparison.csv and comparison.png and logs them to the sweep's parent run.")
    parser.add_argument("--tracking-uri", default=None,
                        help="the store to read (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    parser.add_argument("--experiment", action="append", default=[], metavar="NAME",
                        help="an experiment (task) to read; repeat for several (default: all)")
    parser.add_argument("--sweep-id", default=None, help="only the runs of this sweep (tag sweep_id)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports)")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the sweep's parent run")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from lra.tracking import tracking_uri

    client = MlflowClient(tracking_uri(args.tracking_uri))
    rows, files = make_report(client, experiments=args.experiment, sweep_id=args.sweep_id, out=args.out,
                              log_to_parent=not args.no_log)
    if not rows:
        print("no FINISHED runs with a test_accuracy match the selection", file=sys.stderr)
        return 1
    print(files[0].read_text())
    print("".join(path.read_text() for path in files if path.name == "pareto.md"), end="")
    print("wrote " + ", ".join(str(path) for path in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
