"""The ops benchmark: ``python -m orchestrator.bench [options]`` (``make bench BENCH_ARGS=...``).

In one run, side by side:

floors   a raw ``runsc run`` of ``python3 -c 'print(1)'`` over the python rootfs (a minimal
         bundle of our own, its own ``--root``) and a raw ``runsc exec /bin/true`` into one
         running sandbox: what runsc itself costs on this host, without the service;
/run     hello and pandas cold and warm, 32 requests at concurrency 16, hello while 4
         infinite loops run, the host memory of an idle warm sandbox and the service's own
         overhead per warm request, against a service the benchmark starts itself
         (``python -m orchestrator`` on a free 127.0.0.1 port with its own state dir and
         cgroup parent, no rate limit: one instance with the pools off for the cold
         workloads, one with python pools of 2 and nodejs pools off for the rest) or, with
         ``--url``, against any RAGFlow-compatible executor (``SANDBOX_EXECUTOR_MANAGER_API_TOKEN``
         goes along as a bearer token when set); what needs our internals is then skipped.

It prints a table, ratios and the issue's targets (``orchestrator.bench_report``), writes the
JSON document and a PNG of the distributions, stops everything it started and checks that no
sandbox, runsc process or cgroup of its own is left.  Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import psutil

from orchestrator import bench_report
from orchestrator.bench_report import Measurement
from orchestrator.errors import ServiceError
from orchestrator.host.cgroups import Cgroups
from orchestrator.language import load_languages
from orchestrator.service import CGROUP_ROOT, resolve_rootfs
from orchestrator.settings import Settings

REPO = pathlib.Path(__file__).resolve().parent.parent
HELLO = "def main():\n    return 'hi'\n"
PANDAS = ("import pandas as pd\n\n\ndef main():\n"
          "    df = pd.DataFrame({'a': [1, 2, 3], 'b': [4, 5, 6]})\n    return int(df.sum().sum())\n")
LOOP = "def main():\n    while True:\n        pass\n"
RUNSC_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 180.0
SETTLE_TIMEOUT_S = 180.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
COLD_PAUSE_S = 0.3  # lets the previous cold sandbox's teardown finish before the next request
BURST_TOTAL, BURST_CONCURRENCY = 32, 16
# The loops run long enough for every hello to meet all four of them.
LOOPS, LOOP_TIMEOUT, LOOP_BUDGET_S, LOOP_HELLO_PAUSE_S = 4, "40s", 37.0, 1.0
# The benchmark's own services: no rate limit (it measures sandboxes, not the limiter), no token.
SERVICE_ENV = {"SANDBOX_EXECUTOR_MANAGER_HOST": "127.0.0.1", "SANDBOX_RUN_RATE_LIMIT": "off"}
DROPPED_ENV = ("SANDBOX_POOL_SIZE_", "SANDBOX_EXECUTOR_MANAGER_API_TOKEN")
COLD_ENV = {"SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "0", "SANDBOX_TIMEOUT": "60s"}
WARM_ENV = {"SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "2", "SANDBOX_POOL_SIZE_NODEJS": "0",
            "SANDBOX_POOL_SIZE_NODEJS_PRELOAD": "0", "SANDBOX_TIMEOUT": LOOP_TIMEOUT}


Gate = Callable[[], Awaitable[None]]


class BenchError(Exception):
    """The benchmark itself cannot go on (a service that does not start, pools that never fill)."""


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Results:
    measurements: dict[str, Measurement] = field(default_factory=dict)
    memory_mb: dict[str, list[float]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    services: dict[str, dict] = field(default_factory=dict)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append({"what": what, "why": why})
        say(f"skipping {what}: {why}")


# -- floors: runsc alone ------------------------------------------------------------------------

def write_floor_bundle(directory: pathlib.Path, rootfs: pathlib.Path, args: list[str]) -> pathlib.Path:
    """A minimal OCI bundle: the rootfs as a read-only root, no terminal, /proc only."""
    spec = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 65534, "gid": 65534}, "args": args,
                    "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"], "cwd": "/"},
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "network")]},
    }
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(spec, indent=2))
    return directory


def measure_floors(runsc: list[str], rootfs: pathlib.Path, work: pathlib.Path, iterations: int) -> dict[str, Measurement]:
    """``runsc`` is the binary with its global flags (``--root`` of our own included)."""
    hello = write_floor_bundle(work / "floor-hello", rootfs, ["python3", "-c", "print(1)"])
    sleeper = write_floor_bundle(work / "floor-sleep", rootfs, ["sleep", "3600"])
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    out_path, err_path = work / "floor.stdout", work / "floor.stderr"
    run = Measurement()
    say(f"floor: runsc run python3 print x{iterations} (+1 warm-up)")
    for index in range(iterations + 1):
        sandbox_id = f"{prefix}-run-{index}"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            started = time.perf_counter()
            try:
                code = subprocess.run([*runsc, "run", f"--bundle={hello}", sandbox_id], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=err, timeout=RUNSC_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = None
                delete_container(runsc, sandbox_id)
            elapsed = (time.perf_counter() - started) * 1000
        if index == 0:
            continue
        if code == 0 and out_path.read_bytes() == b"1\n":
            run.samples_ms.append(elapsed)
        else:
            run.errors += 1
            run.notes.append(f"exit {code}: {err_path.read_text(errors='replace').strip()[-200:]}")
    execs = Measurement()
    sleeper_id = f"{prefix}-exec"
    say(f"floor: runsc exec /bin/true x{iterations} (+1 warm-up) into one running sandbox")
    try:
        with open(err_path, "wb") as err:
            code = subprocess.run([*runsc, "run", "--detach", f"--bundle={sleeper}", sleeper_id],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                  timeout=RUNSC_TIMEOUT_S).returncode
        if code != 0:
            execs.errors += 1
            execs.notes.append(f"runsc run --detach exited {code}: {err_path.read_text(errors='replace')[-200:]}")
            return {"floor_run": run, "floor_exec": execs}
        for index in range(iterations + 1):
            started = time.perf_counter()
            try:
                code = subprocess.run([*runsc, "exec", sleeper_id, "/bin/true"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      timeout=RUNSC_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = None
            elapsed = (time.perf_counter() - started) * 1000
            if index and code == 0:
                execs.samples_ms.append(elapsed)
            elif index:
                execs.errors += 1
    finally:
        delete_container(runsc, sleeper_id)
    return {"floor_run": run, "floor_exec": execs}


def delete_container(runsc: list[str], sandbox_id: str) -> None:
    subprocess.run([*runsc, "delete", "--force", sandbox_id], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=RUNSC_TIMEOUT_S)


# -- our own service ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalService:
    """``python -m orchestrator`` on a free 127.0.0.1 port, own state dir and cgroup parent."""

    def __init__(self, name: str, work: pathlib.Path, log_path: pathlib.Path, cgroup_parent: str,
                 overrides: dict[str, str]):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = work / f"state-{name}"
        self.log_path = log_path
        self.overrides = {**SERVICE_ENV, "SANDBOX_EXECUTOR_MANAGER_PORT": str(self.port),
                          "SANDBOX_STATE_DIR": str(self.state_dir), "SANDBOX_CGROUP_PARENT": cgroup_parent, **overrides}
        # Pool sizes are the benchmark's to set, and its services need no token.
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(DROPPED_ENV)}
        self.env = {**inherited, **self.overrides}
        self.process: subprocess.Popen | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "orchestrator"], cwd=REPO, env=self.env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"start service {self.name}: it exited {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise BenchError(f"start service {self.name}: no answer on /healthz within {START_TIMEOUT_S:.0f} s")

    async def stop(self) -> dict:
        """SIGTERM, wait for the exit (SIGKILL past the deadline); what happened, for the JSON."""
        facts = {"env": self.overrides, "log": str(self.log_path), "exit_code": None, "killed": False}
        if self.process is None:
            return facts
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
                facts["killed"] = True
                say(f"service {self.name} did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM: killed")
        facts["exit_code"] = self.process.returncode
        return facts


@contextlib.asynccontextmanager
async def own_service(name: str, session: aiohttp.ClientSession, work: pathlib.Path, log_dir: pathlib.Path,
                      cgroup_parent: str, overrides: dict[str, str], results: Results):
    service = LocalService(name, work, log_dir / f"service-{name}.log", cgroup_parent, overrides)
    say(f"starting service '{name}' on {service.url} ({', '.join(f'{k}={v}' for k, v in overrides.items())})")
    try:
        await service.start(session)
        yield service
    finally:
        results.services[name] = await service.stop()
        say(f"service '{name}' stopped, exit code {results.services[name]['exit_code']}")


# -- HTTP ------------------------------------------------------------------------------------------

@dataclass
class Reply:
    ok: bool
    ms: float
    run_ms: float | None = None  # X-Sandbox-Run-Ms: the runner's own time for the user's code
    warm: bool | None = None  # X-Sandbox-Warm
    problem: str | None = None


async def post_run(session: aiohttp.ClientSession, url: str, code: str) -> Reply:
    body = json.dumps({"code_b64": base64.b64encode(code.encode()).decode(), "language": "python",
                       "arguments": {}}).encode()
    started = time.perf_counter()
    try:
        async with session.post(url + "/run", data=body, headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
            raw = await response.read()
            ms = (time.perf_counter() - started) * 1000
            status, headers = response.status, response.headers
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Reply(False, (time.perf_counter() - started) * 1000, problem=f"no answer: {type(exc).__name__} {exc}")
    try:
        result = json.loads(raw)
    except ValueError:
        result = None
    problem = None
    if status != 200:
        problem = f"HTTP {status}"
    elif not isinstance(result, dict) or result.get("status") != "success":
        result = result if isinstance(result, dict) else {}
        problem = f"status {result.get('status')} exit_code {result.get('exit_code')}: {str(result.get('stderr'))[:100]}"
    run_ms = headers.get("X-Sandbox-Run-Ms")
    return Reply(problem is None, ms, run_ms=float(run_ms) if run_ms else None,
                 warm={"1": True, "0": False}.get(headers.get("X-Sandbox-Warm", "")), problem=problem)


def record(measurement: Measurement, reply: Reply) -> None:
    if reply.ok:
        measurement.samples_ms.append(reply.ms)
    else:
        measurement.errors += 1
        if len(measurement.notes) < 3 and reply.problem not in measurement.notes:
            measurement.notes.append(reply.problem)
    if reply.warm is not None:
        key = "warm" if reply.warm else "cold"
        measurement.extra[key] = measurement.extra.get(key, 0) + 1


async def pool_state(session: aiohttp.ClientSession, url: str) -> dict | None:
    """``/status``'s pools (our service), or None where the endpoint has no such thing."""
    try:
        async with session.get(url + "/status", timeout=aiohttp.ClientTimeout(total=5)) as response:
            body = await response.json(content_type=None) if response.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    pools = body.get("pools") if isinstance(body, dict) else None
    return pools if isinstance(pools, dict) else None


async def wait_pools(session: aiohttp.ClientSession, url: str, *, keys: tuple[str, ...] | None = None,
                     full: bool = True, timeout: float = SETTLE_TIMEOUT_S) -> bool:
    """Until every pool (or those of ``keys``) is full with nothing booting, or, when not
    ``full``, has at least one ready member; False at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        state = await pool_state(session, url) or {}
        chosen = [state[key] for key in (keys or tuple(state)) if key in state]
        if full:
            done = all(pool["ready"] >= pool["size"] and pool["booting"] == 0 for pool in chosen)
        else:
            done = bool(chosen) and all(pool["ready"] >= 1 for pool in chosen)
        if done:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


def request_gate(session: aiohttp.ClientSession, url: str, pause_s: float | None) -> Gate:
    """What runs before each warm request: with pool state (``pause_s`` None) wait until all
    pools are full with nothing booting; without, a pause."""
    if pause_s is not None:
        async def pause() -> None:
            await asyncio.sleep(pause_s)
        return pause

    async def settle() -> None:
        if not await wait_pools(session, url):
            raise BenchError(f"pools not full within {SETTLE_TIMEOUT_S:.0f} s: {await pool_state(session, url)}")
    return settle


async def sequential(session: aiohttp.ClientSession, url: str, code: str, count: int,
                     before: Gate) -> tuple[Measurement, list[Reply]]:
    measurement, replies = Measurement(), []
    for _ in range(count):
        await before()
        reply = await post_run(session, url, code)
        record(measurement, reply)
        replies.append(reply)
    return measurement, replies


async def burst(session: aiohttp.ClientSession, url: str) -> Measurement:
    gate = asyncio.Semaphore(BURST_CONCURRENCY)

    async def one() -> Reply:
        async with gate:
            return await post_run(session, url, HELLO)

    started = time.perf_counter()
    replies = await asyncio.gather(*(one() for _ in range(BURST_TOTAL)))
    measurement = Measurement(extra={"wall_s": round(time.perf_counter() - started, 2)})
    for reply in replies:
        record(measurement, reply)
    return measurement


async def hello_during_loops(session: aiohttp.ClientSession, url: str, count: int) -> Measurement:
    """Up to ``count`` hellos, one per LOOP_HELLO_PAUSE_S, while ``LOOPS`` requests spin in
    ``while True: pass``: what a user sees, whatever state the pools are in (a hello finds a
    warm sandbox or boots one beside the loops), all within ``LOOP_BUDGET_S`` of the loops'
    start and only while every loop is still running."""
    loops = [asyncio.ensure_future(post_run(session, url, LOOP)) for _ in range(LOOPS)]
    started = time.monotonic()
    measurement = Measurement()
    try:
        await asyncio.sleep(1.0)
        for _ in range(count):
            if started + LOOP_BUDGET_S - time.monotonic() < 5.0 or any(loop.done() for loop in loops):
                break
            record(measurement, await post_run(session, url, HELLO))
            await asyncio.sleep(LOOP_HELLO_PAUSE_S)
        spinning = sum(not loop.done() for loop in loops)
    finally:
        loop_replies = await asyncio.gather(*loops)
    sent = len(measurement.samples_ms) + measurement.errors
    if sent < count:
        measurement.notes.append(f"{sent} of {count} hellos fit while the loops ran ({LOOP_BUDGET_S:.0f} s budget)")
    if spinning < LOOPS:
        measurement.notes.append(f"only {spinning}/{LOOPS} loops were still running when the last hello answered")
    outcomes = sorted({reply.problem or "success" for reply in loop_replies})
    measurement.notes.append(f"the loops ended with: {'; '.join(outcomes)[:160]}")
    return measurement


# -- memory and leftovers --------------------------------------------------------------------------

def _bundle_of(cmdline: list[str]) -> str | None:
    for index, arg in enumerate(cmdline):
        if arg.startswith(("--bundle=", "-bundle=")):
            return arg.split("=", 1)[1]
        if arg in ("--bundle", "-bundle") and index + 1 < len(cmdline):
            return cmdline[index + 1]
    return None


def _profile_of(state_dir: pathlib.Path, sandbox_id: str) -> str:
    """A sandbox's pool profile (``python``, ``python_preload``), read from its bundle."""
    try:
        spec = json.loads((state_dir / "sandboxes" / sandbox_id / "bundle" / "config.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    language = spec.get("annotations", {}).get("dev.gvisor-sandbox.language", sandbox_id.split("-")[0])
    preload = any(entry.startswith("SANDBOX_PRELOAD=") for entry in spec.get("process", {}).get("env", []))
    return f"{language}_preload" if preload else language


def sandbox_pss_mb(state_dir: pathlib.Path) -> dict[str, list[float]]:
    """Per profile, each live sandbox's host PSS (MiB): its ``runsc run``, gofer and sandbox
    processes (found by our ``--root`` and their bundle) and all their descendants (the
    ptrace stubs)."""
    root_flag = f"--root={state_dir / 'runsc'}"
    groups: dict[str, dict[int, psutil.Process]] = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        bundle = _bundle_of(cmdline) if root_flag in cmdline else None
        if bundle is None:
            continue
        group = groups.setdefault(pathlib.Path(bundle).parent.name, {})
        with contextlib.suppress(psutil.Error):
            for member in (process, *process.children(recursive=True)):
                group[member.pid] = member
    per_profile: dict[str, list[float]] = {}
    for sandbox_id, group in sorted(groups.items()):
        pss = 0
        for member in group.values():
            with contextlib.suppress(psutil.Error):
                pss += member.memory_full_info().pss
        per_profile.setdefault(_profile_of(state_dir, sandbox_id), []).append(pss / 2**20)
    return per_profile


def count_runsc_processes() -> int:
    """runsc processes on the host (``runsc``, ``runsc-gofer``, ``runsc-sandbox``)."""
    return sum(1 for process in psutil.process_iter(["cmdline"])
               if os.path.basename((process.info["cmdline"] or [""])[0]).startswith("runsc"))


def find_leftovers(runsc_binary: pathlib.Path, roots: list[pathlib.Path]) -> list[str]:
    """runsc processes and containers under our ``--root``s."""
    found = []
    flags = {f"--root={root}" for root in roots}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if flags & set(cmdline):
            found.append(f"process {process.pid}: {' '.join(cmdline)[:120]}")
    for root in roots:
        if root.exists():
            listed = subprocess.run([str(runsc_binary), f"--root={root}", "list", "--quiet"], stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=RUNSC_TIMEOUT_S)
            found += [f"runsc container {name} under {root}" for name in listed.stdout.split()]
    return found


def remove_cgroup_parent(parent: str) -> list[str]:
    """Remove our (empty) cgroup parent from every hierarchy; what could not be removed."""
    cgroups = Cgroups(CGROUP_ROOT, parent)
    children = cgroups.list_sandboxes()
    if children:
        return [f"cgroups under /{parent}: {', '.join(children)}"]
    try:
        cgroups.remove_parent()
    except ServiceError as exc:
        return [str(exc)]
    return []


# -- the phases --------------------------------------------------------------------------------------

async def warm_workloads(session: aiohttp.ClientSession, url: str, args, results: Results, *,
                         settle: Gate,
                         state_dir: pathlib.Path | None) -> list[Reply]:
    """hello and pandas warm, the idle sandboxes' memory (when ``state_dir`` is ours), 32 at 16,
    hello while loops run.  ``settle`` runs before each request (our service: all pools full),
    Returns the warm hello replies."""
    say(f"hello warm x{args.iterations}")
    results.measurements["hello_warm"], hello_replies = await sequential(session, url, HELLO, args.iterations, settle)
    say(f"pandas warm x{args.pandas_iterations}")
    results.measurements["pandas_warm"], _ = await sequential(session, url, PANDAS, args.pandas_iterations, settle)
    if state_dir is not None:
        await settle()
        say("host memory of the idle warm sandboxes")
        results.memory_mb = sandbox_pss_mb(state_dir)
    say(f"{BURST_TOTAL} hello requests at concurrency {BURST_CONCURRENCY}")
    await settle()
    results.measurements["burst"] = await burst(session, url)
    await settle()
    say(f"hello x{args.loop_iterations} while {LOOPS} infinite loops run")
    results.measurements["hello_loops"] = await hello_during_loops(session, url, args.loop_iterations)
    return hello_replies


def overhead_of(replies: list[Reply]) -> Measurement | None:
    """End-to-end latency minus the runner's own time, for requests served warm."""
    samples = [reply.ms - reply.run_ms for reply in replies if reply.ok and reply.warm and reply.run_ms is not None]
    return Measurement(samples_ms=samples) if samples else None


async def bench_own_service(args, work: pathlib.Path, log_dir: pathlib.Path, cgroup_parent: str,
                            results: Results) -> None:
    async with aiohttp.ClientSession() as session:
        if args.skip_cold:
            results.skip("cold workloads", "--skip-cold")
        else:
            async with own_service("cold", session, work, log_dir, cgroup_parent, COLD_ENV, results) as service:
                pause = request_gate(session, service.url, COLD_PAUSE_S)
                await post_run(session, service.url, HELLO)  # warm-up: page cache, first imports
                say(f"hello cold x{args.iterations}")
                results.measurements["hello_cold"], _ = await sequential(session, service.url, HELLO,
                                                                         args.iterations, pause)
                say(f"pandas cold x{args.pandas_iterations} (seconds each under ptrace)")
                results.measurements["pandas_cold"], _ = await sequential(session, service.url, PANDAS,
                                                                          args.pandas_iterations, pause)
        async with own_service("warm", session, work, log_dir, cgroup_parent, WARM_ENV, results) as service:
            settle = request_gate(session, service.url, None)
            say("waiting for the warm pools to fill")
            await settle()
            replies = await warm_workloads(session, service.url, args, results, settle=settle,
                                           state_dir=service.state_dir)
    overhead = overhead_of(replies)
    if overhead is not None:
        results.measurements["overhead"] = overhead


async def bench_url(args, results: Results, token: str | None) -> None:
    """The HTTP workloads against ``--url`` (with ``Authorization: Bearer`` when a token is set)."""
    url = args.url.rstrip("/")
    results.skip("cold workloads", "--url: the endpoint's pool cannot be emptied from here")
    results.skip("host memory per idle warm sandbox", "--url: needs the service's processes and state dir")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession(headers=headers) as session:
        has_pools = await pool_state(session, url) is not None
        if not has_pools:
            results.skip("waiting for a ready pool member", f"--url: no pool state at /status; sequential requests "
                                                             f"{args.pause:g} s apart instead")
        settle = request_gate(session, url, None if has_pools else args.pause)
        replies = await warm_workloads(session, url, args, results, settle=settle,
                                       state_dir=None)
        if not has_pools:
            for key in ("hello_warm", "pandas_warm", "hello_loops"):
                results.measurements[key].notes.append(f"{args.pause:g} s pauses; warm or not is the endpoint's affair")
    overhead = overhead_of(replies)
    if overhead is None:
        results.skip("service overhead", "--url: the endpoint sends no X-Sandbox-Run-Ms / X-Sandbox-Warm headers")
    else:
        results.measurements["overhead"] = overhead


# -- entry point -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark this RAGFlow-compatible endpoint instead of starting our service")
    parser.add_argument("--json", default="bench-results/bench.json", help="output JSON; the PNG goes next to it")
    parser.add_argument("--iterations", type=int, default=None, help="requests per fast workload (default 20)")
    parser.add_argument("--pandas-iterations", type=int, default=None, help="requests per pandas workload (default 5)")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds between requests when the endpoint shows no pool state (--url)")
    parser.add_argument("--skip-floors", action="store_true", help="do not measure raw runsc")
    parser.add_argument("--skip-cold", action="store_true", help="do not measure the cold workloads")
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--baseline-json", help="an earlier run's JSON (e.g. --url against the Docker original)")
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 5 if args.quick else 20
    if args.pandas_iterations is None:
        args.pandas_iterations = 2 if args.quick else 5
    args.loop_iterations = max(3, min(10, args.iterations // 2))
    if min(args.iterations, args.pandas_iterations) < 1:
        parser.error("iterations must be at least 1")
    return args


def runsc_version(binary: pathlib.Path) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=RUNSC_TIMEOUT_S)
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    results, failed, leftovers = Results(), False, []
    warnings, others, load_start = [], count_runsc_processes(), os.getloadavg()
    if others:
        warnings.append(f"{others} runsc processes of others were running at the start "
                        f"(load average {load_start[0]:.1f}): the numbers are noisy")
        say(warnings[-1])
    runsc_problem = None if os.geteuid() == 0 else "needs root"
    rootfs = None
    if runsc_problem is None:
        try:
            languages = load_languages(settings.languages_dirs)
            rootfs = resolve_rootfs(settings, {"python": languages["python"]})["python"]
        except (ServiceError, KeyError) as exc:
            runsc_problem = f"no python rootfs: {exc}"
    if runsc_problem is None and runsc_version(settings.runsc.binary) is None:
        runsc_problem = f"{settings.runsc.binary} --version failed"
    floor_root = work / "floor-runsc"
    try:
        if args.skip_floors:
            results.skip("floors", "--skip-floors")
        elif runsc_problem:
            results.skip("floors", f"runsc unusable here: {runsc_problem}")
        else:
            runsc = [str(settings.runsc.binary), f"--root={floor_root}", f"--platform={settings.runsc.platform}",
                     "--network=none"]
            results.measurements.update(measure_floors(runsc, rootfs, work, args.iterations))
        if args.url:
            asyncio.run(bench_url(args, results, settings.api_token))
        elif runsc_problem:
            results.skip("our /run workloads", f"cannot start the service here: {runsc_problem}")
        else:
            asyncio.run(bench_own_service(args, work, log_dir, cgroup_parent, results))
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        failed = True
        results.skip("the rest of the run", f"aborted: {exc}")
    finally:
        leftovers = clean_up(settings, work, floor_root, cgroup_parent, results)
    meta = {
        "target": args.url or "our service, started by the benchmark",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "runsc": runsc_version(settings.runsc.binary), "platform": settings.runsc.platform,
        "iterations": args.iterations, "pandas_iterations": args.pandas_iterations,
        "loop_iterations": args.loop_iterations, "memory_unit": "MB = 2**20 bytes of PSS",
        "load_average_start": [round(value, 2) for value in load_start],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "services": results.services, "leftovers": leftovers, "warnings": warnings,
    }
    doc = bench_report.build_document(meta, results.measurements, results.memory_mb, results.skipped, baseline)
    print(bench_report.format_table(doc))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    png_path = json_path.with_suffix(".png")
    plotted = bench_report.plot(doc, png_path)
    print(f"\njson: {json_path}\npng:  {png_path if plotted else 'not written (no samples, or no matplotlib)'}"
          f"\ntook {meta['duration_s']} s")
    return 1 if failed or leftovers else 0


def clean_up(settings: Settings, work: pathlib.Path, floor_root: pathlib.Path, cgroup_parent: str,
             results: Results) -> list[str]:
    """Check that nothing of ours survived; remove our cgroup parent and temp dir; what was left."""
    roots = [floor_root, *(work / f"state-{name}" / "runsc" for name in ("cold", "warm"))]
    leftovers = find_leftovers(settings.runsc.binary, roots)
    leftovers += remove_cgroup_parent(cgroup_parent)
    leftovers += [f"service {name} exited {facts['exit_code']}" for name, facts in results.services.items()
                  if facts["exit_code"] != 0]
    if any(entry.startswith(("process", "runsc container")) for entry in leftovers):
        say(f"LEFT BEHIND: {'; '.join(leftovers)} (temp dir {work} kept)")
        return leftovers
    shutil.rmtree(work, ignore_errors=True)
    if leftovers:
        say(f"LEFT BEHIND: {'; '.join(leftovers)}")
    else:
        say("clean: no runsc container, runsc process or cgroup of ours left; services exited 0")
    return leftovers


if __name__ == "__main__":
    sys.exit(main())
