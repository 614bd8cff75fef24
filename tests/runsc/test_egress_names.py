"""Egress by name through the real runsc: the resolver (dnsmasq) in front of an upstream DNS of
the test's own, HTTP test hosts, the nft sets it fills.

Every name resolves through a dnsmasq in a test host's netns (tests.host.testnet.UpstreamDns);
every address it hands out is a test host on this machine, an address of this host the test
assigned, or 127.0.0.1.  The test hosts are private addresses (10.199.0.0/16), opened by the
test-only SANDBOX_EGRESS_ALLOW_PRIVATE; the rebinding cases therefore use what that setting does
not open, each with a real server behind it that would answer if a packet got through: the
host's own address inside the opened range, a private range it does not open (10.198.x), the
fixed deny set (198.18.0.0/15, a range for benchmarks), and loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import pathlib
import time
from types import SimpleNamespace

import pytest

from orchestrator.host import firewall, netns, resolver
from orchestrator.service import firewall_table, resolver_dir
from orchestrator.settings import Settings
from tests.conftest import require_runsc
from tests.host.testnet import (HostListener, TestHost, UpstreamDns, free_subnet, read_forwarding, require_root,
                                set_elements, write_forwarding)
from tests.runsc.conftest import run
from tests.runsc.test_network import no_network_leftovers  # noqa: F401 - a fixture

pytestmark = [pytest.mark.runsc, pytest.mark.usefixtures("no_network_leftovers", "no_resolver_leftovers")]

SANDBOX_RANGE = ipaddress.IPv4Network("10.252.0.0/16")
TTL = 2  # SANDBOX_EGRESS_DNS_TTL of these services

PROBE = """
import socket, urllib.request
from concurrent.futures import ThreadPoolExecutor

def resolve(name):
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as exc:
        return f"gaierror: {exc}"

def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=1.5) as response:
            return "ok: " + response.read().decode()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"

def main(names, urls):
    with open("/etc/resolv.conf") as handle:
        facts = {"resolv.conf": handle.read()}
    facts["resolved"] = dict(zip(names, map(resolve, names)))
    with ThreadPoolExecutor(len(urls) or 1) as pool:  # name lookups first, so every fetch finds its address open
        facts["fetched"] = dict(zip(urls, pool.map(fetch, urls.values())))
    return facts
"""


@pytest.fixture
def named():
    """Test hosts serving HTTP on 8000 (and 8001 on the allowed one), an upstream DNS naming
    them, a listener on a host address, a free sandbox subnet; forwarding put back after."""
    require_runsc()
    require_root()
    forwarding = read_forwarding()
    made: list[TestHost] = []

    def host(within: str | None = None, *ports: int) -> TestHost:
        test_host = TestHost(free_subnet(30, ipaddress.IPv4Network(within)) if within else None).create()
        made.append(test_host)
        for port in ports or (8000,):
            test_host.serve(port, reply=f"hello from {test_host.address}".encode())
        return test_host

    listener = upstream = None
    try:
        hosts = SimpleNamespace(
            allowed=host(None, 8000, 8001), wild=host(), other=host(),
            private=host("10.198.0.0/16"), fixed=host("198.18.0.0/15"))
        dns_host = TestHost().create()
        made.append(dns_host)
        listener = HostListener(hosts.allowed.host_address)
        upstream = UpstreamDns(dns_host, {
            "api.test": hosts.allowed.address, "a.wild.test": hosts.wild.address,
            "unlisted.test": hosts.other.address, "private.test": hosts.private.address,
            "fixed.test": hosts.fixed.address, "self.test": hosts.allowed.host_address, "loop.test": "127.0.0.1",
        }, ttl=30)
        yield SimpleNamespace(**vars(hosts), dns=dns_host, upstream=upstream, listener=listener,
                              subnet=free_subnet(24, SANDBOX_RANGE))
    finally:
        if listener is not None:
            listener.close()
        if upstream is not None:
            upstream.close()
        for test_host in made:
            test_host.remove()
        write_forwarding(forwarding)


@pytest.fixture
def no_resolver_leftovers(test_env):
    """After the services of the test are closed: no dnsmasq of theirs, no resolver link."""
    settings = Settings.from_env(test_env)
    yield
    assert resolver.find_processes(resolver_dir(settings) / resolver.CONF_NAME) == [], "dnsmasq left"
    link = netns.SandboxNetworks(netns.instance_prefix(settings.state_dir), SANDBOX_RANGE).resolver_link
    assert not pathlib.Path(f"/sys/class/net/{link}").exists(), "resolver link left"


def env(named, **overrides) -> dict[str, str]:
    return {
        "SANDBOX_CONTAINER_NETWORK": "egress",
        "SANDBOX_EGRESS_SUBNET": str(named.subnet),
        "SANDBOX_EGRESS_ALLOW": "api.test:8000, *.wild.test:8000, self.test, private.test, fixed.test, loop.test",
        "SANDBOX_EGRESS_ALLOW_PRIVATE": "10.199.0.0/16",  # TEST-ONLY: opens the test hosts' range
        "SANDBOX_EGRESS_DNS": named.dns.address,
        "SANDBOX_EGRESS_DNS_TTL": f"{TTL}s",
        "SANDBOX_EXECUTOR_MANAGER_PORT": str(named.listener.port),
        "SANDBOX_ENABLE_AST_ANALYSIS": "false",  # the probe imports socket
        "SANDBOX_TIMEOUT": "10s",
        **overrides,
    }


async def test_allowed_names_resolve_and_answer_others_do_not(named, make_service):
    service = await make_service(**env(named))
    assert service.network.resolver.endswith(f":53 -> {named.dns.address}")
    shown = service.executor.status()["network"]
    assert shown["mode"] == "egress" and shown["resolver"]["running"], shown
    assert shown["resolver"]["upstreams"] == [named.dns.address] and shown["resolver"]["restarts"] == 0, shown
    urls = {
        "api": "http://api.test:8000/by-name",
        "api_other_port": "http://api.test:8001/other-port",
        "wildcard": "http://a.wild.test:8000/wildcard",
        "unlisted_by_address": f"http://{named.other.address}:8000/known-address",
        "unlisted_by_name": "http://unlisted.test:8000/unlisted",
    }
    result = await run(service, PROBE, names=["api.test", "a.wild.test", "unlisted.test", "wild.test",
                                              "sub.api.test", "example.com"], urls=urls)
    assert result["status"] == "success", result
    facts = result["result"]["value"]
    resolver_address = service.network.resolver.split(":")[0]
    assert f"nameserver {resolver_address}\n" in facts["resolv.conf"]
    resolved = facts["resolved"]
    assert resolved["api.test"] == [named.allowed.address]
    assert resolved["a.wild.test"] == [named.wild.address]
    for name in ("unlisted.test", "wild.test", "sub.api.test", "example.com"):
        assert resolved[name] == "gaierror: [Errno -2] Name or service not known", (name, resolved[name])
    fetched = facts["fetched"]
    assert fetched["api"] == f"ok: hello from {named.allowed.address}"
    assert fetched["wildcard"] == f"ok: hello from {named.wild.address}"
    # Dropped, not refused: a refusal would mean the packet reached something.
    for key in ("api_other_port", "unlisted_by_address"):
        assert fetched[key].startswith("error:") and "timed out" in fetched[key], (key, fetched[key])
    assert "Name or service not known" in fetched["unlisted_by_name"]
    assert named.allowed.hits(8000) == ["/by-name"] and named.allowed.hits(8001) == []
    assert named.wild.hits(8000) == ["/wildcard"] and named.other.hits(8000) == []
    assert named.upstream.queried("unlisted.test") == 0 and named.upstream.queried("example.com") == 0


@pytest.mark.parametrize("mode", ["cold"])
async def test_a_name_resolving_to_a_denied_address_stays_blocked(named, make_service, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.host.resolver")
    service = await make_service(**env(named))
    port = named.listener.port
    urls = {"self": f"http://self.test:{port}/self", "private": "http://private.test:8000/private",
            "fixed": "http://fixed.test:8000/fixed", "loop": "http://loop.test:8000/loop"}
    result = await run(service, PROBE, names=["self.test", "private.test", "fixed.test", "loop.test"], urls=urls)
    assert result["status"] == "success", result
    facts = result["result"]["value"]
    assert facts["resolved"] == {"self.test": [named.allowed.host_address], "private.test": [named.private.address],
                                 "fixed.test": [named.fixed.address], "loop.test": ["127.0.0.1"]}
    for key in ("self", "private", "fixed"):
        assert facts["fetched"][key].startswith("error:") and "timed out" in facts["fetched"][key], facts["fetched"]
    # 127.0.0.1 is the sandbox's own loopback in gVisor: refused there, it never reaches the host.
    assert "Connection refused" in facts["fetched"]["loop"], facts["fetched"]
    assert named.listener.accepted == 0
    assert named.private.hits(8000) == [] and named.fixed.hits(8000) == []
    warnings = sorted(r.getMessage() for r in caplog.records if "DNS rebinding guard" in r.getMessage())
    assert [w.split(" resolved to ")[0] for w in warnings] == [
        "resolver: fixed.test", "resolver: loop.test", "resolver: private.test", "resolver: self.test"], warnings
    assert "the fixed deny set (198.18.0.0/15)" in warnings[0] and "a private range (10.0.0.0/8)" in warnings[2]
    assert "an address of this host" in warnings[3]


@pytest.mark.parametrize("mode", ["cold"])
async def test_the_address_closes_again_after_the_ttl(named, make_service):
    service = await make_service(**env(named))
    table = firewall_table(service.settings)
    first = await run(service, PROBE, names=["api.test"], urls={"api": "http://api.test:8000/first"})
    assert first["result"]["value"]["fetched"]["api"] == f"ok: hello from {named.allowed.address}", first
    assert named.allowed.address in set_elements(table, "dns4_8000_8000")
    started = time.monotonic()
    while named.allowed.address in set_elements(table, "dns4_8000_8000"):
        assert time.monotonic() - started < TTL + firewall.DNS_GRACE_S + 3, "the element did not expire"
        await asyncio.sleep(0.2)
    by_address = await run(service, PROBE, names=[], urls={"api": f"http://{named.allowed.address}:8000/after-ttl"})
    fetched = by_address["result"]["value"]["fetched"]["api"]
    assert fetched.startswith("error:") and "timed out" in fetched, fetched
    again = await run(service, PROBE, names=["api.test"], urls={"api": "http://api.test:8000/again"})
    assert again["result"]["value"]["fetched"]["api"] == f"ok: hello from {named.allowed.address}", again
    assert named.allowed.hits(8000) == ["/first", "/again"]


@pytest.mark.parametrize("mode", ["cold"])
async def test_ragflow_style_requests_and_axios_fetch_an_allowlisted_url(named, make_service):
    service = await make_service(**env(named))
    python = ("import requests\n"
              "def main(url):\n"
              "    response = requests.get(url, timeout=5)\n"
              "    return {'status': response.status_code, 'body': response.text}\n")
    result = await run(service, python, url="http://api.test:8000/requests")
    assert result["status"] == "success", result
    assert result["result"]["value"] == {"status": 200, "body": f"hello from {named.allowed.address}"}
    node = ("const axios = require('axios');\n"
            "async function main(args) {\n"
            "  const response = await axios.get(args.url, { timeout: 5000 });\n"
            "  return { status: response.status, body: response.data };\n"
            "}\n")
    result = await run(service, node, language="nodejs", url="http://api.test:8000/axios")
    assert result["status"] == "success", result
    assert result["result"]["value"] == {"status": 200, "body": f"hello from {named.allowed.address}"}
    assert named.allowed.hits(8000) == ["/requests", "/axios"]
    assert pathlib.Path(service.resolver.resolv_conf_path).stat().st_mode & 0o777 == 0o644
