"""``soak.png``: latency of every run (by case, log scale, unexpected answers marked), the
service's RSS and its open file descriptors, over the same time axis."""

from __future__ import annotations

import pathlib


def plot(doc: dict, path: pathlib.Path) -> bool:
    """False when matplotlib is not installed (``pip install -e '.[bench]'``) or nothing ran."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not doc["replies"]:
        return False
    figure, (latency, rss, fds) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                               gridspec_kw={"height_ratios": [3, 1.3, 1.3]})
    names = sorted(doc["cases"])
    colors = plt.get_cmap("tab20")
    for index, name in enumerate(names):
        points = [(t, ms) for t, case, ms, ok in doc["replies"] if case == name and ok]
        if points:
            latency.scatter(*zip(*points), s=6, alpha=0.6, color=colors(index % 20),
                            label=f"{name} (p50 {doc['cases'][name]['p50_ms']:.0f} ms)")
    bad = [(t, ms) for t, _, ms, ok in doc["replies"] if not ok]
    if bad:
        latency.scatter(*zip(*bad), s=40, marker="x", color="red", label=f"unexpected ({len(bad)})", zorder=5)
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)")
    latency.legend(fontsize=7, ncol=3, loc="upper left", markerscale=2)
    samples = doc["samples"]
    times = [sample["t_s"] for sample in samples]
    rss.plot(times, [sample["rss_bytes"] / 2**20 for sample in samples], color="tab:blue", linewidth=1)
    rss.set_ylabel("service RSS, MB")
    fds.plot(times, [sample["fds"] for sample in samples], color="tab:green", linewidth=1)
    fds.set_ylabel("service open FDs")
    fds.set_xlabel("seconds since the load started")
    for axes in (latency, rss, fds):
        axes.grid(alpha=0.3)
        for sample in samples:
            if sample["phase"] in ("baseline", "end"):
                axes.axvline(sample["t_s"], color="gray", linestyle="--", linewidth=1)
    for sample in samples:
        if sample["phase"] in ("baseline", "end"):
            rss.annotate(f"{sample['phase']} {sample['rss_bytes'] / 2**20:.1f}", (sample["t_s"], sample["rss_bytes"] / 2**20),
                         xytext=(4, 4), textcoords="offset points", fontsize=8)
            fds.annotate(f"{sample['phase']} {sample['fds']}", (sample["t_s"], sample["fds"]),
                         xytext=(4, 4), textcoords="offset points", fontsize=8)
    if samples:
        rss.set_ylim(0, max(sample["rss_bytes"] for sample in samples) / 2**20 * 1.2)
        fds.set_ylim(0, max(sample["fds"] for sample in samples) * 1.2)
    figure.suptitle(doc["summary"], fontsize=9, wrap=True)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
