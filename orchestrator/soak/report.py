"""The soak's verdict, its JSON document and its one-line summary.  Pure: no clock, no I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from orchestrator.bench.measurement import percentile
from orchestrator.soak.load import Reply
from orchestrator.soak.monitor import Sample

MAX_GROWTH_PCT = 10.0
MAX_PROBLEMS = 20


def growth_pct(before: float, after: float) -> float:
    if before <= 0:
        return 0.0 if after <= 0 else float("inf")
    return (after - before) / before * 100.0


def per_case(replies: list[Reply]) -> dict[str, dict]:
    """Runs, unexpected answers, latency percentiles and how sandboxes started, per case."""
    table = {}
    for name in sorted({reply.case for reply in replies}):
        mine = [reply for reply in replies if reply.case == name]
        latencies = [reply.ms for reply in mine if reply.ok]
        table[name] = {"runs": len(mine), "unexpected": sum(not reply.ok for reply in mine),
                       "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                       "max_ms": max(latencies) if latencies else None,
                       "served": dict(sorted(Counter(reply.start or "static check" for reply in mine).items()))}
    return table


def build(meta: dict, replies: list[Reply], samples: list[Sample], baseline: Sample | None, end: Sample | None,
          leftovers: dict[str, list[str]], kept: list[str]) -> dict:
    unexpected = [reply for reply in replies if not reply.ok]
    checks = {"unexpected": len(unexpected) == 0 and bool(replies),
              "leftovers": not any(leftovers.values())}
    resources = None
    if baseline is not None and end is not None:
        resources = {"rss_mb": [round(baseline.rss_bytes / 2**20, 1), round(end.rss_bytes / 2**20, 1)],
                     "rss_growth_pct": round(growth_pct(baseline.rss_bytes, end.rss_bytes), 2),
                     "fds": [baseline.fds, end.fds], "fd_growth_pct": round(growth_pct(baseline.fds, end.fds), 2)}
        checks["rss"] = resources["rss_growth_pct"] < MAX_GROWTH_PCT
        checks["fds"] = resources["fd_growth_pct"] < MAX_GROWTH_PCT
    else:
        checks["resources"] = False  # the service was gone before it could be measured at rest
    return {
        "meta": meta,
        "passed": all(checks.values()),
        "checks": checks,
        "runs": len(replies),
        "unexpected": len(unexpected),
        "problems": [asdict(reply) for reply in unexpected[:MAX_PROBLEMS]],
        "cases": per_case(replies),
        "resources": resources,
        "leftovers": leftovers,
        "kept_snapshot_images": kept,
        "replies": [[round(reply.sent_s, 2), reply.case, round(reply.ms, 1), reply.ok] for reply in replies],
        "samples": [asdict(sample) for sample in samples],
    }


def summary(doc: dict) -> str:
    """One line: the verdict and the numbers it rests on."""
    meta = doc["meta"]
    line = (f"soak {'PASS' if doc['passed'] else 'FAIL'}: {meta['duration_s']:.0f} s at concurrency {meta['clients']}, "
            f"{doc['runs']} runs of {len(doc['cases'])} kinds, {doc['unexpected']} unexpected")
    resources = doc["resources"]
    if resources is not None:
        (rss_from, rss_to), (fd_from, fd_to) = resources["rss_mb"], resources["fds"]
        line += (f"; after warm-up RSS {rss_from} -> {rss_to} MB ({resources['rss_growth_pct']:+.1f}%), "
                 f"FDs {fd_from} -> {fd_to} ({resources['fd_growth_pct']:+.1f}%)")
    else:
        line += "; RSS and FDs not measured at rest"
    left = {kind: items for kind, items in doc["leftovers"].items() if items}
    line += "; nothing left after stop" if not left else \
        "; LEFT: " + ", ".join(f"{kind} {len(items)}" for kind, items in left.items())
    return line
