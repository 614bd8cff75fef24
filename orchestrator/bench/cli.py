"""``python -m orchestrator.bench [options]`` (``make bench BENCH_ARGS=...``): parse the options,
run the chosen groups on our side (our own service, or ``--url``) and then on the other
(``--compare-url``), print the table, write the JSON and the PNG, and check that nothing of
ours is left behind."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from orchestrator.bench import host, plot, report, table
from orchestrator.bench.client import BenchError
from orchestrator.bench.floor import RUNSC_TIMEOUT_S, measure_floors
from orchestrator.bench.scenario import SCENARIOS
from orchestrator.bench.side import GROUPS, Plan, Side, bench_endpoint, bench_own_service
from orchestrator.errors import ServiceError
from orchestrator.language import load_languages
from orchestrator.service import resolve_rootfs
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.bench")

OURS = "our service, started by the benchmark"


def _names(values: list[str] | None, known, what: str, parser: argparse.ArgumentParser) -> list[str] | None:
    """``--only a,b --only c`` -> ["a", "b", "c"], each checked against ``known``."""
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(f"{what}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("SANDBOX_"):
        raise argparse.ArgumentTypeError(f"expected SANDBOX_NAME=value, not {text!r}")
    return name, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="run the HTTP workloads against this RAGFlow-compatible endpoint instead of "
                                      "starting our service")
    parser.add_argument("--compare-url", help="then run the same HTTP workloads against this endpoint too (e.g. the "
                                              "Docker-based original, http://127.0.0.1:19385) and print the ratios")
    parser.add_argument("--only", action="append", metavar="GROUP[,GROUP]",
                        help=f"run only these groups: {', '.join(GROUPS)} (default: all); the issue's sustained "
                             "table: --only sustained,pool-empty")
    parser.add_argument("--scenario", action="append", metavar="NAME[,NAME]",
                        help=f"sustained scenarios to run: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per sustained scenario (default 60; "
                                                                      "10 with --quick)")
    parser.add_argument("--clients", type=int, default=4, help="clients in the closed loop (default 4)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds of quiet before each scenario against an endpoint without pool state")
    parser.add_argument("--quiet", type=float, default=3.0,
                        help="seconds, just before each scenario against a local endpoint, over which the host's "
                             "load with nothing sent is read (default 3; 0: not read)")
    parser.add_argument("--service-env", action="append", type=env_pair, default=[], metavar="SANDBOX_X=V",
                        help="extra setting for the services the benchmark starts (a group's own settings and "
                             "the rate limit 'off' still win)")
    parser.add_argument("--json", default="bench-results/bench.json", help="output JSON; the PNG goes next to it")
    parser.add_argument("--iterations", type=int, default=None, help="requests per fast idle workload (default 20)")
    parser.add_argument("--pandas-iterations", type=int, default=None,
                        help="requests per pandas idle workload (default 5)")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds between idle-host requests when the endpoint shows no pool state")
    parser.add_argument("--skip-floors", action="store_true", help="do not measure raw runsc")
    parser.add_argument("--skip-cold", action="store_true", help="do not measure the cold workloads")
    parser.add_argument("--quick", action="store_true", help="few iterations, 10 s scenarios: a smoke run")
    parser.add_argument("--baseline-json", help="an earlier run's JSON: p50 ratios against its idle workloads")
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 5 if args.quick else 20
    if args.pandas_iterations is None:
        args.pandas_iterations = 2 if args.quick else 5
    if args.duration is None:
        args.duration = 10.0 if args.quick else 60.0
    args.loop_iterations = max(3, min(10, args.iterations // 2))
    if min(args.iterations, args.pandas_iterations) < 1:
        parser.error("iterations must be at least 1")
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be at least 1 and --duration above 0")
    if args.quiet < 0:
        parser.error("--quiet must be 0 or more")
    groups = set(_names(args.only, GROUPS, "--only", parser) or GROUPS)
    groups -= {"floors"} if args.skip_floors else set()
    groups -= {"cold"} if args.skip_cold else set()
    scenarios = _names(args.scenario, tuple(SCENARIOS), "--scenario", parser) or list(SCENARIOS)
    args.plan = Plan(groups=frozenset(groups), scenarios=tuple(SCENARIOS[name] for name in dict.fromkeys(scenarios)),
                     clients=args.clients, duration_s=args.duration, iterations=args.iterations,
                     pandas_iterations=args.pandas_iterations, loop_iterations=args.loop_iterations,
                     pause_s=args.pause, settle_s=args.settle, quiet_s=args.quiet)
    return args


def runsc_version(binary: pathlib.Path) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=RUNSC_TIMEOUT_S)
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None
    return None


def runsc_problem_of(settings: Settings) -> tuple[str | None, pathlib.Path | None]:
    """Why runsc cannot be used here (None: it can), and the python rootfs."""
    if os.geteuid() != 0:
        return "needs root", None
    try:
        languages = load_languages(settings.languages_dirs)
        rootfs = resolve_rootfs(settings, {"python": languages["python"]})["python"]
    except (ServiceError, KeyError) as exc:
        return f"no python rootfs: {exc}", None
    if runsc_version(settings.runsc.binary) is None:
        return f"{settings.runsc.binary} --version failed", None
    return None, rootfs


def run_side(side: Side, coroutine) -> bool:
    """Run one side to the end; False (and the reason in its skips) when it aborted."""
    try:
        asyncio.run(coroutine)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        side.skip("the rest of this side", f"aborted: {exc}")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan: Plan = args.plan
    logging.basicConfig(format="bench: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        settings = Settings.from_env(os.environ)
        baseline = json.loads(pathlib.Path(args.baseline_json).read_text()) if args.baseline_json else None
    except (ServiceError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json_path = pathlib.Path(args.json)
    log_dir = json_path.parent / f"{json_path.stem}-logs"
    started_at, started = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    work = pathlib.Path(tempfile.mkdtemp(prefix="gvisor-bench-"))
    cgroup_parent = f"gvisor-sandbox-bench-{uuid.uuid4().hex[:8]}"
    ours = Side(args.url or OURS)
    other = Side(args.compare_url) if args.compare_url else None
    ok, leftovers = True, []
    warnings, others, load_start = [], host.count_runsc_processes(), os.getloadavg()
    if others:
        warnings.append(f"{others} runsc processes of others were running at the start "
                        f"(load average {load_start[0]:.1f}): the numbers are noisy")
        log.warning(warnings[-1])
    runsc_problem, rootfs = runsc_problem_of(settings)
    floor_root = work / "floor-runsc"
    try:
        if not plan.has("floors"):
            ours.skip("floors", "not chosen")
        elif runsc_problem:
            ours.skip("floors", f"runsc unusable here: {runsc_problem}")
        else:
            runsc = [str(settings.runsc.binary), f"--root={floor_root}", f"--platform={settings.runsc.platform}",
                     "--network=none"]
            ours.measurements.update(measure_floors(runsc, rootfs, work, plan.iterations))
        if args.url:
            ok = run_side(ours, bench_endpoint(plan, ours, args.url, settings.api_token))
        elif runsc_problem:
            ours.skip("our /run workloads", f"cannot start the service here: {runsc_problem}")
        else:
            ok = run_side(ours, bench_own_service(plan, ours, work=work, log_dir=log_dir, cgroup_parent=cgroup_parent,
                                                  extra_env=dict(args.service_env)))
        if other is not None:
            ok = run_side(other, bench_endpoint(plan, other, args.compare_url, settings.api_token)) and ok
    except (OSError, subprocess.SubprocessError) as exc:
        ok = False
        ours.skip("the rest of the run", f"aborted: {exc}")
    finally:
        leftovers = clean_up(settings, work, floor_root, cgroup_parent, ours.services)
    meta = {
        "target": ours.target,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "runsc": runsc_version(settings.runsc.binary), "platform": settings.runsc.platform,
        "groups": [group for group in GROUPS if plan.has(group)],
        "scenarios": [scenario.name for scenario in plan.scenarios], "clients": plan.clients,
        "scenario_duration_s": plan.duration_s,
        "iterations": plan.iterations, "pandas_iterations": plan.pandas_iterations,
        "loop_iterations": plan.loop_iterations, "memory_unit": "MB = 2**20 bytes of PSS",
        "load_average_start": [round(value, 2) for value in load_start],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "services": ours.services, "leftovers": leftovers, "warnings": warnings,
    }
    sides = [report.build_side(side.target, side.measurements, side.memory_mb, side.sustained, side.skipped)
             for side in (ours, other) if side is not None]
    doc = report.build_document(meta, sides[0], sides[1] if other else None, baseline)
    print(table.format_table(doc))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    png_path = json_path.with_suffix(".png")
    plotted = plot.plot(doc, png_path)
    print(f"\njson: {json_path}\npng:  {png_path if plotted else 'not written (no samples, or no matplotlib)'}"
          f"\ntook {meta['duration_s']} s")
    return 0 if ok and not leftovers else 1


def clean_up(settings: Settings, work: pathlib.Path, floor_root: pathlib.Path, cgroup_parent: str,
             services: dict[str, dict]) -> list[str]:
    """Check that nothing of ours survived; remove our cgroup parent and temp dir; what was left."""
    roots = [floor_root, *(pathlib.Path(facts["state_dir"]) / "runsc" for facts in services.values())]
    leftovers = host.find_leftovers(settings.runsc.binary, roots)
    if services:  # only our services make sandboxes under the cgroup parent
        leftovers += host.remove_cgroup_parent(cgroup_parent)
    leftovers += [f"service {name} exited {facts['exit_code']}" for name, facts in services.items()
                  if facts["exit_code"] != 0]
    if any(entry.startswith(("process", "runsc container")) for entry in leftovers):
        log.warning("LEFT BEHIND: %s (temp dir %s kept)", "; ".join(leftovers), work)
        return leftovers
    shutil.rmtree(work, ignore_errors=True)
    if leftovers:
        log.warning("LEFT BEHIND: %s", "; ".join(leftovers))
    else:
        log.info("clean: no runsc container, runsc process or cgroup of ours left; services exited 0")
    return leftovers
