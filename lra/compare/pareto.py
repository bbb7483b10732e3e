"""The accuracy / speed / memory trade-off of a multi-objective sweep: its search space hook and its report.

`sweeps/pareto.yaml` searches all five attentions at once for the best dev accuracy AND training throughput
(`sweep.objective=[eval_accuracy,samples_per_second]`, NSGA-II). Two parts live here:

- `attention_options(cfg, trial)`: the sweep's `custom_search_space`; a trial that drew an HRR attention also
  draws that attention's own options (its scale and whether it is learnt), which the other attentions lack.
- `report_front(runs, out)`: called by `python -m lra.report` for the runs of a sweep whose `sweep.objective`
  is a list; draws `pareto.png` (dev accuracy against throughput, and against peak memory; one colour per
  attention; the Pareto points of each panel joined) and writes `pareto.md` (the front's runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

ATTENTION_ORDER = ("softmax", "hrr-individual", "hrr-bundled", "hrr-quadratic", "tpr")
ACCURACY = "best_eval_accuracy"  # the run's metric for the objective eval_accuracy (best dev epoch)
SHOWN_PARAMS = ("training.learning_rate", "training.weight_decay", "model.num_layers", "model.dropout_prob",
                "attention.scale_init", "attention.learn_scale")  # what sweeps/pareto.yaml searches
PANELS = (("samples_per_second", "training throughput (samples/s)", "maximize"),
          ("peak_memory_mb", "peak memory (MB)", "minimize"))


def attention_options(cfg: Any, trial: Any) -> None:
    """custom_search_space of sweeps/pareto.yaml: the HRR attentions' own options, for trials that drew one."""
    name = str(trial.params.get("attention", ""))
    if name.startswith("hrr-"):
        trial.suggest_categorical("attention.learn_scale", [True, False])
        trial.suggest_float("attention.scale_init", 1.0, 30.0, log=True)


@dataclass
class Point:
    run_id: str
    trial: str
    attention: str
    accuracy: float
    values: dict[str, float]
    params: dict[str, str]


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` in every objective and better in one."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    better = [s * x >= s * y for s, x, y in zip(signs, a, b)]
    strictly = [s * x > s * y for s, x, y in zip(signs, a, b)]
    return all(better) and any(strictly)


def pareto_front(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The indices of the points no other point dominates."""
    return [i for i, a in enumerate(values)
            if not any(dominates(b, a, directions) for j, b in enumerate(values) if j != i)]


def is_multi_objective(run: Any) -> bool:
    return str(run.data.params.get("sweep.objective", "")).lstrip().startswith("[")


def points_of(runs: Iterable[Any]) -> list[Point]:
    points = []
    for run in runs:
        metrics = run.data.metrics
        if ACCURACY not in metrics or not all(name in metrics for name, _, _ in PANELS):
            continue
        values = {name: float(metrics[name]) for name, _, _ in PANELS}
        if not all(math.isfinite(v) for v in (*values.values(), metrics[ACCURACY])):
            continue
        params = {key: value for key, value in run.data.params.items() if key in SHOWN_PARAMS}
        points.append(Point(run.info.run_id, run.data.tags.get("optuna_trial", "?"),
                            run.data.tags.get("attention", "?"), float(metrics[ACCURACY]), values, params))
    return points


def _color(attention: str) -> int:
    return ATTENTION_ORDER.index(attention) if attention in ATTENTION_ORDER else len(ATTENTION_ORDER)


def draw_front(points: Sequence[Point], path: Path, title: str = "") -> None:
    """Dev accuracy against each panel's metric, one colour per attention, the 2-D Pareto points joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4.8), squeeze=False)
    attentions = sorted({p.attention for p in points}, key=lambda a: (_color(a), a))
    for ax, (metric, label, direction) in zip(axes[0], PANELS):
        for attention in attentions:
            mine = [p for p in points if p.attention == attention]
            ax.scatter([p.values[metric] for p in mine], [p.accuracy for p in mine], s=45, alpha=0.8,
                       color=colors(_color(attention) % 10), edgecolors="black", linewidths=0.4, label=attention)
        front = [points[i] for i in pareto_front([(p.accuracy, p.values[metric]) for p in points],
                                                 ("maximize", direction))]
        front.sort(key=lambda p: p.values[metric])
        ax.plot([p.values[metric] for p in front], [p.accuracy for p in front], color="black", linewidth=1.2,
                marker="o", markerfacecolor="none", markersize=11, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("dev accuracy (best epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def front_markdown(points: Sequence[Point]) -> str:
    """The accuracy-throughput front (as the sweep optimised it), best accuracy first."""
    front = [points[i] for i in pareto_front([(p.accuracy, p.values["samples_per_second"]) for p in points],
                                             ("maximize", "maximize"))]
    front.sort(key=lambda p: -p.accuracy)
    lines = [f"Pareto front of dev accuracy and throughput: {len(front)} of {len(points)} runs", "",
             "| trial | attention | dev accuracy | samples/s | peak memory (MB) | parameters |",
             "|---:|---|---:|---:|---:|---|"]
    for p in front:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(p.params.items()))
        lines.append(f"| {p.trial} | {p.attention} | {p.accuracy:.4f} | {p.values['samples_per_second']:.1f} | "
                     f"{p.values['peak_memory_mb']:.0f} | {shown} |")
    return "\n".join(lines) + "\n"


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.3g}" if not number.is_integer() else str(int(number))


def report_front(runs: Sequence[Any], out: Path, title: Optional[str] = None) -> list[Path]:
    """`pareto.md` and `pareto.png` for the runs of multi-objective sweeps among `runs` (none: no files)."""
    points = points_of(run for run in runs if is_multi_objective(run))
    if not points:
        return []
    out.mkdir(parents=True, exist_ok=True)
    table, picture = out / "pareto.md", out / "pareto.png"
    table.write_text(front_markdown(points))
    tasks = sorted({str(run.data.tags.get("task", "")) for run in runs if is_multi_objective(run)})
    draw_front(points, picture, title or f"{', '.join(tasks)}: {len(points)} runs")
    return [table, picture]
