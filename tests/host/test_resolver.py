"""Root-only: the real dnsmasq of host/resolver against an upstream dnsmasq of the test's own in
a test host, with the real nft sets it fills; no runsc.  Every address is on this machine."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import time

import pytest

from orchestrator.errors import HostError
from orchestrator.host import firewall, netns, resolver
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.service import reap
from tests.host.testnet import TestHost, UpstreamDns, dns_query, free_subnet, require_root, set_elements

pytestmark = pytest.mark.host
SANDBOX_RANGE = ipaddress.IPv4Network("10.252.0.0/16")
TTL = 2


@pytest.fixture
def dns(tmp_path):
    """An upstream test DNS, the resolver's link and a table with the name sets (no resolver yet)."""
    require_root()
    if not os.path.exists(resolver.DNSMASQ):
        pytest.fail("dnsmasq is not installed (make setup installs dnsmasq-base)")
    networks = netns.SandboxNetworks(f"gvt{os.urandom(2).hex()}", free_subnet(24, SANDBOX_RANGE))
    upstream_host = TestHost().create()
    upstream = None
    table = firewall.table_name(networks.prefix)
    try:
        upstream = UpstreamDns(upstream_host, {"api.test": "10.199.250.2", "a.wild.test": "10.199.250.6",
                                               "evil.test": "127.0.0.1", "other.test": "10.199.250.10"}, ttl=30)
        address = networks.create_resolver_link()
        allow = firewall.parse_egress_allow("A", "api.test:8000, *.wild.test, evil.test")
        config = firewall.FirewallConfig(table=table, veth_prefix=networks.veth_prefix, subnet=networks.subnet,
                                         allow=allow, resolver=address, dns_ttl_s=TTL)
        asyncio.run(firewall.apply_ruleset(firewall.render_ruleset(config), tmp_path / "rules.nft"))
        resolver_config = resolver.ResolverConfig(
            table=table, address=address, upstreams=(resolver.Upstream(ipaddress.ip_address(upstream_host.address)),),
            names=config.name_rules, ttl_s=TTL, pid_file=tmp_path / resolver.PID_NAME)
        yield type("Dns", (), dict(networks=networks, upstream=upstream, table=table, address=str(address),
                                   config=resolver_config, dir=tmp_path))
    finally:
        if upstream is not None:
            upstream.close()
        upstream_host.remove()
        networks.remove_resolver_link()
        asyncio.run(firewall.delete_table(table))


def make(dns) -> resolver.Resolver:
    return resolver.Resolver(dns.config, dns.dir, deny_reason=lambda a: "loopback" if a.is_loopback else None)


async def test_allowed_names_resolve_and_fill_their_sets_others_get_nxdomain(dns, caplog):
    served = make(dns)
    caplog.set_level(logging.DEBUG, logger="orchestrator.host.resolver")
    await served.start()
    try:
        assert (dns.dir / resolver.RESOLV_CONF_NAME).read_text().splitlines()[1] == f"nameserver {dns.address}"
        assert oct((dns.dir / resolver.RESOLV_CONF_NAME).stat().st_mode & 0o777) == "0o644"
        ask = lambda name: asyncio.to_thread(dns_query, dns.address, name)  # noqa: E731
        rcode, answers = await ask("api.test")
        assert rcode == 0 and [a for a, _ in answers] == ["10.199.250.2"]
        assert all(ttl <= TTL for _, ttl in answers), answers  # upstream said 30 s
        rcode, answers = await ask("a.wild.test")
        assert rcode == 0 and [a for a, _ in answers] == ["10.199.250.6"]
        for name in ("other.test", "sub.api.test", "wild.test", "example.com"):
            assert await ask(name) == (3, []), name  # NXDOMAIN, never asked upstream
            assert dns.upstream.queried(name) == 0, name
        assert set(set_elements(dns.table, "dns4_8000_8000")) == {"10.199.250.2"}
        assert set(set_elements(dns.table, "dns4_any")) == {"10.199.250.6"}
        rcode, answers = await ask("evil.test")
        assert answers == [("127.0.0.1", min(TTL, 30))] or [a for a, _ in answers] == ["127.0.0.1"]
        deadline = time.monotonic() + 5
        while not any("evil.test resolved to 127.0.0.1" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            await asyncio.sleep(0.05)
        warning = next(r for r in caplog.records if "evil.test" in r.getMessage() and r.levelname == "WARNING")
        assert "stays blocked (DNS rebinding guard)" in warning.getMessage()
        # The element lives TTL + grace from the answer that added it, then the address is closed again.
        started = time.monotonic()
        while "10.199.250.2" in set_elements(dns.table, "dns4_8000_8000"):
            assert time.monotonic() - started < TTL + firewall.DNS_GRACE_S + 2
            await asyncio.sleep(0.1)
        rcode, answers = await ask("api.test")  # asking again opens it again
        assert rcode == 0 and "10.199.250.2" in set_elements(dns.table, "dns4_8000_8000")
    finally:
        await served.stop()
    assert resolver.find_processes(served.conf_path) == []
    assert not (dns.dir / resolver.PID_NAME).exists()


async def test_a_leftover_dnsmasq_is_replaced_and_reaped(dns):
    first = make(dns)
    await first.start()
    old = first.pid
    assert resolver.find_processes(first.conf_path) == [old]
    assert int((dns.dir / resolver.PID_NAME).read_text()) == old
    first._process = None  # as after a kill -9 of the service: nobody stops it
    second = make(dns)
    await second.start()
    try:
        assert resolver.find_processes(second.conf_path) == [second.pid] and second.pid != old
        assert (await asyncio.to_thread(dns_query, dns.address, "api.test"))[0] == 0
    finally:
        pid, second._process = second.pid, None
        assert await asyncio.to_thread(resolver.kill_processes, second.conf_path) == [pid]
    assert resolver.find_processes(second.conf_path) == []


async def test_a_dnsmasq_that_dies_is_started_again_and_says_so_in_its_status(dns):
    served = resolver.Resolver(dns.config, dns.dir, restart_delays_s=(0.2,))
    await served.start()
    try:
        first = served.pid
        assert served.status()["running"] and served.status()["restarts"] == 0
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while served.pid in (None, first) or not served.is_running:
            assert time.monotonic() < deadline, served.status()
            await asyncio.sleep(0.05)
        assert resolver.find_processes(served.conf_path) == [served.pid]
        rcode, answers = await asyncio.to_thread(dns_query, dns.address, "api.test")
        assert rcode == 0 and [a for a, _ in answers] == ["10.199.250.2"]
        status = served.status()
        assert status["restarts"] == 1 and status["last_exit"] == "signal 9" and status["running"], status
    finally:
        await served.stop()
    assert resolver.find_processes(served.conf_path) == [] and not served.status()["running"]


async def test_a_failing_dnsmasq_is_a_host_error(dns, tmp_path):
    taken = make(dns)
    await taken.start()
    try:  # a second one on the same address cannot bind (it does not match our config path)
        other = tmp_path / "other"
        other.mkdir()
        clash = resolver.Resolver(dns.config, other)
        with pytest.raises(HostError, match=r"^start dnsmasq: exited \d+: .*(in use|Address)"):
            await clash.start()
        assert resolver.find_processes(clash.conf_path) == []
    finally:
        await taken.stop()
    with pytest.raises(HostError, match="apt-get install dnsmasq-base"):
        await resolver.Resolver(dns.config, tmp_path, binary=tmp_path / "no-dnsmasq").start()


async def test_start_up_reaping_kills_a_leftover_resolver_and_removes_its_link(dns, tmp_path):
    """What a kill -9 of the service leaves (a running dnsmasq, the link) goes at the next start."""
    state = tmp_path / "state"
    (state / "resolver").mkdir(parents=True)
    leftover = resolver.Resolver(dns.config, state / "resolver")
    await leftover.start()
    pid, leftover._process = leftover.pid, None  # nobody stops it
    reaped = await reap(FakeRuntime(), None, state, dns.networks, None)
    assert f"dnsmasq {pid}" in reaped and f"link {dns.networks.resolver_link}" in reaped, reaped
    assert resolver.find_processes(leftover.conf_path) == []
    assert not os.path.exists(f"/sys/class/net/{dns.networks.resolver_link}")
    assert await reap(FakeRuntime(), None, state, dns.networks, None) == []
