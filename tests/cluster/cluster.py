"""A cluster of our own on this machine: N nodes of the service, each in a network namespace of
its own joined to one test bridge, and Debian's HAProxy in front of them on loopback.

The bridge (``gvxb<hex>``) gets the first address of a free /28 of the test range (only
addresses created here, tests.host.testnet); each node's namespace (``gvx-<hex>``) has a veth
into the bridge with the next address, no default route, and runs ``python -m orchestrator``
entered with ``nsenter --net`` (``ip netns exec`` would remount /sys and hide the cgroup
filesystem).  Each node has its own state dir and cgroup parent (named per test session), the
shared rootfs, and a log per life (a restart starts a new one).  HAProxy runs in the
foreground with the configuration ``deploy/haproxy/render.py`` makes, logging to a file.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

from deploy.haproxy.render import Node as ConfigNode, render
from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT
from tests.conftest import REPO, ROOTFS_DIR, SESSION, TEST_CGROUP_PREFIX
from tests.host.testnet import NETNS_DIR, free_subnet

HTTP_PORT = 9385
AGENT_PORT = 9386
BACKEND = "sandbox_nodes"
RUNNING_RE = re.compile(r"request=(\S+) sandbox=(\S+) language=\S+ running$")
DONE_RE = re.compile(r"request=(\S+) sandbox=\S+ language=\S+ start=\S+ status=(\S+)")
# option httplog, format raw: client [accept date] frontend backend/server Tq/Tw/Tc/Tr/Ta status bytes
# - - termination-state conns/.../retries queues {captured X-Request-Id} "request"
HAPROXY_LINE_RE = re.compile(
    r"^\S+ \[[^\]]+\] \S+ (?P<backend>[^/\s]+)/(?P<server>\S+) \S+ (?P<status>-?\d+) \S+ \S+ \S+ "
    r"(?P<term>\S+) \S+/\S+/\S+/\S+/(?P<retries>\+?\d+) \S+ \{(?P<id>[^}]*)\}")


def _wait(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout:.0f} s")


@dataclass
class Network:
    """A bridge in the root namespace and one namespace + veth per node."""

    size: int
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: free_subnet(28))
    tag: str = field(default_factory=lambda: os.urandom(3).hex())
    created: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"gvxb{self.tag}"

    @property
    def bridge_address(self) -> str:
        return str(self.subnet.network_address + 1)

    def address(self, index: int) -> str:
        return str(self.subnet.network_address + 2 + index)

    def netns(self, index: int) -> str:
        return f"gvx-{self.tag}{index}"

    def netns_path(self, index: int) -> str:
        return f"{NETNS_DIR}/{self.netns(index)}"

    def create(self) -> "Network":
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.bridge, kind="bridge")
                self.created.append(f"link:{self.bridge}")
                (bridge,) = ipr.link_lookup(ifname=self.bridge)
                ipr.addr("add", index=bridge, address=self.bridge_address, prefixlen=self.subnet.prefixlen)
                ipr.link("set", index=bridge, state="up")
                for index in range(self.size):
                    path, veth = self.netns_path(index), f"gvx{self.tag}{index}"
                    netns.create(path)
                    self.created.append(f"netns:{path}")
                    ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": path})
                    self.created.append(f"link:{veth}")
                    (host_end,) = ipr.link_lookup(ifname=veth)
                    ipr.link("set", index=host_end, master=bridge, state="up")
                    with IPRoute(netns=path, flags=0) as inside:
                        (lo,) = inside.link_lookup(ifname="lo")
                        (eth,) = inside.link_lookup(ifname="eth0")
                        inside.link("set", index=lo, state="up")
                        inside.addr("add", index=eth, address=self.address(index), prefixlen=self.subnet.prefixlen)
                        inside.link("set", index=eth, state="up")
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        with IPRoute() as ipr:
            for item in reversed(self.created):
                kind, _, name = item.partition(":")
                if kind == "link":
                    for index in ipr.link_lookup(ifname=name):
                        ipr.link("del", index=index)
                elif os.path.exists(name):
                    netns.remove(name)
        self.created.clear()


@dataclass
class NodeProcess:
    """One node of the service: ``python -m orchestrator`` inside its namespace."""

    index: int
    network: Network
    work: pathlib.Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = field(default_factory=lambda: f"{TEST_CGROUP_PREFIX}{SESSION}-cluster-{uuid.uuid4().hex[:6]}")
    process: subprocess.Popen | None = None
    logs: list[pathlib.Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"node{self.index + 1}"

    @property
    def address(self) -> str:
        return self.network.address(self.index)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{HTTP_PORT}"

    @property
    def state_dir(self) -> pathlib.Path:
        return self.work / self.name / "state"

    def config_node(self) -> ConfigNode:
        return ConfigNode(self.name, f"{self.address}:{HTTP_PORT}")

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "SANDBOX_EXECUTOR_MANAGER_HOST": self.address,
            "SANDBOX_EXECUTOR_MANAGER_PORT": str(HTTP_PORT),
            "SANDBOX_LB_AGENT_PORT": str(AGENT_PORT),
            "SANDBOX_STATE_DIR": str(self.state_dir),
            "SANDBOX_ROOTFS_DIR": str(ROOTFS_DIR),
            "SANDBOX_CGROUP_PARENT": self.cgroup_parent,
            **({"SANDBOX_RUNSC": os.environ["SANDBOX_RUNSC"]} if os.environ.get("SANDBOX_RUNSC") else {}),
            **self.env_overrides,
        }

    def start(self) -> None:
        """A new life: its own log file; the same state dir, so a restart reaps what a crash left."""
        log = self.work / self.name / f"life{len(self.logs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(log)
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(
                ["nsenter", f"--net={self.network.netns_path(self.index)}", "--", sys.executable, "-m", "orchestrator"],
                cwd=REPO, env=self.env(), stdout=handle, stderr=subprocess.STDOUT)

    def is_ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            log = self.logs[-1].read_text(errors="replace")[-2000:] if self.logs else ""
            raise AssertionError(f"{self.name} is not running: {log}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90) -> None:
        _wait(self.is_ready, timeout, f"{self.name} /readyz 200")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> int | None:
        """SIGTERM (the drain), then SIGKILL if it does not exit in time; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait_exit()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def executed(self, life: int | None = None) -> dict[str, str | None]:
        """request id -> result status (None: handed to a sandbox, never finished) per the logs."""
        found: dict[str, str | None] = {}
        for log in self.logs if life is None else [self.logs[life]]:
            for line in log.read_text(errors="replace").splitlines():
                if match := RUNNING_RE.search(line):
                    assert match.group(1) not in found, f"{self.name}: {match.group(1)} handed over twice"
                    found[match.group(1)] = None
                elif match := DONE_RE.search(line):
                    found[match.group(1)] = match.group(2)
        return found

    def wait_executing(self, timeout: float = 20) -> None:
        """Until a run is in one of this node's sandboxes (handed over, not finished)."""
        _wait(lambda: None in self.executed(-1).values(), timeout, f"{self.name}: a run in a sandbox", 0.01)

    def leftovers(self) -> list[str]:
        """What a stopped node left: runsc state, sandbox directories, sandbox cgroups."""
        left = []
        for sub in ("runsc", "sandboxes"):
            path = self.state_dir / sub
            if path.is_dir():
                left += [f"{self.name}: {sub}/{p.name}" for p in path.iterdir()]
        left += [f"{self.name}: cgroup {name}" for name in Cgroups(CGROUP_ROOT, self.cgroup_parent).list_sandboxes()]
        return left

    def remove_cgroup_parent(self) -> None:
        Cgroups(CGROUP_ROOT, self.cgroup_parent).remove_parent()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class HAProxy:
    """Debian's haproxy in the foreground with the rendered configuration for ``servers``."""

    binary: str
    servers_: list[ConfigNode]
    work: pathlib.Path
    maxconn: int
    run_timeout_s: float
    queue_timeout_s: float
    agent_port: int = AGENT_PORT
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> pathlib.Path:
        return self.work / "haproxy.sock"

    @property
    def log_path(self) -> pathlib.Path:
        return self.work / "haproxy.log"

    def config(self) -> str:
        return render(self.servers_, agent_port=self.agent_port, maxconn=self.maxconn, run_timeout_s=self.run_timeout_s,
                      queue_timeout_s=self.queue_timeout_s, bind=f"127.0.0.1:{self.port}",
                      stats_socket=str(self.socket_path), log_target="stdout format raw", user=None)

    def start(self) -> None:
        path = self.work / "haproxy.cfg"
        path.write_text(self.config())
        checked = subprocess.run([self.binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        with open(self.log_path, "wb") as handle:
            self.process = subprocess.Popen([self.binary, "-db", "-f", str(path)], stdout=handle,
                                            stderr=subprocess.STDOUT)
        _wait(self.socket_path.exists, 10, "haproxy's stats socket")

    def command(self, line: str) -> str:
        """One runtime API command on the stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        return out.decode()

    def servers(self) -> dict[str, dict]:
        """name -> {status, weight, ...} from ``show stat``."""
        rows = self.command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        found = {}
        for row in rows[1:]:
            values = dict(zip(header, row.split(",")))
            if values.get("pxname") == BACKEND and values.get("svname") not in ("BACKEND", None):
                found[values["svname"]] = values
        return found

    def wait_status(self, name: str, status: str, timeout: float = 30) -> None:
        _wait(lambda: self.servers().get(name, {}).get("status", "").startswith(status), timeout,
              f"haproxy: {name} {status}")

    def requests(self) -> dict[str, dict]:
        """request id -> {server, status, retries, term} from HAProxy's log (``retries`` "+1":
        redispatched to another server)."""
        found = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = HAPROXY_LINE_RE.search(line)
            if match is None or match.group("backend") != BACKEND or not match.group("id"):
                continue
            found[match.group("id")] = {"server": match.group("server"), "status": int(match.group("status")),
                                        "retries": match.group("retries"), "term": match.group("term")}
        return found

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
