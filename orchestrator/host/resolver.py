"""The sandboxes' DNS resolver in egress mode: one dnsmasq process per service, the only code
that starts, reads or stops it.

What it does (``render_config`` is the whole policy, a pure function pinned by unit tests)::

    listens        udp+tcp 53 on one address only: ``netns.resolver_address`` (the first
                   address of the last /30 of SANDBOX_EGRESS_SUBNET, on a link of ours);
                   the firewall admits it from our veths (and lo) and nowhere else
    allowed names  forwarded to the upstream resolvers (SANDBOX_EGRESS_DNS, default the
                   host's /etc/resolv.conf); every IPv4 address in the answer goes into the
                   nft sets of the entries that name matches (dnsmasq's ``nftset=``)
    anything else  NXDOMAIN, answered locally (``address=/#/``); so are the names below an
                   exact entry (``address=/*.<name>/``) unless a wildcard covers them
    AAAA           removed from answers (``filter-AAAA``): sandboxes have IPv4 only

Time to live.  dnsmasq adds set elements without a timeout of their own (and re-adding an
element does not refresh it), so every element takes the set's timeout, and the TTL the
sandboxes see is pinned to match it: records are cached for exactly SANDBOX_EGRESS_DNS_TTL
(``min-cache-ttl`` = ``max-cache-ttl``), answers carry at most that (``max-ttl``) and a cached
answer carries what is left of it, while the element lives that long plus
``firewall.DNS_GRACE_S`` from the upstream answer that added it.  So no sandbox holds an answer
longer than its addresses stay open, and an address closes again at most TTL + grace after the
last upstream answer that named it.  (A record whose TTL upstream is shorter is held for the
whole SANDBOX_EGRESS_DNS_TTL: per-record timeouts would need dnsmasq to pass the TTL to nft.)

DNS rebinding: a name may resolve to an address the firewall always denies (loopback,
link-local, private, this host's own).  The address still goes into the set, but the deny
rules come first, so it stays unreachable; the service logs a warning for each such answer
(it reads dnsmasq's query log, ``log-queries``, from its stderr; what sounds like trouble
goes to WARNING, the rest to DEBUG).

Leftovers: dnsmasq drops its privileges, so it cannot be tied to the service's life
(PR_SET_PDEATHSIG is cleared by setuid).  After a ``kill -9`` of the service it keeps running;
the next start (and ``reap``) kills every dnsmasq whose command line names our config file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import pathlib
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from orchestrator.errors import ConfigError, HostError, RunscError
from orchestrator.host.firewall import NameRule
from orchestrator.runtime.runsc import run_command

log = logging.getLogger(__name__)

DNSMASQ = pathlib.Path("/usr/sbin/dnsmasq")
HOST_RESOLV_CONF = pathlib.Path("/etc/resolv.conf")
PROC = pathlib.Path("/proc")
CONF_NAME = "dnsmasq.conf"
PID_NAME = "dnsmasq.pid"
RESOLV_CONF_NAME = "resolv.conf"  # bind-mounted read-only over the sandbox's /etc/resolv.conf
CACHE_SIZE = 10000  # an evicted record would be fetched again without refreshing its element
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after an unexpected exit; the last repeats

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Upstream:
    address: IPAddress
    port: int = 53

    def __str__(self) -> str:  # dnsmasq's form
        return str(self.address) if self.port == 53 else f"{self.address}#{self.port}"


def parse_upstreams(name: str, value: str) -> tuple[Upstream, ...]:
    """``SANDBOX_EGRESS_DNS``: comma-separated ``address`` or ``IPv4:port`` (an IPv6 address bare)."""
    upstreams = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        host, port = part, "53"
        if part.count(":") == 1:
            host, port = part.split(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not an IP address (expected e.g. 192.0.2.53, "
                              "192.0.2.53:5353)") from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{name}: {part!r}: port {port!r} is not a number from 1 to 65535")
        upstreams.append(Upstream(address, int(port)))
    if not upstreams:
        raise ConfigError(f"{name}: no resolver given")
    return tuple(upstreams)


def parse_resolv_conf(text: str) -> tuple[Upstream, ...]:
    """The ``nameserver`` lines of a resolv.conf (scoped IPv6 addresses aside)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and "%" not in fields[1]:
            try:
                found.append(Upstream(ipaddress.ip_address(fields[1])))
            except ValueError:
                continue
    return tuple(found)


def host_upstreams(path: pathlib.Path = HOST_RESOLV_CONF) -> tuple[Upstream, ...]:
    """The host's resolvers, for when SANDBOX_EGRESS_DNS is not set."""
    try:
        found = parse_resolv_conf(path.read_text())
    except OSError as exc:
        raise HostError(f"read the host's resolvers {path}: {exc.strerror} (set SANDBOX_EGRESS_DNS)") from exc
    if not found:
        raise HostError(f"read the host's resolvers: no nameserver in {path} (set SANDBOX_EGRESS_DNS)")
    return found


@dataclass(frozen=True)
class ResolverConfig:
    table: str                         # the firewall's table (family inet) holding the dns4_* sets
    address: ipaddress.IPv4Address     # where it listens (port 53)
    upstreams: tuple[Upstream, ...]
    names: tuple[NameRule, ...] = ()   # the allowlist's name entries
    ttl_s: int = 60                    # SANDBOX_EGRESS_DNS_TTL
    pid_file: pathlib.Path | None = None


def _covers(wildcard: NameRule, name: str) -> bool:
    """Does ``*.domain`` match ``name`` (a strict subdomain)?"""
    return name.endswith("." + wildcard.domain)


def nft_sets_by_domain(names: Iterable[NameRule]) -> dict[str, list[str]]:
    """dnsmasq's ``nftset=/D/`` matches D and every name below it, and the longest D wins, so
    each domain gets the sets of every entry that matches it: its own entries (exact or
    wildcard) and the wildcards above it."""
    names = list(names)
    wildcards = [rule for rule in names if rule.is_wildcard]
    sets: dict[str, set[str]] = {}
    for rule in names:
        sets.setdefault(rule.domain, set()).add(rule.set_name)
    for domain, chosen in sets.items():
        chosen.update(w.set_name for w in wildcards if _covers(w, domain))
    return {domain: sorted(chosen) for domain, chosen in sorted(sets.items())}


def render_config(config: ResolverConfig) -> str:
    """The whole dnsmasq configuration (deterministic)."""
    lines = [
        "# The sandboxes' resolver (gvisor-sandbox, orchestrator/host/resolver.py). Generated: do not edit.",
        "keep-in-foreground",
        "log-facility=-",
        "log-queries",
        *([f"pid-file={config.pid_file}"] if config.pid_file else []),
        "user=nobody",
        "group=nogroup",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "bind-interfaces",
        f"listen-address={config.address}",
        "port=53",
        f"cache-size={CACHE_SIZE}",
        f"min-cache-ttl={config.ttl_s}",
        f"max-cache-ttl={config.ttl_s}",
        f"max-ttl={config.ttl_s}",
        "filter-AAAA",
        "domain-needed",
        "bogus-priv",
        "# every name not allowed below: NXDOMAIN",
        "address=/#/",
    ]
    names = sorted(set(config.names), key=lambda rule: (rule.domain, rule.name, str(rule)))
    wildcards = [rule for rule in names if rule.is_wildcard]
    done: set[str] = set()
    for rule in names:
        if rule.name in done:
            continue
        done.add(rule.name)
        lines.append(f"# {rule.name}")
        pattern = f"*.{rule.domain}" if rule.is_wildcard else rule.domain
        lines += [f"server=/{pattern}/{upstream}" for upstream in config.upstreams]
        if not rule.is_wildcard and not any(w.domain == rule.domain or _covers(w, rule.domain) for w in wildcards):
            lines.append(f"address=/*.{rule.domain}/")  # the name only, not what lies below it
    for domain, sets in nft_sets_by_domain(names).items():
        lines.append(f"nftset=/{domain}/" + ",".join(f"4#inet#{config.table}#{name}" for name in sets))
    return "\n".join(lines) + "\n"


def render_resolv_conf(address: ipaddress.IPv4Address) -> str:
    """What a sandbox sees as /etc/resolv.conf."""
    return (f"# gvisor-sandbox: the sandboxes' resolver (allowlisted names only)\n"
            f"nameserver {address}\noptions timeout:2 attempts:2\n")


def parse_nftset_add(line: str) -> tuple[str, ipaddress.IPv4Address] | None:
    """(name, address) from dnsmasq's ``nftset add 4 inet <table> <set> <address> <name>``."""
    fields = line.split()
    if len(fields) != 8 or fields[:2] != ["nftset", "add"]:
        return None
    try:
        address = ipaddress.ip_address(fields[6])
    except ValueError:
        return None
    return (fields[7], address) if address.version == 4 else None


def check_version(output: str) -> str:
    """The version line of ``dnsmasq --version``; HostError unless it was built with nftset."""
    lines = output.splitlines()
    options = next((line for line in lines if line.startswith("Compile time options:")), "")
    if "nftset" not in options.split() or "no-nftset" in options.split():
        raise HostError(f"dnsmasq without nftset support ({options or 'no compile options shown'}); "
                        "Debian's dnsmasq-base 2.87 or later has it")
    return lines[0].split("  ")[0].strip() if lines else "dnsmasq"


async def probe_dnsmasq(binary: pathlib.Path) -> str:
    """``Dnsmasq version X`` of ``binary``; HostError when it is missing or lacks nftset."""
    try:
        code, out, err = await run_command([str(binary), "--version"])
    except RunscError as exc:  # run_command's own failure: binary missing or hung
        raise HostError(f"run {binary} --version: {exc} (apt-get install dnsmasq-base, or set SANDBOX_DNSMASQ)") from exc
    if code != 0:
        raise HostError(f"run {binary} --version: exited {code}: {err.strip()[-200:]}")
    return check_version(out)


# -- the process ------------------------------------------------------------------------------

def _cmdline(pid: str, proc: pathlib.Path) -> list[str]:
    try:
        return (proc / pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int, proc: pathlib.Path) -> bool:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def find_processes(conf: pathlib.Path, proc: pathlib.Path = PROC) -> list[int]:
    """Every dnsmasq running with our config file (a leftover when the service is not running)."""
    wanted = f"--conf-file={conf}"
    found = []
    for pid in filter(str.isdigit, os.listdir(proc)):
        argv = _cmdline(pid, proc)
        if argv and os.path.basename(argv[0]) == "dnsmasq" and wanted in argv and _alive(int(pid), proc):
            found.append(int(pid))
    return sorted(found)


def kill_processes(conf: pathlib.Path, proc: pathlib.Path = PROC) -> list[int]:
    """SIGKILL every dnsmasq of ours and wait (up to 5 s) until they are gone."""
    pids = find_processes(conf, proc)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(_alive(pid, proc) for pid in pids):
        if time.monotonic() > deadline:
            raise HostError(f"kill leftover dnsmasq {pids}: still running after {STOP_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    return pids


def _write(path: pathlib.Path, text: str, mode: int) -> None:
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temp, mode)  # whatever the umask
    os.replace(temp, path)


class Resolver:
    """One dnsmasq for one service: ``start`` (replacing any leftover), ``stop``.  A dnsmasq that
    exits on its own is started again (after ``RESTART_DELAYS_S``) until ``stop``: without it no
    sandbox resolves a name and every allowlisted name would look blocked."""

    def __init__(self, config: ResolverConfig, directory: pathlib.Path, *, binary: pathlib.Path = DNSMASQ,
                 deny_reason: Callable[[ipaddress.IPv4Address], str | None] = lambda address: None,
                 restart_delays_s: tuple[float, ...] = RESTART_DELAYS_S):
        self.config = config
        self.directory = directory
        self.binary = binary
        self.deny_reason = deny_reason
        self.restart_delays_s = restart_delays_s
        self.restarts = 0
        self.last_exit: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._stopping = False

    @property
    def conf_path(self) -> pathlib.Path:
        return self.directory / CONF_NAME

    @property
    def resolv_conf_path(self) -> pathlib.Path:
        return self.directory / RESOLV_CONF_NAME

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def status(self) -> dict:
        """For ``/status``: where it listens, whether it runs, how often it had to be restarted."""
        return {"address": f"{self.config.address}:53", "running": self.is_running, "pid": self.pid,
                "upstreams": [str(upstream) for upstream in self.config.upstreams],
                "allowed_names": len(self.config.names), "ttl_s": self.config.ttl_s,
                "restarts": self.restarts, "last_exit": self.last_exit}

    async def start(self) -> None:
        """Write the config and the sandboxes' resolv.conf, start dnsmasq, and return once it
        listens (it logs ``started`` after binding); HostError if it does not."""
        self._stopping = False
        version = await probe_dnsmasq(self.binary)
        leftovers = await asyncio.to_thread(kill_processes, self.conf_path)
        if leftovers:
            log.warning("resolver: killed leftover dnsmasq %s", ", ".join(map(str, leftovers)))
        try:
            _write(self.conf_path, render_config(self.config), 0o644)
            _write(self.resolv_conf_path, render_resolv_conf(self.config.address), 0o644)
        except OSError as exc:
            raise HostError(f"write resolver config in {self.directory}: {exc}") from exc
        try:
            await self._launch()
        except BaseException:
            await self.stop()
            raise
        log.info("resolver: %s, pid %d, on %s:53, upstream %s, %d allowed name(s), TTL %d s",
                 version, self._process.pid, self.config.address, ", ".join(map(str, self.config.upstreams)),
                 len(self.config.names), self.config.ttl_s)

    async def _launch(self) -> None:
        """Start dnsmasq and its log reader; HostError when it does not report ``started``
        (what it started is killed again)."""
        try:
            process = await asyncio.create_subprocess_exec(
                str(self.binary), f"--conf-file={self.conf_path}", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            hint = " (install dnsmasq: apt-get install dnsmasq-base; or set SANDBOX_DNSMASQ)"
            raise HostError(f"start dnsmasq {self.binary}: {exc.strerror}{hint}") from exc
        said: list[str] = []
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    line = await process.stderr.readline()
                    if not line:
                        code = await process.wait()
                        raise HostError(f"start dnsmasq: exited {code}: {' / '.join(said[-3:]) or 'no output'}")
                    text = self._line(line)
                    said.append(text)
                    if text.startswith("started, version"):
                        break
        except BaseException as exc:
            await _terminate(process)
            if isinstance(exc, TimeoutError):
                raise HostError(f"start dnsmasq: not started after {START_TIMEOUT_S:.0f} s: "
                                f"{' / '.join(said[-3:]) or 'no output'}") from None
            raise
        self._process = process
        self._reader = asyncio.create_task(self._read(process), name="dnsmasq-log")

    def _line(self, raw: bytes) -> str:
        """Log one line of dnsmasq's; return it without the ``dnsmasq[pid]: `` prefix."""
        text = raw.decode(errors="replace").rstrip()
        text = text.split(": ", 1)[1] if text.startswith("dnsmasq") and ": " in text else text
        added = parse_nftset_add(text)
        if added is not None:
            name, address = added
            reason = self.deny_reason(address)
            if reason is not None:
                log.warning("resolver: %s resolved to %s, %s: it stays blocked (DNS rebinding guard)",
                            name, address, reason)
                return text
        trouble = any(word in text.lower() for word in ("fail", "error", "bad ", "refused", "warning", "cannot"))
        log.log(logging.WARNING if trouble else logging.DEBUG, "dnsmasq: %s", text)
        return text

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Log what dnsmasq says; when it exits without being asked to, start it again."""
        assert process.stderr is not None
        while line := await process.stderr.readline():
            self._line(line)
        code = await process.wait()
        if self._stopping or process is not self._process:
            return
        self.last_exit = f"exit {code}" if code >= 0 else f"signal {-code}"
        log.error("resolver: dnsmasq pid %d exited on its own (%s): sandboxes resolve nothing until it is back",
                  process.pid, self.last_exit)
        for attempt in itertools.count():
            await asyncio.sleep(self.restart_delays_s[min(attempt, len(self.restart_delays_s) - 1)])
            if self._stopping:
                return
            try:
                await self._launch()
            except HostError as exc:
                log.error("resolver: restart %d failed: %s", attempt + 1, exc)
                continue
            self.restarts += 1
            log.warning("resolver: dnsmasq started again, pid %d (restart %d)", self._process.pid, self.restarts)
            return

    async def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL); a no-op when it is not running."""
        self._stopping = True
        process, self._process = self._process, None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if process is not None:
            await _terminate(process)
        if self.config.pid_file is not None:
            self.config.pid_file.unlink(missing_ok=True)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
