"""The pure half of the ops benchmark: statistics, ratios, targets, the JSON document, the table
and the plot.  Nothing here runs a process or opens a socket; ``orchestrator.bench`` measures
and hands its ``Measurement``s over, so this module can be tested with made-up numbers.

Latencies are in milliseconds.  ``n`` counts the successful samples of a workload; ``errors``
counts the attempts that failed (non-200, ``status`` other than ``success``, no answer).
Percentiles use the nearest-rank method, so each one is a latency that was actually measured.
"""

from __future__ import annotations

import math
import pathlib
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

SCHEMA = "gvisor-sandbox-bench/1"

# Every workload the benchmark knows, in the order of the table and the plot.
WORKLOADS = {
    "floor_run": "raw runsc run: python3 print",
    "floor_exec": "raw runsc exec /bin/true",
    "hello_cold": "/run hello, cold (pool empty)",
    "pandas_cold": "/run pandas, cold (pool empty)",
    "hello_warm": "/run hello, warm",
    "pandas_warm": "/run pandas, warm",
    "burst": "/run hello, 32 at concurrency 16",
    "hello_loops": "/run hello, 4 infinite loops running",
    "overhead": "service overhead, warm hello",
}

# (name, numerator, denominator): ratios of p50s printed when both sides were measured.
RATIOS = (
    ("cold hello / raw runsc run", "hello_cold", "floor_run"),
    ("warm hello / raw runsc run", "hello_warm", "floor_run"),
    ("warm hello / raw runsc exec", "hello_warm", "floor_exec"),
    ("cold hello / warm hello", "hello_cold", "hello_warm"),
    ("cold pandas / warm pandas", "pandas_cold", "pandas_warm"),
)


@dataclass
class Measurement:
    """What one workload produced: latencies of the successful attempts, failures, notes."""

    samples_ms: list[float] = field(default_factory=list)
    errors: int = 0
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # e.g. wall_s of a burst, how many ran warm


def percentile(samples: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of ``samples``; None when there are none."""
    if not samples:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile: {p} is not within 0..100")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(measurement: Measurement, label: str) -> dict:
    samples = [round(value, 3) for value in measurement.samples_ms]
    return {
        "label": label,
        "n": len(samples),
        "errors": measurement.errors,
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "mean": round(statistics.fmean(samples), 3) if samples else None,
        "min": min(samples) if samples else None,
        "max": max(samples) if samples else None,
        "notes": list(measurement.notes),
        **measurement.extra,
        "samples_ms": samples,
    }


def summarize_memory(per_profile_mb: Mapping[str, list[float]]) -> dict:
    """Per pool profile: the median PSS (MB) of its idle warm sandboxes."""
    return {profile: {"n": len(values), "median_mb": round(statistics.median(values), 1) if values else None,
                      "samples_mb": [round(value, 1) for value in values]}
            for profile, values in sorted(per_profile_mb.items())}


def _p50(workloads: Mapping[str, dict], key: str) -> float | None:
    workload = workloads.get(key)
    return workload["p50"] if workload else None


def compute_ratios(workloads: Mapping[str, dict]) -> list[dict]:
    """The p50 ratios of ``RATIOS`` whose two workloads were both measured."""
    ratios = []
    for name, top, bottom in RATIOS:
        a, b = _p50(workloads, top), _p50(workloads, bottom)
        if a is not None and b:
            ratios.append({"name": name, "numerator": top, "denominator": bottom, "value": round(a / b, 2)})
    return ratios


def compare_baseline(workloads: Mapping[str, dict], baseline: Mapping[str, dict]) -> list[dict]:
    """For each workload measured in both runs: baseline p50 / this run's p50 (above 1: this run
    is faster)."""
    rows = []
    for key in WORKLOADS:
        ours, theirs = _p50(workloads, key), _p50(baseline, key)
        if ours and theirs is not None:
            rows.append({"workload": key, "baseline_p50": theirs, "ours_p50": ours, "ratio": round(theirs / ours, 2)})
    return rows


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: ``measure(document) <= limit``."""

    name: str
    limit: float
    unit: str
    measure: Callable[[dict], float | None]


def _ratio_of(top: str, bottom: str) -> Callable[[dict], float | None]:
    def measure(doc: dict) -> float | None:
        a, b = _p50(doc["workloads"], top), _p50(doc["workloads"], bottom)
        return round(a / b, 2) if a is not None and b else None
    return measure


def _errors_of(key: str) -> Callable[[dict], float | None]:
    def measure(doc: dict) -> float | None:
        workload = doc["workloads"].get(key)
        return workload["errors"] if workload else None
    return measure


def _memory_of(profile: str) -> Callable[[dict], float | None]:
    return lambda doc: (doc["memory"].get(profile) or {}).get("median_mb")


TARGETS = (
    Target("hello warm p50 <= 25 ms", 25, "ms", lambda doc: _p50(doc["workloads"], "hello_warm")),
    Target("pandas warm p50 <= 40 ms", 40, "ms", lambda doc: _p50(doc["workloads"], "pandas_warm")),
    Target("cold hello p50 <= 1.2 x raw runsc run p50", 1.2, "x", _ratio_of("hello_cold", "floor_run")),
    Target("32 requests at concurrency 16: 0 errors", 0, "errors", _errors_of("burst")),
    Target("hello while 4 loops run p50 <= 2000 ms", 2000, "ms", lambda doc: _p50(doc["workloads"], "hello_loops")),
    Target("idle warm sandbox (python) <= 60 MB", 60, "MB", _memory_of("python")),
    Target("idle warm sandbox (python_preload) <= 60 MB", 60, "MB", _memory_of("python_preload")),
    Target("service overhead p50 <= 5 ms", 5, "ms", lambda doc: _p50(doc["workloads"], "overhead")),
)


def evaluate_targets(doc: dict, targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """PASS/FAIL per target; ``passed`` is None when its measurement is missing."""
    rows = []
    for target in targets:
        value = target.measure(doc)
        rows.append({"name": target.name, "limit": target.limit, "unit": target.unit, "measured": value,
                     "passed": None if value is None else value <= target.limit})
    return rows


def build_document(meta: dict, measurements: Mapping[str, Measurement], memory_mb: Mapping[str, list[float]],
                   skipped: list[dict], baseline: dict | None = None) -> dict:
    """The whole result: what ran, every workload's summary and samples, ratios, targets."""
    workloads = {key: summarize(measurements[key], label) for key, label in WORKLOADS.items() if key in measurements}
    doc = {"schema": SCHEMA, "meta": dict(meta), "workloads": workloads, "memory": summarize_memory(memory_mb),
           "skipped": list(skipped)}
    doc["ratios"] = compute_ratios(workloads)
    doc["baseline"] = None
    if baseline is not None:
        doc["baseline"] = {"source": baseline.get("meta", {}).get("target"),
                           "ratios": compare_baseline(workloads, baseline.get("workloads", {}))}
    doc["targets"] = evaluate_targets(doc)
    return doc


# -- presentation ---------------------------------------------------------------------------

EXTRA_KEYS = ("wall_s", "warm", "cold")  # Measurement.extra entries the table shows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(doc: dict) -> str:
    label_width = max([len(label) for label in WORKLOADS.values()] + [8])
    head = f"{'workload':<{label_width}}  {'n':>4} {'errors':>6} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"
    lines = [head, "-" * len(head)]
    for workload in doc["workloads"].values():
        lines.append(f"{workload['label']:<{label_width}}  {workload['n']:>4} {workload['errors']:>6} "
                     f"{_ms(workload['p50']):>9} {_ms(workload['p95']):>9} {_ms(workload['p99']):>9}")
    for workload in doc["workloads"].values():
        extras = ", ".join(f"{key}={workload[key]}" for key in EXTRA_KEYS if key in workload)
        notes = ([extras] if extras else []) + workload["notes"]
        lines += [f"  {workload['label']}: {note}" for note in notes]
    if doc["memory"]:
        parts = [f"{profile} {entry['median_mb']} MB (n={entry['n']})" for profile, entry in doc["memory"].items()]
        lines.append("idle warm sandbox, host PSS median: " + ", ".join(parts))
    if doc["ratios"]:
        lines.append("")
        lines.append("ratios of p50:")
        lines += [f"  {ratio['name']:<32} {ratio['value']:>8.2f}" for ratio in doc["ratios"]]
    if doc.get("baseline"):
        lines.append("")
        lines.append(f"baseline ({doc['baseline']['source']}) p50 / this run's p50 (above 1: this run is faster):")
        lines += [f"  {WORKLOADS[row['workload']]:<{label_width}} {_ms(row['baseline_p50']):>9} / "
                  f"{_ms(row['ours_p50']):>9} = {row['ratio']:.2f}" for row in doc["baseline"]["ratios"]]
        if not doc["baseline"]["ratios"]:
            lines.append("  (no workload in common)")
    lines.append("")
    lines.append("targets:")
    for row in doc["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[row["passed"]]
        measured = "not measured" if row["measured"] is None else f"{row['measured']:g} {row['unit']}"
        lines.append(f"  {verdict}  {row['name']:<46} measured {measured}")
    for skip in doc["skipped"]:
        lines.append(f"skipped: {skip['what']}: {skip['why']}")
    lines += [f"warning: {warning}" for warning in doc["meta"].get("warnings", [])]
    if "leftovers" in doc["meta"]:
        left = doc["meta"]["leftovers"]
        lines.append("clean-up: " + ("LEFT BEHIND: " + "; ".join(left) if left else
                                     "nothing left behind (sandboxes, runsc processes, cgroups; services exited 0)"))
    return "\n".join(lines)


def plot(doc: dict, path: pathlib.Path) -> bool:
    """Box plots of every workload's latencies (log scale), with the samples on top; False
    when matplotlib is not installed (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [workload for workload in doc["workloads"].values() if workload["samples_ms"]]
    if not rows:
        return False
    rows.reverse()  # first workload on top
    figure, axes = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.8))
    data = [workload["samples_ms"] for workload in rows]
    horizontal = {"orientation": "horizontal"} if matplotlib.__version_info__ >= (3, 10) else {"vert": False}
    axes.boxplot(data, whis=(5, 95), showfliers=False, widths=0.6, medianprops={"visible": False}, **horizontal)
    for index, (workload, samples) in enumerate(zip(rows, data), start=1):
        offsets = [index + 0.36 * (((i * 7919) % 11) / 10 - 0.5) for i in range(len(samples))]
        axes.scatter(samples, offsets, s=9, alpha=0.55, color="tab:blue", zorder=3)
        axes.plot([workload["p50"]] * 2, [index - 0.32, index + 0.32], color="tab:red", linewidth=2, zorder=4)
    axes.set_yticks(range(1, len(rows) + 1))
    axes.set_yticklabels([f"{w['label']}  (n={w['n']}, err={w['errors']})" for w in rows], fontsize=9)
    axes.set_xscale("log")
    axes.set_xlabel("latency, ms (log scale); box: p25-p75, whiskers: p5-p95, red: p50 (nearest rank), dots: samples")
    for index, workload in enumerate(rows, start=1):
        axes.annotate(f"p50 {workload['p50']:.1f}", (workload["max"], index), xytext=(6, -3),
                      textcoords="offset points", fontsize=8, color="dimgray")
    axes.grid(axis="x", which="both", alpha=0.3)
    low, high = axes.get_xlim()
    axes.set_xlim(low, high * 3)
    meta = doc["meta"]
    title = f"gvisor-sandbox ops benchmark: {meta.get('target', '?')}"
    if doc["memory"]:
        title += "\nidle warm sandbox PSS: " + ", ".join(
            f"{profile} {entry['median_mb']} MB" for profile, entry in doc["memory"].items())
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
