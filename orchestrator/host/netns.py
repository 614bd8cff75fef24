"""Network namespaces and veth pairs of egress-mode sandboxes: the only netlink user (pyroute2).

``SANDBOX_CONTAINER_NETWORK=none`` (the default) needs nothing from this module: runsc
``--network=none`` starts the sandbox in a fresh, empty network namespace it creates itself (and
ignores any namespace path in the spec), and gVisor's own network stack then has a loopback
device only.  There is no interface, address, route or rule to manage, so no namespace of ours.

``SANDBOX_CONTAINER_NETWORK=egress``: per sandbox, before ``runsc run``::

    root netns                                 netns <prefix>-<sandbox id>  (/var/run/netns/...)
    <prefix>h<slot>  10.254.x.1/30  <--veth-->  eth0  10.254.x.2/30, up; lo up
                                               default via 10.254.x.1

runsc (``--network=sandbox``, the spec's network namespace ``path`` pointing at that netns)
takes eth0's address and routes into gVisor's network stack; the host forwards and masquerades
what ``firewall``'s table lets through.  Deleting the host end of the veth and the netns is the
whole undo; the rules are static.

The resolver (``host/resolver``): the last /30 of the subnet is never a sandbox's; its first
address is put on a link ``<prefix>dns`` in the root netns and dnsmasq listens there only.
That link is one end of a veth pair whose other end (``<prefix>dnp``) stays in the root netns
too: a ``dummy`` link would do, but kernels without the dummy driver exist (this test host's),
and egress mode needs veth anyway.  Every sandbox reaches it through its default route (the host side of its veth), so one
resolv.conf serves them all and their specs stay the same from sandbox to sandbox.

Names.  ``prefix`` is ``gvs`` plus 4 hex digits of the service's state dir, so two services on
one host (a test's and the real one) never reap each other's namespaces, veths or tables.

Addresses.  Slot ``n`` of ``SANDBOX_EGRESS_SUBNET`` is its n-th /30: host side ``.1``, sandbox
``.2``.  A slot is claimed by creating the host veth named after it: the kernel refuses a
duplicate name (EEXIST), so concurrent sandboxes never share a slot, and a slot whose veth is
still there (a leftover of an earlier run not yet reaped, a namespace the kernel is still
tearing down) is skipped.  The search starts at a random slot so addresses are not reused at
once.  Two services must not share a subnet: start-up refuses a subnet any route overlaps.

pyroute2's errors (``NetlinkError``, ``OSError``, its child-process ``RuntimeError``) become
``HostError`` here.  Every function is synchronous: callers run them with
``asyncio.to_thread`` (pyroute2's synchronous API runs its own event loop and forks to enter a
namespace).
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import pathlib
import random
from collections.abc import Collection
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from bundles.spec import NETNS_DIR
from orchestrator.errors import HostError

log = logging.getLogger(__name__)

SLOT_PREFIXLEN = 30
SANDBOX_IFNAME = "eth0"
MAX_CLAIM_ATTEMPTS = 64
_PYROUTE2_ERRORS = (NetlinkError, OSError, RuntimeError)


def instance_prefix(state_dir: pathlib.Path) -> str:
    """``gvs`` + 4 hex digits of the state dir: the name prefix of everything this service makes."""
    return "gvs" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:4]


def slot_count(subnet: ipaddress.IPv4Network) -> int:
    return 2 ** (SLOT_PREFIXLEN - subnet.prefixlen)


def slot_addresses(subnet: ipaddress.IPv4Network, slot: int) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
    """(host side, sandbox side) of ``slot``: the first two usable addresses of its /30."""
    if not 0 <= slot < slot_count(subnet):
        raise ValueError(f"slot {slot} is outside {subnet}")
    base = subnet.network_address + slot * 4
    return (ipaddress.IPv4Interface(f"{base + 1}/{SLOT_PREFIXLEN}"),
            ipaddress.IPv4Interface(f"{base + 2}/{SLOT_PREFIXLEN}"))


def resolver_address(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """Where the sandboxes' resolver listens: the first address of the subnet's last /30
    (a slot no sandbox gets)."""
    return slot_addresses(subnet, slot_count(subnet) - 1)[0].ip


def pick_slot(used: Collection[int], count: int, start: int) -> int | None:
    """The first slot from ``start`` on (wrapping around) that is not in ``used``."""
    for offset in range(count):
        slot = (start + offset) % count
        if slot not in used:
            return slot
    return None


@dataclass(frozen=True)
class SandboxNet:
    """What one sandbox's network set-up made."""

    sandbox_id: str
    netns: str                 # name under NETNS_DIR
    path: str                  # the spec's network namespace path
    host_veth: str
    slot: int
    host_address: ipaddress.IPv4Interface
    sandbox_address: ipaddress.IPv4Interface


class SandboxNetworks:
    """Creates, removes and reaps the netns + veth pairs of one service instance."""

    def __init__(self, prefix: str, subnet: ipaddress.IPv4Network, *, netns_dir: pathlib.Path = pathlib.Path(NETNS_DIR)):
        self.prefix = prefix
        self.subnet = subnet
        self.netns_dir = netns_dir

    @property
    def resolver_link(self) -> str:
        """The dummy link holding the resolver's address."""
        return f"{self.prefix}dns"

    @property
    def veth_prefix(self) -> str:
        """Every host-side veth of ours starts with this (the firewall matches it)."""
        return f"{self.prefix}h"

    def netns_name(self, sandbox_id: str) -> str:
        return f"{self.prefix}-{sandbox_id}"

    def _slot_of(self, ifname: str) -> int | None:
        rest = ifname[len(self.veth_prefix):] if ifname.startswith(self.veth_prefix) else ""
        return int(rest) if rest.isdigit() else None

    # -- one sandbox --------------------------------------------------------------------------

    def create(self, sandbox_id: str) -> SandboxNet:
        """A fresh netns with a veth pair, addresses and a default route via the host."""
        name = self.netns_name(sandbox_id)
        path = self.netns_dir / name
        try:
            netns.create(str(path))
        except _PYROUTE2_ERRORS as exc:
            raise HostError(f"create netns {name}: {exc}") from exc
        veth = None
        try:
            with IPRoute() as ipr:
                slot, veth, index = self._claim_slot(ipr, path)
                ipr.link("set", index=index, ifalias=name)  # `ip link` shows which netns it serves
                host, sandbox = slot_addresses(self.subnet, slot)
                ipr.addr("add", index=index, address=str(host.ip), prefixlen=SLOT_PREFIXLEN)
                ipr.link("set", index=index, state="up")
            with IPRoute(netns=str(path), flags=0) as inside:
                (lo,) = inside.link_lookup(ifname="lo")
                (eth,) = inside.link_lookup(ifname=SANDBOX_IFNAME)
                inside.link("set", index=lo, state="up")
                inside.addr("add", index=eth, address=str(sandbox.ip), prefixlen=SLOT_PREFIXLEN)
                inside.link("set", index=eth, state="up")
                inside.route("add", dst="0.0.0.0/0", gateway=str(host.ip))
        except (*_PYROUTE2_ERRORS, ValueError, IndexError, HostError) as exc:
            self._undo(name, veth)
            if isinstance(exc, HostError):
                raise
            raise HostError(f"create network for sandbox {sandbox_id}: {exc}") from exc
        net = SandboxNet(sandbox_id=sandbox_id, netns=name, path=str(path), host_veth=veth, slot=slot,
                         host_address=host, sandbox_address=sandbox)
        log.debug("sandbox=%s netns=%s veth=%s address=%s", sandbox_id, name, veth, sandbox)
        return net

    def _claim_slot(self, ipr: IPRoute, path: pathlib.Path) -> tuple[int, str, int]:
        """Create the veth pair named after a free slot; the kernel's EEXIST settles races."""
        count = slot_count(self.subnet) - 1  # the last one is the resolver's
        used = {slot for link in ipr.get_links()
                if (slot := self._slot_of(link.get_attr("IFLA_IFNAME") or "")) is not None}
        start = random.randrange(count)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            slot = pick_slot(used, count, start)
            if slot is None:
                break
            veth = f"{self.veth_prefix}{slot}"
            try:
                ipr.link("add", ifname=veth, kind="veth", peer={"ifname": SANDBOX_IFNAME, "net_ns_fd": str(path)})
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                used.add(slot)
                continue
            return slot, veth, ipr.link_lookup(ifname=veth)[0]
        raise HostError(f"create network {path.name}: no free /30 left in SANDBOX_EGRESS_SUBNET {self.subnet}")

    def remove(self, net: SandboxNet) -> None:
        """Delete the host veth (its peer goes with it) and the netns; gone already is fine."""
        self._undo(net.netns, net.host_veth, strict=True)

    def _undo(self, name: str, veth: str | None, *, strict: bool = False) -> None:
        problems = []
        if veth is not None:
            try:
                with IPRoute() as ipr:
                    for index in ipr.link_lookup(ifname=veth):
                        ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    problems.append(f"veth {veth}: {exc}")
            except (OSError, RuntimeError) as exc:
                problems.append(f"veth {veth}: {exc}")
        try:
            netns.remove(str(self.netns_dir / name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"netns {name}: {exc}")
        if problems:
            message = f"remove network {name}: " + "; ".join(problems)
            if strict:
                raise HostError(message)
            log.warning("%s", message)

    # -- the resolver's address ------------------------------------------------------------------

    def create_resolver_link(self) -> ipaddress.IPv4Address:
        """The link ``<prefix>dns`` (and its veth peer), up, holding ``resolver_address`` (a /32)."""
        address = resolver_address(self.subnet)
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.resolver_link, kind="veth", peer={"ifname": f"{self.prefix}dnp"})
                (index,) = ipr.link_lookup(ifname=self.resolver_link)
                (peer,) = ipr.link_lookup(ifname=f"{self.prefix}dnp")
                ipr.addr("add", index=index, address=str(address), prefixlen=32)
                ipr.link("set", index=peer, state="up")
                ipr.link("set", index=index, state="up")
        except (*_PYROUTE2_ERRORS, ValueError) as exc:
            self.remove_resolver_link()
            raise HostError(f"create resolver link {self.resolver_link} ({address}): {exc}") from exc
        return address

    def remove_resolver_link(self) -> bool:
        """Delete the link (its peer goes with it); False when it was not there."""
        try:
            with IPRoute() as ipr:
                indexes = ipr.link_lookup(ifname=self.resolver_link)
                for index in indexes:
                    ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise HostError(f"remove resolver link {self.resolver_link}: {exc}") from exc
        except (OSError, RuntimeError) as exc:
            raise HostError(f"remove resolver link {self.resolver_link}: {exc}") from exc
        return bool(indexes)

    # -- the whole instance -------------------------------------------------------------------

    def list_netns(self) -> list[str]:
        try:
            names = os.listdir(self.netns_dir)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if name.startswith(f"{self.prefix}-"))

    def list_veths(self) -> list[str]:
        try:
            with IPRoute() as ipr:
                names = [link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()]
        except _PYROUTE2_ERRORS as exc:
            raise HostError(f"list veths {self.veth_prefix}*: {exc}") from exc
        return sorted(name for name in names if self._slot_of(name) is not None)

    def reap(self, live: Collection[str] = ()) -> list[str]:
        """Remove every veth and netns of ours that belongs to no sandbox in ``live`` (ids)."""
        keep = {self.netns_name(sandbox_id) for sandbox_id in live}
        reaped = []
        try:
            with IPRoute() as ipr:
                for link in ipr.get_links():
                    ifname = link.get_attr("IFLA_IFNAME") or ""
                    if self._slot_of(ifname) is None or link.get_attr("IFLA_IFALIAS") in keep:
                        continue
                    try:
                        ipr.link("del", index=link["index"])
                    except NetlinkError as exc:
                        if exc.code != errno.ENODEV:
                            raise
                    reaped.append(f"veth {ifname}")
        except _PYROUTE2_ERRORS as exc:
            raise HostError(f"reap veths {self.veth_prefix}*: {exc}") from exc
        for name in self.list_netns():
            if name in keep:
                continue
            try:
                netns.remove(str(self.netns_dir / name))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise HostError(f"reap netns {name}: {exc}") from exc
            reaped.append(f"netns {name}")
        return reaped


# -- the host -----------------------------------------------------------------------------------

def host_addresses() -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Every address on the host's interfaces (root netns), IPv4 and IPv6, sorted."""
    try:
        with IPRoute() as ipr:
            raw = {msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS") for msg in ipr.get_addr()}
    except _PYROUTE2_ERRORS as exc:
        raise HostError(f"read host addresses: {exc}") from exc
    addresses = {ipaddress.ip_address(text.split("%")[0]) for text in raw if text}
    return tuple(sorted(addresses, key=lambda a: (a.version, a)))


def overlapping_routes(subnet: ipaddress.IPv4Network, ignore_prefix: str) -> list[str]:
    """Routes (any table, default routes aside) that overlap ``subnet``, except those on
    interfaces named ``ignore_prefix*`` (our own veths)."""
    try:
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}
            routes = list(ipr.get_routes(family=2, table=None))
    except _PYROUTE2_ERRORS as exc:
        raise HostError(f"read routes: {exc}") from exc
    found = []
    for route in routes:
        dst, length = route.get_attr("RTA_DST"), route["dst_len"]
        if dst is None or length == 0:
            continue
        device = names.get(route.get_attr("RTA_OIF"), "")
        if device.startswith(ignore_prefix):
            continue
        network = ipaddress.ip_network(f"{dst}/{length}", strict=False)
        if network.overlaps(subnet):
            found.append(f"{network} dev {device or '-'} table {route.get_attr('RTA_TABLE')}")
    return sorted(set(found))
