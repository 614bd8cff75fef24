"""Egress by name, without root: allowlist names, the dns4_* sets and resolver rules in the
ruleset, the dnsmasq config, the sandbox's resolv.conf, upstream parsing, the rebinding check."""

from __future__ import annotations

import ipaddress
import logging
import pathlib

import pytest

from bundles.spec import SpecParams, build_spec
from bundles.validate import validate_spec
from orchestrator.errors import ConfigError, HostError
from orchestrator.host import firewall, resolver
from orchestrator.host.firewall import EgressRule, FirewallConfig, NameRule, render_ruleset
from orchestrator.host.netns import SandboxNetworks, resolver_address, slot_addresses, slot_count
from orchestrator.host.resolver import ResolverConfig, Upstream, render_config
from orchestrator.settings import Settings

net = ipaddress.ip_network
addr = ipaddress.ip_address
TABLE = "gvisor_sandbox_gvsabcd"


def parse(value: str):
    return firewall.parse_egress_allow("SANDBOX_EGRESS_ALLOW", value)


def test_names_beside_cidrs():
    rules = parse("API.Example.com, *.cdn.example.com:443, 1.2.3.0/24:80, svc.example.com:8000-8010, "
                  "api.example.com")
    assert rules == (NameRule("api.example.com"), NameRule("*.cdn.example.com", (443, 443)),
                     EgressRule(net("1.2.3.0/24"), (80, 80)), NameRule("svc.example.com", (8000, 8010)))
    assert [str(rule) for rule in rules] == ["api.example.com", "*.cdn.example.com:443", "1.2.3.0/24:80",
                                             "svc.example.com:8000-8010"]
    assert rules[1].is_wildcard and rules[1].domain == "cdn.example.com" and not rules[0].is_wildcard
    assert [rule.set_name for rule in rules if isinstance(rule, NameRule)] == [
        "dns4_any", "dns4_443_443", "dns4_8000_8010"]
    assert parse("_acme.example.com, xn--bcher-kva.example")[0] == NameRule("_acme.example.com")


def test_names_skip_the_private_range_cross_check():
    settings = Settings.from_env({"SANDBOX_EGRESS_ALLOW": "internal.corp.example"})
    assert settings.egress.allow == (NameRule("internal.corp.example"),)


def config(**changes) -> FirewallConfig:
    values = dict(table=TABLE, veth_prefix="gvsabcdh", subnet=net("10.254.0.0/16"),
                  allow=(EgressRule(net("1.1.1.1/32"), (53, 53)), NameRule("api.test", (443, 443)),
                         NameRule("*.wild.test"), NameRule("other.test")),
                  service_port=9385, resolver=addr("10.254.255.253"), dns_ttl_s=30)
    values.update(changes)
    return FirewallConfig(**values)


def body(text: str, kind: str, name: str) -> list[str]:
    part = text.split(f"\t{kind} {name} {{\n", 1)[1].split("\n\t}\n", 1)[0]
    return [line.strip() for line in part.splitlines()]


def test_one_timeout_set_per_port_constraint_of_names():
    text = render_ruleset(config())
    assert body(text, "set", "dns4_any") == ["type ipv4_addr", "flags timeout", f"timeout {30 + firewall.DNS_GRACE_S}s"]
    assert body(text, "set", "dns4_443_443") == ["type ipv4_addr", "flags timeout", "timeout 32s"]
    assert text.count("flags timeout") == 2


def test_name_sets_are_accepted_after_every_deny_rule():
    egress = body(render_ruleset(config()), "chain", "egress")
    deny = max(i for i, line in enumerate(egress) if "drop" in line and "not in SANDBOX_EGRESS_ALLOW" not in line)
    assert egress[deny + 1:] == [
        "ip daddr 1.1.1.1/32 meta l4proto { tcp, udp } th dport 53 accept",
        'ip daddr @dns4_any accept comment "resolved from allowed names"',
        'ip daddr @dns4_443_443 meta l4proto { tcp, udp } th dport 443 accept comment "resolved from allowed names"',
        'counter drop comment "not in SANDBOX_EGRESS_ALLOW"',
    ]


def test_without_names_there_is_no_set():
    text = render_ruleset(config(allow=(EgressRule(net("1.1.1.1/32")),)))
    assert "dns4_" not in text and "flags timeout" not in text


def test_input_admits_dns_to_the_resolver_from_sandboxes_only():
    rules = body(render_ruleset(config()), "chain", "input")
    assert rules[1:] == [
        'iifname "gvsabcdh*" tcp dport 9385 counter drop comment "this service\'s port"',
        'iifname "gvsabcdh*" ip daddr 10.254.255.253 meta l4proto { tcp, udp } th dport 53 accept '
        'comment "the sandboxes\' resolver"',
        'iifname != "gvsabcdh*" iifname != "lo" ip daddr 10.254.255.253 counter drop '
        'comment "the resolver serves sandboxes only"',
        'iifname "gvsabcdh*" counter drop comment "sandboxes never reach the host itself"',
    ]
    assert "53" not in "".join(body(render_ruleset(config(resolver=None)), "chain", "input"))


def resolver_config(**changes) -> ResolverConfig:
    values = dict(table=TABLE, address=addr("10.254.255.253"), upstreams=(Upstream(addr("10.199.0.2")),
                                                                             Upstream(addr("10.199.0.6"), 5353)),
                  names=config().name_rules, ttl_s=30, pid_file=pathlib.Path("/run/x/resolver/dnsmasq.pid"))
    values.update(changes)
    return ResolverConfig(**values)


def test_dnsmasq_config():
    assert render_config(resolver_config()).splitlines() == [
        "# The sandboxes' resolver (gvisor-sandbox, orchestrator/host/resolver.py). Generated: do not edit.",
        "keep-in-foreground",
        "log-facility=-",
        "log-queries",
        "pid-file=/run/x/resolver/dnsmasq.pid",
        "user=nobody",
        "group=nogroup",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "bind-interfaces",
        "listen-address=10.254.255.253",
        "port=53",
        "cache-size=10000",
        "min-cache-ttl=30",
        "max-cache-ttl=30",
        "max-ttl=30",
        "filter-AAAA",
        "domain-needed",
        "bogus-priv",
        "# every name not allowed below: NXDOMAIN",
        "address=/#/",
        "# api.test",
        "server=/api.test/10.199.0.2",
        "server=/api.test/10.199.0.6#5353",
        "address=/*.api.test/",
        "# other.test",
        "server=/other.test/10.199.0.2",
        "server=/other.test/10.199.0.6#5353",
        "address=/*.other.test/",
        "# *.wild.test",
        "server=/*.wild.test/10.199.0.2",
        "server=/*.wild.test/10.199.0.6#5353",
        f"nftset=/api.test/4#inet#{TABLE}#dns4_443_443",
        f"nftset=/other.test/4#inet#{TABLE}#dns4_any",
        f"nftset=/wild.test/4#inet#{TABLE}#dns4_any",
    ]


def test_names_under_a_wildcard_get_its_sets_and_keep_their_subdomains():
    names = (NameRule("*.example.com"), NameRule("api.example.com", (443, 443)), NameRule("example.com", (80, 80)))
    assert resolver.nft_sets_by_domain(names) == {
        "api.example.com": ["dns4_443_443", "dns4_any"],  # api.example.com and x.api.example.com match *.example.com
        "example.com": ["dns4_80_80", "dns4_any"],         # dnsmasq matches example.com's subdomains here too
    }
    text = render_config(resolver_config(names=names))
    assert "address=/*.api.example.com/" not in text and "address=/*.example.com/" not in text


def test_no_names_means_nxdomain_for_everything():
    lines = render_config(resolver_config(names=())).splitlines()
    assert lines[-1] == "address=/#/" and not any(line.startswith(("server=", "nftset=")) for line in lines)


def test_the_sandbox_resolv_conf_names_only_the_resolver():
    assert resolver.render_resolv_conf(addr("10.254.255.253")).splitlines()[1:] == [
        "nameserver 10.254.255.253", "options timeout:2 attempts:2"]


def test_upstreams():
    assert resolver.parse_upstreams("SANDBOX_EGRESS_DNS", "192.0.2.53, 10.0.0.2:5353 ,2001:db8::53") == (
        Upstream(addr("192.0.2.53")), Upstream(addr("10.0.0.2"), 5353), Upstream(addr("2001:db8::53")))
    assert [str(u) for u in resolver.parse_upstreams("X", "10.0.0.2:5353,1.1.1.1")] == ["10.0.0.2#5353", "1.1.1.1"]
    for value, message in (("dns.example", "is not an IP address"), ("10.0.0.2:0", "port '0'"), (",", "no resolver")):
        with pytest.raises(ConfigError, match=f"^SANDBOX_EGRESS_DNS: .*{message}"):
            Settings.from_env({"SANDBOX_EGRESS_DNS": value})


def test_host_resolvers_come_from_resolv_conf(tmp_path):
    text = "# x\nsearch lan\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver 10.255.255.53\noptions edns0\n"
    assert resolver.parse_resolv_conf(text) == (Upstream(addr("127.0.0.53")), Upstream(addr("10.255.255.53")))
    (tmp_path / "resolv.conf").write_text("search lan\n")
    with pytest.raises(HostError, match="no nameserver in .*set SANDBOX_EGRESS_DNS"):
        resolver.host_upstreams(tmp_path / "resolv.conf")
    with pytest.raises(HostError, match="set SANDBOX_EGRESS_DNS"):
        resolver.host_upstreams(tmp_path / "missing")


def test_dns_settings_and_defaults():
    default = Settings.from_env({})
    assert default.egress.dns_upstreams == () and default.egress.dns_ttl_s == 60
    settings = Settings.from_env({"SANDBOX_EGRESS_DNS_TTL": "2m", "SANDBOX_DNSMASQ": "/opt/dnsmasq"})
    assert settings.egress.dns_ttl_s == 120 and settings.egress.dnsmasq == pathlib.Path("/opt/dnsmasq")
    for value in ("0", "1.5s", "2h"):
        with pytest.raises(ConfigError, match="^SANDBOX_EGRESS_DNS_TTL: "):
            Settings.from_env({"SANDBOX_EGRESS_DNS_TTL": value})
    with pytest.raises(ConfigError, match="^SANDBOX_DNSMASQ: "):
        Settings.from_env({"SANDBOX_DNSMASQ": "dnsmasq"})


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "fixed deny set (127.0.0.0/8)"),
    ("169.254.169.254", "fixed deny set (169.254.0.0/16)"),
    ("224.0.0.251", "fixed deny set (224.0.0.0/4)"),
    ("192.168.1.1", "a private range (192.168.0.0/16)"),
    ("10.198.0.2", "a private range (10.0.0.0/8)"),
    ("10.254.3.2", "the sandboxes' subnet"),
    ("10.254.255.253", "an address of this host"),
    ("203.0.113.7", "fixed deny set (203.0.113.0/24)"),
    ("10.199.0.1", "an address of this host"),   # opened by ALLOW_PRIVATE, still the host's own
    ("10.199.0.2", None),                        # opened by ALLOW_PRIVATE
    ("93.184.216.34", None),
])
def test_deny_reason(address, reason):
    found = firewall.deny_reason(addr(address), subnet=net("10.254.0.0/16"), allow_private=(net("10.199.0.0/16"),),
                                 host_addresses=(addr("10.199.0.1"),), resolver=addr("10.254.255.253"))
    assert (found is None) if reason is None else (reason in found), found


def test_a_denied_answer_is_logged_as_a_warning(caplog):
    dns = resolver.Resolver(resolver_config(), pathlib.Path("/nonexistent"),
                            deny_reason=lambda a: "the fixed deny set" if a.is_loopback else None)
    with caplog.at_level(logging.DEBUG, logger="orchestrator.host.resolver"):
        dns._line(f"dnsmasq[7]: nftset add 4 inet {TABLE} dns4_any 127.0.0.1 evil.test\n".encode())
        dns._line(f"dnsmasq[7]: nftset add 4 inet {TABLE} dns4_any 10.199.0.2 api.test\n".encode())
        dns._line(b"dnsmasq[7]: query[A] other.test from 10.254.0.2\n")
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0] == ("WARNING", "resolver: evil.test resolved to 127.0.0.1, the fixed deny set: it stays "
                                    "blocked (DNS rebinding guard)")
    assert [level for level, _ in levels[1:]] == ["DEBUG", "DEBUG"]
    assert resolver.parse_nftset_add("nftset add 4 inet t s 1.2.3.4 a.b") == ("a.b", addr("1.2.3.4"))
    assert resolver.parse_nftset_add("nftset add 6 inet t s ::1 a.b") is None


def test_the_resolver_has_the_last_slot_of_the_subnet():
    subnet = net("10.252.7.0/24")
    assert resolver_address(subnet) == addr("10.252.7.253")
    assert resolver_address(net("10.254.0.0/16")) == addr("10.254.255.253")
    assert resolver_address(subnet) == slot_addresses(subnet, slot_count(subnet) - 1)[0].ip
    assert SandboxNetworks("gvsabcd", subnet).resolver_link == "gvsabcddns"


def spec(resolv_conf: str | None) -> dict:
    return build_spec(SpecParams(rootfs="/r", args=("python3",), env={"PATH": "/usr/bin"}, workspace_source="/w",
                                 cgroups_path="/c", memory_bytes=2**28, pids=128, tmp_bytes=2**26,
                                 resolv_conf_source=resolv_conf))


def test_spec_binds_the_resolv_conf_read_only():
    mounts = spec("/run/gvs/resolver/resolv.conf")["mounts"]
    assert mounts[-1] == {"destination": "/etc/resolv.conf", "type": "bind",
                          "source": "/run/gvs/resolver/resolv.conf", "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}
    validate_spec(spec("/run/gvs/resolver/resolv.conf"))
    assert all(m["destination"] != "/etc/resolv.conf" for m in spec(None)["mounts"])


def test_dnsmasq_must_have_nftset():
    built = ("Dnsmasq version 2.90  Copyright (c) 2000-2024 Simon Kelley\n"
             "Compile time options: IPv6 GNU-getopt DBus no-UBus i18n IDN2 DHCP DHCPv6 no-Lua TFTP conntrack ipset nftset "
             "auth cryptohash DNSSEC loop-detect inotify dumpfile\n")
    assert resolver.check_version(built) == "Dnsmasq version 2.90"
    with pytest.raises(HostError, match="without nftset support"):
        resolver.check_version(built.replace(" nftset", " no-nftset"))
    with pytest.raises(HostError, match="without nftset support"):
        resolver.check_version("Dnsmasq version 2.80\nCompile time options: IPv6 ipset\n")


async def test_probe_dnsmasq_runs_the_configured_binary(tmp_path):
    fake = tmp_path / "dnsmasq"
    fake.write_text("#!/bin/sh\necho 'Dnsmasq version 2.90  Copyright'\necho 'Compile time options: IPv6 nftset'\n")
    fake.chmod(0o755)
    assert await resolver.probe_dnsmasq(fake) == "Dnsmasq version 2.90"
    fake.write_text("#!/bin/sh\necho 'Dnsmasq version 2.85'\necho 'Compile time options: IPv6 ipset'\n")
    with pytest.raises(HostError, match="without nftset support"):
        await resolver.probe_dnsmasq(fake)
    with pytest.raises(HostError, match=r"apt-get install dnsmasq-base, or set SANDBOX_DNSMASQ"):
        await resolver.probe_dnsmasq(tmp_path / "missing")
