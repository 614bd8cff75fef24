"""The targets the benchmark checks, as data.  Each one reads a figure from a side of the
document (``workloads``, ``memory``, ``sustained``) and compares it with its limit: at most the
limit, or at least it for throughput.  Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Measure = Callable[[dict], "float | None"]


@dataclass(frozen=True)
class Target:
    name: str
    limit: float
    unit: str
    measure: Measure
    at_least: bool = False  # True: measured >= limit passes (runs/s); else measured <= limit

    def passes(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


def _workload(key: str, field: str = "p50") -> Measure:
    return lambda side: (side["workloads"].get(key) or {}).get(field)


def _ratio_of(top: str, bottom: str) -> Measure:
    def measure(side: dict) -> float | None:
        a, b = _workload(top)(side), _workload(bottom)(side)
        return round(a / b, 2) if a is not None and b else None
    return measure


def _memory_of(profile: str) -> Measure:
    return lambda side: (side["memory"].get(profile) or {}).get("median_mb")


def _scenario(name: str, field: str) -> Measure:
    return lambda side: (side["sustained"].get(name) or {}).get(field)


def _scenario_p50(name: str, kind: str) -> Measure:
    return lambda side: ((side["sustained"].get(name) or {}).get("kinds", {}).get(kind) or {}).get("p50")


TARGETS = (
    Target("hello only >= 12 runs/s", 12, "runs/s", _scenario("hello", "runs_per_s"), at_least=True),
    Target("pandas only >= 2.5 runs/s", 2.5, "runs/s", _scenario("pandas", "runs_per_s"), at_least=True),
    Target("pandas only p50 <= 1500 ms", 1500, "ms", _scenario_p50("pandas", "pandas")),
    Target("pandas only: 0 failed runs", 0, "failed", _scenario("pandas", "failed")),
    Target("mix 5:3:2 >= 5 runs/s", 5, "runs/s", _scenario("mix", "runs_per_s"), at_least=True),
    Target("mix 5:3:2: 0 failed runs", 0, "failed", _scenario("mix", "failed")),
    Target("pandas, its pool empty, idle: p50 <= 500 ms", 500, "ms", _workload("pandas_pool_empty")),
    Target("hello warm p50 <= 25 ms", 25, "ms", _workload("hello_warm")),
    Target("pandas warm p50 <= 40 ms", 40, "ms", _workload("pandas_warm")),
    Target("cold hello p50 <= 1.2 x raw runsc run p50", 1.2, "x", _ratio_of("hello_cold", "floor_run")),
    Target("32 requests at concurrency 16: 0 errors", 0, "errors", _workload("burst", "errors")),
    Target("hello while 4 loops run p50 <= 2000 ms", 2000, "ms", _workload("hello_loops")),
    Target("idle warm sandbox (python) <= 60 MB", 60, "MB", _memory_of("python")),
    Target("idle warm sandbox (python_preload) <= 60 MB", 60, "MB", _memory_of("python_preload")),
    Target("service overhead p50 <= 5 ms", 5, "ms", _workload("overhead")),
)


def evaluate_targets(ours: dict, other: dict | None = None, targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """PASS/FAIL per target for ``ours``; ``passed`` is None when its figure is missing.  With
    ``other``, its figure for the same target rides along (``other``, no verdict)."""
    rows = []
    for target in targets:
        value = target.measure(ours)
        rows.append({"name": target.name, "limit": target.limit, "unit": target.unit, "at_least": target.at_least,
                     "measured": value, "passed": None if value is None else target.passes(value),
                     "other": None if other is None else target.measure(other)})
    return rows
