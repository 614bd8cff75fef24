"""A docker daemon of the test's own, so the systemd test never meets another dockerd on the
host (one standing up the upstream baseline, say): its own containerd (not the system's, not
another dockerd's), data root, exec root, pid files and unix sockets, no bridge, no iptables,
no IP forwarding or masquerading changes, and a cgroup parent of its own (removed at the end).

    <cache>/docker, <cache>/containerd     persistent: the image survives between runs
    <run>/                                 sockets, exec root, containerd state, logs
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid

from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT
from tests.conftest import SESSION, TEST_CGROUP_PREFIX

# Debian's docker.io, not whatever `docker` comes first on PATH.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"
START_TIMEOUT_S = 60


def missing_binaries() -> list[str]:
    return [path for path in (DOCKER, DOCKERD, CONTAINERD) if not os.access(path, os.X_OK)]


class PrivateDocker:
    def __init__(self, cache: pathlib.Path, run: pathlib.Path):
        self.cache = cache
        self.run = run
        self.socket = run / "docker.sock"
        self.containerd_socket = run / "containerd.sock"
        # Containers' cgroups go under a parent of this run (named so that the suite's leftover
        # check, which looks for gvisor-sandbox*, would notice it left behind).
        self.cgroup_parent = f"{TEST_CGROUP_PREFIX}{SESSION}-systemd-{uuid.uuid4().hex[:8]}"
        self._processes: list[subprocess.Popen] = []

    def start(self) -> None:
        self.stop_leftovers()
        shutil.rmtree(self.run, ignore_errors=True)
        self.run.mkdir(parents=True, mode=0o700)
        (self.run / "cgroup-parent").write_text(self.cgroup_parent)
        self.cache.mkdir(parents=True, exist_ok=True)
        config = self.run / "containerd.toml"
        config.write_text("\n".join([
            "version = 2",
            f'root = "{self.cache / "containerd"}"',
            f'state = "{self.run / "containerd-state"}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            f'  address = "{self.containerd_socket}"',
            "[ttrpc]",
            f'  address = "{self.containerd_socket}.ttrpc"',
            "",
        ]))
        (self.run / "daemon.json").write_text(json.dumps({}))
        self._spawn("containerd", [CONTAINERD, "--config", str(config)])
        self._wait(lambda: self.containerd_socket.exists(), "containerd did not create its socket")
        self._spawn("dockerd", [
            DOCKERD, "--config-file", str(self.run / "daemon.json"),
            "--containerd", str(self.containerd_socket),
            "--data-root", str(self.cache / "docker"), "--exec-root", str(self.run / "exec"),
            "--pidfile", str(self.run / "dockerd.pid"), "-H", f"unix://{self.socket}",
            "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--userland-proxy=false", "--cgroup-parent", self.cgroup_parent,
        ])
        self._wait(lambda: self.socket.exists() and self.docker("info", check=False).returncode == 0,
                   "dockerd did not answer")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.run / f"{name}.log", "wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        log.close()
        (self.run / f"{name}.spawned.pid").write_text(str(process.pid))
        self._processes.append(process)

    def _wait(self, ready, message: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready():
                return
            for process in self._processes:
                if process.poll() is not None:
                    raise AssertionError(f"{process.args[0]} exited {process.returncode}: {self.logs()}")
            time.sleep(0.1)
        raise AssertionError(f"{message} within {START_TIMEOUT_S} s: {self.logs()}")

    def logs(self) -> str:
        return " | ".join(f"{p.name}: {p.read_text(errors='replace')[-1500:]}" for p in sorted(self.run.glob("*.log")))

    def docker(self, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([DOCKER, "-H", f"unix://{self.socket}", *args], input=input, capture_output=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)[:200]} exited {done.returncode}: "
                                 f"{done.stderr.decode(errors='replace')[-2000:]}")
        return done

    def stop(self) -> None:
        """Remove every container (all are ours), stop the daemons, remove the cgroup parent."""
        if self.socket.exists():
            ids = self.docker("ps", "-aq", check=False).stdout.decode().split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self._processes.clear()
        Cgroups(CGROUP_ROOT, self.cgroup_parent).remove_parent()
        shutil.rmtree(self.run, ignore_errors=True)

    def stop_leftovers(self) -> None:
        """Daemons an interrupted earlier run of this checkout left (found by their pid files
        and checked by their command line, so no other process is ever signalled; dockerd
        stops its containers as it exits), then that run's cgroup parent."""
        try:
            parent = (self.run / "cgroup-parent").read_text().strip()
        except OSError:
            parent = None
        for name in ("dockerd", "containerd"):
            pid_file = self.run / f"{name}.spawned.pid"
            try:
                pid = int(pid_file.read_text())
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if str(self.run).encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and pathlib.Path(f"/proc/{pid}").exists():
                    time.sleep(0.1)
        if parent and parent.startswith(TEST_CGROUP_PREFIX) and "-systemd-" in parent:
            Cgroups(CGROUP_ROOT, parent).remove_parent()
