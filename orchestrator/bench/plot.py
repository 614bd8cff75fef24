"""A PNG of the latency distributions: every idle-host workload and every kind of every
sustained scenario, ours (box plots on a log scale, the samples on top)."""

from __future__ import annotations

import pathlib


def plot_rows(doc: dict) -> list[dict]:
    """What gets a row, top first: the workloads, then each scenario's kinds, with samples."""
    rows = [workload for workload in doc["workloads"].values() if workload["samples_ms"]]
    for scenario in doc["sustained"].values():
        rows += [{**kind, "label": f"{scenario['label']}: {kind['label']}"}
                 for kind in scenario["kinds"].values() if kind["samples_ms"]]
    return rows


def plot(doc: dict, path: pathlib.Path) -> bool:
    """Box plots of every row's latencies (log scale), with the samples on top; False
    when matplotlib is not installed (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = plot_rows(doc)
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
