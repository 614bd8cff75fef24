"""The benchmark's scenarios, its HTTP client and its closed loop, against a fake RAGFlow-style
endpoint served by aiohttp on 127.0.0.1 (no runsc, no root); and one whole run of the
command line against two such endpoints."""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import itertools
import json
import shutil
import subprocess
import threading
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.bench import cli
from orchestrator.bench.client import is_settled, judge, post_run, runner_ms, served_by
from orchestrator.bench.load import closed_loop, quiet_load
from orchestrator.bench.scenario import HELLO, KINDS, NODE, PANDAS, SCENARIOS, Scenario
from orchestrator.bench.side import Plan, Side, sustained_scenarios

# -- the scenarios are data ---------------------------------------------------------------------


def test_the_issues_scenarios_and_kinds():
    assert {name: scenario.mix for name, scenario in SCENARIOS.items()} == {
        "hello": (("hello", 1),), "pandas": (("pandas", 1),), "mix": (("hello", 5), ("pandas", 3), ("node", 2))}
    assert (HELLO.language, PANDAS.language, NODE.language) == ("python", "python", "nodejs")
    assert PANDAS.code.startswith("import pandas as pd\n")
    assert 'return int(pd.DataFrame({"a": [1, 2, 3]}).a.sum())' in PANDAS.code
    assert set(KINDS) == {"hello", "pandas", "node"}


def test_the_hello_kind_returns_what_it_is_checked_against():
    """(The pandas kind runs in a real sandbox: tests/runsc/test_python.py.)"""
    namespace = {}
    exec(compile(HELLO.code, HELLO.name, "exec"), namespace)  # noqa: S102 - our own constant code
    assert namespace["main"]() == HELLO.expected


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed on this host")
def test_node_kind_returns_what_it_is_checked_against():
    script = NODE.code + "\nconsole.log(JSON.stringify(main()));\n"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(out) == NODE.expected


def test_mix_order_spreads_the_weights():
    order = [kind.name for kind in SCENARIOS["mix"].order()]
    assert order == ["hello", "pandas", "node", "hello", "hello", "pandas", "hello", "node", "pandas", "hello"]
    assert [kind.name for kind in SCENARIOS["pandas"].order()] == ["pandas"]
    uneven = Scenario("x", "x", (("node", 1), ("hello", 3)))
    assert collections.Counter(kind.name for kind in uneven.order()) == {"hello": 3, "node": 1}


def test_a_scenario_refuses_what_it_cannot_send():
    for mix in ((), (("perl", 1),), (("hello", 0),)):
        with pytest.raises(ValueError):
            Scenario("bad", "bad", mix)


# -- judging one answer -------------------------------------------------------------------------

def answer(value, *, status="success", present=True) -> dict:
    return {"status": status, "stdout": "", "stderr": "" if status == "success" else "boom", "exit_code": 0,
            "result": {"present": present, "value": value, "type": "json"} if status == "success" else None}


def test_judge_checks_status_and_the_expected_value():
    assert judge(200, answer(6), PANDAS) is None
    assert judge(200, answer("hi"), HELLO) is None
    assert "wrong result for pandas" in judge(200, answer(7), PANDAS)
    assert "wrong result" in judge(200, answer(6, present=False), PANDAS)
    assert "wrong result" in judge(200, {**answer(6), "result": None}, PANDAS)
    assert judge(200, answer(None, status="program_error"), HELLO).startswith("status program_error")
    assert judge(500, answer("hi"), HELLO) == "HTTP 500"
    assert judge(200, ["hi"], HELLO) == "the body is not a JSON object"
    assert judge(200, answer(6.0), PANDAS) is None  # JSON has one number type


@pytest.mark.parametrize(("headers", "start"), [
    ({"X-Sandbox-Start": "restored", "X-Sandbox-Warm": "0"}, "restored"),
    ({"X-Sandbox-Start": " Warm "}, "warm"),
    ({"X-Sandbox-Start": "booted"}, "booted"),
    ({"X-Sandbox-Start": "teleported", "X-Sandbox-Warm": "1"}, "warm"),
    ({"X-Sandbox-Warm": "1"}, "warm"),
    ({"X-Sandbox-Warm": "0"}, "booted"),
    ({"X-Sandbox-Warm": "maybe"}, "unknown"),
    ({}, "unknown"),
])
def test_served_by_prefers_x_sandbox_start_then_x_sandbox_warm(headers, start):
    assert served_by(headers) == start


# -- a fake endpoint ----------------------------------------------------------------------------

class FakeEndpoint:
    """``POST /run`` the way RAGFlow's executor answers it, after ``delay_s``.  hello answers
    with ``X-Sandbox-Warm: 1``, pandas with ``X-Sandbox-Start: restored`` and node with neither;
    every ``wrong_every``-th pandas returns a wrong value and every ``error_every``-th hello a
    program error.  It records what it was sent, when, and how many were in flight at most."""

    def __init__(self, delay_s: float = 0.01, wrong_every: int = 0, error_every: int = 0, pools: bool = False):
        self.delay_s, self.wrong_every, self.error_every, self.pools = delay_s, wrong_every, error_every, pools
        self.sent: list[str] = []
        self.arrivals: list[float] = []
        self.bad = collections.Counter()
        self.in_flight = self.peak = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/run", self.run)
        if self.pools:
            app.router.add_get("/status", self.status)
        return app

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"pools": {"python": {"ready": 1, "size": 1, "booting": 0}}})

    async def run(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.perf_counter())
        body = await request.json()
        code = base64.b64decode(body["code_b64"]).decode()
        kind = "node" if body.get("language") == "nodejs" else "pandas" if "pandas" in code else "hello"
        self.sent.append(kind)
        number = self.sent.count(kind)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        result = answer(KINDS[kind].expected)
        if kind == "pandas" and self.wrong_every and number % self.wrong_every == 0:
            result, self.bad[kind] = answer(-1), self.bad[kind] + 1
        if kind == "hello" and self.error_every and number % self.error_every == 0:
            result, self.bad[kind] = answer(None, status="program_error"), self.bad[kind] + 1
        headers = {"hello": {"X-Sandbox-Warm": "1"}, "pandas": {"X-Sandbox-Start": "restored"}, "node": {}}[kind]
        return web.json_response(result, headers=headers)


@pytest.fixture
async def serve():
    """``await serve(endpoint)`` -> its base URL on 127.0.0.1; stopped at the end."""
    servers = []

    async def start(endpoint: FakeEndpoint) -> str:
        server = TestServer(endpoint.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def test_post_run_sends_the_kind_and_reads_how_it_was_served(serve):
    endpoint = FakeEndpoint(delay_s=0)
    url = await serve(endpoint)
    async with aiohttp.ClientSession() as session:
        replies = [await post_run(session, url, kind) for kind in (HELLO, PANDAS, NODE)]
    assert endpoint.sent == ["hello", "pandas", "node"]
    assert [(reply.ok, reply.kind, reply.start) for reply in replies] == [
        (True, "hello", "warm"), (True, "pandas", "restored"), (True, "node", "unknown")]


async def test_post_run_without_an_answer_is_a_failure_served_by_nobody(unused_tcp_port):
    async with aiohttp.ClientSession() as session:
        reply = await post_run(session, f"http://127.0.0.1:{unused_tcp_port}", HELLO)
    assert not reply.ok and reply.start is None and reply.problem.startswith("no answer")


# -- the closed loop ----------------------------------------------------------------------------

async def test_closed_loop_keeps_exactly_n_runs_in_flight_and_accounts_for_each(serve):
    endpoint = FakeEndpoint(delay_s=0.02, wrong_every=4, error_every=3)
    url = await serve(endpoint)
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        run = await closed_loop(session, url, SCENARIOS["mix"], clients=4, duration_s=0.6)
    sent = collections.Counter(endpoint.sent)
    assert endpoint.peak == 4  # all four clients at once, never a fifth
    assert max(endpoint.arrivals) < started + 0.6 + 0.05  # nothing sent once the time is up
    assert 0.6 <= run.wall_s < 0.6 + 0.02 * 3 + 0.5  # the last runs in flight are awaited
    # Every run sent was answered and counted, in the mix's order.
    assert {kind: measurement.runs for kind, measurement in run.kinds.items()} == {
        kind: sent[kind] for kind in ("hello", "pandas", "node")}
    expected = collections.Counter(kind.name for kind in itertools.islice(itertools.cycle(SCENARIOS["mix"].order()),
                                                                          len(endpoint.sent)))
    assert sent == expected and len(endpoint.sent) >= 40
    # Failures: exactly the wrong answers the endpoint gave, per kind.
    assert {kind: run.kinds[kind].errors for kind in run.kinds} == {"hello": endpoint.bad["hello"],
                                                                   "pandas": endpoint.bad["pandas"], "node": 0}
    assert run.failed == sum(endpoint.bad.values()) > 0
    assert any("wrong result for pandas" in note for note in run.kinds["pandas"].notes)
    assert run.ok == len(endpoint.sent) - run.failed
    assert run.runs_per_s() == pytest.approx(run.ok / run.wall_s)
    assert run.served() == {"warm": sent["hello"], "restored": sent["pandas"], "unknown": sent["node"]}


async def test_closed_loop_reads_the_cpu_clock_around_the_whole_run(serve):
    endpoint = FakeEndpoint(delay_s=0.01)
    url = await serve(endpoint)
    readings = iter([100.0, 101.5])
    read_at = []

    def clock() -> float:
        read_at.append((time.perf_counter(), len(endpoint.sent)))
        return next(readings)

    async with aiohttp.ClientSession() as session:
        run = await closed_loop(session, url, SCENARIOS["hello"], clients=2, duration_s=0.2, cpu_clock=clock)
        plain = await closed_loop(session, url, SCENARIOS["hello"], clients=1, duration_s=0.05)
    (_, sent_before), (_, sent_after) = read_at
    assert sent_before == 0 and sent_after == run.ok > 0  # before the first request, after the last answer
    assert run.host_cpu_s == 1.5 and run.host_cpu_ms_per_run() == pytest.approx(1500 / run.ok)
    assert plain.host_cpu_s is None and plain.host_cpu_ms_per_run() is None


async def test_quiet_load_reads_the_cpu_clock_around_a_window_with_nothing_sent():
    readings = iter([10.0, 10.3])
    started = time.perf_counter()
    load = await quiet_load(lambda: next(readings), 0.2)
    took = time.perf_counter() - started
    assert 0.2 <= took and load == pytest.approx(300 / took, rel=0.01)  # 0.3 s of CPU over the window
    with pytest.raises(ValueError, match="window"):
        await quiet_load(lambda: 0.0, 0)


async def test_closed_loop_with_one_client_is_sequential(serve):
    endpoint = FakeEndpoint(delay_s=0.01)
    url = await serve(endpoint)
    async with aiohttp.ClientSession() as session:
        run = await closed_loop(session, url, SCENARIOS["pandas"], clients=1, duration_s=0.2)
        with pytest.raises(ValueError):
            await closed_loop(session, url, SCENARIOS["hello"], clients=0, duration_s=1)
    assert endpoint.peak == 1 and run.failed == 0
    assert set(endpoint.sent) == {"pandas"} and run.kinds["pandas"].runs == len(endpoint.sent)


async def test_scenarios_wait_for_quiet_and_note_it(serve):
    plain, pooled = FakeEndpoint(delay_s=0), FakeEndpoint(delay_s=0, pools=True)
    plan = Plan(groups=frozenset({"sustained"}), scenarios=(SCENARIOS["hello"], SCENARIOS["mix"]), clients=2,
                duration_s=0.1, settle_s=0.05, quiet_s=0.05)
    side, ours = Side("foreign"), Side("ours")
    async with aiohttp.ClientSession() as session:
        await sustained_scenarios(session, await serve(plain), plan, side, has_pools=False)
        await sustained_scenarios(session, await serve(pooled), plan, ours, has_pools=True)
        unread = Side("unread")
        await sustained_scenarios(session, await serve(plain), dataclasses.replace(plan, quiet_s=0), unread,
                                  has_pools=False)
    assert list(side.sustained) == ["hello", "mix"]
    # a local endpoint: the host's load before each scenario was read (a real clock: some CPU went)
    assert all(run.quiet_cpu_ms_per_s is not None and run.quiet_cpu_ms_per_s >= 0
               for run in [*side.sustained.values(), *ours.sustained.values()])
    assert all(run.quiet_cpu_ms_per_s is None for run in unread.sustained.values())
    assert side.sustained["hello"].notes == ["0.05 s pause before (no pool state to wait for)"]
    assert side.sustained["mix"].status_after is None
    assert ours.sustained["mix"].notes == []
    assert ours.sustained["mix"].status_after == {"pools": {"python": {"ready": 1, "size": 1, "booting": 0}}}


# -- the whole command line against two fake endpoints ----------------------------------------

class ThreadedEndpoint:
    """A FakeEndpoint on its own event loop in a thread, for code that runs ``asyncio.run``."""

    def __init__(self, endpoint: FakeEndpoint):
        self.endpoint = endpoint
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.runner = web.AppRunner(self.endpoint.app())
        asyncio.run_coroutine_threadsafe(self.runner.setup(), self.loop).result(10)
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self.loop).result(10)
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_one_invocation_measures_both_sides_and_writes_the_ratios(tmp_path, capsys):
    fast, slow = FakeEndpoint(delay_s=0.005), FakeEndpoint(delay_s=0.05, wrong_every=2)
    out = tmp_path / "results" / "bench.json"
    with ThreadedEndpoint(fast) as ours, ThreadedEndpoint(slow) as theirs:
        code = cli.main(["--url", ours, "--compare-url", theirs, "--only", "sustained", "--scenario", "pandas,mix",
                         "--duration", "0.3", "--settle", "0", "--quiet", "0.05", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["target"] == ours and doc["compare"]["target"] == theirs
    assert doc["meta"]["groups"] == ["sustained"] and doc["meta"]["scenarios"] == ["pandas", "mix"]
    assert list(doc["sustained"]) == list(doc["compare"]["sustained"]) == ["pandas", "mix"]
    assert doc["workloads"] == {} and doc["compare"]["workloads"] == {}
    assert doc["sustained"]["pandas"]["failed"] == 0 and doc["compare"]["sustained"]["pandas"]["failed"] > 0
    assert doc["sustained"]["pandas"]["served"] == {"restored": doc["sustained"]["pandas"]["runs"]}
    assert all(side["sustained"][name]["quiet_cpu_ms_per_s"] is not None  # both sides are local here
               for side in (doc, doc["compare"]) for name in ("pandas", "mix"))
    (pandas, mix) = doc["comparison"]["sustained"]
    assert pandas["scenario"] == "pandas" and pandas["runs_per_s_ratio"] > 2  # 10x faster, half of theirs wrong
    assert mix["kinds"][0]["kind"] == "hello" and mix["kinds"][0]["p50_ratio"] > 2
    assert doc["meta"]["services"] == {} and doc["meta"]["leftovers"] == []
    printed = capsys.readouterr().out
    assert f"compare: {theirs}" in printed and "mix hello 5 : pandas 3 : node 2" in printed
    assert "skipped: floors: not chosen" in printed


def test_a_broken_endpoint_stops_its_side_at_the_preflight(tmp_path, capsys):
    healthy, broken = FakeEndpoint(delay_s=0), FakeEndpoint(delay_s=0, wrong_every=1)
    out = tmp_path / "bench.json"
    with ThreadedEndpoint(healthy) as ours, ThreadedEndpoint(broken) as theirs:
        code = cli.main(["--url", ours, "--compare-url", theirs, "--only", "sustained", "--scenario", "hello,pandas",
                         "--duration", "0.2", "--settle", "0", "--quiet", "0.05", "--json", str(out)])
    assert code == 1
    assert broken.sent == ["hello", "pandas"]  # the preflight, then nothing more
    doc = json.loads(out.read_text())
    assert list(doc["sustained"]) == ["hello", "pandas"] and doc["compare"]["sustained"] == {}
    (skip,) = doc["compare"]["skipped"]
    assert skip["what"] == "the rest of this side"
    assert skip["why"].startswith(f"aborted: preflight: {theirs} does not answer a pandas run correctly: wrong result")
    assert "skipped: compare: the rest of this side: aborted: preflight" in capsys.readouterr().out


def test_the_plan_preflights_the_kinds_it_sends():
    mix, hello = SCENARIOS["mix"], SCENARIOS["hello"]
    assert Plan(frozenset({"sustained"}), (hello,)).kinds_sent() == (HELLO,)
    assert Plan(frozenset({"sustained"}), (hello, mix)).kinds_sent() == (HELLO, PANDAS, NODE)
    assert Plan(frozenset({"idle", "sustained"}), (hello,)).kinds_sent() == (HELLO, PANDAS)
    assert Plan(frozenset({"idle", "sustained"}), (mix,)).kinds_sent(("idle",)) == (HELLO, PANDAS)
    assert Plan(frozenset({"cold", "floors"}), (mix,)).kinds_sent() == ()


def test_runner_time_header_is_read_when_it_is_a_number():
    assert runner_ms({"X-Sandbox-Run-Ms": "2.500"}) == 2.5
    assert runner_ms({"X-Sandbox-Run-Ms": "n/a"}) is None
    assert runner_ms({}) is None


def test_settled_means_full_pools_and_no_snapshot_in_the_making():
    full = {"python": {"ready": 2, "size": 2, "booting": 0}, "python_preload": {"ready": 0, "size": 0, "booting": 0}}
    assert is_settled({"pools": full})
    assert is_settled({})  # no pools, no snapshots: nothing to wait for
    assert not is_settled({"pools": {**full, "nodejs": {"ready": 0, "size": 1, "booting": 1}}})
    assert not is_settled({"pools": {"python": {"ready": 2, "size": 2, "booting": 1}}})  # a replacement booting
    done = {"python": {"state": "ready"}, "nodejs": {"state": "off"}, "x": {"state": "failed"}, "y": {"state": "slower"}}
    assert is_settled({"pools": full, "snapshots": {"profiles": done}})
    for state in ("pending", "making"):
        assert not is_settled({"pools": full, "snapshots": {"profiles": {**done, "python_preload": {"state": state}}}})
