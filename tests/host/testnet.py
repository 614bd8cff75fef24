"""Test hosts of our own, so network tests never send a packet off this machine.

A ``TestHost`` is a network namespace (``gvx-<hex>``) joined to the root netns by one veth
(``gvx<hex>``), with a /30 from 10.199.0.0/16: ``.1`` on the root side (an address of this
host, assigned here), ``.2`` inside.  The namespace has no default route, so nothing in it can
reach anything but the host.  It serves HTTP on ports of the test's choosing and records every
request it gets.  ``HostListener`` is a TCP listener on a host address (standing in for this
service's port) that records connections.  ``UpstreamDns`` is a dnsmasq of the test's own in a
test host, answering for names the test chooses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pyroute2 import IPRoute, netns

from orchestrator.host.netns import overlapping_routes

TEST_RANGE = ipaddress.IPv4Network("10.199.0.0/16")
NETNS_DIR = "/var/run/netns"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, veths, nftables)")


def free_subnet(prefixlen: int = 30, within: ipaddress.IPv4Network = TEST_RANGE) -> ipaddress.IPv4Network:
    """A random /``prefixlen`` of ``within`` that no route of this host overlaps."""
    subnets = list(within.subnets(new_prefix=prefixlen))
    for _ in range(32):
        candidate = random.choice(subnets)
        if not overlapping_routes(candidate, ignore_prefix="\0"):
            return candidate
    raise AssertionError(f"no free /{prefixlen} in {within}")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.hits.append(self.path)
        body = self.server.reply
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(sock: socket.socket, address: tuple[str, int], reply: bytes) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(address, _Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.server_bind()
    server.server_activate()
    server.hits = []
    server.reply = reply
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


class TestHost:
    __test__ = False  # not a test class

    def __init__(self, network: ipaddress.IPv4Network | None = None):
        self.network = network or free_subnet(30)
        tag = os.urandom(3).hex()
        self.netns = f"gvx-{tag}"
        self.path = f"{NETNS_DIR}/{self.netns}"
        self.veth = f"gvx{tag}"
        hosts = list(self.network.hosts())
        self.host_address = str(hosts[0])   # in the root netns: an address of this host
        self.address = str(hosts[1])        # the test host itself
        self.servers: dict[int, ThreadingHTTPServer] = {}

    def create(self) -> "TestHost":
        netns.create(self.path)
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.path})
                (index,) = ipr.link_lookup(ifname=self.veth)
                ipr.addr("add", index=index, address=self.host_address, prefixlen=30)
                ipr.link("set", index=index, state="up")
            with IPRoute(netns=self.path, flags=0) as inside:
                (lo,) = inside.link_lookup(ifname="lo")
                (eth,) = inside.link_lookup(ifname="eth0")
                inside.link("set", index=lo, state="up")
                inside.addr("add", index=eth, address=self.address, prefixlen=30)
                inside.link("set", index=eth, state="up")
        except BaseException:
            self.remove()
            raise
        return self

    def serve(self, port: int, reply: bytes = b"hello from the test host") -> ThreadingHTTPServer:
        sock = netns.create_socket(self.path, socket.AF_INET, socket.SOCK_STREAM, flags=0)
        self.servers[port] = _serve(sock, (self.address, port), reply)
        return self.servers[port]

    def hits(self, port: int) -> list[str]:
        return list(self.servers[port].hits)

    def remove(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        self.servers.clear()
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=self.veth):
                ipr.link("del", index=index)
        if os.path.exists(self.path):
            netns.remove(self.path)

    def __enter__(self) -> "TestHost":
        return self.create()

    def __exit__(self, *_) -> None:
        self.remove()


class HostListener:
    """A TCP listener in the root netns on ``address:port``, counting accepted connections."""

    def __init__(self, address: str, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.address, self.port = self.sock.getsockname()
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def connect_from(path: str, address: str, port: int, timeout: float = 1.0) -> str:
    """Try a TCP connection from inside the netns at ``path``: "ok", "timeout" or the error."""
    with netns.create_socket(path, socket.AF_INET, socket.SOCK_STREAM, flags=0) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"error: {exc.strerror or exc}"
        return "ok"


def http_get_from(path: str, address: str, port: int, timeout: float = 2.0) -> bytes:
    """A plain HTTP GET from inside the netns at ``path``; returns the body."""
    with netns.create_socket(path, socket.AF_INET, socket.SOCK_STREAM, flags=0) as sock:
        sock.settimeout(timeout)
        sock.connect((address, port))
        sock.sendall(f"GET /from-netns HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body


def read_forwarding() -> str:
    with open("/proc/sys/net/ipv4/ip_forward") as handle:
        return handle.read().strip()


def write_forwarding(value: str) -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w") as handle:
        handle.write(value + "\n")


# -- DNS ----------------------------------------------------------------------------------------

class UpstreamDns:
    """A dnsmasq of the test's own inside a ``TestHost``'s netns, on its address, port 53:
    authoritative for ``records`` (name -> IPv4 address) with a TTL of ``ttl`` seconds, and
    NXDOMAIN for everything else (it has no upstream)."""

    def __init__(self, host: TestHost, records: dict[str, str], ttl: int = 1, dnsmasq: str = "dnsmasq"):
        self.host = host
        self.log: list[str] = []
        argv = ["ip", "netns", "exec", host.netns, dnsmasq, "--keep-in-foreground", "--log-facility=-",
                "--log-queries", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
                f"--listen-address={host.address}", "--port=53", f"--local-ttl={ttl}", "--user=root",
                "--pid-file=", "--address=/#/",
                *(f"--host-record={name},{address}" for name, address in sorted(records.items()))]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        for line in self.process.stderr:  # it logs "started" once it listens
            self.log.append(line.rstrip())
            if "started, version" in line:
                break
        else:
            raise AssertionError(f"upstream dnsmasq did not start: {self.log}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line.rstrip())

    def queried(self, name: str) -> int:
        return sum(f"query[A] {name} " in line for line in self.log)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def dns_query(server: str, name: str, *, timeout: float = 2.0) -> tuple[int, list[tuple[str, int]]]:
    """One A query over UDP from the root netns: (rcode, [(address, ttl)])."""
    ident = random.randrange(65536)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        data = sock.recv(4096)
    flags, _, answers = struct.unpack(">HHH", data[2:8])
    offset = 12 + len(question) + 4
    found = []
    for _ in range(answers):
        offset += 2 if data[offset] & 0xC0 else data.index(b"\0", offset) + 1 - offset
        kind, _, ttl, length = struct.unpack(">HHIH", data[offset:offset + 10])
        offset += 10
        if kind == 1:
            found.append((socket.inet_ntoa(data[offset:offset + 4]), ttl))
        offset += length
    return flags & 0xF, found


def set_elements(table: str, name: str) -> dict[str, float]:
    """The addresses in nft set ``inet table name`` and the seconds each has left."""
    listed = subprocess.run(["nft", "-j", "list", "set", "inet", table, name], capture_output=True, text=True,
                            check=True)
    found = {}
    for item in json.loads(listed.stdout)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, dict):
                found[element["elem"]["val"]] = element["elem"].get("expires", 0)
            else:
                found[element] = 0
    return found
