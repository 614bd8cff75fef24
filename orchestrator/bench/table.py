"""The document as a readable text table: idle-host workloads, the sustained scenarios (ours
beside the other endpoint, with ratios), an earlier run, the targets, what was skipped.  Pure."""

from __future__ import annotations

from orchestrator.bench.report import WORKLOADS

SERVED_ORDER = ("warm", "restored", "booted", "unknown")
EXTRA_KEYS = ("wall_s",)  # Measurement.extra entries the table shows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _figure(value: float, unit: str) -> str:
    """A target's figure: ms to 0.1, runs/s to 0.01, counts and ratios as they are."""
    text = {"ms": f"{value:.1f}", "runs/s": f"{value:.2f}"}.get(unit, f"{value:g}")
    return f"{text} {unit}"


def format_served(served: dict[str, int]) -> str:
    """``warm 12, booted 80``: the known ways first, in order, then any other."""
    order = [start for start in SERVED_ORDER if start in served] + sorted(set(served) - set(SERVED_ORDER))
    return ", ".join(f"{start} {served[start]}" for start in order) or "-"


def _workload_lines(doc: dict) -> list[str]:
    workloads, other = doc["workloads"], (doc["compare"] or {}).get("workloads", {})
    if not workloads and not other:
        return []
    keys = [key for key in WORKLOADS if key in workloads or key in other]
    width = max(len(WORKLOADS[key]) for key in keys)
    head = f"{'idle-host workload':<{width}}  {'n':>4} {'errors':>6} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"
    if other:
        head += f" | {'compare p50':>11} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for key in keys:
        mine = workloads.get(key)
        row = (f"{WORKLOADS[key]:<{width}}  {mine['n']:>4} {mine['errors']:>6} {_ms(mine['p50']):>9} "
               f"{_ms(mine['p95']):>9} {_ms(mine['p99']):>9}" if mine else
               f"{WORKLOADS[key]:<{width}}  {'-':>4} {'-':>6} {'-':>9} {'-':>9} {'-':>9}")
        if other:
            theirs = other.get(key)
            mine_p50, their_p50 = (mine or {}).get("p50"), (theirs or {}).get("p50")
            ratio = their_p50 / mine_p50 if mine_p50 and their_p50 is not None else None
            row += f" | {_ms(their_p50):>11} {_times(ratio):>7}"
        lines.append(row)
    for side, entries in (("", workloads), ("compare: ", other)):
        for key, workload in entries.items():
            notes = [f"{name}={workload[name]}" for name in EXTRA_KEYS if name in workload]
            if workload["served"]:
                notes.insert(0, "served " + format_served(workload["served"]))
            lines += [f"  {side}{workload['label']}: {note}" for note in notes + workload["notes"]]
    if other:
        lines.append("  ratio: compare p50 / our p50 (above 1: ours is faster)")
    return lines


def _has_totals(scenario: dict, kind: str | None) -> bool:
    """Whether ``kind``'s row carries the scenario's totals (CPU, quiet, their ratio): the
    totals row of a mix (``kind`` None), or the only row of a single-kind scenario."""
    return kind is None or len(scenario["mix"]) == 1


def _scenario_row(side: str, scenario: dict | None, kind: str | None) -> str:
    """One row: a scenario's totals (``kind`` None) or one kind of it."""
    if scenario is None:
        return f"{'':<16}{kind or 'all':<8}{side:<9}{'not run':>8}"
    totals = _has_totals(scenario, kind)
    cpu = scenario.get("host_cpu_ms_per_run") if totals else None
    quiet = scenario.get("quiet_cpu_ms_per_s") if totals else None
    if kind is None:
        rate, failed, stats, served = scenario["runs_per_s"], scenario["failed"], {}, scenario["served"]
    else:
        entry = scenario["kinds"].get(kind) or {}
        rate, failed, stats, served = entry.get("runs_per_s"), entry.get("errors"), entry, entry.get("served", {})
    percentiles = " ".join(f"{_ms(stats.get(p)):>9}" for p in ("p50", "p95", "p99"))
    return (f"{'':<16}{kind or 'all':<8}{side:<9}{_rate(rate):>8} {'-' if failed is None else failed:>6} "
            f"{_ms(cpu):>8} {_ms(quiet):>8} {percentiles}  {format_served(served)}")


def _sustained_lines(doc: dict) -> list[str]:
    ours, other = doc["sustained"], (doc["compare"] or {}).get("sustained", {})
    names = [name for name in ours] + [name for name in other if name not in ours]
    if not names:
        return []
    first = ours.get(names[0]) or other[names[0]]
    compared = {row["scenario"]: row for row in (doc["comparison"] or {}).get("sustained", [])}
    head = (f"{'scenario':<16}{'kind':<8}{'side':<9}{'runs/s':>8} {'failed':>6} {'CPU ms':>8} {'quiet':>8} "
            f"{'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}  served")
    lines = [f"sustained load: closed loop, {first['clients']} clients, {first['duration_s']:g} s per scenario "
             f"(runs/s: successful runs / wall time; CPU ms: the host's busy CPU time per successful run, "
             f"everything on it included; quiet: the host's busy CPU in ms per second just before the "
             f"scenario, with nothing sent; both for local endpoints only)", head, "-" * len(head)]
    sides = [("ours", ours)] + ([("compare", other)] if doc["compare"] else [])
    for name in names:
        scenario = ours.get(name) or other[name]
        lines.append(f"{scenario['label']}")
        kinds = [None] + list(scenario["mix"]) if len(scenario["mix"]) > 1 else list(scenario["mix"])
        for kind in kinds:
            for side, scenarios in sides:
                lines.append(_scenario_row(side, scenarios.get(name), kind))
            row = compared.get(name)
            if row is None:
                continue
            if _has_totals(scenario, kind):
                rate, cpu = _times(row["runs_per_s_ratio"]), _times(row.get("host_cpu_ratio"))
            else:
                rate, cpu = "", ""
            p50 = next((_times(entry["p50_ratio"]) for entry in row["kinds"] if entry["kind"] == kind), "")
            lines.append(f"{'':<16}{'':<8}{'ratio':<9}{rate:>8} {'':>6} {cpu:>8} {'':>8} {p50:>9}")
    if doc["compare"]:
        lines.append("  ratio: runs/s ours / compare, CPU ms and p50 compare / ours (above 1: ours is better)")
    for side, scenarios in sides:
        for scenario in scenarios.values():
            lines += [f"  {side}, {scenario['label']}: {note}" for note in scenario["notes"]]
            lines += [f"  {side}, {scenario['label']}, {kind}: {note}"
                      for kind, entry in scenario["kinds"].items() for note in entry["notes"]]
    return lines


def _target_lines(doc: dict) -> list[str]:
    lines = ["targets (ours" + (", the compare endpoint's figure beside it):" if doc["compare"] else "):")]
    width = max(len(row["name"]) for row in doc["targets"])
    for row in doc["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[row["passed"]]
        measured = "not measured" if row["measured"] is None else _figure(row["measured"], row["unit"])
        line = f"  {verdict}  {row['name']:<{width}}  measured {measured}"
        if doc["compare"] and row["other"] is not None:
            line += f"  (compare: {_figure(row['other'], row['unit'])})"
        lines.append(line)
    return lines


def format_table(doc: dict) -> str:
    lines = [f"ours:    {doc['meta'].get('target', '?')}"]
    if doc["compare"]:
        lines.append(f"compare: {doc['compare']['target']}")
    lines.append("")
    for section in (_workload_lines(doc), _sustained_lines(doc)):
        if section:
            lines += section + [""]
    if doc["memory"]:
        parts = [f"{profile} {entry['median_mb']} MB (n={entry['n']})" for profile, entry in doc["memory"].items()]
        lines += ["idle warm sandbox, host PSS median: " + ", ".join(parts), ""]
    if doc["ratios"]:
        lines.append("ratios of p50 (ours):")
        lines += [f"  {ratio['name']:<32} {ratio['value']:>8.2f}" for ratio in doc["ratios"]] + [""]
    if doc.get("baseline"):
        width = max(len(label) for label in WORKLOADS.values())
        lines.append(f"baseline ({doc['baseline']['source']}) p50 / this run's p50 (above 1: this run is faster):")
        lines += [f"  {WORKLOADS[row['workload']]:<{width}} {_ms(row['other_p50']):>9} / "
                  f"{_ms(row['ours_p50']):>9} = {row['ratio']:.2f}" for row in doc["baseline"]["ratios"]]
        if not doc["baseline"]["ratios"]:
            lines.append("  (no workload in common)")
        lines.append("")
    lines += _target_lines(doc)
    skipped = [("", skip) for skip in doc["skipped"]] + [("compare: ", skip) for skip in
                                                         (doc["compare"] or {}).get("skipped", [])]
    lines += [f"skipped: {side}{skip['what']}: {skip['why']}" for side, skip in skipped]
    lines += [f"warning: {warning}" for warning in doc["meta"].get("warnings", [])]
    if "leftovers" in doc["meta"]:
        left = doc["meta"]["leftovers"]
        lines.append("clean-up: " + ("LEFT BEHIND: " + "; ".join(left) if left else
                                     "nothing left behind (sandboxes, runsc processes, cgroups; services exited 0)"))
    return "\n".join(lines)
