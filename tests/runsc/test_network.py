"""Networking through the real runsc: ``none`` (the default) and ``egress``.

Every destination is a test host of our own (tests.host.testnet: a netns on this machine with
no default route) or an address of this host assigned by the test; nothing leaves the machine.
The deny rules for metadata, private and reserved ranges are tested on the generated ruleset
(tests/unit/test_netns_rules.py) and, for real, in tests/host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib
import subprocess
from types import SimpleNamespace

import pytest

from orchestrator.executor import RunRequest
from orchestrator.host import firewall, netns
from orchestrator.runtime.argv import JoinCgroups, run_argv
from tests.host.testnet import HostListener, TestHost, free_subnet, read_forwarding, require_root, write_forwarding
from tests.conftest import require_runsc
from tests.runsc.conftest import run

pytestmark = pytest.mark.runsc

SANDBOX_RANGE = ipaddress.IPv4Network("10.252.0.0/16")

# Fetches run in parallel with a 1 s timeout each, so a run with denied destinations stays short.
PROBE = """
import socket, urllib.request
from concurrent.futures import ThreadPoolExecutor

def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return "ok: " + response.read().decode()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"

def own_address(towards):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # connect() on UDP sends nothing
        try:
            sock.connect((towards, 9))
        except OSError:
            return None
        return sock.getsockname()[0]

def main(urls, gateway_port=None, towards=None):
    facts = {"interfaces": sorted(name for _, name in socket.if_nameindex())}
    address = own_address(towards) if towards else None
    facts["address"] = address
    if address and gateway_port:  # our convention: the sandbox is .2 of its /30, the host side .1
        gateway = ".".join(address.split(".")[:3] + [str(int(address.split(".")[3]) - 1)])
        urls = {**urls, "gateway": f"http://{gateway}:{gateway_port}/"}
    with ThreadPoolExecutor(len(urls) or 1) as pool:
        facts.update(zip(urls, pool.map(fetch, urls.values())))
    return facts
"""


@pytest.fixture
def hosts():
    """Two test hosts serving HTTP on 8000 and 8001, a listener standing in for this service's
    port on a host address, a free sandbox subnet, and IPv4 forwarding put back as it was.
    (Synchronous: pyroute2's synchronous API cannot run inside the test's event loop.)"""
    require_runsc()  # fails instead of skipping when REQUIRE_RUNSC=1
    require_root()
    forwarding = read_forwarding()
    allowed = TestHost().create()
    other = TestHost().create()
    listener = None
    try:
        for port in (8000, 8001):
            allowed.serve(port)
            other.serve(port)
        listener = HostListener(allowed.host_address)
        yield SimpleNamespace(allowed=allowed, other=other, listener=listener, subnet=free_subnet(24, SANDBOX_RANGE))
    finally:
        if listener is not None:
            listener.close()
        allowed.remove()
        other.remove()
        write_forwarding(forwarding)


@pytest.fixture
def no_network_leftovers(test_env):
    """After the services of the test are closed: no netns, veth or table of theirs."""
    prefix = netns.instance_prefix(pathlib.Path(test_env["SANDBOX_STATE_DIR"]))
    yield
    networks = netns.SandboxNetworks(prefix, SANDBOX_RANGE)
    assert networks.list_netns() == [], "network namespaces left"
    assert networks.list_veths() == [], "veths left"
    listed = subprocess.run(["nft", "list", "table", "inet", firewall.table_name(prefix)], capture_output=True)
    assert listed.returncode != 0, "nftables table left"


def egress_env(hosts, **overrides) -> dict[str, str]:
    return {
        "SANDBOX_CONTAINER_NETWORK": "egress",
        "SANDBOX_EGRESS_SUBNET": str(hosts.subnet),
        "SANDBOX_EGRESS_ALLOW": f"{hosts.allowed.network}:8000",  # the test host's /30, its host side included
        "SANDBOX_EGRESS_ALLOW_PRIVATE": "10.199.0.0/16",  # TEST-ONLY: opens the test hosts' range
        "SANDBOX_EXECUTOR_MANAGER_PORT": str(hosts.listener.port),
        "SANDBOX_ENABLE_AST_ANALYSIS": "false",  # the probe imports socket
        "SANDBOX_TIMEOUT": "8s",
        **overrides,
    }


async def test_egress_reaches_an_allowlisted_host(hosts, no_network_leftovers, make_service):
    service = await make_service(**egress_env(hosts))
    assert service.network.mode == "egress" and service.network.runsc_network == "sandbox"
    join = JoinCgroups(procs=(pathlib.Path("/p"),))  # without a meminfo stand-in: no mount namespace of its own
    wrapped = "unshare" in run_argv(service.runtime.config, "x", pathlib.Path("/b"), pathlib.Path("/l"), join)
    assert wrapped == service.network.netns_workaround, service.network
    code = ("import requests\n"
            "def main(url):\n"
            "    response = requests.get(url, timeout=3)\n"
            "    return {'status': response.status_code, 'body': response.text}\n")
    result = await run(service, code, url=f"http://{hosts.allowed.address}:8000/from-sandbox")
    assert result["status"] == "success", result
    assert result["result"]["value"] == {"status": 200, "body": "hello from the test host"}
    assert hosts.allowed.hits(8000) == ["/from-sandbox"]


async def test_egress_denies_what_the_allowlist_does_not_name(hosts, no_network_leftovers, make_service):
    service = await make_service(**egress_env(hosts))
    urls = {
        "allowed": f"http://{hosts.allowed.address}:8000/a",
        "other_port": f"http://{hosts.allowed.address}:8001/b",
        "other_host": f"http://{hosts.other.address}:8000/c",
        "host_service_port": f"http://{hosts.allowed.host_address}:{hosts.listener.port}/d",
    }
    result = await run(service, PROBE, urls=urls, gateway_port=hosts.listener.port, towards=hosts.allowed.address)
    assert result["status"] == "success", result
    facts = result["result"]["value"]
    assert facts["interfaces"] == ["eth0", "lo"]
    assert ipaddress.ip_address(facts["address"]) in ipaddress.ip_network(service.settings.egress.subnet)
    assert facts["allowed"] == "ok: hello from the test host"
    # Dropped, not refused: a refusal would mean the packet reached something.
    for key in ("other_port", "other_host", "host_service_port", "gateway"):
        assert facts[key].startswith("error:") and "timed out" in facts[key], (key, facts[key])
    assert hosts.allowed.hits(8000) == ["/a"]
    assert hosts.allowed.hits(8001) == [] and hosts.other.hits(8000) == []
    assert hosts.listener.accepted == 0


async def test_concurrent_egress_sandboxes_get_their_own_addresses(hosts, no_network_leftovers, make_service):
    service = await make_service(**egress_env(hosts, SANDBOX_MAX_CONCURRENCY="3"))
    urls = {"allowed": f"http://{hosts.allowed.address}:8000/concurrent"}
    requests = [RunRequest(language="python", source=PROBE, arguments={"urls": urls, "towards": hosts.allowed.address})
                for _ in range(3)]
    executions = await asyncio.gather(*(service.executor.execute(request) for request in requests))
    facts = [execution.result["result"]["value"] for execution in executions]
    assert [f["allowed"] for f in facts] == ["ok: hello from the test host"] * 3, facts
    assert len({f["address"] for f in facts}) == 3
    assert len({execution.sandbox_id for execution in executions}) == 3
    assert hosts.allowed.hits(8000) == ["/concurrent"] * 3


async def test_network_none_has_only_loopback(hosts, no_network_leftovers, make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_TIMEOUT="8s")
    assert service.network.mode == "none" and not service.network.netns_workaround
    urls = {"test_host": f"http://{hosts.allowed.address}:8000/none",
            "host_address": f"http://{hosts.allowed.host_address}:{hosts.listener.port}/none"}
    result = await run(service, PROBE, urls=urls, towards=hosts.allowed.address)
    assert result["status"] == "success", result
    facts = result["result"]["value"]
    assert facts["interfaces"] == ["lo"]
    assert facts["address"] is None  # no route anywhere
    for key in urls:
        # Refused at once by gVisor's own stack (no route), not a timeout: no packet left it.
        assert facts[key].startswith("error:") and ("[Errno 113]" in facts[key] or "[Errno 101]" in facts[key]), \
            (key, facts[key])
    assert hosts.allowed.hits(8000) == [] and hosts.listener.accepted == 0
