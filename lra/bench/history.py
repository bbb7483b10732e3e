"""Benchmarks that remember: keep a result under a name, compare a later run with it.

`--save NAME` writes the whole result to `<results dir>/NAME.json` (default `bench-results/`). `--compare NAME`
reads it back and marks each figure of the new run IMPROVED, SAME or REGRESSED:

- time (the median of the timed rounds, per mechanism and length, or per attention and chunk): the relative
  change new / old - 1 against the noise of the two runs, the sum of their spreads, where a run's spread is
  the interquartile range / median of its own timed rounds (one stray round does not widen it). A change
  beyond the noise (and beyond `tolerance`, a floor for runs with too few rounds to show their noise) is a
  change; anything within it is SAME.
- peak memory: measured once per figure, so only the tolerance applies.

Figures that only one of the two runs has are listed as NEW or GONE. `--fail-on-regression` makes the command
exit 1 when any figure REGRESSED.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from lra.bench.output import markdown_table
from lra.errors import ConfigError

RESULTS_DIR = "bench-results"
TOLERANCE = 0.05
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
IMPROVED, SAME, REGRESSED, NEW, GONE = "IMPROVED", "SAME", "REGRESSED", "NEW", "GONE"


def result_path(name: str, results_dir: str | Path = RESULTS_DIR, option: str = "--save") -> Path:
    if not NAME.match(name) or name.endswith(".json"):
        raise ConfigError(option, name, "not a plain name (letters, digits, . _ -; no folder, no .json)",
                          f"use e.g. {option} cpu-baseline (kept as {results_dir}/cpu-baseline.json)")
    return Path(results_dir) / f"{name}.json"


def save(result: dict[str, Any], name: str, results_dir: str | Path = RESULTS_DIR) -> Path:
    path = result_path(name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def load(name: str, results_dir: str | Path = RESULTS_DIR, benchmark: Optional[str] = None) -> dict[str, Any]:
    path = result_path(name, results_dir, option="--compare")
    if not path.exists():
        saved = sorted(p.stem for p in Path(results_dir).glob("*.json")) if Path(results_dir).is_dir() else []
        raise ConfigError("--compare", name, f"no saved result {path}",
                          f"save one first with --save {name}" + (f", or use one of: {', '.join(saved)}"
                                                                  if saved else ""))
    result = json.loads(path.read_text())
    if benchmark is not None and result.get("benchmark") != benchmark:
        raise ConfigError("--compare", name, f"{path} holds a {result.get('benchmark')} benchmark, not {benchmark}",
                          f"compare with a result saved by `python -m lra.bench {benchmark} --save NAME`")
    return result


@dataclass
class Verdict:
    figure: str  # e.g. "time softmax T=1024"
    old: Optional[float]
    new: Optional[float]
    change: Optional[float]  # new / old - 1
    noise: Optional[float]  # the band within which a change is SAME
    verdict: str


def spread(times: list[float]) -> float:
    """Interquartile range / median of one run's timed rounds: how much that run disagreed with itself."""
    if len(times) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    median = statistics.median(times)
    return (q3 - q1) / median if median > 0 else 0.0


def judge(old: float, new: float, noise: float) -> tuple[float, str]:
    change = new / old - 1 if old > 0 else 0.0
    if change > noise:
        return change, REGRESSED
    if change < -noise:
        return change, IMPROVED
    return change, SAME


def _figures(result: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, row) per measured row: mechanism and length, or attention and chunk."""
    for row in result["results"]:
        if result["benchmark"] == "attention":
            yield f"{row['mechanism']} T={row['T']}", row
        else:
            yield f"{row['attention']} chunk={row['chunk']}", row


def compare(old: dict[str, Any], new: dict[str, Any], tolerance: float = TOLERANCE) -> list[Verdict]:
    """Every figure of `new` against the same figure of `old` (see the module doc)."""
    before, after = dict(_figures(old)), dict(_figures(new))
    verdicts = []
    for key, row in after.items():
        base = before.get(key)
        if base is None:
            verdicts.append(Verdict(f"{key}", None, row["time_median_s"], None, None, NEW))
            continue
        noise = max(tolerance, spread(row["times_s"]) + spread(base["times_s"]))
        change, verdict = judge(base["time_median_s"], row["time_median_s"], noise)
        verdicts.append(Verdict(f"time {key}", base["time_median_s"], row["time_median_s"], change, noise,
                                verdict))
        if base.get("peak_memory_bytes") and row.get("peak_memory_bytes") is not None:
            change, verdict = judge(base["peak_memory_bytes"], row["peak_memory_bytes"], tolerance)
            verdicts.append(Verdict(f"memory {key}", base["peak_memory_bytes"], row["peak_memory_bytes"], change,
                                    tolerance, verdict))
    verdicts += [Verdict(key, row["time_median_s"], None, None, None, GONE)
                 for key, row in before.items() if key not in after]
    return verdicts


def environment_notes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The differences in setting that make a comparison doubtful (device, torch, threads, sizes)."""
    notes = []
    for part in ("environment", "setup"):
        for key in sorted(set(old.get(part, {})) | set(new.get(part, {}))):
            if key in ("timing", "candidates", "attentions", "model", "dataset"):
                continue
            a, b = old.get(part, {}).get(key), new.get(part, {}).get(key)
            if a != b:
                notes.append(f"{key}: saved {a}, now {b}")
    return notes


def report(verdicts: list[Verdict], name: str, notes: list[str]) -> str:
    def fmt(x: Optional[float], figure: str) -> str:
        if x is None:
            return "-"
        return f"{x / 2**20:.1f} MB" if figure.startswith("memory") else f"{1e3 * x:.2f} ms"

    rows = [[v.figure, fmt(v.old, v.figure), fmt(v.new, v.figure),
             "-" if v.change is None else f"{100 * v.change:+.1f}%",
             "-" if v.noise is None else f"±{100 * v.noise:.1f}%", v.verdict] for v in verdicts]
    counts = {k: sum(v.verdict == k for v in verdicts) for k in (IMPROVED, SAME, REGRESSED, NEW, GONE)}
    out = [f"compared with the saved result `{name}`: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n),
           "noise band: the sum of the two runs' spreads (interquartile range / median of the rounds), at least "
           "the tolerance"]
    if notes:
        out.append("the setting differs, read with care: " + "; ".join(notes))
    return "\n".join(out + [markdown_table(["figure", "saved", "now", "change", "noise", "verdict"], rows)])


def regressed(verdicts: list[Verdict]) -> bool:
    return any(v.verdict == REGRESSED for v in verdicts)
