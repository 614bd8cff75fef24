"""What one workload produced, and its statistics.  Pure: no clock, no I/O.

Latencies are in milliseconds.  ``n`` counts the successful runs of a workload; ``errors``
counts the attempts that failed (non-200, ``status`` other than ``success``, a wrong
``result.value``, no answer).  Percentiles use the nearest-rank method, so each one is a
latency that was actually measured.  ``served`` counts the answered runs by how the endpoint
says it started their sandbox (``warm``, ``restored``, ``booted``; ``unknown`` when it does
not say).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Protocol

MAX_NOTES = 3


class Outcome(Protocol):
    """What ``Measurement.add`` reads of one run (``client.Reply``)."""

    ok: bool
    ms: float
    start: str | None  # None: no HTTP answer at all
    problem: str | None


@dataclass
class Measurement:
    """Latencies of the successful attempts, failures, how runs were served, notes."""

    samples_ms: list[float] = field(default_factory=list)
    errors: int = 0
    served: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # e.g. wall_s of a burst

    def add(self, outcome: Outcome) -> None:
        """Count one run: its latency when it succeeded, else an error (and its problem among
        the first few distinct ones); how it was served when it was answered."""
        if outcome.ok:
            self.samples_ms.append(outcome.ms)
        else:
            self.errors += 1
            if len(self.notes) < MAX_NOTES and outcome.problem not in self.notes:
                self.notes.append(outcome.problem)
        if outcome.start is not None:
            self.served[outcome.start] = self.served.get(outcome.start, 0) + 1

    @property
    def runs(self) -> int:
        return len(self.samples_ms) + self.errors


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
        "served": dict(sorted(measurement.served.items())),
        "notes": list(measurement.notes),
        **measurement.extra,
        "samples_ms": samples,
    }


@dataclass
class ScenarioRun:
    """What one closed-loop scenario produced: a Measurement per kind of run and the wall time
    from the first request to the last answer."""

    scenario: str
    clients: int
    duration_s: float
    wall_s: float
    kinds: dict[str, Measurement]
    notes: list[str] = field(default_factory=list)
    status_after: dict | None = None  # the endpoint's /status once the scenario ended (ours)
    host_cpu_s: float | None = None  # busy CPU time of the whole host over the same span (local endpoints)
    # The host's busy CPU (ms per second) in a quiet window just before the first request:
    # what it spends with nothing sent (idle pools, any other endpoint; local endpoints)
    quiet_cpu_ms_per_s: float | None = None

    @property
    def ok(self) -> int:
        return sum(len(measurement.samples_ms) for measurement in self.kinds.values())

    @property
    def failed(self) -> int:
        return sum(measurement.errors for measurement in self.kinds.values())

    def runs_per_s(self, kind: str | None = None) -> float | None:
        """Successful runs (of ``kind``, or all) per second of wall time."""
        if self.wall_s <= 0:
            return None
        ok = self.ok if kind is None else len(self.kinds[kind].samples_ms)
        return ok / self.wall_s

    def host_cpu_ms_per_run(self) -> float | None:
        """The host's busy CPU time per successful run (everything on the host: the endpoint,
        its sandboxes, the benchmark's own clients, any other load)."""
        if self.host_cpu_s is None or self.ok == 0:
            return None
        return self.host_cpu_s * 1000 / self.ok

    def served(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for measurement in self.kinds.values():
            for start, count in measurement.served.items():
                total[start] = total.get(start, 0) + count
        return dict(sorted(total.items()))
