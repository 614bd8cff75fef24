"""The benchmark's JSON document, built from what each side measured.  Pure: nothing here runs
a process or opens a socket, so it is tested with made-up numbers.

A *side* is what one endpoint produced: ``workloads`` (idle-host workloads, by key),
``memory``, ``sustained`` (closed-loop scenarios, by name), ``ratios`` (p50 ratios within the
side) and ``skipped``.  The document is our side at the top level, the other endpoint's side
under ``compare``, their ``comparison`` (every ratio oriented so that above 1 means ours is
better), an earlier run under ``baseline``, and the targets.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from orchestrator.bench.measurement import Measurement, ScenarioRun, summarize
from orchestrator.bench.scenario import SCENARIOS
from orchestrator.bench.target import evaluate_targets

SCHEMA = "gvisor-sandbox-bench/2"

# Every idle-host workload, in the order of the table and the plot.
WORKLOADS = {
    "floor_run": "raw runsc run: python3 print",
    "floor_exec": "raw runsc exec /bin/true",
    "hello_cold": "/run hello, cold (pool empty)",
    "pandas_cold": "/run pandas, cold (pool empty)",
    "pandas_pool_empty": "/run pandas, its pool empty, idle host",
    "hello_warm": "/run hello, warm",
    "pandas_warm": "/run pandas, warm",
    "burst": "/run hello, 32 at concurrency 16",
    "hello_loops": "/run hello, 4 infinite loops running",
    "overhead": "service overhead, warm hello",
}

# (name, numerator, denominator): ratios of p50s within one side, when both were measured.
RATIOS = (
    ("cold hello / raw runsc run", "hello_cold", "floor_run"),
    ("warm hello / raw runsc run", "hello_warm", "floor_run"),
    ("warm hello / raw runsc exec", "hello_warm", "floor_exec"),
    ("cold hello / warm hello", "hello_cold", "hello_warm"),
    ("cold pandas / warm pandas", "pandas_cold", "pandas_warm"),
)


def _p50(workloads: Mapping[str, dict], key: str) -> float | None:
    workload = workloads.get(key)
    return workload["p50"] if workload else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


def summarize_memory(per_profile_mb: Mapping[str, list[float]]) -> dict:
    """Per pool profile: the median PSS (MB) of its idle warm sandboxes."""
    return {profile: {"n": len(values), "median_mb": round(statistics.median(values), 1) if values else None,
                      "samples_mb": [round(value, 1) for value in values]}
            for profile, values in sorted(per_profile_mb.items())}


def summarize_scenario(run: ScenarioRun) -> dict:
    """runs/s counts successful runs over the wall time (first request to last answer); the
    latencies are those of the successful runs, per kind."""
    scenario = SCENARIOS[run.scenario]
    rate = run.runs_per_s()
    kinds = {}
    for name, measurement in run.kinds.items():
        kind_rate = run.runs_per_s(name)
        kinds[name] = {**summarize(measurement, name), "runs_per_s": None if kind_rate is None else round(kind_rate, 3)}
    return {"label": scenario.label, "mix": dict(scenario.mix), "clients": run.clients,
            "duration_s": run.duration_s, "wall_s": run.wall_s, "runs": run.ok + run.failed, "ok": run.ok,
            "failed": run.failed, "runs_per_s": None if rate is None else round(rate, 3), "served": run.served(),
            "host_cpu_ms_per_run": None if (cpu := run.host_cpu_ms_per_run()) is None else round(cpu, 1),
            "quiet_cpu_ms_per_s": None if run.quiet_cpu_ms_per_s is None else round(run.quiet_cpu_ms_per_s, 1),
            "notes": list(run.notes), "status_after": run.status_after, "kinds": kinds}


def compute_ratios(workloads: Mapping[str, dict]) -> list[dict]:
    """The p50 ratios of ``RATIOS`` whose two workloads were both measured."""
    ratios = []
    for name, top, bottom in RATIOS:
        value = _ratio(_p50(workloads, top), _p50(workloads, bottom))
        if value is not None:
            ratios.append({"name": name, "numerator": top, "denominator": bottom, "value": value})
    return ratios


def build_side(target: str, measurements: Mapping[str, Measurement], memory_mb: Mapping[str, list[float]],
               sustained: Mapping[str, ScenarioRun], skipped: list[dict]) -> dict:
    workloads = {key: summarize(measurements[key], label) for key, label in WORKLOADS.items() if key in measurements}
    scenarios = {name: summarize_scenario(sustained[name]) for name in SCENARIOS if name in sustained}
    return {"target": target, "workloads": workloads, "memory": summarize_memory(memory_mb), "sustained": scenarios,
            "ratios": compute_ratios(workloads), "skipped": list(skipped)}


def compare_workloads(workloads: Mapping[str, dict], other: Mapping[str, dict]) -> list[dict]:
    """For each idle workload measured on both: other p50 / our p50 (above 1: ours is faster)."""
    rows = []
    for key in WORKLOADS:
        ours, theirs = _p50(workloads, key), _p50(other, key)
        if ours and theirs is not None:
            rows.append({"workload": key, "ours_p50": ours, "other_p50": theirs, "ratio": round(theirs / ours, 2)})
    return rows


def compare_scenarios(ours: Mapping[str, dict], other: Mapping[str, dict]) -> list[dict]:
    """For each scenario run on both: our runs/s / theirs, their host CPU per run / ours, and per
    kind their p50 / ours (above 1: ours is better)."""
    rows = []
    for name in SCENARIOS:
        if name not in ours or name not in other:
            continue
        mine, theirs = ours[name], other[name]
        kinds = []
        for kind in mine["kinds"]:
            p50, other_p50 = mine["kinds"][kind]["p50"], (theirs["kinds"].get(kind) or {}).get("p50")
            kinds.append({"kind": kind, "ours_p50": p50, "other_p50": other_p50, "p50_ratio": _ratio(other_p50, p50)})
        rows.append({"scenario": name, "ours_runs_per_s": mine["runs_per_s"], "other_runs_per_s": theirs["runs_per_s"],
                     "runs_per_s_ratio": _ratio(mine["runs_per_s"], theirs["runs_per_s"]),
                     "host_cpu_ratio": _ratio(theirs.get("host_cpu_ms_per_run"), mine.get("host_cpu_ms_per_run")),
                     "ours_failed": mine["failed"], "other_failed": theirs["failed"], "kinds": kinds})
    return rows


def build_document(meta: dict, ours: dict, compare: dict | None = None, baseline: dict | None = None) -> dict:
    """The whole result: what ran, our side, the other side and the ratios between them, an
    earlier run's ratios, the targets (ours, with the other side's figure beside)."""
    doc = {"schema": SCHEMA, "meta": dict(meta), **{key: value for key, value in ours.items() if key != "target"}}
    doc["compare"] = compare
    doc["comparison"] = None
    if compare is not None:
        doc["comparison"] = {"workloads": compare_workloads(ours["workloads"], compare["workloads"]),
                             "sustained": compare_scenarios(ours["sustained"], compare["sustained"])}
    doc["baseline"] = None
    if baseline is not None:
        doc["baseline"] = {"source": baseline.get("meta", {}).get("target"),
                           "ratios": compare_workloads(ours["workloads"], baseline.get("workloads", {}))}
    doc["targets"] = evaluate_targets(doc, compare)
    return doc
