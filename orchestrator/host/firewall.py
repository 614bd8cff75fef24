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
                   the allowlist              accept   (SANDBOX_EGRESS_ALLOW)
                   anything else              drop
                 to our veths: established/related accept, anything else drop (no inbound)
    input        from our veths: the service's port drop, then everything drop: a sandbox
                 never talks to the host itself (its gateway address included)
    postrouting  source in the subnet, leaving by a device that is not ours -> masquerade

The deny rules come before the allowlist, so no allowlist entry can open them; entries that lie
wholly inside them are rejected when the settings are read.  IPv6: sandboxes get IPv4 only
(runsc before 2024 copies only IPv4 addresses), so every IPv6 packet from them is dropped; the
IPv6 deny sets are there so that stays true if that ever changes.

Forwarding: egress needs ``net.ipv4.ip_forward=1``.  ``enable_forwarding`` sets it and returns
the value it found, which the service records and logs.  The service does not turn it back off
when it stops: by then other software (a container engine, a VPN) may rely on it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
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


@dataclass(frozen=True)
class FirewallConfig:
    table: str                 # nft table name (family inet)
    veth_prefix: str           # every host-side veth of ours starts with this
    subnet: IPv4Net            # SANDBOX_EGRESS_SUBNET
    allow: tuple[EgressRule, ...] = ()
    allow_private: tuple[IPv4Net, ...] = ()
    host_addresses: tuple[IPAddress, ...] = ()
    service_port: int | None = None


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


def parse_egress_allow(name: str, value: str) -> tuple[EgressRule, ...]:
    """``CIDR``, ``CIDR:port`` or ``CIDR:low-high``, comma-separated (a bare address is a /32).
    An entry wholly inside the fixed deny set is an error: it could never be reached."""
    rules = []
    for entry in _entries(value):
        address, colon, ports = entry.partition(":")
        if colon and (address.startswith("[") or ":" in ports):
            raise ConfigError(f"{name}: {entry!r}: IPv6 destinations are not supported (sandboxes have IPv4 only)")
        network = _network(name, address)
        port_range = None
        if colon:
            low, dash, high = ports.partition("-")
            port_range = (_port(name, entry, low), _port(name, entry, high) if dash else _port(name, entry, low))
            if port_range[0] > port_range[1]:
                raise ConfigError(f"{name}: {entry!r}: port range {ports} is reversed")
        denied = _denied_by(network, DENY_FIXED4)
        if denied is not None:
            raise ConfigError(f"{name}: {entry!r} lies in {denied}, which is always denied")
        rules.append(EgressRule(network, port_range))
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


def check_egress(allow: tuple[EgressRule, ...], allow_private: tuple[IPv4Net, ...], subnet: IPv4Net) -> None:
    """Cross-checks of the three egress variables; ConfigError names the variable."""
    for network in allow_private:
        if network.overlaps(subnet):
            raise ConfigError(f"SANDBOX_EGRESS_ALLOW_PRIVATE: {network} overlaps SANDBOX_EGRESS_SUBNET {subnet}")
    for rule in allow:
        private = _denied_by(rule.network, DENY_PRIVATE4)
        if private is not None and _denied_by(rule.network, allow_private) is None:
            raise ConfigError(f"SANDBOX_EGRESS_ALLOW: {rule} lies in the private range {private}, which stays "
                              "denied (SANDBOX_EGRESS_ALLOW_PRIVATE, test-only, can open parts of it)")
        if rule.network.subnet_of(subnet):
            raise ConfigError(f"SANDBOX_EGRESS_ALLOW: {rule} lies in SANDBOX_EGRESS_SUBNET {subnet}")


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


def _allow_rule(rule: EgressRule) -> str:
    if rule.ports is None:
        return f"\t\tip daddr {rule.network} accept"
    low, high = rule.ports
    ports = str(low) if low == high else f"{low}-{high}"
    return f"\t\tip daddr {rule.network} meta l4proto {{ tcp, udp }} th dport {ports} accept"


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
        *(_allow_rule(rule) for rule in config.allow),
        "\t\tcounter drop comment \"not in SANDBOX_EGRESS_ALLOW\"",
        "\t}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
    ]
    if config.service_port is not None:
        lines.append(f"\t\tiifname {ours} tcp dport {config.service_port} counter drop comment \"this service's port\"")
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
