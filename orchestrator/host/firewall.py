"""The host's packet policy for egress-mode sandboxes: one nftables table of ours and IPv4
forwarding.  The only code that runs ``nft`` or writes ``ip_forward``.

Everything here except ``apply_ruleset``, ``delete_table`` and ``enable_forwarding`` is pure:
``render_ruleset`` turns a ``FirewallConfig`` into nft text (unit-tested line by line), the
``parse_*`` functions turn the ``SANDBOX_EGRESS_*`` variables into data.

The table (``inet gvisor_sandbox_<tag>``, one per service instance, see ``netns``) holds no
per-sandbox state: rules match the host-side veth name prefix, so starting a sandbox is netlink
work only and the table is written once at start-up::

    forward      from our veths -> chain egress:
                   established/related        accept   (replies of allowed connections)
                   invalid                    drop
                   spoofed source             drop     (fib reverse path, and not in the subnet)
                   fixed deny set             drop     (loopback, link-local incl. 169.254.169.254,
                                                        multicast, broadcast, reserved, IPv6 ones)
                   the egress subnet          drop     (no sandbox reaches another)
                   the host's own addresses   drop
                   private ranges             drop     unless opened by SANDBOX_EGRESS_ALLOW_PRIVATE
                   the allowlist's CIDRs      accept   (SANDBOX_EGRESS_ALLOW)
                   the allowlist's names      accept   (addresses in a set @dns4_<ports>, added
                                                        by the resolver, see below)
                   anything else              drop
                 to our veths: established/related accept, anything else drop (no inbound)
    input        from our veths: the service's port drop, the resolver (udp/tcp 53 on its one
                 address) accept, then everything drop: a sandbox never talks to the host
                 itself otherwise (its gateway address included); the resolver's address
                 from anywhere but our veths and lo: drop
    postrouting  source in the subnet, leaving by a device that is not ours -> masquerade

The deny rules come before the allowlist, so no allowlist entry can open them; entries that lie
wholly inside them are rejected when the settings are read.  IPv6: sandboxes get IPv4 only
(runsc before 2024 copies only IPv4 addresses), so every IPv6 packet from them is dropped; the
IPv6 deny sets are there so that stays true if that ever changes.

Names (``host/resolver``): an allowlist entry may be a DNS name (``api.example.com``, that
name only) or a wildcard (``*.example.com``: every name below it, not the name itself), with
the same optional ports.  Each distinct port constraint of name entries gets one set
``dns4_any`` / ``dns4_<low>_<high>`` (``flags timeout``, the element timeout is
``SANDBOX_EGRESS_DNS_TTL`` plus ``DNS_GRACE_S``); dnsmasq adds every IPv4 address an allowed
name resolves to into the sets of that name (its ``nftset=`` option) and nothing else writes
them.  The set rules sit where the CIDR allow rules sit, after every deny rule: a name that
resolves to a denied address (DNS rebinding) opens nothing.

Forwarding: egress needs ``net.ipv4.ip_forward=1``.  ``enable_forwarding`` sets it and returns
the value it found, which the service records and logs.  The service does not turn it back off
when it stops: by then other software (a container engine, a VPN) may rely on it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.errors import ConfigError, HostError, RunscError
from orchestrator.runtime.runsc import run_command

log = logging.getLogger(__name__)

IPv4Net = ipaddress.IPv4Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never reachable from a sandbox, whatever the settings say.
DENY_FIXED4 = tuple(IPv4Net(n) for n in (
    "0.0.0.0/8",        # "this network"
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local, including the cloud metadata address 169.254.169.254
    "192.0.0.0/24",     # IETF protocol assignments
    "192.0.2.0/24",     # TEST-NET-1
    "192.88.99.0/24",   # 6to4 relay anycast
    "198.18.0.0/15",    # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",   # TEST-NET-3
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, including the broadcast address 255.255.255.255
))
# Private ranges: denied too, but SANDBOX_EGRESS_ALLOW_PRIVATE (test-only) may open parts of them.
DENY_PRIVATE4 = tuple(IPv4Net(n) for n in ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16"))
DENY_FIXED6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/128", "::1/128",          # unspecified, loopback
    "::ffff:0:0/96",              # IPv4-mapped
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64 (would reach IPv4 private ranges)
    "100::/64",                   # discard
    "2001:db8::/32",              # documentation
    "2002::/16",                  # 6to4 (embeds IPv4 addresses)
    "fc00::/7",                   # unique local (the IPv6 private range)
    "fe80::/10", "fec0::/10",     # link-local, old site-local
    "ff00::/8",                   # multicast
))
PROC_SYS = pathlib.Path("/proc/sys")
NFT = "nft"


def table_name(prefix: str) -> str:
    """Our table for the instance whose netns/veth names start with ``prefix``."""
    return f"gvisor_sandbox_{prefix}"


@dataclass(frozen=True)
class EgressRule:
    """One allowlist entry: a destination network and optionally a port range (TCP and UDP)."""

    network: IPv4Net
    ports: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.ports is None:
            return str(self.network)
        low, high = self.ports
        return f"{self.network}:{low}" if low == high else f"{self.network}:{low}-{high}"


def _ports_text(ports: tuple[int, int]) -> str:
    low, high = ports
    return str(low) if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class NameRule:
    """One allowlist entry by name: ``api.example.com`` (that name only) or ``*.example.com``
    (every name below example.com, not example.com itself), optionally a port range."""

    name: str                  # lower case, no trailing dot; a wildcard starts with "*."
    ports: tuple[int, int] | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.name.startswith("*.")

    @property
    def domain(self) -> str:
        """The name without its ``*.``."""
        return self.name[2:] if self.is_wildcard else self.name

    @property
    def set_name(self) -> str:
        """The nft set the addresses of this entry's names go to (one per port constraint)."""
        return dns_set_name(self.ports)

    def __str__(self) -> str:
        return self.name if self.ports is None else f"{self.name}:{_ports_text(self.ports)}"


AllowRule = EgressRule | NameRule
DNS_GRACE_S = 2  # element timeout beyond the TTL handed to sandboxes (dnsmasq counts whole seconds)


def dns_set_name(ports: tuple[int, int] | None) -> str:
    return "dns4_any" if ports is None else f"dns4_{ports[0]}_{ports[1]}"


@dataclass(frozen=True)
class FirewallConfig:
    table: str                 # nft table name (family inet)
    veth_prefix: str           # every host-side veth of ours starts with this
    subnet: IPv4Net            # SANDBOX_EGRESS_SUBNET
    allow: tuple[AllowRule, ...] = ()
    allow_private: tuple[IPv4Net, ...] = ()
    host_addresses: tuple[IPAddress, ...] = ()
    service_port: int | None = None
    resolver: ipaddress.IPv4Address | None = None  # the sandboxes' resolver (host/resolver)
    dns_ttl_s: int = 60        # SANDBOX_EGRESS_DNS_TTL: how long a resolved address stays open

    @property
    def name_rules(self) -> tuple[NameRule, ...]:
        return tuple(rule for rule in self.allow if isinstance(rule, NameRule))


# -- settings -------------------------------------------------------------------------------

def _entries(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _network(name: str, text: str) -> IPv4Net:
    if text.startswith("[") or text.count(":") > 1:
        raise ConfigError(f"{name}: {text!r}: IPv6 destinations are not supported (sandboxes have IPv4 only)")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{name}: {text!r} is not an IPv4 address or CIDR ({exc})") from None
    if network.version != 4:
        raise ConfigError(f"{name}: {text!r}: IPv6 destinations are not supported (sandboxes have IPv4 only)")
    return network


def _port(name: str, entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{name}: {entry!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _denied_by(network: IPv4Net, ranges: Iterable[IPv4Net]) -> IPv4Net | None:
    return next((denied for denied in ranges if network.subnet_of(denied)), None)


_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def _is_name(text: str) -> bool:
    """A DNS name rather than an address or CIDR: it has a letter, a ``*`` or an ``_``
    outside a last label of digits (``10.0.0.300`` stays an address, and an error)."""
    return "/" not in text and (text.startswith("*") or not text.rsplit(".", 1)[-1].isdigit())


def _dns_name(name: str, entry: str, text: str) -> str:
    """``api.example.com`` or ``*.example.com``, lower-cased; at least two labels after the ``*.``."""
    name_text = text.lower().rstrip(".")
    rest = name_text[2:] if name_text.startswith("*.") else name_text
    labels = rest.split(".")
    if "*" in rest:
        raise ConfigError(f"{name}: {entry!r}: a wildcard is only allowed as a leading '*.' (e.g. *.example.com)")
    if len(rest) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise ConfigError(f"{name}: {entry!r} is not a CIDR, an address or a DNS name "
                          "(labels of letters, digits, '-' and '_', up to 63 characters each)")
    if len(labels) < 2 or labels[-1].isdigit():
        raise ConfigError(f"{name}: {entry!r}: a name needs at least two labels and a top-level label "
                          "that is not a number (e.g. api.example.com, *.example.com)")
    return name_text


def _port_range(name: str, entry: str, ports: str) -> tuple[int, int]:
    low, dash, high = ports.partition("-")
    port_range = (_port(name, entry, low), _port(name, entry, high) if dash else _port(name, entry, low))
    if port_range[0] > port_range[1]:
        raise ConfigError(f"{name}: {entry!r}: port range {ports} is reversed")
    return port_range


def parse_egress_allow(name: str, value: str) -> tuple[AllowRule, ...]:
    """Comma-separated entries, each ``CIDR`` (a bare address is a /32), ``api.example.com`` or
    ``*.example.com``, with an optional ``:port`` or ``:low-high``.  A CIDR wholly inside the
    fixed deny set is an error: it could never be reached.  Duplicates are dropped."""
    rules: list[AllowRule] = []
    for entry in _entries(value):
        host, colon, ports = entry.partition(":")
        if colon and (host.startswith("[") or ":" in ports):
            raise ConfigError(f"{name}: {entry!r}: IPv6 destinations are not supported (sandboxes have IPv4 only)")
        port_range = _port_range(name, entry, ports) if colon else None
        if _is_name(host):
            rule: AllowRule = NameRule(_dns_name(name, entry, host), port_range)
        else:
            network = _network(name, host)
            denied = _denied_by(network, DENY_FIXED4)
            if denied is not None:
                raise ConfigError(f"{name}: {entry!r} lies in {denied}, which is always denied")
            rule = EgressRule(network, port_range)
        if rule not in rules:
            rules.append(rule)
    return tuple(rules)


def parse_allow_private(name: str, value: str) -> tuple[IPv4Net, ...]:
    """TEST-ONLY and dangerous: CIDRs inside the private ranges that sandboxes may reach (when the
    allowlist also lists them).  Anything outside the private ranges is an error; the host's own
    addresses stay denied by rule order."""
    networks = []
    for entry in _entries(value):
        network = _network(name, entry)
        if _denied_by(network, DENY_PRIVATE4) is None:
            raise ConfigError(f"{name}: {entry!r} is not inside a private range "
                              f"({', '.join(map(str, DENY_PRIVATE4))}); only those can be opened")
        networks.append(network)
    return tuple(networks)


def parse_egress_subnet(name: str, value: str) -> IPv4Net:
    """The range per-sandbox /30s are cut from: inside a private range, /12 to /29."""
    network = _network(name, value.strip())
    if not 12 <= network.prefixlen <= 29:
        raise ConfigError(f"{name}: {network} must be a /12 to /29 (each sandbox takes a /30)")
    if _denied_by(network, DENY_PRIVATE4) is None:
        raise ConfigError(f"{name}: {network} must lie inside a private range ({', '.join(map(str, DENY_PRIVATE4))})")
    return network


def check_egress(allow: tuple[AllowRule, ...], allow_private: tuple[IPv4Net, ...], subnet: IPv4Net) -> None:
    """Cross-checks of the three egress variables; ConfigError names the variable."""
    for network in allow_private:
        if network.overlaps(subnet):
            raise ConfigError(f"SANDBOX_EGRESS_ALLOW_PRIVATE: {network} overlaps SANDBOX_EGRESS_SUBNET {subnet}")
    for rule in allow:
        if isinstance(rule, NameRule):  # what a name resolves to is checked by the rules, per packet
            continue
        private = _denied_by(rule.network, DENY_PRIVATE4)
        if private is not None and _denied_by(rule.network, allow_private) is None:
            raise ConfigError(f"SANDBOX_EGRESS_ALLOW: {rule} lies in the private range {private}, which stays "
                              "denied (SANDBOX_EGRESS_ALLOW_PRIVATE, test-only, can open parts of it)")
        if rule.network.subnet_of(subnet):
            raise ConfigError(f"SANDBOX_EGRESS_ALLOW: {rule} lies in SANDBOX_EGRESS_SUBNET {subnet}")


def deny_reason(address: ipaddress.IPv4Address, *, subnet: IPv4Net, allow_private: Iterable[IPv4Net] = (),
                host_addresses: Iterable[IPAddress] = (), resolver: ipaddress.IPv4Address | None = None) -> str | None:
    """Why the forward chain drops packets to ``address`` whatever the allowlist says, or None
    (the resolver logs a name that resolves to such an address: DNS rebinding)."""
    if address in set(host_addresses) or address == resolver:
        return "an address of this host"
    for network in DENY_FIXED4:
        if address in network:
            return f"the fixed deny set ({network})"
    if address in subnet:
        return f"the sandboxes' subnet ({subnet})"
    for network in DENY_PRIVATE4:
        if address in network and not any(address in opened for opened in allow_private):
            return f"a private range ({network})"
    return None


# -- the ruleset ----------------------------------------------------------------------------

def _set(name: str, kind: str, elements: Iterable, *, interval: bool) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    if interval:
        lines.append("\t\tflags interval")
    items = [str(e) for e in elements]
    if items:
        lines.append("\t\telements = { " + ", ".join(items) + " }")
    return lines + ["\t}"]


def _collapse(networks: Iterable) -> list:
    """Overlapping entries would make nft refuse an interval set: merge them."""
    return list(ipaddress.collapse_addresses(sorted(networks)))


def _accept(daddr: str, ports: tuple[int, int] | None, comment: str = "") -> str:
    note = f' comment "{comment}"' if comment else ""
    if ports is None:
        return f"\t\tip daddr {daddr} accept{note}"
    return f"\t\tip daddr {daddr} meta l4proto {{ tcp, udp }} th dport {_ports_text(ports)} accept{note}"


def _dns_ports(config: FirewallConfig) -> list[tuple[int, int] | None]:
    """The distinct port constraints of the name entries (None first: any port)."""
    return sorted({rule.ports for rule in config.name_rules}, key=lambda ports: (ports is not None, ports or (0, 0)))


def _dns_set(ports: tuple[int, int] | None, timeout_s: int) -> list[str]:
    return [f"\tset {dns_set_name(ports)} {{", "\t\ttype ipv4_addr", "\t\tflags timeout",
            f"\t\ttimeout {timeout_s}s", "\t}"]


def render_ruleset(config: FirewallConfig) -> str:
    """The whole table as ``nft -f`` input.  It first creates and deletes the table, so applying
    it replaces any earlier version atomically (one nft transaction)."""
    ours = f'"{config.veth_prefix}*"'
    host4 = sorted({a for a in config.host_addresses if a.version == 4})
    host6 = sorted({a for a in config.host_addresses if a.version == 6})
    opened = bool(config.allow_private)
    lines = [
        f"table inet {config.table}",
        f"delete table inet {config.table}",
        f"table inet {config.table} {{",
        *_set("deny_fixed4", "ipv4_addr", DENY_FIXED4, interval=True),
        *_set("deny_private4", "ipv4_addr", DENY_PRIVATE4, interval=True),
        *_set("private_opened4", "ipv4_addr", _collapse(config.allow_private), interval=True),
        *_set("host4", "ipv4_addr", host4, interval=False),
        *_set("deny_fixed6", "ipv6_addr", DENY_FIXED6, interval=True),
        *_set("host6", "ipv6_addr", host6, interval=False),
        *(line for ports in _dns_ports(config) for line in _dns_set(ports, config.dns_ttl_s + DNS_GRACE_S)),
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f"\t\tiifname {ours} jump egress",
        f"\t\toifname {ours} ct state established,related accept",
        f"\t\toifname {ours} counter drop comment \"nothing connects into a sandbox\"",
        "\t}",
        "\tchain egress {",
        "\t\tct state established,related accept",
        "\t\tct state invalid counter drop",
        "\t\tfib saddr . iif oif missing counter drop comment \"spoofed source\"",
        f"\t\tip saddr != {config.subnet} counter drop comment \"spoofed source\"",
        "\t\tip daddr @deny_fixed4 counter drop comment \"loopback, link-local, multicast, broadcast, reserved\"",
        f"\t\tip daddr {config.subnet} counter drop comment \"other sandboxes\"",
        "\t\tip daddr @host4 counter drop comment \"this host's own addresses\"",
        ("\t\tip daddr @deny_private4 ip daddr != @private_opened4 counter drop comment \"private ranges\""
         if opened else "\t\tip daddr @deny_private4 counter drop comment \"private ranges\""),
        "\t\tip6 daddr @deny_fixed6 counter drop",
        "\t\tip6 daddr @host6 counter drop",
        "\t\tmeta nfproto ipv6 counter drop comment \"sandboxes have IPv4 only\"",
        *(_accept(str(rule.network), rule.ports) for rule in config.allow if isinstance(rule, EgressRule)),
        *(_accept(f"@{dns_set_name(ports)}", ports, "resolved from allowed names") for ports in _dns_ports(config)),
        "\t\tcounter drop comment \"not in SANDBOX_EGRESS_ALLOW\"",
        "\t}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
    ]
    if config.service_port is not None:
        lines.append(f"\t\tiifname {ours} tcp dport {config.service_port} counter drop comment \"this service's port\"")
    if config.resolver is not None:
        lines += [
            f"\t\tiifname {ours} ip daddr {config.resolver} meta l4proto {{ tcp, udp }} th dport 53 accept "
            "comment \"the sandboxes' resolver\"",
            f"\t\tiifname != {ours} iifname != \"lo\" ip daddr {config.resolver} counter drop "
            "comment \"the resolver serves sandboxes only\"",
        ]
    lines += [
        f"\t\tiifname {ours} counter drop comment \"sandboxes never reach the host itself\"",
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f"\t\tip saddr {config.subnet} oifname != {ours} masquerade",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


# -- side effects ---------------------------------------------------------------------------

async def _nft(verb: str, argv: list[str], *, missing_ok: bool = False) -> bool:
    """Run nft; False when ``missing_ok`` and the object does not exist."""
    try:
        code, _, err = await run_command(argv)
    except RunscError as exc:  # run_command's own failure (nft missing, no answer): not a sandbox's
        hint = " (install nftables: apt-get install nftables)" if shutil.which(argv[0]) is None else ""
        raise HostError(f"{verb}: {exc}{hint}") from exc
    if code == 0:
        return True
    if missing_ok and "No such file or directory" in err:
        return False
    raise HostError(f"{verb}: nft exited {code}: {err.strip()[-500:]}")


async def apply_ruleset(text: str, path: pathlib.Path, *, nft: str = NFT) -> None:
    """Write ``text`` to ``path`` (kept for inspection) and load it with ``nft -f`` in one
    transaction."""
    temp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except OSError as exc:
        raise HostError(f"write nftables ruleset {path}: {exc}") from exc
    await _nft(f"apply nftables ruleset {path}", [nft, "-f", str(path)])


async def delete_table(table: str, *, nft: str = NFT) -> bool:
    """Delete our table; False when it was not there."""
    return await _nft(f"delete nftables table inet {table}", [nft, "delete", "table", "inet", table], missing_ok=True)


def enable_forwarding(proc_sys: pathlib.Path = PROC_SYS) -> str:
    """Turn IPv4 forwarding on; return the value it had ("0" or "1")."""
    path = proc_sys / "net" / "ipv4" / "ip_forward"
    try:
        before = path.read_text().strip()
        if before != "1":
            path.write_text("1\n")
    except OSError as exc:
        raise HostError(f"enable IPv4 forwarding ({path}): {exc}") from exc
    return before
