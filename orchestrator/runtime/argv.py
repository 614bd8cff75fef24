"""runsc command lines, built by pure functions: global flags first, then the subcommand.

Flags that the installed runsc does not know are never passed: ``RunscConfig.known_flags``
holds what ``runsc flags`` printed (None = not probed, pass only flags every build has).

The netns workaround (``RunscConfig.netns_workaround``, egress mode only): runsc builds before
release-20240801 refuse ``--network=sandbox`` with "cannot run with network enabled in root
network namespace" on kernels that expose ``/proc/sys/net/core/rmem_default`` in every netns
(6.x do), because that file is how they tell the root netns.  ``run_argv`` then starts runsc in
a private mount namespace with a tmpfs over ``/proc/sys/net`` (not over ``/proc/sys``: runsc
reads ``/proc/sys/vm/mmap_min_addr``), so the test sees no such file; the sandbox still joins
the namespace from the spec.  ``kill``, ``delete`` and ``list`` do not touch the network and
are never wrapped.  The service decides at start-up, by a probe run, whether it is needed.

The OOM wrapper (``RunscConfig.oom_score_adj``): ``run`` and ``restore`` start with that
``oom_score_adj`` already set, so every host process of the sandbox (sentry, gofer, and under
ptrace the stub processes that hold the program's memory) inherits it from birth.  runsc's own
handling of the spec's ``oomScoreAdj`` comes too late for them: it sets the sentry and gofer
once the container started, after the first stubs were forked.
Raising the value needs no privilege.

Joined cgroups (``RunscConfig.join_cgroups``, cgroup v1 and v2): left to itself, runsc on a
v1 host moves itself into the sandbox's cgroup in every hierarchy (13 here), forks its
helpers, moves back, and does it again when the container starts, creating and removing
cgroups in the hierarchies we do not use.  Each burst of ``cgroup.procs`` writes waits for an
RCU grace period on the kernel's global cgroup lock (10-14 ms of wall time, blocking forks
host-wide meanwhile): under load it serialized sandbox starts.  With ``--ignore-cgroups`` runsc
does none of it; instead the start wrapper writes its own pid into the sandbox's
``cgroup.procs`` files (``JoinCgroups.procs``: memory, pids, cpu, cpuacct on v1; the one node
on v2) and then execs runsc, so runsc and every process it forks live there from birth: one
burst of four writes.  The runsc process itself is then accounted to the sandbox too (~9 MB).
runsc sizes the sandbox's memory (``MemTotal`` inside) from the cgroup's limit, and without a
cgroup from the host's ``/proc/meminfo``: ``JoinCgroups.meminfo`` is a file that says the
limit, bind-mounted over ``/proc/meminfo`` in the wrapper's private mount namespace.  These
writes are the one exception to ``host.cgroups`` being the only writer under the cgroup
filesystem: they have to come from the process that becomes runsc.
"""

from __future__ import annotations

import pathlib
import re
import shlex
from dataclasses import dataclass

SANDBOX_ID = re.compile(r"[\w+.-]{1,128}", re.ASCII)  # as runsc's own check; used with fullmatch
# Flags present in every runsc this service supports (Debian's 0.0~20221219 and later).
BASELINE_FLAGS = frozenset({"root", "platform", "network", "log", "log-format", "debug", "debug-log",
                            "oci-seccomp", "overlay2", "host-uds"})


@dataclass(frozen=True)
class RunscConfig:
    binary: pathlib.Path
    root: pathlib.Path
    platform: str = "ptrace"
    network: str = "none"
    oci_seccomp: bool = False
    debug_log_dir: pathlib.Path | None = None
    known_flags: frozenset[str] | None = None
    netns_workaround: bool = False  # wrap `runsc run` (see the module docstring)
    oom_score_adj: int | None = None  # start sandboxes with it (see the module docstring)
    join_cgroups: bool = False  # --ignore-cgroups; the start wrapper joins them (module docstring)

    def knows(self, flag: str) -> bool:
        return flag in (self.known_flags if self.known_flags is not None else BASELINE_FLAGS)


@dataclass(frozen=True)
class JoinCgroups:
    """A sandbox's cgroups, for the start wrapper to join in runsc's place when
    ``RunscConfig.join_cgroups`` is set (ignored otherwise: runsc then joins them itself)."""

    procs: tuple[pathlib.Path, ...]  # the sandbox's cgroup.procs files, one per hierarchy
    meminfo: pathlib.Path | None = None  # stands in for /proc/meminfo (says the memory limit)

    def __post_init__(self):
        if not self.procs:
            raise ValueError("join cgroups: no cgroup.procs file to join")


def check_sandbox_id(sandbox_id: str) -> str:
    if not SANDBOX_ID.fullmatch(sandbox_id):  # match() with $ would let a trailing newline through
        raise ValueError(f"invalid sandbox id {sandbox_id!r}: must match {SANDBOX_ID.pattern}")
    return sandbox_id


def global_flags(config: RunscConfig, *, log_file: pathlib.Path | None = None) -> list[str]:
    flags = [f"--root={config.root}", f"--platform={config.platform}", f"--network={config.network}"]
    if config.knows("overlay2"):
        # Newer runsc default to an overlay over the root backed by a file next to it; our
        # root is shared and read-only, so no overlay at all.
        flags.append("--overlay2=none")
    if config.oci_seccomp:
        flags.append("--oci-seccomp")
    if config.join_cgroups:
        flags.append("--ignore-cgroups")
    if log_file is not None:
        flags.append(f"--log={log_file}")
    if config.debug_log_dir is not None:
        flags += ["--debug", f"--debug-log={config.debug_log_dir}/"]
    return flags


def run_argv(config: RunscConfig, sandbox_id: str, bundle: pathlib.Path, log_file: pathlib.Path,
             join: JoinCgroups | None = None) -> list[str]:
    """``runsc run``: create, start and wait for the sandbox; exits with its init's status."""
    argv = [str(config.binary), *global_flags(config, log_file=log_file), "run",
            f"--bundle={bundle}", check_sandbox_id(sandbox_id)]
    return _wrap_start(config, argv, join)


def _wrap_start(config: RunscConfig, argv: list[str], join: JoinCgroups | None) -> list[str]:
    """``argv`` behind one shell that does, in order, what the module docstring describes:
    the netns workaround, the meminfo stand-in, the OOM score, the cgroup joins; then
    ``exec``s runsc (which keeps the pid: the caller's process handle is runsc itself, and so
    is the exit status).  A step that fails stops the start, its message on stderr."""
    if not config.join_cgroups:
        join = None  # runsc joins them itself
    elif join is None:
        raise ValueError("start sandbox: runsc runs with --ignore-cgroups, but no cgroups to join were given")
    mounts = []  # made in a private mount namespace of the wrapper's own
    if config.netns_workaround and config.network == "sandbox":
        mounts.append(NETNS_WORKAROUND_STEP)
    if join is not None and join.meminfo is not None:
        mounts.append(f"mount --bind {shlex.quote(str(join.meminfo))} /proc/meminfo")
    steps = list(mounts)
    if config.oom_score_adj is not None:
        steps.append(oom_score_adj_step(config.oom_score_adj))
    if join is not None:
        steps += [f"echo $$ > {shlex.quote(str(path))}" for path in join.procs]
    if not steps:
        return argv
    script = " && ".join([*steps, 'exec "$@"'])
    wrapped = ["sh", "-c", script, "sh", *argv]
    if mounts:
        wrapped = ["unshare", "--mount", "--propagation", "private", *wrapped]
    return wrapped


def oom_score_adj_step(score: int) -> str:
    """The shell step that sets ``/proc/self/oom_score_adj`` (inherited by what it execs)."""
    if not -1000 <= score <= 1000:
        raise ValueError(f"oom_score_adj {score} is outside -1000..1000")
    return f"echo {int(score)} > /proc/self/oom_score_adj"


# In the wrapper's private mount namespace: /proc/sys/net becomes an empty tmpfs.
NETNS_WORKAROUND_STEP = "mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k tmpfs /proc/sys/net"


# The first gVisor release whose root-netns test (`dev_weight`) works on kernels 6.x.
NETNS_FIXED_RELEASE = 20240801


def needs_netns_workaround(version: str) -> bool:
    """A guess from the version alone (``release-20240801.0``, ``0.0~20221219.0``): builds before
    NETNS_FIXED_RELEASE need the workaround, and so, to be safe, does an unreadable version.
    The service uses it only when it cannot probe (no language boots ahead)."""
    release = release_date(version)
    return release is None or release < NETNS_FIXED_RELEASE


def release_date(version: str) -> int | None:
    """The release date a runsc version names (``release-20240801.0``, ``0.0~20221219.0``:
    20240801, 20221219), or None."""
    match = re.search(r"(?:^|[^\d])(20\d{6})(?:\D|$)", version)
    return None if match is None else int(match.group(1))


def checkpoint_argv(config: RunscConfig, sandbox_id: str, image_dir: pathlib.Path, *,
                    uncompressed: bool = True) -> list[str]:
    """``runsc checkpoint``: save the sandbox's state into ``image_dir``; the sandbox then exits.
    ``uncompressed`` (runsc 20240729 and later): write the pages as they are, which makes a
    restore several times faster than from the default flate-compressed image."""
    flags = [f"--image-path={image_dir}"]
    if uncompressed:
        flags.append("--compression=none")
    return [str(config.binary), *global_flags(config), "checkpoint", *flags, check_sandbox_id(sandbox_id)]


def restore_argv(config: RunscConfig, sandbox_id: str, bundle: pathlib.Path, image_dir: pathlib.Path,
                 log_file: pathlib.Path, join: JoinCgroups | None = None) -> list[str]:
    """``runsc restore``: a new sandbox from ``image_dir`` under a new id, attached like ``run``
    (exits with the restored process's status).  Unlike ``run`` it leaves the stopped
    container behind: remove it after the exit (``RunscRuntime.discard_exited``)."""
    argv = [str(config.binary), *global_flags(config, log_file=log_file), "restore",
            f"--image-path={image_dir}", f"--bundle={bundle}", check_sandbox_id(sandbox_id)]
    return _wrap_start(config, argv, join)


def kill_argv(config: RunscConfig, sandbox_id: str, signal: str = "KILL") -> list[str]:
    return [str(config.binary), *global_flags(config), "kill", "--all", check_sandbox_id(sandbox_id), signal]


def delete_argv(config: RunscConfig, sandbox_id: str) -> list[str]:
    return [str(config.binary), *global_flags(config), "delete", "--force", check_sandbox_id(sandbox_id)]


def list_argv(config: RunscConfig) -> list[str]:
    return [str(config.binary), *global_flags(config), "list", "--quiet"]


def version_argv(binary: pathlib.Path) -> list[str]:
    return [str(binary), "--version"]


def flags_argv(binary: pathlib.Path) -> list[str]:
    return [str(binary), "flags"]


def help_argv(binary: pathlib.Path, subcommand: str) -> list[str]:
    """``runsc help <subcommand>``: its usage, one line per flag (parsed by ``parse_flag_names``)."""
    return [str(binary), "help", subcommand]


def parse_flag_names(text: str) -> frozenset[str]:
    """Flag names from ``runsc flags`` output (lines like ``  -network value``)."""
    return frozenset(match.group(1) for match in re.finditer(r"^\s+-{1,2}([A-Za-z0-9][\w-]*)", text, re.MULTILINE))


def parse_version(text: str) -> str:
    """``runsc version 0.0~20221219.0`` -> ``0.0~20221219.0`` (the first line's last word)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.split()[-1] if first else "unknown"
