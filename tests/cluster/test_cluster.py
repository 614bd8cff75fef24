"""Three nodes behind HAProxy on this machine, 4 clients in a closed loop the whole time:
every node serves; a kill -9 fails only the runs in flight on that node, as explicit errors,
and none sent after it died; no run executes twice (the ids the runs return against the ids
each node logged as handed to a sandbox); a SIGTERM drain fails none; HAProxy's runtime drain
fails none and holds against the nodes' agent; restarted nodes get runs again.

Each run's code returns an id of its own, also sent as ``X-Request-Id`` so that every node's
log and HAProxy's log name it.  Nodes use short limits, no snapshots and one warm Python
sandbox each, to stay cheap on a small CI machine (about a minute and a half here).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass

import aiohttp
import pytest

from tests.cluster.cluster import BACKEND, HAProxy, Network, NodeProcess
from tests.conftest import require_haproxy, require_runsc

pytestmark = pytest.mark.cluster

NODES = 3
CLIENTS = 4
CONCURRENCY = 4  # per node; HAProxy's maxconn per server
PHASE_S = 6.0  # of steady load between events
RUNTIME_DRAIN_S = 5.0  # several agent checks (1 s) while the operator's drain holds
NOTICE_S = 3.0  # the bound: no failure for a run sent this long after a kill
MIN_RUNS_PER_NODE = 3
RUN_S = 0.2  # each run's own time in its sandbox: a kill can catch runs in the middle
NODE_ENV = {"SANDBOX_TIMEOUT": "3s", "SANDBOX_SNAPSHOTS": "off", "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "0",
            "SANDBOX_POOL_SIZE_PYTHON": "1", "SANDBOX_MAX_CONCURRENCY": str(CONCURRENCY),
            "SANDBOX_QUEUE_TIMEOUT": "10s"}


@dataclass
class Run:
    id: str
    sent: float
    done: float = 0.0
    http: int | None = None
    exit_code: int | None = None
    outcome: str = "pending"  # "ok", or what went wrong

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class ClosedLoop:
    """``clients`` clients, each sending its next run the moment the last one is answered."""

    def __init__(self, url: str, clients: int):
        self.url = url
        self.clients = clients
        self.runs: list[Run] = []
        self._stop = asyncio.Event()

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            run = Run(id=uuid.uuid4().hex, sent=time.monotonic())
            self.runs.append(run)
            code = f"import time\n\ndef main():\n    time.sleep({RUN_S})\n    return {run.id!r}\n"
            payload = {"code_b64": base64.b64encode(code.encode()).decode()}
            try:
                async with session.post(f"{self.url}/run", json=payload, headers={"X-Request-Id": run.id},
                                        timeout=aiohttp.ClientTimeout(total=60)) as response:
                    run.http = response.status
                    text = await response.text()
                body = json.loads(text) if text.startswith("{") else {}
                run.exit_code = body.get("exit_code")
                value = (body.get("result") or {}).get("value")
                if response.status == 200 and body.get("status") == "success" and value == run.id:
                    run.outcome = "ok"
                else:
                    run.outcome = f"HTTP {response.status}: {text[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                run.outcome = f"{type(exc).__name__}: {exc}"
            run.done = time.monotonic()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def cluster(tmp_path):
    require_runsc()
    haproxy_binary = require_haproxy()
    if shutil.which("nsenter") is None:
        if os.environ.get("REQUIRE_RUNSC") == "1":
            pytest.fail("REQUIRE_RUNSC=1 but nsenter (util-linux) is missing")
        pytest.skip("nsenter (util-linux) is missing")
    network = Network(NODES).create()
    nodes = [NodeProcess(index, network, tmp_path, dict(NODE_ENV)) for index in range(NODES)]
    haproxy = HAProxy(haproxy_binary, [node.config_node() for node in nodes], tmp_path, maxconn=CONCURRENCY,
                      run_timeout_s=3.0, queue_timeout_s=10.0)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        haproxy.start()
        for node in nodes:
            haproxy.wait_status(node.name, "UP")
        yield nodes, haproxy
    finally:
        try:
            haproxy.stop()
            codes = {node.name: node.stop() for node in nodes}
            left = [item for node in nodes for item in node.leftovers()]
            for node in nodes:
                node.remove_cgroup_parent()
        finally:
            network.remove()
    # Only when the test itself got this far: every node drained and exited 0, leaving nothing.
    assert all(code == 0 for code in codes.values()), codes
    assert left == [], left


async def test_three_nodes_behind_haproxy_lose_no_run(cluster):
    nodes, haproxy = cluster
    node1, node2, node3 = nodes
    loop = ClosedLoop(haproxy.url, CLIENTS)
    load = asyncio.create_task(loop.run())
    marks = {"start": time.monotonic()}
    try:
        await asyncio.sleep(PHASE_S)
        # Kill node1 while a run executes there: that run must fail, and never run elsewhere.
        await asyncio.to_thread(node1.wait_executing)
        marks["kill"] = time.monotonic()
        node1.signal(signal.SIGKILL)
        await asyncio.to_thread(node1.wait_exit)
        marks["dead"] = time.monotonic()
        await asyncio.sleep(PHASE_S)

        node1.start()  # same state dir: it reaps what the kill left
        await asyncio.to_thread(node1.wait_ready)
        await asyncio.to_thread(haproxy.wait_status, node1.name, "UP")
        marks["node1 back"] = time.monotonic()
        await asyncio.sleep(PHASE_S)

        marks["term"] = time.monotonic()
        node2.signal(signal.SIGTERM)
        assert await asyncio.to_thread(node2.wait_exit) == 0
        marks["node2 exited"] = time.monotonic()
        node2.start()  # a rolling upgrade: the same node comes back
        await asyncio.to_thread(node2.wait_ready)
        await asyncio.to_thread(haproxy.wait_status, node2.name, "UP")
        marks["node2 back"] = time.monotonic()
        await asyncio.sleep(PHASE_S)

        assert haproxy.command(f"set server {BACKEND}/{node3.name} state drain").strip() == ""
        marks["runtime drain"] = time.monotonic()
        await asyncio.sleep(RUNTIME_DRAIN_S)
        held = haproxy.servers()[node3.name]["status"]
        assert haproxy.command(f"set server {BACKEND}/{node3.name} state ready").strip() == ""
        marks["runtime ready"] = time.monotonic()
        await asyncio.sleep(PHASE_S)
    finally:
        loop.stop()
        await asyncio.wait_for(load, 90)
    marks["end"] = time.monotonic()

    runs = {run.id: run for run in loop.runs}
    failed = [run for run in loop.runs if not run.ok]
    routed = haproxy.requests()
    executed = {(node.name, life): node.executed(life) for node in nodes for life in range(len(node.logs))}
    handed = collections.Counter(request for ids in executed.values() for request in ids)

    def sent_between(run: Run, start: str, end: str) -> bool:
        return marks[start] <= run.sent < marks[end]

    phases = [("all serve", "start", "kill"), ("kill -9 node1", "kill", "node1 back"),
              ("node1 restarted", "node1 back", "term"), ("SIGTERM drain node2", "term", "node2 back"),
              ("node2 restarted", "node2 back", "runtime drain"),
              ("runtime drain node3", "runtime drain", "runtime ready"), ("node3 ready", "runtime ready", "end")]
    summary = {
        "runs": len(loop.runs), "ok": len(loop.runs) - len(failed),
        "failed by phase": {name: sum(1 for run in failed if marks[start] <= run.done < marks[end])
                            for name, start, end in phases},
        "runs by phase": {name: sum(1 for run in loop.runs if sent_between(run, start, end))
                          for name, start, end in phases},
        "executed twice": sum(1 for count in handed.values() if count > 1),
        "served per node life": {f"{name}#{life}": len(ids) for (name, life), ids in executed.items()},
        "redispatched by haproxy": sum(1 for entry in routed.values() if entry["retries"].startswith("+")),
        "refused by draining node2 (503, retried)": sum(
            1 for line in node2.logs[0].read_text().splitlines() if "refused (draining)" in line),
        "node1 unfinished at kill": sorted(request for request, status in executed[(node1.name, 0)].items()
                                           if status is None),
        "failures": [(run.id, round(run.sent - marks["kill"], 3), round(run.done - marks["kill"], 3), run.outcome[:80],
                      routed.get(run.id, {}).get("server")) for run in failed],
        "runtime drain status": held,
    }
    print(json.dumps(summary, indent=1))
    (haproxy.work / "summary.json").write_text(json.dumps(summary, indent=1))

    # All nodes serve.
    for node in nodes:
        first_life = executed[(node.name, 0)]
        assert sum(1 for request in first_life if runs[request].sent < marks["kill"]) >= MIN_RUNS_PER_NODE, node.name
    # kill -9: only the runs in flight on node1 when it died fail, at once and explicitly.
    unfinished = set(summary["node1 unfinished at kill"])
    for run in failed:
        assert run.sent < marks["dead"] and run.done >= marks["kill"], summary["failures"]  # in flight at the kill
        assert routed.get(run.id, {}).get("server") == node1.name, summary["failures"]
        assert (run.http, run.exit_code) == (502, -3), summary["failures"]  # HAProxy's answer in the contract's shape
        assert run.done - marks["kill"] < NOTICE_S, summary["failures"]
        assert handed[run.id] <= 1 and (run.id not in handed or run.id in executed[(node1.name, 0)])
    assert unfinished and unfinished <= {run.id for run in failed}  # one killed in its sandbox is never retried
    assert [run.id for run in failed if run.sent >= marks["dead"]] == []
    assert [run.id for run in failed if run.sent >= marks["kill"] + NOTICE_S] == []
    # Nothing executed twice; every answer is the run's own and was executed exactly once.
    assert summary["executed twice"] == 0
    assert set(handed) <= set(runs)
    for run in loop.runs:
        if run.ok:
            assert handed[run.id] == 1, run.id
    # The drains lose nothing, and the operator's drain holds against the nodes' agents.
    assert summary["failed by phase"]["SIGTERM drain node2"] == 0
    assert summary["failed by phase"]["runtime drain node3"] == 0
    assert held.startswith("DRAIN"), held
    late = [request for request in executed[(node3.name, 0)]
            if marks["runtime drain"] + 0.5 <= runs[request].sent < marks["runtime ready"]]
    assert late == [], late
    # Restarted nodes get runs again, and so does the node the operator made ready.
    assert len(executed[(node1.name, 1)]) >= MIN_RUNS_PER_NODE
    assert len(executed[(node2.name, 1)]) >= MIN_RUNS_PER_NODE
    assert sum(1 for request in executed[(node3.name, 0)] if runs[request].sent >= marks["runtime ready"]) >= 1
