"""Egress mode without root: the nftables text, the SANDBOX_EGRESS_* parsing, subnet slots and
names, the runsc wrapper, the spec's netns path, and the sandbox/probe wiring against fakes."""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import re

import pytest

from bundles.spec import NETNS_DIR, SpecParams, build_spec
from bundles.validate import check_private_namespaces, is_our_netns_path, validate_spec
from orchestrator.errors import ConfigError, HostError, RunscError
from orchestrator.host import firewall
from orchestrator.host.firewall import EgressRule, FirewallConfig, render_ruleset
from orchestrator.host.netns import SandboxNet, SandboxNetworks, instance_prefix, pick_slot, slot_addresses, slot_count
from orchestrator.language import load_languages
from orchestrator.runtime.argv import (NETNS_WORKAROUND_STEP, RunscConfig, delete_argv, kill_argv, list_argv,
                                       needs_netns_workaround, run_argv)
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.runtime.runsc import RunscInfo
from orchestrator.sandbox import Sandbox, SandboxHost
from orchestrator.service import RUNSC_NETWORK, probe_netns_workaround, runsc_config
from orchestrator.settings import Settings

REPO = pathlib.Path(__file__).resolve().parents[2]
net = ipaddress.ip_network
addr = ipaddress.ip_address


# -- the ruleset ------------------------------------------------------------------------------

def config(**changes) -> FirewallConfig:
    values = dict(table="gvisor_sandbox_gvsabcd", veth_prefix="gvsabcdh", subnet=net("10.254.0.0/16"),
                  allow=(EgressRule(net("93.184.216.0/24"), (443, 443)), EgressRule(net("1.1.1.1/32")),
                         EgressRule(net("10.199.0.0/30"), (8000, 8100))),
                  allow_private=(net("10.199.0.0/16"),),
                  host_addresses=(addr("192.0.2.2"), addr("10.199.0.1"), addr("fd00::2"), addr("127.0.0.1")),
                  service_port=9385)
    values.update(changes)
    return FirewallConfig(**values)


def chain(text: str, name: str) -> list[str]:
    body = text.split(f"\tchain {name} {{\n", 1)[1].split("\n\t}\n", 1)[0]
    return [line.strip() for line in body.splitlines()]


def set_elements(text: str, name: str) -> list:
    body = text.split(f"\tset {name} {{\n", 1)[1].split("\n\t}\n", 1)[0]
    match = re.search(r"elements = \{ (.*) \}", body)
    return [ipaddress.ip_network(e, strict=False) for e in match.group(1).split(", ")] if match else []


def covered(text: str, set_name: str, address: str) -> bool:
    return any(addr(address) in network for network in set_elements(text, set_name))


def test_ruleset_replaces_our_table_atomically():
    text = render_ruleset(config())
    assert text.splitlines()[:3] == ["table inet gvisor_sandbox_gvsabcd", "delete table inet gvisor_sandbox_gvsabcd",
                                     "table inet gvisor_sandbox_gvsabcd {"]
    assert text.endswith("}\n") and text.count("table inet") == 3
    assert render_ruleset(config()) == text  # deterministic
    shuffled = config(host_addresses=tuple(reversed(config().host_addresses)))
    assert render_ruleset(shuffled) == text


def test_forward_sends_our_veths_to_egress_and_lets_only_replies_in():
    assert chain(render_ruleset(config()), "forward") == [
        "type filter hook forward priority filter; policy accept;",
        'iifname "gvsabcdh*" jump egress',
        'oifname "gvsabcdh*" ct state established,related accept',
        'oifname "gvsabcdh*" counter drop comment "nothing connects into a sandbox"',
    ]


@pytest.mark.parametrize("destination", ["169.254.169.254", "169.254.0.1", "127.0.0.1", "127.1.2.3", "0.0.0.0",
                                         "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1",
                                         "192.0.2.10", "198.51.100.1", "203.0.113.5", "198.18.0.1"])
def test_fixed_deny_set_covers_metadata_loopback_multicast_broadcast_reserved(destination):
    assert covered(render_ruleset(config()), "deny_fixed4", destination)


@pytest.mark.parametrize("destination", ["10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.1", "192.168.1.1",
                                         "100.64.0.1", "100.127.255.254"])
def test_private_ranges_are_denied(destination):
    assert covered(render_ruleset(config()), "deny_private4", destination)


@pytest.mark.parametrize("destination", ["::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:10.0.0.1",
                                         "64:ff9b::a9fe:a9fe", "2001:db8::1"])
def test_ipv6_deny_set(destination):
    assert covered(render_ruleset(config()), "deny_fixed6", destination)


@pytest.mark.parametrize("destination", ["93.184.216.34", "1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1",
                                         "11.0.0.1", "192.169.0.1"])
def test_public_addresses_are_not_in_any_deny_set(destination):
    text = render_ruleset(config())
    assert not any(covered(text, name, destination) for name in ("deny_fixed4", "deny_private4"))


def test_host_addresses_are_denied_by_set():
    text = render_ruleset(config())
    assert set_elements(text, "host4") == [net("10.199.0.1/32"), net("127.0.0.1/32"), net("192.0.2.2/32")]
    assert set_elements(text, "host6") == [net("fd00::2/128")]
    empty = render_ruleset(config(host_addresses=()))
    assert "\tset host4 {\n\t\ttype ipv4_addr\n\t}" in empty and set_elements(empty, "host4") == []


def test_egress_chain_denies_before_it_allows_and_drops_the_rest():
    rules = chain(render_ruleset(config()), "egress")
    assert rules[:4] == [
        "ct state established,related accept",
        "ct state invalid counter drop",
        'fib saddr . iif oif missing counter drop comment "spoofed source"',
        'ip saddr != 10.254.0.0/16 counter drop comment "spoofed source"',
    ]
    denies = [
        'ip daddr @deny_fixed4 counter drop comment "loopback, link-local, multicast, broadcast, reserved"',
        'ip daddr 10.254.0.0/16 counter drop comment "other sandboxes"',
        'ip daddr @host4 counter drop comment "this host\'s own addresses"',
        'ip daddr @deny_private4 ip daddr != @private_opened4 counter drop comment "private ranges"',
        "ip6 daddr @deny_fixed6 counter drop",
        "ip6 daddr @host6 counter drop",
        'meta nfproto ipv6 counter drop comment "sandboxes have IPv4 only"',
    ]
    allows = [
        "ip daddr 93.184.216.0/24 meta l4proto { tcp, udp } th dport 443 accept",
        "ip daddr 1.1.1.1/32 accept",
        "ip daddr 10.199.0.0/30 meta l4proto { tcp, udp } th dport 8000-8100 accept",
    ]
    assert rules[4:] == denies + allows + ['counter drop comment "not in SANDBOX_EGRESS_ALLOW"']


def test_empty_allowlist_accepts_nothing_new():
    rules = chain(render_ruleset(config(allow=())), "egress")
    assert [rule for rule in rules if rule.endswith("accept")] == ["ct state established,related accept"]
    assert rules[-1] == 'counter drop comment "not in SANDBOX_EGRESS_ALLOW"'


def test_private_ranges_stay_closed_without_the_test_only_setting():
    text = render_ruleset(config(allow_private=(), allow=(EgressRule(net("1.1.1.1/32")),)))
    assert 'ip daddr @deny_private4 counter drop comment "private ranges"' in chain(text, "egress")
    assert "!= @private_opened4" not in text and set_elements(text, "private_opened4") == []


def test_opened_private_ranges_are_merged_for_the_interval_set():
    text = render_ruleset(config(allow_private=(net("10.199.0.0/24"), net("10.199.1.0/24"), net("10.199.0.0/30"))))
    assert set_elements(text, "private_opened4") == [net("10.199.0.0/23")]


def test_input_drops_the_service_port_and_everything_else_from_our_veths():
    assert chain(render_ruleset(config()), "input") == [
        "type filter hook input priority filter; policy accept;",
        'iifname "gvsabcdh*" tcp dport 9385 counter drop comment "this service\'s port"',
        'iifname "gvsabcdh*" counter drop comment "sandboxes never reach the host itself"',
    ]
    assert "dport 9385" not in render_ruleset(config(service_port=None))


def test_postrouting_masquerades_the_subnet_leaving_elsewhere():
    assert chain(render_ruleset(config()), "postrouting") == [
        "type nat hook postrouting priority srcnat; policy accept;",
        'ip saddr 10.254.0.0/16 oifname != "gvsabcdh*" masquerade',
    ]


def test_enable_forwarding_reports_the_old_value(tmp_path):
    path = tmp_path / "net" / "ipv4" / "ip_forward"
    path.parent.mkdir(parents=True)
    path.write_text("0\n")
    assert firewall.enable_forwarding(tmp_path) == "0"
    assert path.read_text() == "1\n"
    assert firewall.enable_forwarding(tmp_path) == "1"
    with pytest.raises(HostError, match=r"^enable IPv4 forwarding"):
        firewall.enable_forwarding(tmp_path / "missing")


async def test_nft_failures_are_host_errors(tmp_path):
    with pytest.raises(HostError, match=r"^apply nftables ruleset .*: start .*(install nftables: apt-get install nftables)"):
        await firewall.apply_ruleset("table inet x {}\n", tmp_path / "rules.nft", nft=str(tmp_path / "no-nft"))
    assert (tmp_path / "rules.nft").read_text() == "table inet x {}\n"
    with pytest.raises(HostError, match=r"^delete nftables table inet x: nft exited 1: boom"):
        await firewall.delete_table("x", nft=str(fake_nft(tmp_path, "echo boom >&2; exit 1")))
    assert await firewall.delete_table("x", nft=str(fake_nft(tmp_path, "echo 'Error: No such file or directory' >&2; exit 1"))) is False


def fake_nft(tmp_path, script: str) -> pathlib.Path:
    path = tmp_path / "nft"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


def test_table_name_follows_the_instance_prefix():
    assert firewall.table_name("gvsabcd") == "gvisor_sandbox_gvsabcd"


# -- settings ---------------------------------------------------------------------------------

def test_allowlist_forms():
    rules = firewall.parse_egress_allow("SANDBOX_EGRESS_ALLOW", " 1.2.3.0/24 , 8.8.8.8:53, 9.9.9.0/24:8000-8100,, ")
    assert rules == (EgressRule(net("1.2.3.0/24")), EgressRule(net("8.8.8.8/32"), (53, 53)),
                     EgressRule(net("9.9.9.0/24"), (8000, 8100)))
    assert [str(rule) for rule in rules] == ["1.2.3.0/24", "8.8.8.8/32:53", "9.9.9.0/24:8000-8100"]
    assert firewall.parse_egress_allow("SANDBOX_EGRESS_ALLOW", "") == ()
    assert firewall.parse_egress_allow("SANDBOX_EGRESS_ALLOW", "0.0.0.0/0:443") == (
        EgressRule(net("0.0.0.0/0"), (443, 443)),)  # the deny set still applies before it


@pytest.mark.parametrize(("value", "message"), [
    ("1.2.3.4/33", r"'1.2.3.4/33' is not an IPv4 address or CIDR"),
    ("1.2.3.4/24", r"'1.2.3.4/24' is not an IPv4 address or CIDR \(.*host bits set"),
    ("1.2.3.300", r"'1.2.3.300' is not an IPv4 address or CIDR"),
    ("example", r"'example': a name needs at least two labels"),
    ("*.com:443", r"'\*.com:443': a name needs at least two labels"),
    ("api.*.example.com", r"a wildcard is only allowed as a leading"),
    ("-bad.example.com", r"is not a CIDR, an address or a DNS name"),
    ("api.example.com:0", r"port '0' is not a number from 1 to 65535"),
    ("1.2.3.4:0", r"port '0' is not a number from 1 to 65535"),
    ("1.2.3.4:65536", r"port '65536' is not a number"),
    ("1.2.3.4:http", r"port 'http' is not a number"),
    ("1.2.3.4:90-80", r"port range 90-80 is reversed"),
    ("1.2.3.4:80-", r"port '' is not a number"),
    ("2001:db8::1", r"IPv6 destinations are not supported"),
    ("[2001:db8::1]:443", r"IPv6 destinations are not supported"),
    ("169.254.169.254", r"'169.254.169.254' lies in 169.254.0.0/16, which is always denied"),
    ("169.254.169.254/32:80", r"lies in 169.254.0.0/16, which is always denied"),
    ("127.0.0.1:9385", r"lies in 127.0.0.0/8, which is always denied"),
    ("224.0.0.0/4", r"lies in 224.0.0.0/4, which is always denied"),
    ("255.255.255.255", r"lies in 240.0.0.0/4, which is always denied"),
])
def test_allowlist_errors_name_the_variable(value, message):
    with pytest.raises(ConfigError, match=r"^SANDBOX_EGRESS_ALLOW: .*" + message):
        Settings.from_env({"SANDBOX_EGRESS_ALLOW": value})


@pytest.mark.parametrize(("value", "message"), [
    ("8.8.8.0/24", r"'8.8.8.0/24' is not inside a private range"),
    ("127.0.0.0/8", r"is not inside a private range"),
    ("169.254.0.0/16", r"is not inside a private range"),
    ("10.0.0.0/7", r"not an IPv4 address or CIDR|is not inside a private range"),
    ("fc00::/7", r"IPv6 destinations are not supported"),
])
def test_allow_private_accepts_only_private_ranges(value, message):
    with pytest.raises(ConfigError, match=r"^SANDBOX_EGRESS_ALLOW_PRIVATE: .*" + message):
        Settings.from_env({"SANDBOX_EGRESS_ALLOW_PRIVATE": value})


@pytest.mark.parametrize(("value", "message"), [
    ("10.0.0.0/8", r"must be a /12 to /29"),
    ("10.254.0.0/30", r"must be a /12 to /29"),
    ("8.8.0.0/16", r"must lie inside a private range"),
    ("10.254.0.1/16", r"not an IPv4 address or CIDR"),
])
def test_egress_subnet_errors(value, message):
    with pytest.raises(ConfigError, match=r"^SANDBOX_EGRESS_SUBNET: .*" + message):
        Settings.from_env({"SANDBOX_EGRESS_SUBNET": value})


@pytest.mark.parametrize(("env", "message"), [
    ({"SANDBOX_EGRESS_ALLOW": "10.1.2.3:80"},
     r"^SANDBOX_EGRESS_ALLOW: 10.1.2.3/32:80 lies in the private range 10.0.0.0/8, which stays denied"),
    ({"SANDBOX_EGRESS_ALLOW": "10.1.2.3:80", "SANDBOX_EGRESS_ALLOW_PRIVATE": "10.2.0.0/16"},
     r"lies in the private range 10.0.0.0/8"),
    ({"SANDBOX_EGRESS_ALLOW_PRIVATE": "10.254.3.0/24"},
     r"^SANDBOX_EGRESS_ALLOW_PRIVATE: 10.254.3.0/24 overlaps SANDBOX_EGRESS_SUBNET 10.254.0.0/16"),
    ({"SANDBOX_EGRESS_ALLOW": "172.20.1.0/24", "SANDBOX_EGRESS_ALLOW_PRIVATE": "172.20.0.0/16",
      "SANDBOX_EGRESS_SUBNET": "172.20.0.0/16"}, r"overlaps SANDBOX_EGRESS_SUBNET"),
])
def test_egress_cross_checks(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_egress_settings_and_defaults():
    default = Settings.from_env({})
    assert default.runsc.network == "none"
    assert default.egress.allow == () and default.egress.allow_private == ()
    assert default.egress.subnet == net("10.254.0.0/16")
    settings = Settings.from_env({"SANDBOX_CONTAINER_NETWORK": "Egress", "SANDBOX_EGRESS_ALLOW": "10.199.0.2:8000",
                                  "SANDBOX_EGRESS_ALLOW_PRIVATE": "10.199.0.0/16",
                                  "SANDBOX_EGRESS_SUBNET": "192.168.200.0/24"})
    assert settings.runsc.network == "egress"
    assert settings.egress.allow == (EgressRule(net("10.199.0.2/32"), (8000, 8000)),)
    assert settings.egress.allow_private == (net("10.199.0.0/16"),)
    assert settings.egress.subnet == net("192.168.200.0/24")
    assert runsc_config(settings).network == "sandbox" and runsc_config(default).network == "none"
    assert RUNSC_NETWORK == {"none": "none", "egress": "sandbox"}


# -- slots and names --------------------------------------------------------------------------

def test_slots_are_disjoint_slash30s_inside_the_subnet():
    subnet = net("10.254.0.0/24")
    assert slot_count(subnet) == 64 and slot_count(net("10.254.0.0/16")) == 16384
    seen = set()
    for slot in range(slot_count(subnet)):
        host, sandbox = slot_addresses(subnet, slot)
        assert host.network == sandbox.network and host.network.prefixlen == 30
        assert host.network.subnet_of(subnet) and host.network not in seen
        assert int(host.ip) == int(host.network.network_address) + 1 and int(sandbox.ip) == int(host.ip) + 1
        seen.add(host.network)
    assert slot_addresses(subnet, 0) == (ipaddress.IPv4Interface("10.254.0.1/30"), ipaddress.IPv4Interface("10.254.0.2/30"))
    assert slot_addresses(subnet, 63)[1] == ipaddress.IPv4Interface("10.254.0.254/30")
    for bad in (-1, 64):
        with pytest.raises(ValueError, match="outside"):
            slot_addresses(subnet, bad)


def test_pick_slot_skips_used_wraps_and_reports_full():
    assert pick_slot(set(), 4, 2) == 2
    assert pick_slot({2, 3}, 4, 2) == 0
    assert pick_slot({0, 1, 3}, 4, 3) == 2
    assert pick_slot({0, 1, 2, 3}, 4, 1) is None


def test_instance_prefix_is_per_state_dir_and_names_fit_the_kernel():
    first = instance_prefix(pathlib.Path("/run/gvisor-sandbox"))
    assert first == instance_prefix(pathlib.Path("/run/gvisor-sandbox"))
    assert first != instance_prefix(pathlib.Path("/tmp/test/state"))
    assert re.fullmatch(r"gvs[0-9a-f]{4}", first)
    networks = SandboxNetworks(first, net("10.0.0.0/12"))  # the largest subnet allowed
    assert networks.veth_prefix == first + "h"
    assert len(f"{networks.veth_prefix}{slot_count(networks.subnet) - 1}") <= 15  # IFNAMSIZ - 1
    assert networks.netns_name("python-0123456789abcdef") == f"{first}-python-0123456789abcdef"
    assert networks._slot_of(f"{first}h17") == 17
    assert [networks._slot_of(name) for name in (f"{first}hx", f"{first}h", f"{first}-1", "eth0")] == [None] * 4


# -- the runsc wrapper ------------------------------------------------------------------------

def runsc(**changes) -> RunscConfig:
    return RunscConfig(binary=pathlib.Path("/usr/bin/runsc"), root=pathlib.Path("/run/gvisor-sandbox/runsc"), **changes)


def test_workaround_wraps_run_in_a_private_mount_namespace():
    plain = run_argv(runsc(network="sandbox"), "sb-1", pathlib.Path("/b"), pathlib.Path("/l"))
    wrapped = run_argv(runsc(network="sandbox", netns_workaround=True), "sb-1", pathlib.Path("/b"), pathlib.Path("/l"))
    assert plain[0] == "/usr/bin/runsc" and "--network=sandbox" in plain
    assert wrapped == ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f'{NETNS_WORKAROUND_STEP} && exec "$@"', "sh", *plain]
    # tmpfs over /proc/sys/net only (runsc reads /proc/sys/vm), then exec so the pid stays runsc's.
    assert NETNS_WORKAROUND_STEP.startswith("mount -t tmpfs") and NETNS_WORKAROUND_STEP.endswith(" /proc/sys/net")


def test_workaround_applies_only_to_run_with_network_sandbox():
    config = runsc(network="none", netns_workaround=True)
    assert run_argv(config, "sb-1", pathlib.Path("/b"), pathlib.Path("/l"))[0] == "/usr/bin/runsc"
    egress = runsc(network="sandbox", netns_workaround=True)
    for argv in (kill_argv(egress, "sb-1"), delete_argv(egress, "sb-1"), list_argv(egress)):
        assert argv[0] == "/usr/bin/runsc"


@pytest.mark.parametrize(("version", "needed"), [
    ("0.0~20221219.0", True), ("0.0~20240729.0", True), ("release-20240731.0", True),
    ("release-20240801.0", False), ("release-20250512.0", False), ("unknown", True), ("", True)])
def test_version_guess(version, needed):
    assert needs_netns_workaround(version) is needed


# -- the spec -----------------------------------------------------------------------------------

SPEC = dict(rootfs="/var/lib/gvisor-sandbox/rootfs/python/current/rootfs", args=("python3", "-c", "pass"),
            env={"PATH": "/usr/bin:/bin"}, workspace_source="/run/gvisor-sandbox/sandboxes/sb-1/workspace",
            cgroups_path="/gvisor-sandbox/sb-1", memory_bytes=256 * 1024**2, pids=128, tmp_bytes=64 * 1024**2)


def test_spec_joins_our_netns_only_for_the_network_namespace():
    path = f"{NETNS_DIR}/gvsabcd-python-0123456789abcdef"
    spec = build_spec(SpecParams(**SPEC, netns_path=path))
    namespaces = spec["linux"]["namespaces"]
    assert {"type": "network", "path": path} in namespaces
    assert [ns for ns in namespaces if "path" in ns] == [{"type": "network", "path": path}]
    validate_spec(spec)
    assert all("path" not in ns for ns in build_spec(SpecParams(**SPEC))["linux"]["namespaces"])


@pytest.mark.parametrize("path", ["/proc/1/ns/net", "/var/run/netns/../../proc/1/ns/net", "/run/netns/gvsabcd-x",
                                  "/var/run/netns/", "/var/run/netns/a/b", "/var/run/netns/.hidden", "", "relative"])
def test_netns_path_outside_our_dir_is_refused(path):
    assert not is_our_netns_path(path)
    spec = build_spec(SpecParams(**SPEC))
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = path
    assert check_private_namespaces(spec) == ["namespace network joins a host path"]


def test_other_namespaces_may_not_join_even_our_dir():
    spec = build_spec(SpecParams(**SPEC))
    spec["linux"]["namespaces"][0]["path"] = f"{NETNS_DIR}/gvsabcd-x"  # pid
    assert check_private_namespaces(spec) == ["namespace pid joins a host path"]


# -- sandbox and probe wiring, against fakes ------------------------------------------------------

LANGUAGES = load_languages([REPO / "languages"])


class FakeNetworks:
    """Stands in for SandboxNetworks: records what the sandbox asks for."""

    def __init__(self, fail: bool = False):
        self.created: list[str] = []
        self.removed: list[str] = []
        self.fail = fail

    def create(self, sandbox_id: str) -> SandboxNet:
        if self.fail:
            raise HostError(f"create network for sandbox {sandbox_id}: fake failure")
        self.created.append(sandbox_id)
        host, sandbox = slot_addresses(net("10.254.0.0/24"), len(self.created))
        return SandboxNet(sandbox_id=sandbox_id, netns=f"gvsabcd-{sandbox_id}", path=f"{NETNS_DIR}/gvsabcd-{sandbox_id}",
                          host_veth=f"gvsabcdh{len(self.created)}", slot=len(self.created), host_address=host,
                          sandbox_address=sandbox)

    def remove(self, net_: SandboxNet) -> None:
        self.removed.append(net_.sandbox_id)


def fake_host(tmp_path, runtime=None, network=None) -> SandboxHost:
    return SandboxHost(runtime=runtime or FakeRuntime(), cgroups=None, state_dir=tmp_path / "state",
                       bounded_workspace=False, uid=os.getuid() or 10001, gid=os.getgid() or 10001,
                       limits=Settings().limits, network=network)


async def test_sandbox_gets_a_netns_in_its_spec_and_gives_it_back(tmp_path):
    networks = FakeNetworks()
    sandbox = Sandbox(LANGUAGES["python"], tmp_path, fake_host(tmp_path, network=networks))
    await sandbox.boot()
    try:
        assert networks.created == [sandbox.id] and networks.removed == []
        spec = json.loads((tmp_path / "state" / "sandboxes" / sandbox.id / "bundle" / "config.json").read_text())
        assert {"type": "network", "path": f"{NETNS_DIR}/gvsabcd-{sandbox.id}"} in spec["linux"]["namespaces"]
    finally:
        await sandbox.destroy()
    assert networks.removed == [sandbox.id]


async def test_sandbox_without_network_has_a_fresh_netns(tmp_path):
    sandbox = Sandbox(LANGUAGES["python"], tmp_path, fake_host(tmp_path))
    await sandbox.boot()
    try:
        spec = json.loads((tmp_path / "state" / "sandboxes" / sandbox.id / "bundle" / "config.json").read_text())
        assert {"type": "network"} in spec["linux"]["namespaces"]
    finally:
        await sandbox.destroy()


async def test_failing_network_setup_fails_the_boot_and_undoes_the_rest(tmp_path):
    runtime = FakeRuntime()
    sandbox = Sandbox(LANGUAGES["python"], tmp_path, fake_host(tmp_path, runtime=runtime, network=FakeNetworks(fail=True)))
    with pytest.raises(HostError, match="fake failure"):
        await sandbox.boot()
    assert runtime.started == []
    assert list((tmp_path / "state" / "sandboxes").iterdir()) == []


class RefusingRuntime(FakeRuntime):
    """Refuses like runsc before release-20240801 on kernels 6.x, unless wrapped (or fixed)."""

    def __init__(self, config: RunscConfig, *, fixed: bool = False, broken: bool = False):
        super().__init__()
        self.config, self.fixed, self.broken = config, fixed, broken

    async def start(self, sandbox_id, bundle, log_file, **fds):
        if self.broken:
            raise RunscError("start sandbox: something else entirely", sandbox_id=sandbox_id)
        if not (self.fixed or self.config.netns_workaround):
            raise RunscError("running container: starting container: setting up network: creating interfaces from "
                             "net namespace \"/proc/1/ns/net\": cannot run with network enabled in root network "
                             "namespace", sandbox_id=sandbox_id)
        return await super().start(sandbox_id, bundle, log_file, **fds)


INFO = RunscInfo(binary=pathlib.Path("/usr/bin/runsc"), version="0.0~20221219.0", flags=frozenset())


@pytest.mark.parametrize(("fixed", "expected"), [(False, True), (True, False)])
async def test_probe_decides_the_workaround(tmp_path, fixed, expected):
    networks = FakeNetworks()
    made = []

    def make_runtime(config):
        made.append(RefusingRuntime(config, fixed=fixed))
        return made[-1]

    needed, how = await probe_netns_workaround(fake_host(tmp_path, network=networks), runsc(network="sandbox"), INFO,
                                               LANGUAGES, {name: tmp_path for name in LANGUAGES},
                                               make_runtime=make_runtime)
    assert needed is expected and how.startswith("probe: runsc 0.0~20221219.0")
    assert [r.config.netns_workaround for r in made] == ([False, True] if expected else [False])
    assert sorted(networks.created) == sorted(networks.removed)  # every probe sandbox was destroyed
    assert list((tmp_path / "state" / "sandboxes").iterdir()) == []


async def test_probe_reports_other_failures_as_host_errors(tmp_path):
    with pytest.raises(HostError, match=r"^probe egress sandbox: start sandbox: something else entirely"):
        await probe_netns_workaround(fake_host(tmp_path, network=FakeNetworks()), runsc(network="sandbox"), INFO,
                                     LANGUAGES, {name: tmp_path for name in LANGUAGES},
                                     make_runtime=lambda config: RefusingRuntime(config, broken=True))


async def test_probe_without_a_bootable_language_goes_by_version(tmp_path):
    needed, how = await probe_netns_workaround(fake_host(tmp_path), runsc(network="sandbox"), INFO, {}, {})
    assert needed is True and how.startswith("by version 0.0~20221219.0")
