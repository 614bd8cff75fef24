"""systemd 252 as PID 1 in a container on this host, with the unit installed the way
``make install`` renders it, and the host's runsc and rootfs bind-mounted read-only.

The container follows the recipe verified on this kind of host (../shared/tools/systemd-container):
a private cgroup namespace and a tmpfs /sys/fs/cgroup holding only its own subtree (sd-entry),
every capability but SYS_RESOURCE (the host cannot grant it, so --privileged fails), seccomp and
AppArmor unconfined, no network, units that would touch host settings masked.  The daemon is a
private one (tests.systemd.dockerd) and the image is cached under var/systemd-test (rebuilt when
its inputs change or it is missing).  One container serves the whole module: the tests run in
order, each proving one thing about the service under systemd.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import time
import uuid

import pytest

from tests.conftest import REPO, ROOTFS_DIR, require_runsc
from tests.systemd import dockerd, image

UNIT = "gvisor-sandbox.service"
UNIT_CGROUP = f"system.slice/{UNIT}"
PORT = 9385
CACHE = REPO / "var" / "systemd-test"
RUN = pathlib.Path("/run") / f"gvisor-sandbox-systemd-test-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}"
# Settings for the service under test, appended to the env file `make install-unit` wrote.
SERVICE_ENV = {
    "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "1",
    "SANDBOX_POOL_SIZE_PYTHON_PRELOAD": "0",
    "SANDBOX_POOL_SIZE_NODEJS_PRELOAD": "0",
    "SANDBOX_MAX_MEMORY": "512m",
    "SANDBOX_TIMEOUT": "20s",
}

CLIENT = r"""
import json, sys, urllib.error, urllib.request
req = json.load(sys.stdin)
request = urllib.request.Request(f"http://127.0.0.1:{req['port']}/run", data=json.dumps(req["body"]).encode(),
                                 headers={"Content-Type": "application/json", "X-Request-Id": req["request_id"]})
try:
    with urllib.request.urlopen(request, timeout=req["timeout"]) as response:
        print(json.dumps({"status": response.status, "headers": dict(response.headers),
                          "body": json.loads(response.read())}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "headers": dict(exc.headers), "body": exc.read().decode()}))
"""


def require_systemd_test() -> None:
    """Skip with the reason when this host cannot run the test; fail instead under REQUIRE_RUNSC=1."""
    require_runsc()
    missing = dockerd.missing_binaries() + ([] if shutil.which("mmdebstrap") else ["mmdebstrap"])
    if missing:
        reason = f"the systemd test needs {', '.join(missing)} (make setup installs docker.io and mmdebstrap)"
        if os.environ.get("REQUIRE_RUNSC") == "1":
            pytest.fail(f"REQUIRE_RUNSC=1 but {reason}")
        pytest.skip(reason)


class Machine:
    """The container running systemd, and what the tests do in it."""

    def __init__(self, docker: dockerd.PrivateDocker, name: str):
        self.docker = docker
        self.name = name

    def exec(self, *argv: str, input: bytes | None = None, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess:
        return self.docker.docker("exec", "-i", self.name, *argv, input=input, check=check, timeout=timeout)

    def sh(self, script: str, *, check: bool = True, timeout: float = 120) -> str:
        return self.exec("sh", "-c", script, check=check, timeout=timeout).stdout.decode()

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.exec("systemctl", *args, check=check, timeout=timeout)

    def show(self, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT, "-p", ",".join(properties)).stdout.decode()
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *, invocation: str | None = None) -> list[str]:
        """The unit's journal (of one invocation, by its INVOCATION_ID, when given)."""
        selector = [f"_SYSTEMD_INVOCATION_ID={invocation}", "+", f"INVOCATION_ID={invocation}"] if invocation \
            else ["-u", UNIT]
        out = self.exec("journalctl", "--no-pager", "-o", "short-iso", *selector).stdout.decode()
        return out.splitlines()

    def _client_input(self, code: str, language: str, arguments: dict | None, request_id: str,
                      timeout: float) -> bytes:
        import base64

        body = {"code_b64": base64.b64encode(code.encode()).decode(), "language": language,
                "arguments": arguments or {}}
        return json.dumps({"port": PORT, "body": body, "request_id": request_id, "timeout": timeout}).encode()

    def post(self, code: str, language: str = "python", arguments: dict | None = None, *,
             request_id: str | None = None, timeout: float = 60) -> dict:
        """POST /run from inside the container (it has no network); returns status, headers, body."""
        request_id = request_id or f"sdtest-{uuid.uuid4().hex[:10]}"
        done = self.exec("python3", "-c", CLIENT, input=self._client_input(code, language, arguments, request_id,
                                                                           timeout), timeout=timeout + 30)
        return json.loads(done.stdout)

    def post_in_background(self, code: str, language: str = "python", *, request_id: str,
                           timeout: float = 60) -> subprocess.Popen:
        process = subprocess.Popen([dockerd.DOCKER, "-H", f"unix://{self.docker.socket}", "exec", "-i", self.name,
                                    "python3", "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        process.stdin.write(self._client_input(code, language, None, request_id, timeout))
        process.stdin.close()
        process.stdin = None  # so that communicate() only reads
        return process

    def service_status(self) -> dict:
        """GET /status (runs in progress, pools); {} while the service does not answer."""
        done = self.exec("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                         f"'http://127.0.0.1:{PORT}/status', timeout=5).read().decode())", check=False)
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def pids(self, command: str) -> list[int]:
        """Processes in the container whose command line starts with ``command`` and a space
        (runsc's own processes all run /proc/self/exe, named by argv[0]: runsc-sandbox, ...)."""
        out = self.exec("pgrep", "-f", f"^{command} ", check=False).stdout.decode()
        return sorted(int(pid) for pid in out.split())

    def cgroups_of(self, pid: int) -> dict[str, str]:
        text = self.exec("cat", f"/proc/{pid}/cgroup").stdout.decode()
        return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in text.splitlines()}

    def wait_for(self, predicate, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"{what}: not reached within {timeout:.0f} s; journal tail: {self.journal()[-30:]}")

    def copy_checkout(self, target: str) -> None:
        """The checkout as a clone with local changes would have it: tracked and untracked files
        that git does not ignore (no venv, no caches)."""
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout.decode().split("\0")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in sorted(filter(None, listed)):
                if (REPO / name).is_file() or (REPO / name).is_symlink():
                    tar.add(REPO / name, arcname=name, recursive=False)
        self.exec("mkdir", "-p", target)
        self.exec("tar", "-x", "-C", target, input=buffer.getvalue())


@pytest.fixture(scope="module")
def private_docker():
    require_systemd_test()
    docker = dockerd.PrivateDocker(CACHE, RUN)
    docker.start()
    try:
        yield docker
    finally:
        docker.stop()


@pytest.fixture(scope="module")
def machine(private_docker, tmp_path_factory):
    """A container booted into systemd, with the service installed and started."""
    log = tmp_path_factory.mktemp("systemd") / "image-build.log"
    tag = image.ensure_image(private_docker, REPO, log)
    name = f"gvisor-sandbox-systemd-test-{uuid.uuid4().hex[:8]}"
    runsc = os.path.realpath(shutil.which("runsc"))
    private_docker.docker(
        "run", "-d", "--pull", "never", "--name", name, "--hostname", "sdtest", "--network", "none", "--cgroupns", "private",
        "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--stop-signal", "SIGRTMIN+3", "--sysctl", "net.ipv4.ip_forward=1",
        "--tmpfs", "/run:rw,exec,nosuid,nodev,mode=755", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
        "-v", f"{runsc}:/usr/bin/runsc:ro", "-v", f"{ROOTFS_DIR}:/var/lib/gvisor-sandbox/rootfs:ro", tag)
    box = Machine(private_docker, name)
    try:
        box.wait_for(lambda: box.exec("systemctl", "is-system-running", "--wait", check=False,
                                      timeout=120).stdout.decode().strip() in ("running", "degraded"),
                     "systemd booted in the container")
        box.copy_checkout(image.INSTALL_DIR)
        installed = box.exec("make", "-C", image.INSTALL_DIR, "install-unit").stdout.decode()
        assert "install: enabled" in installed, installed
        settings = "".join(f"{key}={value}\n" for key, value in SERVICE_ENV.items())
        box.sh(f"printf '%s' '{settings}' >> /etc/gvisor-sandbox/gvisor-sandbox.env")
        box.systemctl("start", UNIT, timeout=180)
        yield box
    finally:
        private_docker.docker("rm", "-f", name, check=False)
