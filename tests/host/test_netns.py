"""Root-only: real network namespaces, veths and nftables, no runsc.

Every destination is an address assigned here, inside namespaces created here (tests.host.testnet).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import threading
import time

import pytest
from pyroute2 import IPRoute

from orchestrator.errors import HostError
from orchestrator.host import firewall, netns
from orchestrator.host.netns import SandboxNetworks
from tests.host.testnet import (HostListener, TestHost, connect_from, free_subnet, http_get_from, read_forwarding,
                                require_root, write_forwarding)

pytestmark = pytest.mark.host
SANDBOX_RANGE = ipaddress.IPv4Network("10.252.0.0/16")


@pytest.fixture(autouse=True)
def _root():
    require_root()


@pytest.fixture
def networks():
    """A SandboxNetworks with a prefix and subnet of its own; asserts nothing of it is left."""
    networks = SandboxNetworks(f"gvt{os.urandom(2).hex()}", free_subnet(24, SANDBOX_RANGE))
    yield networks
    leftovers = networks.list_netns() + networks.list_veths()
    networks.reap()
    assert leftovers == [], f"left behind: {leftovers}"


def _eventually(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def links_in(path: str) -> dict[str, dict]:
    with IPRoute(netns=path, flags=0) as ipr:
        links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
        addresses = {(msg["index"], msg.get_attr("IFA_ADDRESS"), msg["prefixlen"]) for msg in ipr.get_addr(family=2)}
        routes = [(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY")) for r in ipr.get_routes(family=2)]
    return {name: {"up": bool(link["flags"] & 1), "index": link["index"],
                   "addresses": sorted(f"{a}/{n}" for i, a, n in addresses if i == link["index"])}
            for name, link in links.items()} | {"_routes": routes}


def test_create_gives_veth_addresses_and_default_route_then_remove_leaves_nothing(networks):
    net = networks.create("python-0123456789abcdef")
    assert net.netns == f"{networks.prefix}-python-0123456789abcdef"
    assert net.path == f"/var/run/netns/{net.netns}" and os.path.exists(net.path)
    assert net.host_veth == f"{networks.veth_prefix}{net.slot}"
    assert net.host_address.network == net.sandbox_address.network
    assert net.host_address.network.subnet_of(networks.subnet) and net.host_address.network.prefixlen == 30
    assert networks.list_netns() == [net.netns] and networks.list_veths() == [net.host_veth]

    with IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=net.host_veth)
        assert link.get_attr("IFLA_IFALIAS") == net.netns
        assert link["flags"] & 1, "host side is not up"
        addresses = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=link["index"], family=2)]
    assert addresses == [str(net.host_address.ip)]

    inside = links_in(net.path)
    assert sorted(name for name in inside if not name.startswith("_")) == ["eth0", "lo"]
    assert inside["lo"]["up"] and inside["eth0"]["up"]
    assert inside["eth0"]["addresses"] == [str(net.sandbox_address)]
    assert (None, 0, str(net.host_address.ip)) in inside["_routes"], inside["_routes"]

    # The pair works: from the namespace, a listener on the host side answers (no table loaded here).
    listener = HostListener(str(net.host_address.ip))
    try:
        assert connect_from(net.path, listener.address, listener.port) == "ok"
        assert _eventually(lambda: listener.accepted == 1)
    finally:
        listener.close()

    networks.remove(net)
    assert not os.path.exists(net.path)
    assert networks.list_netns() == [] and networks.list_veths() == []
    networks.remove(net)  # removing twice is fine


def test_concurrent_creates_get_distinct_slots(networks):
    nets, errors = [], []

    def create(i):
        try:
            nets.append(networks.create(f"sb-{i}"))
        except HostError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len({n.slot for n in nets}) == 8
        assert len({n.sandbox_address for n in nets}) == 8 and len({n.host_veth for n in nets}) == 8
        assert len(networks.list_veths()) == 8 and len(networks.list_netns()) == 8
    finally:
        for net in nets:
            networks.remove(net)


def test_full_subnet_refuses_cleanly_and_frees_slots_on_remove():
    # four /30s: three for sandboxes, the last one the resolver's
    networks = SandboxNetworks(f"gvt{os.urandom(2).hex()}", free_subnet(28, SANDBOX_RANGE))
    first, second, third = networks.create("sb-a"), networks.create("sb-b"), networks.create("sb-c")
    try:
        assert {first.slot, second.slot, third.slot} == {0, 1, 2}
        with pytest.raises(HostError, match=r"no free /30 left in SANDBOX_EGRESS_SUBNET"):
            networks.create("sb-d")
        assert networks.list_netns() == sorted([first.netns, second.netns, third.netns])  # the failed one left nothing
        networks.remove(first)
        fourth = networks.create("sb-d")
        assert fourth.slot == first.slot and fourth.sandbox_address == first.sandbox_address
        networks.remove(fourth)
        networks.remove(second)
        networks.remove(third)
    finally:
        networks.reap()
    assert networks.list_netns() == [] and networks.list_veths() == []


def test_reap_after_a_restart_removes_all_but_live_sandboxes(networks):
    kept = networks.create("sb-live")
    networks.create("sb-dead-1")
    networks.create("sb-dead-2")
    dead_veths = [veth for veth in networks.list_veths() if veth != kept.host_veth]
    restarted = SandboxNetworks(networks.prefix, networks.subnet)  # same instance, new process
    reaped = restarted.reap(live=["sb-live"])
    assert sorted(reaped) == sorted([f"netns {networks.prefix}-sb-dead-1", f"netns {networks.prefix}-sb-dead-2",
                                     *(f"veth {veth}" for veth in dead_veths)])
    assert networks.list_netns() == [kept.netns] and networks.list_veths() == [kept.host_veth]
    # A leftover's slot is never handed out twice: a new sandbox skips it.
    other = restarted.create("sb-new")
    assert other.slot != kept.slot
    assert sorted(restarted.reap()) == sorted([f"netns {kept.netns}", f"netns {other.netns}",
                                               f"veth {kept.host_veth}", f"veth {other.host_veth}"])


def test_reap_ignores_other_instances(networks):
    ours = networks.create("sb-1")
    other = SandboxNetworks(f"gvt{os.urandom(2).hex()}", networks.subnet)
    assert other.reap() == []
    assert networks.list_netns() == [ours.netns]
    networks.remove(ours)


def test_overlapping_routes_sees_a_test_hosts_route_and_ignores_ours():
    with TestHost() as host:
        assert netns.overlapping_routes(host.network, ignore_prefix="\0")
        assert netns.overlapping_routes(host.network, ignore_prefix=host.veth) == []
        assert ipaddress.ip_address(host.host_address) in netns.host_addresses()


# -- nftables -----------------------------------------------------------------------------------

def _config(networks, **changes) -> firewall.FirewallConfig:
    values = dict(table=f"gvisor_sandbox_{networks.prefix}", veth_prefix=networks.veth_prefix, subnet=networks.subnet,
                  allow=firewall.parse_egress_allow("A", "0.0.0.0/0:443, 1.2.3.0/24, 10.199.0.0/16:8000-8100"),
                  allow_private=(ipaddress.IPv4Network("10.199.0.0/16"),),
                  host_addresses=netns.host_addresses(), service_port=9385)
    values.update(changes)
    return firewall.FirewallConfig(**values)


def test_rendered_rulesets_pass_nft_check(networks, tmp_path):
    for config in (_config(networks), _config(networks, allow=(), allow_private=(), host_addresses=(),
                                               service_port=None)):
        path = tmp_path / "check.nft"
        path.write_text(firewall.render_ruleset(config))
        done = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


async def test_apply_and_delete_table(networks, tmp_path):
    config = await asyncio.to_thread(_config, networks)  # pyroute2's sync API runs its own loop: not in ours
    try:
        await firewall.apply_ruleset(firewall.render_ruleset(config), tmp_path / "rules.nft")
        await firewall.apply_ruleset(firewall.render_ruleset(config), tmp_path / "rules.nft")  # replaces, no error
        listed = subprocess.run(["nft", "list", "table", "inet", config.table], capture_output=True, text=True)
        assert listed.returncode == 0 and f'iifname "{networks.veth_prefix}*" jump egress' in listed.stdout
        assert oct((tmp_path / "rules.nft").stat().st_mode & 0o777) == "0o600"
    finally:
        assert await firewall.delete_table(config.table) is True
    assert await firewall.delete_table(config.table) is False
    with pytest.raises(HostError, match=r"^apply nftables ruleset .*: nft exited 1: "):
        await firewall.apply_ruleset("table inet x { chain y { nonsense } }\n", tmp_path / "bad.nft")


def test_rules_for_real_from_a_namespace(networks, tmp_path):
    """The table with a sandbox namespace (no runsc): the allowlisted host and port answer; another
    port, a second host, the host's own addresses and this service's port do not."""
    forwarding = read_forwarding()
    allowed, other = TestHost().create(), TestHost().create()
    listener = HostListener(allowed.host_address)  # "this service's port", on a host address
    config = None
    try:
        for port in (8000, 8001):
            allowed.serve(port)
            other.serve(port)
        config = _config(networks, allow=firewall.parse_egress_allow("A", f"{allowed.network}:8000"),
                         service_port=listener.port)
        asyncio.run(firewall.apply_ruleset(firewall.render_ruleset(config), tmp_path / "rules.nft"))
        firewall.enable_forwarding()
        net = networks.create("sb-real")
        path = net.path

        assert http_get_from(path, allowed.address, 8000) == b"hello from the test host"
        assert allowed.hits(8000) == ["/from-netns"]
        assert connect_from(path, allowed.address, 8001) == "timeout"
        assert connect_from(path, other.address, 8000) == "timeout"
        # The host itself: its address on the test host's link (inside the allowlisted /30 and the
        # opened private range) and the sandbox's own gateway.  Dropped, so a timeout, not a refusal.
        assert connect_from(path, allowed.host_address, listener.port) == "timeout"
        assert connect_from(path, str(net.host_address.ip), listener.port) == "timeout"
        assert connect_from(path, str(net.host_address.ip), 22) == "timeout"
        assert listener.accepted == 0
        assert allowed.hits(8001) == [] and other.hits(8000) == []
        # Controls: the listener does answer on that address (from the test host), and a closed
        # port there is refused, not dropped: the timeouts above are the table's doing.
        assert connect_from(allowed.path, allowed.host_address, listener.port) == "ok"
        assert connect_from(allowed.path, allowed.host_address, 1) == "error: Connection refused"
        assert _eventually(lambda: listener.accepted == 1)
        networks.remove(net)
    finally:
        listener.close()
        allowed.remove()
        other.remove()
        if config is not None:
            asyncio.run(firewall.delete_table(config.table))
        write_forwarding(forwarding)
