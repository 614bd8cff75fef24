"""The OCI runtime config of one sandbox, built as pure data.

``build_spec`` turns a ``SpecParams`` into the ``config.json`` dict that runsc reads.  It does
no I/O, reads no clock and no environment: the same params always give the same dict, so
golden files can pin it.  What the process gets:

- the shared rootfs, read-only; nothing of it is copied per run;
- an unprivileged uid/gid, no capabilities at all, ``noNewPrivileges``;
- an ``oomScoreAdj`` that makes the sandbox's host processes (runsc applies it to the sandbox
  and the gofer) the OOM killer's first choice: when a limit above the sandbox's own is hit (the
  parent cgroup, a systemd unit's ``MemoryMax=``, the host), untrusted code dies, not the
  service that would report it;
- a minimal environment made only of what the caller passes (nothing of the service's own);
- a fresh writable workspace (a bind of a per-sandbox host directory) as its working
  directory, ``/tmp`` and ``/dev/shm`` as bounded tmpfs, the runner directory read-only;
- private namespaces, its own cgroup with a memory limit (no swap on top) and a pids limit;
  in egress mode the network namespace is one the orchestrator prepared (``netns_path``, a
  file under ``NETNS_DIR``), every other namespace is always new, and ``/etc/resolv.conf`` is
  a read-only bind of the file naming the service's resolver (``resolv_conf_source``), not the
  rootfs's;
- optionally a seccomp profile (applied by runsc with ``--oci-seccomp``).

A sealed sandbox (``sealed_image`` set) needs no runsc gofer, and so no gofer process: its
root is an EROFS image of the rootfs with the runner inside it (``host.sealed`` builds it),
which the sentry reads itself (runsc's ``dev.gvisor.spec.rootfs.*`` annotations; the spec's
root path is then an empty directory), and its workspace is a bounded tmpfs inside gVisor,
owned by the sandbox uid.  Nothing of it is a host directory: the runner writes the source
and sends the artifacts over the control channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

OCI_VERSION = "1.0.2"
ALL_CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
NAMESPACES = ("pid", "ipc", "uts", "mount", "network")
WORKSPACE = "/workspace"
RUNNER_MOUNT = "/opt/sandbox/runner"
OOM_SCORE_ADJ = 500  # raising needs no privilege; 0 is the service's and the host's default
RESOLV_CONF = "/etc/resolv.conf"
NETNS_DIR = "/var/run/netns"  # named network namespaces (iproute2's and pyroute2's convention)
ROOTFS_SOURCE_ANNOTATION = "dev.gvisor.spec.rootfs.source"  # runsc 20240729+: the sentry mounts it as root
ROOTFS_TYPE_ANNOTATION = "dev.gvisor.spec.rootfs.type"


@dataclass(frozen=True)
class SpecParams:
    rootfs: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    workspace_source: str
    cgroups_path: str
    memory_bytes: int
    pids: int
    tmp_bytes: int
    uid: int = 10001
    gid: int = 10001
    runner_source: str | None = None
    cwd: str = WORKSPACE
    hostname: str = "sandbox"
    nofile: int = 1024
    cpu_shares: int | None = None
    seccomp: Mapping | None = None
    netns_path: str | None = None  # join this network namespace (egress mode) instead of a new one
    resolv_conf_source: str | None = None  # egress mode: the host file bound over /etc/resolv.conf
    annotations: Mapping[str, str] = field(default_factory=dict)
    sealed_image: str | None = None  # an EROFS image of the rootfs (and runner): the sealed mode above
    workspace_bytes: int | None = None  # sealed mode: the size of the workspace's tmpfs


def build_spec(params: SpecParams) -> dict:
    """The OCI config dict for ``params`` (deterministic, JSON-ready)."""
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", f"size={params.tmp_bytes}"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "nodev", "noexec", "mode=1777", f"size={params.tmp_bytes}"]},
    ]
    annotations = dict(params.annotations)
    if params.sealed_image is not None:
        if not params.workspace_bytes:
            raise ValueError("a sealed sandbox needs workspace_bytes, the size of its workspace's tmpfs")
        mounts.append({"destination": WORKSPACE, "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=0755", f"uid={params.uid}", f"gid={params.gid}",
                                   f"size={params.workspace_bytes}"]})
        annotations[ROOTFS_SOURCE_ANNOTATION] = params.sealed_image
        annotations[ROOTFS_TYPE_ANNOTATION] = "erofs"
    else:
        mounts.append({"destination": WORKSPACE, "type": "bind", "source": params.workspace_source,
                       "options": ["rbind", "rw", "nosuid", "nodev"]})
    if params.runner_source is not None and params.sealed_image is None:
        mounts.append({"destination": RUNNER_MOUNT, "type": "bind", "source": params.runner_source,
                       "options": ["rbind", "ro", "nosuid", "nodev"]})
    if params.resolv_conf_source is not None:
        mounts.append({"destination": RESOLV_CONF, "type": "bind", "source": params.resolv_conf_source,
                       "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    resources: dict = {
        "memory": {"limit": params.memory_bytes, "swap": params.memory_bytes},
        "pids": {"limit": params.pids},
    }
    if params.cpu_shares is not None:
        resources["cpu"] = {"shares": params.cpu_shares}
    linux: dict = {
        "namespaces": [{"type": kind, "path": params.netns_path} if kind == "network" and params.netns_path
                       else {"type": kind} for kind in NAMESPACES],
        "cgroupsPath": params.cgroups_path,
        "resources": resources,
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    }
    if params.seccomp is not None:
        linux["seccomp"] = dict(params.seccomp)
    spec = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": params.uid, "gid": params.gid, "additionalGids": [params.gid]},
            "args": list(params.args),
            "env": [f"{name}={value}" for name, value in sorted(params.env.items())],
            "cwd": params.cwd,
            "capabilities": {name: [] for name in ALL_CAPABILITY_SETS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": params.nofile, "soft": params.nofile}],
            "noNewPrivileges": True,
            "oomScoreAdj": OOM_SCORE_ADJ,
        },
        "root": {"path": params.rootfs, "readonly": True},
        "hostname": params.hostname,
        "mounts": mounts,
        "linux": linux,
    }
    if annotations:
        spec["annotations"] = dict(sorted(annotations.items()))
    return spec
