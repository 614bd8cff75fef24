"""``python -m orchestrator.soak [--duration S] [--clients N] [--out DIR]`` (``make soak``,
``SOAK_S``): run the soak (see the package docstring), write ``soak.json`` and ``soak.png``
into ``--out``, print the summary line; exit 1 when it failed."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
import uuid

import aiohttp

from orchestrator.bench.cli import env_pair, runsc_problem_of, runsc_version
from orchestrator.bench.client import BenchError, service_status, wait_settled
from orchestrator.bench.service import LocalService
from orchestrator.errors import ServiceError
from orchestrator.settings import Settings
from orchestrator.soak import leftovers, plot, report
from orchestrator.soak.load import Reply, closed_loop, cycle
from orchestrator.soak.monitor import Monitor, Sample

log = logging.getLogger("orchestrator.soak")

# The soak's service: the defaults, but a 5 s time limit (the timeout case holds a client
# that long) and its own everything (bench.service: port, state dir, cgroup parent, no rate limit).
SERVICE_ENV = {"SANDBOX_TIMEOUT": "5s"}
SETTLE_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds under load, warm-up included "
                                                                       "(default 1800; make soak: SOAK_S)")
    parser.add_argument("--clients", type=int, default=4, help="clients in the closed loop (default 4)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of warm-up (default: 10%% of the duration, at least 20 s)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between RSS/FD samples (default 2)")
    parser.add_argument("--out", default="soak-results", help="directory for soak.json and soak.png")
    parser.add_argument("--service-env", action="append", type=env_pair, default=[], metavar="SANDBOX_X=V",
                        help="extra setting for the soak's service")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = max(20.0, 0.1 * args.duration)
    if args.clients < 1 or args.duration <= args.warmup or args.warmup <= 0:
        parser.error("--clients must be at least 1 and --duration longer than the warm-up")
    return args


async def at_rest(session: aiohttp.ClientSession, url: str, monitor: Monitor, phase: str) -> Sample | None:
    """Wait until the service is at rest (pools full, no image being made, nothing running,
    its descriptor count steady over three readings), then take the ``phase`` sample."""
    if not await wait_settled(session, url, timeout=SETTLE_TIMEOUT_S):
        log.warning("%s: the service did not settle within %.0f s", phase, SETTLE_TIMEOUT_S)
    deadline = time.monotonic() + 60
    readings: list[int] = []
    while time.monotonic() < deadline:
        status = await service_status(session, url) or {}
        current = monitor.take("rest")
        if current is None:
            return None
        readings = (readings + [current.fds])[-3:] if status.get("running") == 0 else []
        if len(readings) == 3 and len(set(readings)) == 1:
            break
        await asyncio.sleep(0.5)
    return monitor.take(phase)


async def soak(args: argparse.Namespace, settings: Settings, out: pathlib.Path, work: pathlib.Path,
               cgroup_parent: str, replies: list[Reply], monitor_box: list) -> tuple[Sample | None, Sample | None, float, dict]:
    overrides = {**SERVICE_ENV, **dict(args.service_env)}
    service = LocalService("soak", work, out / "soak-service.log", cgroup_parent, overrides)
    baseline = end = None
    loaded_s = 0.0
    async with aiohttp.ClientSession() as session:
        try:
            await service.start(session)
            log.info("service on %s (log %s); waiting for its pools and snapshot images", service.url,
                     service.log_path)
            if not await wait_settled(session, service.url, timeout=SETTLE_TIMEOUT_S):
                raise BenchError(f"the service did not settle within {SETTLE_TIMEOUT_S:.0f} s: "
                                 f"{json.dumps(await service_status(session, service.url))[:500]}")
            origin = time.monotonic()
            monitor = Monitor(service.process.pid, origin, args.interval)
            monitor_box.append(monitor)
            monitor.start()
            order = cycle()
            progress = {"next": origin + PROGRESS_EVERY_S}

            def record(reply: Reply) -> None:
                replies.append(reply)
                if not reply.ok:
                    log.warning("UNEXPECTED %s after %.0f ms: %s", reply.case, reply.ms, reply.problem)
                if time.monotonic() >= progress["next"]:
                    progress["next"] += PROGRESS_EVERY_S
                    last = monitor.samples[-1] if monitor.samples else None
                    log.info("%.0f s: %d runs, %d unexpected, RSS %s MB, FDs %s", time.monotonic() - origin,
                             len(replies), sum(not r.ok for r in replies),
                             f"{last.rss_bytes / 2**20:.1f}" if last else "?", last.fds if last else "?")

            log.info("warm-up: %d clients for %.0f s over a cycle of %d runs", args.clients, args.warmup, len(order))
            started = time.monotonic()
            await closed_loop(session, service.url, order, clients=args.clients, until=started + args.warmup,
                              origin=origin, record=record)
            loaded_s += time.monotonic() - started
            baseline = await at_rest(session, service.url, monitor, "baseline")
            monitor.phase = "load"
            log.info("at rest: RSS %.1f MB, %d FDs; load for %.0f s more",
                     baseline.rss_bytes / 2**20 if baseline else -1, baseline.fds if baseline else -1,
                     args.duration - args.warmup)
            started = time.monotonic()
            await closed_loop(session, service.url, order, clients=args.clients,
                              until=started + args.duration - args.warmup, origin=origin, record=record)
            loaded_s += time.monotonic() - started
            end = await at_rest(session, service.url, monitor, "end")
        finally:
            if monitor_box:
                await monitor_box[0].stop()
            facts = await service.stop()
    return baseline, end, loaded_s, facts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="soak: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        settings = Settings.from_env(os.environ)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem, _ = runsc_problem_of(settings)
    if problem is not None:
        required = os.environ.get("REQUIRE_RUNSC") == "1"
        print(f"soak: {'FAIL' if required else 'skipped'}: runsc unusable here: {problem}", file=sys.stderr)
        return 1 if required else 0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="gvisor-soak-"))
    cgroup_parent = f"gvisor-sandbox-soak-{uuid.uuid4().hex[:8]}"
    started_at = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    replies: list[Reply] = []
    monitor_box: list[Monitor] = []
    baseline = end = None
    loaded_s, facts, aborted = 0.0, {}, None
    try:
        baseline, end, loaded_s, facts = asyncio.run(
            soak(args, settings, out, work, cgroup_parent, replies, monitor_box))
    except (BenchError, OSError) as exc:
        aborted = str(exc)
        log.error("aborted: %s", exc)
    state_dir = work / "state-soak"
    left = leftovers.find(settings.runsc.binary, state_dir, cgroup_parent)
    if facts.get("exit_code") not in (0, None):
        left["runsc"].append(f"the service exited {facts.get('exit_code')}")
    kept = leftovers.kept_images(state_dir)
    meta = {"started_at": started_at.isoformat(timespec="seconds"), "duration_s": round(loaded_s, 1),
            "requested_duration_s": args.duration, "warmup_s": args.warmup, "clients": args.clients,
            "service_env": {**SERVICE_ENV, **dict(args.service_env)}, "service_log": str(out / "soak-service.log"),
            "runsc": runsc_version(settings.runsc.binary), "platform": settings.runsc.platform,
            "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "load_average_start": [round(value, 2) for value in load_start],
            "load_average_end": [round(value, 2) for value in os.getloadavg()], "aborted": aborted}
    samples = monitor_box[0].samples if monitor_box else []
    doc = report.build(meta, replies, samples, baseline, end, left, kept)
    if aborted:
        doc["passed"] = False
        doc["checks"]["completed"] = False
    doc["summary"] = report.summary(doc)
    (out / "soak.json").write_text(json.dumps(doc, indent=1) + "\n")
    plotted = plot.plot(doc, out / "soak.png")
    (out / "soak-summary.txt").write_text(doc["summary"] + "\n")
    for name, entry in doc["cases"].items():
        print(f"  {name:<20} {entry['runs']:>5} runs  {entry['unexpected']:>3} unexpected  "
              f"p50 {entry['p50_ms'] or 0:>7.0f} ms  p95 {entry['p95_ms'] or 0:>7.0f} ms  {entry['served']}")
    for kind, items in left.items():
        if items:
            print(f"  LEFT {kind}: {', '.join(items[:10])}")
    if not any(entry.startswith("process") or entry.startswith("runsc container") for entry in left["runsc"]):
        shutil.rmtree(work, ignore_errors=True)  # the state dir, images included
    print(f"json: {out / 'soak.json'}\npng:  {out / 'soak.png' if plotted else 'not written (no matplotlib or no runs)'}")
    print(doc["summary"])
    return 0 if doc["passed"] else 1
