"""Published figures beside measured ones, for `python -m lra.report`.

Each `conf/experiment/<name>.yaml` carries the paper's test accuracy for its setting (`published.test_accuracy`,
in percent as papers print it, with `published.source`, `published.verified` and `published.experiment`); the run
logs them as params with the rest of its config. `published_table(runs)` groups the FINISHED runs that carry an
experiment by (experiment, task, attention) and returns one row each: the mean measured test accuracy (in percent)
over the runs, the published figure and the difference (measured - published, in points).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

COLUMNS = ("experiment", "task", "attention", "runs", "measured", "published", "difference", "verified", "source")


def _number(text: str | None) -> float | None:
    if text in (None, "", "None", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def published_table(runs: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per (experiment, task, attention) among `runs` (MLflow runs with params and a test_accuracy)."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for run in runs:
        params, tags = run.data.params, run.data.tags
        experiment = params.get("published.experiment")
        if experiment in (None, "", "None") or "test_accuracy" not in run.data.metrics:
            continue
        key = (experiment, tags.get("task", params.get("task", "?")), tags.get("attention", "?"))
        groups.setdefault(key, []).append(run)
    rows = []
    for (experiment, task, attention), members in sorted(groups.items()):
        params = members[0].data.params
        measured = 100.0 * statistics.fmean(run.data.metrics["test_accuracy"] for run in members)
        published = _number(params.get("published.test_accuracy"))
        rows.append({"experiment": experiment, "task": task, "attention": attention, "runs": len(members),
                     "measured": measured, "published": published,
                     "difference": None if published is None else measured - published,
                     "verified": params.get("published.verified") == "True",
                     "source": params.get("published.source") or ""})
    return rows


def to_markdown(rows: Iterable[dict[str, Any]]) -> str:
    """The published-beside-measured table (accuracies in percent; difference in points)."""
    header = ("| experiment | task | attention | runs | measured test accuracy (%) | published (%) | difference "
              "(points) | source |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        published = "–" if row["published"] is None else f"{row['published']:.2f}"
        difference = "–" if row["difference"] is None else f"{row['difference']:+.2f}"
        source = row["source"] + ("" if row["verified"] else " (unverified)")
        lines.append(f"| {row['experiment']} | {row['task']} | {row['attention']} | {row['runs']} | "
                     f"{row['measured']:.2f} | {published} | {difference} | {source} |")
    return "\n".join(lines) + "\n"
