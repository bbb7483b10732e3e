"""`python -m lra.report`: the LRA-style comparison of attentions, read back from the MLflow tracking store.

Like is compared with like: the FINISHED job runs selected are grouped by their whole config (the params each
run logged) except the seed, so runs that differ in anything else (a learning rate, the number of epochs, the
hardware) are separate rows, and each task's table names the keys in which its rows differ. A row: test accuracy
mean +- std over its seeds, training throughput and memory, each also as a ratio to the softmax row of the same
task and config. Memory is a figure that means something on the device: the CUDA allocator's peak on a GPU,
the model's measured peak (`model_peak_memory_mb`: parameters, optimiser state and one fwd+bwd of the largest
chunk) on a CPU, never the process's resident set.

With no selection it reports the latest sweep and says so. It writes `comparison.md`, `comparison.csv` and
`comparison.png` (accuracy against throughput per task, marker area by memory) into a folder named after the
sweep (`reports/<sweep id>`; a second report of it goes to `reports/<sweep id>-2`, never over the first) and logs
them to the sweep's parent run under `report/`.

    python -m lra.report                                          # the latest sweep
    python -m lra.report --sweep-id 20260101-120000-ab12          # one sweep
    python -m lra.report --experiment listops-small               # every finished run of an experiment
    python -m lra.report --all --out reports/everything           # every finished run of the store
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from lra.compare.pareto import report_front
from lra.compare.published import published_table
from lra.compare.published import to_markdown as published_markdown
from lra.record.tracking import tracking_uri

ATTENTION_ORDER = ("softmax", "hrr-individual", "hrr-bundled", "hrr-quadratic", "tpr")
BASELINE = "softmax"
PARENT_TAG = "lra.sweep_parent"  # as lra.sweep.callback.PARENT_TAG (not imported: --help stays light)
SEED_KEY = "training.seed"
# Params that do not change what was trained: where files went, the sweep's bookkeeping, the run's own key, the
# paper figures an experiment profile carries (lra/compare/published.py).
IGNORED_PREFIXES = ("sweep.", "tracking.", "checkpoint.", "data.root", "data.source", "run_key", "published.")
COLUMNS = ("task", "row", "attention", "config", "runs", "seeds", "test_accuracy_mean", "test_accuracy_std",
           "test_accuracy_ratio", "samples_per_second", "samples_per_second_ratio", "memory_mb", "memory_mb_ratio",
           "memory_measure", "sweep_ids")
MEMORY_NOTE = ("memory: on a GPU the CUDA allocator's peak over the run (`peak_memory_mb`); on a CPU the model's "
               "measured peak (`model_peak_memory_mb`: parameters + optimiser state + the profiled peak of one "
               "fwd+bwd of the largest chunk), not the process's resident set")


@dataclass
class Row:
    """The runs of one task, attention and config (all but the seed)."""

    task: str
    attention: str
    config: dict[str, str]
    accuracy: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)
    memory_measures: set[str] = field(default_factory=set)
    seeds: list[str] = field(default_factory=list)
    sweep_ids: set[str] = field(default_factory=set)
    ratios: dict[str, Optional[float]] = field(default_factory=dict)
    differs: dict[str, str] = field(default_factory=dict)  # the keys in which this row differs from its table's
    number: int = 0  # 1-based within its task's table (the plot labels points with it when configs differ)

    @property
    def runs(self) -> int:
        return len(self.accuracy)

    def mean(self, name: str) -> Optional[float]:
        values = getattr(self, name)
        return statistics.fmean(values) if values else None

    def std(self) -> Optional[float]:
        return statistics.stdev(self.accuracy) if len(self.accuracy) > 1 else None

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={_short(value)}" for key, value in self.differs.items())


def _short(value: str) -> str:
    """A logged float to 4 significant digits (a search's 0.024384255846226832 -> 0.02438); else as logged."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if "." not in value and "e" not in value.lower() else f"{number:.4g}"


def _attention_key(name: str) -> tuple[int, str]:
    return (ATTENTION_ORDER.index(name) if name in ATTENTION_ORDER else len(ATTENTION_ORDER), name)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _search(client: Any, experiment_ids: Sequence[str], query: str, order_by: Optional[list[str]] = None,
            limit: Optional[int] = None) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=query, max_results=min(limit or 1000, 1000),
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (limit and len(runs) >= limit):
            return runs


def _experiment_ids(client: Any, experiments: Sequence[str]) -> list[str]:
    if not experiments:
        return [exp.experiment_id for exp in client.search_experiments()]
    found = [client.get_experiment_by_name(name) for name in experiments]
    missing = [name for name, exp in zip(experiments, found) if exp is None]
    if missing:
        raise LookupError(f"--experiment={','.join(missing)}: no such experiment in the tracking store")
    return [exp.experiment_id for exp in found]


def latest_sweep(client: Any, experiments: Sequence[str] = ()) -> Optional[Any]:
    """The parent run of the sweep that started last (in these experiments), or None."""
    ids = _experiment_ids(client, experiments)
    if not ids:
        return None
    found = _search(client, ids, f"tags.`{PARENT_TAG}` = 'true'", order_by=["attributes.start_time DESC"], limit=1)
    return found[0] if found else None


def select_runs(client: Any, experiments: Sequence[str], sweep_id: Optional[str]) -> list[Any]:
    """FINISHED job runs (parent runs excluded) of the named experiments (all when none), of one sweep if given."""
    ids = _experiment_ids(client, experiments)
    if not ids:
        return []
    query = "attributes.status = 'FINISHED'"
    if sweep_id:
        query += f" and tags.sweep_id = {_quote(sweep_id)}"
    return [run for run in _search(client, ids, query) if run.data.tags.get(PARENT_TAG) != "true"
            and "task" in run.data.tags and "attention" in run.data.tags]


def config_of(run: Any) -> dict[str, str]:
    """The run's config as logged (its params), without the seed and the keys that do not change what was
    trained."""
    return {key: value for key, value in run.data.params.items()
            if key != SEED_KEY and not key.startswith(IGNORED_PREFIXES)}


def memory_of(run: Any) -> tuple[Optional[float], str]:
    """(MB, which measure): the CUDA allocator's peak on a GPU, the model's measured peak on a CPU."""
    metrics, device = run.data.metrics, run.data.params.get("resolved.device", "cpu")
    if device.startswith("cuda") and "peak_memory_mb" in metrics:
        return metrics["peak_memory_mb"], "cuda allocator peak"
    if not device.startswith("cuda") and "model_peak_memory_mb" in metrics:
        return metrics["model_peak_memory_mb"], "model peak (cpu)"
    return None, "not measured"


PER_MECHANISM = ("attention.", "resolved.")  # a mechanism's options, and what follows from it (its parameter count)


def _differing_keys(rows: Sequence[Row]) -> list[str]:
    """The config keys whose values differ between rows of one table, attention aside: a mechanism's own options
    (`attention.*`) and the resolved values (`resolved.num_parameters` differs between mechanisms) count only
    where they differ between rows of the same mechanism."""
    keys = sorted({key for row in rows for key in row.config} - {"task", "attention.name"})
    out = []
    for key in keys:
        if key.startswith(PER_MECHANISM):
            values: dict[str, set] = {}
            for row in rows:
                values.setdefault(row.attention, set()).add(row.config.get(key))
            if any(len(v) > 1 for v in values.values()):
                out.append(key)
        elif len({row.config.get(key) for row in rows}) > 1:
            out.append(key)
    return out


def build_rows(runs: Iterable[Any]) -> list[Row]:
    """Group runs by (task, attention, config but the seed); name what differs within each task; ratios are to
    the softmax row of the same task whose differing keys (per-mechanism ones aside) have the same values."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if "test_accuracy" not in metrics:
            continue
        config = config_of(run)
        key = (tags["task"], tags["attention"], tuple(sorted(config.items())))
        row = rows.setdefault(key, Row(tags["task"], tags["attention"], config))
        row.accuracy.append(metrics["test_accuracy"])
        row.seeds.append(run.data.params.get(SEED_KEY, "?"))
        if "samples_per_second" in metrics:
            row.speed.append(metrics["samples_per_second"])
        memory, measure = memory_of(run)
        row.memory_measures.add(measure)
        if memory is not None:
            row.memory.append(memory)
        if tags.get("sweep_id"):
            row.sweep_ids.add(tags["sweep_id"])
    ordered: list[Row] = []
    for task in sorted({row.task for row in rows.values()}):
        mine = [row for row in rows.values() if row.task == task]
        differing = _differing_keys(mine)
        for row in mine:
            row.differs = {key: row.config.get(key, "–") for key in differing}
        mine.sort(key=lambda r: (tuple(r.differs.values()), _attention_key(r.attention)))
        shared = [key for key in differing if not key.startswith(PER_MECHANISM)]
        for number, row in enumerate(mine, 1):
            row.number = number
            base = next((other for other in mine if other.attention == BASELINE
                         and all(other.config.get(k) == row.config.get(k) for k in shared)), None)
            for name in ("accuracy", "speed", "memory"):
                value, reference = row.mean(name), base.mean(name) if base else None
                row.ratios[name] = value / reference if value is not None and reference else None
        ordered.extend(mine)
    return ordered


def _num(value: Optional[float], digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def to_markdown(rows: Sequence[Row], title: str = "Comparison", about: str = "") -> str:
    """One table per task; a `config` column names what differs when a task's rows differ in more than the
    attention."""
    lines = [f"# {title}", ""]
    if about:
        lines += [about, ""]
    lines += [f"Runs grouped by their whole config except `{SEED_KEY}` (mean ± std over the seeds); ratios are to "
              "softmax on the same task and config. " + MEMORY_NOTE[0].upper() + MEMORY_NOTE[1:] + ".", ""]
    for task in sorted({row.task for row in rows}):
        mine = [row for row in rows if row.task == task]
        differs = any(row.differs for row in mine)
        lines += [f"## {task}", ""]
        if differs:
            keys = list(mine[0].differs)
            lines += [f"These runs differ in more than the attention: {', '.join(f'`{k}`' for k in keys)}. "
                      "Each config is its own row.", ""]
        head = "| # | attention |" + (" config |" if differs else "") + (" runs | seeds | test accuracy | × softmax "
                                                                          "| samples/s | × softmax | memory (MB) "
                                                                          "| × softmax |")
        lines += [head, "|---:|---|" + ("---|" if differs else "") + "---:|---|---:|---:|---:|---:|---:|---:|"]
        for row in mine:
            accuracy = _num(row.mean("accuracy"), 4)
            if row.std() is not None:
                accuracy += f" ± {row.std():.4f}"
            cells = [str(row.number), row.attention] + ([row.label] if differs else []) + [
                str(row.runs), ",".join(sorted(row.seeds, key=lambda s: (len(s), s))), accuracy,
                _num(row.ratios["accuracy"], 2), _num(row.mean("speed"), 1), _num(row.ratios["speed"], 2),
                _num(row.mean("memory"), 1), _num(row.ratios["memory"], 2)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            values = [row.task, row.number, row.attention, row.label, row.runs, " ".join(row.seeds),
                      row.mean("accuracy"), row.std(), row.ratios["accuracy"], row.mean("speed"),
                      row.ratios["speed"], row.mean("memory"), row.ratios["memory"],
                      " ".join(sorted(row.memory_measures)), " ".join(sorted(row.sweep_ids))]
            writer.writerow(["" if value is None else value for value in values])


def _outside(ax: Any, boxes: list[Any]) -> tuple[float, float, float, float]:
    """How many pixels the boxes stick out of the axes: (left, right, bottom, top), 0 when inside."""
    frame = ax.get_window_extent()
    left = max([frame.x0 - box.x0 for box in boxes] + [0.0])
    right = max([box.x1 - frame.x1 for box in boxes] + [0.0])
    bottom = max([frame.y0 - box.y0 for box in boxes] + [0.0])
    top = max([box.y1 - frame.y1 for box in boxes] + [0.0])
    return left, right, bottom, top


def content_boxes(ax: Any) -> list[Any]:
    """The display boxes of every marker (its full disc), error bar and label drawn in the axes."""
    from matplotlib.collections import LineCollection, PathCollection
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    boxes = []
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            boxes.extend(_marker_boxes(ax, collection))
        elif isinstance(collection, LineCollection):
            boxes.extend(Bbox(ax.transData.transform(segment)) for segment in collection.get_segments())
    boxes.extend(text.get_window_extent(renderer) for text in ax.texts)
    return boxes


def _fit(ax: Any, rounds: int = 8, pad: float = 4.0) -> None:
    """Widen the axes' limits until every marker and label lies inside with `pad` pixels to spare."""
    for _ in range(rounds):
        ax.figure.canvas.draw()
        left, right, bottom, top = _outside(ax, content_boxes(ax))
        if max(left, right, bottom, top) == 0:
            return
        frame = ax.get_window_extent()
        inverse = ax.transData.inverted()
        grow = [left and left + pad, right and right + pad, bottom and bottom + pad, top and top + pad]
        (x0, y0), (x1, y1) = inverse.transform([[frame.x0 - grow[0], frame.y0 - grow[2]],
                                                [frame.x1 + grow[1], frame.y1 + grow[3]]])
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)


def _overlap(a: Any, b: Any) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _place_labels(ax: Any) -> None:
    """Each label goes above, below, right or left of its marker: the first place that covers no other label
    or marker (else the one that covers least)."""
    from matplotlib.collections import PathCollection

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    markers: list[Any] = []
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            markers.extend(_marker_boxes(ax, collection))
    placed: list[Any] = []
    for text, own in zip(ax.texts, markers):
        gap = (own.x1 - own.x0) / 2 * 72 / fig.dpi + 3  # points from the marker's centre to its rim, and 3
        best = None
        for offset, ha, va in (((0, gap), "center", "bottom"), ((0, -gap), "center", "top"),
                               ((gap, 0), "left", "center"), ((-gap, 0), "right", "center")):
            text.xyann = offset
            text.set_ha(ha)
            text.set_va(va)
            box = text.get_window_extent(renderer)
            cost = sum(_overlap(box, other) for other in placed) + sum(
                _overlap(box, marker) for marker in markers if marker is not own)
            if best is None or cost < best[0]:
                best = (cost, offset, ha, va, box)
            if cost == 0:
                break
        _, offset, ha, va, box = best
        text.xyann = offset
        text.set_ha(ha)
        text.set_va(va)
        placed.append(box)


def _marker_boxes(ax: Any, collection: Any) -> list[Any]:
    from matplotlib.transforms import Bbox

    fig, sizes = ax.figure, collection.get_sizes()
    boxes = []
    for i, (x, y) in enumerate(ax.transData.transform(collection.get_offsets())):
        radius = math.sqrt(sizes[i % len(sizes)]) / 2 * fig.dpi / 72 + collection.get_linewidths()[0]
        boxes.append(Bbox([[x - radius, y - radius], [x + radius, y + radius]]))
    return boxes


def draw(rows: Sequence[Row], path: Path) -> list[str]:
    """Accuracy against throughput, one panel per task; marker area by memory; error bars: std over seeds.
    Returns what sticks out of its panel (nothing: the limits are widened until all fits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({row.task for row in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(8.5 * len(tasks), 5.0), squeeze=False)
    memories = [row.mean("memory") for row in rows if row.mean("memory")]
    largest = max(memories) if memories else 1.0
    colors = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r.task == task]
        numbered = any(row.differs for row in mine)
        for row in mine:
            x, y = row.mean("speed") or 0.0, row.mean("accuracy")
            memory = row.mean("memory")
            area = 50 + 550 * memory / largest if memory else 50
            color = colors(_attention_key(row.attention)[0] % 10)
            name = f"{row.attention} [{row.number}]" if numbered else row.attention
            if row.std():
                ax.errorbar(x, y, yerr=row.std(), fmt="none", ecolor=color, capsize=3, alpha=0.7)
            ax.scatter([x], [y], s=area, color=color, alpha=0.75, edgecolors="black", linewidths=0.5,
                       marker="o" if memory else "s",
                       label=f"{name}: {_num(y, 3)}, {_num(memory, 1)} MB" if memory else f"{name}: {_num(y, 3)}")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(0, 0.6 * math.sqrt(area) + 3),
                        ha="center", va="bottom", fontsize=8)
        speeds = [row.mean("speed") for row in mine if row.mean("speed")]
        if speeds and max(speeds) / min(speeds) > 20:
            ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("training throughput (samples/s)")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.margins(0.12)
        legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                           title="accuracy, memory", title_fontsize=7)
        for handle in legend.legend_handles:
            handle.set_sizes([40])
    measured = [row for row in rows if row.mean("memory")]
    note = ("marker area: memory (" + ", ".join(sorted({m for r in measured for m in r.memory_measures})) + "; "
            f"largest {largest:.1f} MB)" if measured else "memory not measured (squares)")
    fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    for ax in axes[0]:
        _fit(ax)
        _place_labels(ax)
        _fit(ax)
    problems = []
    for ax in axes[0]:
        left, right, bottom, top = _outside(ax, content_boxes(ax))
        if max(left, right, bottom, top) > 0.5:
            problems.append(f"{ax.get_title()}: {left:.0f}/{right:.0f}/{bottom:.0f}/{top:.0f} px outside")
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return problems


def parent_runs(client: Any, runs: Sequence[Any], sweep_id: Optional[str]) -> list[str]:
    """The parent run ids of the sweep behind the report: of `sweep_id`, else of the one sweep all runs share."""
    sweep_ids = {run.data.tags.get("sweep_id") for run in runs}
    if sweep_id is None:
        if len(sweep_ids) != 1 or None in sweep_ids:
            return []
        sweep_id = sweep_ids.pop()
    experiment_ids = sorted({run.info.experiment_id for run in runs})
    found = client.search_runs(experiment_ids, filter_string=(f"tags.sweep_id = {_quote(sweep_id)} and "
                                                              f"tags.`{PARENT_TAG}` = 'true'"))
    return [run.info.run_id for run in found]


def fresh_folder(wanted: Path) -> Path:
    """`wanted` if it is missing or empty, else the first free `wanted-2`, `wanted-3`, ..."""
    candidate, n = wanted, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = wanted.with_name(f"{wanted.name}-{n}")
    return candidate


def make_report(client: Any, *, experiments: Sequence[str] = (), sweep_id: Optional[str] = None,
                out: Path = Path("reports"), log_to_parent: bool = True, title: str = "Comparison",
                about: str = "") -> tuple[list[Row], list[Path]]:
    """Select, tabulate, write into `out` and (optionally) log to the parent run; returns the rows and files."""
    runs = select_runs(client, experiments, sweep_id)
    rows = build_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    markdown, table, picture = out / "comparison.md", out / "comparison.csv", out / "comparison.png"

    published = published_table(runs)  # experiments' paper figures beside ours (lra/compare/published.py)
    markdown.write_text(to_markdown(rows, title, about)
                        + ("\n" + published_markdown(published) if published else ""))
    write_csv(rows, table)
    files = [markdown, table]
    if rows:
        problems = draw(rows, picture)
        if problems:
            print("warning: the plot clips " + "; ".join(problems), file=sys.stderr)
        files.append(picture)

    files += report_front(runs, out)
    if log_to_parent and rows:
        for run_id in parent_runs(client, runs, sweep_id):
            for path in files:
                client.log_artifact(run_id, str(path), artifact_path="report")
    return rows, files


def _error(key: str, value: object, problem: str, fix: str) -> int:
    print(f"error: {key}={value}: {problem}; fix: {fix}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[-1])
    parser.add_argument("--tracking-uri", default=None,
                        help="the store to read (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    parser.add_argument("--sweep-id", default=None, help="the runs of this sweep (default: the latest sweep)")
    parser.add_argument("--experiment", action="append", default=[], metavar="NAME",
                        help="every finished run of this experiment (task); repeat for several")
    parser.add_argument("--all", action="store_true", help="every finished run of the store")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: reports/<sweep id>, or reports/<experiments>, "
                             "reports/all-runs; an existing one gets -2, -3, ...)")
    parser.add_argument("--overwrite", action="store_true", help="let --out replace the files of an earlier report")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the sweep's parent run")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient


    uri = tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return _error("--tracking-uri", uri, "no MLflow store there",
                      "run this where the runs were launched, or point --tracking-uri at their store")
    client = MlflowClient(uri)
    sweep_id = args.sweep_id
    try:
        if sweep_id:
            name, about = sweep_id, f"Sweep `{sweep_id}`."
        elif args.all or args.experiment:
            name = "-".join(args.experiment) if args.experiment else "all-runs"
            about = ("Every finished run of " + (", ".join(f"`{e}`" for e in args.experiment)
                                                 if args.experiment else "the store") + ".")
        else:
            parent = latest_sweep(client)
            if parent is None:
                return _error("--sweep-id", None, "the store holds no sweep",
                              "give --experiment NAME or --all to report single runs")
            sweep_id = name = parent.data.tags["sweep_id"]
            about = f"Sweep `{sweep_id}`, the latest in the store."
            print(f"the latest sweep: {sweep_id} ({parent.data.tags.get('sweep.command', '')[:200]}); "
                  "--sweep-id ID for another, --all for every run")
        out = args.out
        if out is None:
            out = fresh_folder(Path("reports") / name)
        elif not args.overwrite and out.exists() and any(out.glob("comparison.*")):
            return _error("--out", out, "holds an earlier report", "choose another --out, or add --overwrite")
        rows, files = make_report(client, experiments=args.experiment, sweep_id=sweep_id, out=out,
                                  log_to_parent=not args.no_log, title=f"Comparison: {name}", about=about)
    except LookupError as error:
        option, _, problem = str(error).partition(": ")
        key, _, value = option.partition("=")
        return _error(key, value, problem, "see `mlflow experiments search` or the UI for the names")
    if not rows:
        print("no FINISHED runs with a test_accuracy match the selection", file=sys.stderr)
        return 1
    print(files[0].read_text())
    print("".join(path.read_text() for path in files if path.name == "pareto.md"), end="")
    print("wrote " + ", ".join(str(path) for path in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
