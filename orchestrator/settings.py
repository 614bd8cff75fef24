"""One frozen settings tree, read once from the environment and passed down.

This is the only module that reads the environment (``Settings.from_env`` is handed the
mapping; nothing here touches ``os.environ`` at import time).  Every invalid value is a
``ConfigError`` whose message names the variable: upstream silently falls back, we do not.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.errors import ConfigError
from orchestrator.host import firewall, resolver
from seccomp.profile import profile_names

_SOURCE_ROOT = pathlib.Path(__file__).resolve().parent.parent

_SIZE_RE = re.compile(r"^([1-9]\d*)([bkmg])$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_BASE_IMAGE_RE = re.compile(r"^SANDBOX_BASE_([A-Z0-9_]+)_IMAGE$")
_POOL_SIZE_RE = re.compile(r"^SANDBOX_POOL_SIZE_([A-Z0-9_]+)$")


def parse_size(name: str, value: str) -> int:
    """``256m`` -> bytes; the upstream form ``[1-9]\\d*(b|k|m|g)``."""
    match = _SIZE_RE.match(value.strip())
    if not match:
        raise ConfigError(f"{name}: invalid size {value!r} (expected e.g. 256m, 1g, 512k)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_duration(name: str, value: str) -> float:
    """``10s``, ``2m``, ``1m30s``, ``500ms`` or a bare number of seconds -> seconds."""
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION_RE.match(text)
        if not text or not match or not any(match.groups()):
            raise ConfigError(
                f"{name}: invalid duration {value!r} (expected e.g. 10s, 90s, 2m, 1m30s, 500ms or 60)"
            ) from None
        hours, minutes, secs, millis = match.groups()
        seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0) + int(millis or 0) / 1000
    if not 0 < seconds <= 24 * 3600:
        raise ConfigError(f"{name}: duration {value!r} must be more than 0 and at most 24h")
    return seconds


def parse_bool(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: invalid boolean {value!r} (expected one of 1/true/yes/on or 0/false/no/off)")


def parse_int(name: str, value: str, *, minimum: int, maximum: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: invalid integer {value!r}") from None
    if not minimum <= number <= maximum:
        raise ConfigError(f"{name}: {number} is out of range [{minimum}, {maximum}]")
    return number


def parse_float(name: str, value: str, *, minimum: float, maximum: float) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: invalid number {value!r}") from None
    if not minimum <= number <= maximum:
        raise ConfigError(f"{name}: {number} is out of range [{minimum}, {maximum}]")
    return number


def parse_rate(name: str, value: str) -> tuple[int, float] | None:
    """``120/minute`` -> (120, 60.0); ``off`` or ``0`` -> None (no limit)."""
    text = value.strip().lower()
    if text in ("off", "0", "none"):
        return None
    count, _, unit = text.partition("/")
    periods = {"second": 1.0, "s": 1.0, "minute": 60.0, "m": 60.0, "hour": 3600.0, "h": 3600.0}
    # isdecimal, not isdigit: "²" is a digit that int() refuses.
    if not (count.strip().isascii() and count.strip().isdecimal()) or int(count) < 1 or unit.strip() not in periods:
        raise ConfigError(f"{name}: invalid rate {value!r} (expected e.g. 120/minute, 5/second, 1000/hour or off)")
    return int(count), periods[unit.strip()]


def parse_delay(name: str, value: str) -> float:
    """A duration that may also be ``0`` or ``off`` (no delay)."""
    if value.strip().lower() in ("0", "off", "none"):
        return 0.0
    return parse_duration(name, value)


def parse_networks(name: str, value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs or bare addresses (IPv4 or IPv6): ``10.0.0.0/8, 192.0.2.7, ::1``."""
    networks = []
    for part in value.split(","):
        text = part.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: invalid network {text!r} (expected CIDRs or addresses, e.g. "
                              "10.0.0.0/8, 192.0.2.7)") from None
    return tuple(networks)


def parse_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    text = value.strip().lower()
    if text not in choices:
        raise ConfigError(f"{name}: invalid value {value!r} (expected one of {', '.join(choices)})")
    return text


def parse_host(name: str, value: str) -> str:
    text = value.strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if text != "localhost":
            raise ConfigError(f"{name}: invalid bind address {value!r} (expected an IP address)") from None
    return text


def parse_path(name: str, value: str) -> pathlib.Path:
    path = pathlib.Path(value.strip())
    if not value.strip() or not path.is_absolute():
        raise ConfigError(f"{name}: {value!r} must be an absolute path")
    return path


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits."""

    memory_bytes: int = 256 * 1024**2
    timeout_s: float = 10.0
    output_bytes: int = 1024**2  # per stream (stdout, stderr)
    tmp_bytes: int = 64 * 1024**2
    workspace_bytes: int = 64 * 1024**2
    pids: int = 128  # host tasks of the sandbox, gVisor's own (~40 under ptrace) included
    cpus: float = 1.0  # CPU quota per sandbox, in cores


@dataclass(frozen=True)
class RunscSettings:
    binary: pathlib.Path = pathlib.Path("/usr/bin/runsc")
    platform: str = "ptrace"
    network: str = "none"
    enable_seccomp: bool = False
    seccomp_profile: str = "default"
    debug_log_dir: pathlib.Path | None = None


@dataclass(frozen=True)
class EgressSettings:
    """What sandboxes may reach when ``SANDBOX_CONTAINER_NETWORK=egress`` (orchestrator.host.firewall)."""

    allow: tuple[firewall.AllowRule, ...] = ()  # SANDBOX_EGRESS_ALLOW (CIDRs and names); empty: nothing
    # SANDBOX_EGRESS_ALLOW_PRIVATE: TEST-ONLY and dangerous, opens parts of the private ranges.
    allow_private: tuple[ipaddress.IPv4Network, ...] = ()
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.254.0.0/16")  # one /30 per sandbox
    # SANDBOX_EGRESS_DNS: where the resolver forwards allowed names; empty: the host's resolv.conf
    dns_upstreams: tuple[resolver.Upstream, ...] = ()
    dns_ttl_s: int = 60  # SANDBOX_EGRESS_DNS_TTL: how long a resolved address stays open
    dnsmasq: pathlib.Path = resolver.DNSMASQ  # SANDBOX_DNSMASQ


@dataclass(frozen=True)
class HostCapacity:
    """What the defaults of concurrency, pools and start parallelism are derived from."""

    cpus: int
    memory_bytes: int

    @classmethod
    def detect(cls) -> "HostCapacity":
        """The CPUs this process may run on and the host's memory."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return cls(cpus=max(1, cpus), memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def derive_capacity(host: HostCapacity, sandbox_memory_bytes: int, total_memory_bytes: int | None) -> dict[str, int]:
    """Defaults that scale with the host (each one applies only when its variable is unset):

    - ``max_concurrency``: 4 per CPU (a run mostly waits: for its sandbox to start, for I/O,
      for the client), at most what the sandboxes' memory budget holds at their limit;
    - ``start_parallelism``: three starts (boots or restores) per two CPUs, rounded up: a
      restore keeps a CPU only partly busy (with one start per CPU, 2 CPUs under a 4-client
      hello load sat ~20% idle; with three, hello went from ~12.9 to ~14.6 runs/s, pandas and
      the mix stayed within noise of their rates);
    - ``pool_boot_parallelism``: half the CPUs boot pool members, so requests keep the rest;
    - ``pool_size``: one warm sandbox per CPU and profile, at most 8.
    """
    budget = total_memory_bytes or int(host.memory_bytes * 0.8)
    by_memory = max(1, budget // max(1, sandbox_memory_bytes))
    return {
        "max_concurrency": max(1, min(256, 4 * host.cpus, by_memory)),
        "start_parallelism": max(1, min(64, (3 * host.cpus + 1) // 2)),
        "pool_boot_parallelism": max(1, min(32, host.cpus // 2)),
        "pool_size": max(1, min(8, host.cpus)),
    }


CAPACITY_VARIABLES = {
    "max_concurrency": "SANDBOX_MAX_CONCURRENCY",
    "start_parallelism": "SANDBOX_START_PARALLELISM",
    "pool_boot_parallelism": "SANDBOX_POOL_BOOT_PARALLELISM",
    "pool_size": "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE",
}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9385
    pool_size: int = 1
    pool_sizes: Mapping[str, int] = field(default_factory=dict)  # profile key ("python_preload") -> size
    pool_boot_parallelism: int = 2
    pool_max_age_s: float = 1800.0
    max_concurrency: int = 8
    start_parallelism: int = 2  # sandbox starts (boots, restores) at once, requests before refills
    snapshots: str = "auto"  # SANDBOX_SNAPSHOTS: auto (where runsc and the language allow) or off
    sealed: str = "auto"  # SANDBOX_SEALED: auto (sealed images where runsc, mkfs.erofs and the language allow) or off
    capacity: HostCapacity | None = None  # what derived defaults came from (None: fixed defaults)
    derived: tuple[str, ...] = ()  # which of CAPACITY_VARIABLES' fields were derived, not set
    queue_timeout_s: float = 10.0
    boot_timeout_s: float = 60.0
    max_request_bytes: int = 10 * 1024**2
    enable_static_check: bool = True
    limits: Limits = field(default_factory=Limits)
    runsc: RunscSettings = field(default_factory=RunscSettings)
    egress: EgressSettings = field(default_factory=EgressSettings)
    state_dir: pathlib.Path = pathlib.Path("/run/gvisor-sandbox")
    snapshot_dir: pathlib.Path | None = None  # SANDBOX_SNAPSHOT_DIR; None: <state_dir>/snapshots
    sealed_dir: pathlib.Path | None = None  # SANDBOX_SEALED_DIR; None: sealed/ next to rootfs_dir
    rootfs_dir: pathlib.Path = pathlib.Path("/var/lib/gvisor-sandbox/rootfs")
    languages_dirs: tuple[pathlib.Path, ...] = (_SOURCE_ROOT / "languages",)
    base_images: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str | None = None  # None: placed by orchestrator.host.placement (systemd delegation)
    total_memory_bytes: int | None = None  # budget of all sandboxes together; None = 80% of RAM
    total_cpus: float | None = None  # None = no quota on the whole service
    sandbox_uid: int = 10001
    sandbox_gid: int = 10001
    log_level: str = "INFO"
    log_format: str = "text"
    api_token: str | None = None
    # Off: behind a balancer every request carries the balancer's address, and one RAGFlow
    # server is one address; concurrency is bounded by max_concurrency and the queue anyway.
    run_rate_limit: tuple[int, float] | None = None
    # Peers whose X-Forwarded-For names the client (the rate limit's key without a token).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    lb_agent_port: int | None = None  # SANDBOX_LB_AGENT_PORT: HAProxy agent-check listener (orchestrator.balancer)
    drain_delay_s: float = 5.0  # on SIGTERM, runs are still taken this long after the balancer is told
    shutdown_grace_s: float = 30.0
    notify_socket: str | None = None  # systemd's NOTIFY_SOCKET (Type=notify)
    invocation_id: str | None = None  # systemd's INVOCATION_ID: started by systemd

    def __repr__(self) -> str:  # never print the token
        shown = dataclasses.replace(self, api_token="***" if self.api_token else None)
        return "Settings(" + ", ".join(f"{f.name}={getattr(shown, f.name)!r}" for f in dataclasses.fields(self)) + ")"

    @classmethod
    def from_env(cls, env: Mapping[str, str], capacity: HostCapacity | None = None) -> "Settings":
        """Build settings from an environment mapping; unknown variables are ignored.
        Concurrency, pool sizes and start parallelism that are not set are derived from
        ``capacity`` (default: this host's CPUs and memory, ``derive_capacity``)."""
        default = cls()

        def get(name: str) -> str | None:
            value = env.get(name)
            return None if value is None or value.strip() == "" else value

        def read(name, parse, fallback):
            value = get(name)
            return fallback if value is None else parse(name, value)

        limits = Limits(
            memory_bytes=read("SANDBOX_MAX_MEMORY", parse_size, default.limits.memory_bytes),
            timeout_s=read("SANDBOX_TIMEOUT", parse_duration, default.limits.timeout_s),
            output_bytes=read("SANDBOX_MAX_OUTPUT", parse_size, default.limits.output_bytes),
            tmp_bytes=read("SANDBOX_TMP_SIZE", parse_size, default.limits.tmp_bytes),
            workspace_bytes=read("SANDBOX_WORKSPACE_SIZE", parse_size, default.limits.workspace_bytes),
            pids=read("SANDBOX_MAX_PIDS", lambda n, v: parse_int(n, v, minimum=64, maximum=65536), default.limits.pids),
            cpus=read("SANDBOX_MAX_CPUS", lambda n, v: parse_float(n, v, minimum=0.05, maximum=1024), default.limits.cpus),
        )
        if limits.memory_bytes < 16 * 1024**2:
            raise ConfigError("SANDBOX_MAX_MEMORY: must be at least 16m (an interpreter needs that much to start)")

        runsc = RunscSettings(
            binary=_which("SANDBOX_RUNSC", get("SANDBOX_RUNSC"), "runsc", default.runsc.binary),
            platform=read("SANDBOX_RUNSC_PLATFORM", lambda n, v: parse_choice(n, v, ("ptrace", "kvm", "systrap")),
                          default.runsc.platform),
            network=read("SANDBOX_CONTAINER_NETWORK", lambda n, v: parse_choice(n, v, ("none", "egress")),
                         default.runsc.network),
            enable_seccomp=read("SANDBOX_ENABLE_SECCOMP", parse_bool, default.runsc.enable_seccomp),
            seccomp_profile=read("SANDBOX_SECCOMP_PROFILE", lambda n, v: parse_choice(n, v, profile_names()),
                                 default.runsc.seccomp_profile),
            debug_log_dir=read("SANDBOX_RUNSC_DEBUG_LOG_DIR", parse_path, None),
        )
        egress = EgressSettings(
            allow=read("SANDBOX_EGRESS_ALLOW", firewall.parse_egress_allow, default.egress.allow),
            allow_private=read("SANDBOX_EGRESS_ALLOW_PRIVATE", firewall.parse_allow_private,
                               default.egress.allow_private),
            subnet=read("SANDBOX_EGRESS_SUBNET", firewall.parse_egress_subnet, default.egress.subnet),
            dns_upstreams=read("SANDBOX_EGRESS_DNS", resolver.parse_upstreams, default.egress.dns_upstreams),
            dns_ttl_s=read("SANDBOX_EGRESS_DNS_TTL", _parse_dns_ttl, default.egress.dns_ttl_s),
            dnsmasq=_which("SANDBOX_DNSMASQ", get("SANDBOX_DNSMASQ"), "dnsmasq", default.egress.dnsmasq),
        )
        firewall.check_egress(egress.allow, egress.allow_private, egress.subnet)

        languages_dirs = default.languages_dirs
        raw_dirs = get("SANDBOX_LANGUAGES_DIR")
        if raw_dirs is not None:
            languages_dirs = tuple(parse_path("SANDBOX_LANGUAGES_DIR", part) for part in raw_dirs.split(":") if part)

        base_images = {}
        for name, value in env.items():
            match = _BASE_IMAGE_RE.match(name)
            if match and value.strip():
                base_images[match.group(1).lower()] = value.strip()

        pool_sizes = {}
        for name, value in env.items():
            match = _POOL_SIZE_RE.match(name)
            if match and value.strip():
                pool_sizes[match.group(1).lower()] = parse_int(name, value, minimum=0, maximum=64)

        capacity = capacity or HostCapacity.detect()
        total_memory_bytes = read("SANDBOX_TOTAL_MEMORY", parse_size, default.total_memory_bytes)
        derived = derive_capacity(capacity, limits.memory_bytes, total_memory_bytes)
        derived_names = tuple(name for name, variable in CAPACITY_VARIABLES.items() if get(variable) is None)
        settings = cls(
            capacity=capacity,
            derived=derived_names,
            start_parallelism=read("SANDBOX_START_PARALLELISM", lambda n, v: parse_int(n, v, minimum=1, maximum=256),
                                   derived["start_parallelism"]),
            snapshots=read("SANDBOX_SNAPSHOTS", lambda n, v: parse_choice(n, v, ("auto", "off")), default.snapshots),
            sealed=read("SANDBOX_SEALED", lambda n, v: parse_choice(n, v, ("auto", "off")), default.sealed),
            host=read("SANDBOX_EXECUTOR_MANAGER_HOST", parse_host, default.host),
            port=read("SANDBOX_EXECUTOR_MANAGER_PORT", lambda n, v: parse_int(n, v, minimum=1, maximum=65535),
                      default.port),
            pool_size=read("SANDBOX_EXECUTOR_MANAGER_POOL_SIZE",
                           lambda n, v: parse_int(n, v, minimum=0, maximum=64), derived["pool_size"]),
            pool_sizes=pool_sizes,
            pool_boot_parallelism=read("SANDBOX_POOL_BOOT_PARALLELISM",
                                       lambda n, v: parse_int(n, v, minimum=1, maximum=32),
                                       derived["pool_boot_parallelism"]),
            pool_max_age_s=read("SANDBOX_POOL_MAX_AGE", parse_duration, default.pool_max_age_s),
            max_concurrency=read("SANDBOX_MAX_CONCURRENCY", lambda n, v: parse_int(n, v, minimum=1, maximum=256),
                                 derived["max_concurrency"]),
            queue_timeout_s=read("SANDBOX_QUEUE_TIMEOUT", parse_duration, default.queue_timeout_s),
            boot_timeout_s=read("SANDBOX_BOOT_TIMEOUT", parse_duration, default.boot_timeout_s),
            max_request_bytes=read("SANDBOX_MAX_REQUEST_SIZE", parse_size, default.max_request_bytes),
            enable_static_check=read("SANDBOX_ENABLE_AST_ANALYSIS", parse_bool, default.enable_static_check),
            limits=limits,
            runsc=runsc,
            egress=egress,
            state_dir=read("SANDBOX_STATE_DIR", parse_path, default.state_dir),
            snapshot_dir=read("SANDBOX_SNAPSHOT_DIR", parse_path, None),
            sealed_dir=read("SANDBOX_SEALED_DIR", parse_path, None),
            rootfs_dir=read("SANDBOX_ROOTFS_DIR", parse_path, default.rootfs_dir),
            languages_dirs=languages_dirs,
            base_images=base_images,
            cgroup_parent=read("SANDBOX_CGROUP_PARENT", _parse_cgroup_name, default.cgroup_parent),
            total_memory_bytes=total_memory_bytes,
            total_cpus=read("SANDBOX_TOTAL_CPUS", lambda n, v: parse_float(n, v, minimum=0.1, maximum=4096),
                            default.total_cpus),
            sandbox_uid=read("SANDBOX_UID", lambda n, v: parse_int(n, v, minimum=1, maximum=2**31 - 2),
                             default.sandbox_uid),
            sandbox_gid=read("SANDBOX_GID", lambda n, v: parse_int(n, v, minimum=1, maximum=2**31 - 2),
                             default.sandbox_gid),
            log_format=read("SANDBOX_LOG_FORMAT", lambda n, v: parse_choice(n, v, ("text", "json")), default.log_format),
            api_token=get("SANDBOX_EXECUTOR_MANAGER_API_TOKEN"),
            run_rate_limit=read("SANDBOX_RUN_RATE_LIMIT", parse_rate, default.run_rate_limit),
            trusted_proxies=read("SANDBOX_TRUSTED_PROXIES", parse_networks, default.trusted_proxies),
            lb_agent_port=read("SANDBOX_LB_AGENT_PORT", _parse_agent_port, default.lb_agent_port),
            drain_delay_s=read("SANDBOX_DRAIN_DELAY", parse_delay, default.drain_delay_s),
            shutdown_grace_s=read("SANDBOX_SHUTDOWN_GRACE", parse_duration, default.shutdown_grace_s),
            notify_socket=get("NOTIFY_SOCKET"),
            invocation_id=get("INVOCATION_ID"),
            log_level=read("SANDBOX_LOG_LEVEL",
                           lambda n, v: parse_choice(n, v, ("debug", "info", "warning", "error")).upper(),
                           default.log_level),
        )
        if settings.lb_agent_port is not None and settings.lb_agent_port == settings.port:
            raise ConfigError(f"SANDBOX_LB_AGENT_PORT: {settings.lb_agent_port} is the HTTP port "
                              "(SANDBOX_EXECUTOR_MANAGER_PORT); the agent needs a port of its own")
        if settings.total_memory_bytes is not None and settings.total_memory_bytes < limits.memory_bytes:
            raise ConfigError("SANDBOX_TOTAL_MEMORY: smaller than SANDBOX_MAX_MEMORY, so no sandbox could run")
        return settings

    def capacity_status(self) -> dict:
        """The values in effect of what scales with the host, and where each came from."""
        host = self.capacity
        origin = f"derived from {host.cpus} CPUs and {host.memory_bytes / 1024**3:.1f} GiB" if host else "default"
        return {name: {"value": getattr(self, name), "variable": variable,
                       "source": origin if name in self.derived else "set"}
                for name, variable in CAPACITY_VARIABLES.items()}

    @property
    def snapshots_path(self) -> pathlib.Path:
        """Where snapshot images live (one service per directory: it removes what it does not use)."""
        return self.snapshot_dir or self.state_dir / "snapshots"

    @property
    def sealed_path(self) -> pathlib.Path:
        """Where sealed rootfs images live (on disk, next to the trees: ~0.5 GB each; services
        may share it, see host.sealed)."""
        return self.sealed_dir or self.rootfs_dir.parent / "sealed"

    def pool_size_for(self, profile_key: str) -> int:
        """Size of a pool profile (``python``, ``python_preload``): its own variable or the default."""
        return self.pool_sizes.get(profile_key, self.pool_size)


def _which(name: str, value: str | None, program: str, fallback: pathlib.Path) -> pathlib.Path:
    """A binary: the variable's absolute path, else ``program`` on PATH, else ``fallback``."""
    if value is not None:
        return parse_path(name, value)
    found = shutil.which(program)
    return pathlib.Path(found) if found else fallback


def _parse_dns_ttl(name: str, value: str) -> int:
    """Whole seconds, 1 s to 1 h (dnsmasq caps its ``min-cache-ttl`` at an hour)."""
    seconds = parse_duration(name, value)
    if seconds != int(seconds) or not 1 <= seconds <= 3600:
        raise ConfigError(f"{name}: {value!r} must be whole seconds from 1s to 1h")
    return int(seconds)


def _parse_agent_port(name: str, value: str) -> int | None:
    if value.strip().lower() in ("off", "0", "none"):
        return None
    return parse_int(name, value, minimum=1, maximum=65535)


def _parse_cgroup_name(name: str, value: str) -> str:
    text = value.strip().strip("/")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", text) or ".." in text.split("/"):
        raise ConfigError(f"{name}: invalid cgroup name {value!r} (letters, digits, _ . - and /)")
    return text
