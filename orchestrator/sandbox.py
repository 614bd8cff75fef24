"""One sandbox's whole life: prepare, start, run exactly one request, destroy.

A sandbox is a ``runsc run`` of the language's argv over the shared read-only rootfs (or a
``runsc restore`` of a snapshot of one: ``orchestrator.start`` holds what differs), with
its own workspace, cgroup and bundle.  Its stdin is one end of a socketpair (the control
channel of the runner protocol), its stdout and stderr are pipes we read with a cap.  Every
side effect is registered on an ``AsyncExitStack`` right after it is done, so ``destroy``
undoes exactly what happened, whatever happened; a failing undo is logged, never raised over
the original error.  A sandbox serves one request and is then destroyed: nothing of one
request's state can reach another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import socket
import time
import uuid
from dataclasses import dataclass

from bundles.spec import SpecParams, build_spec
from bundles.validate import SpecError, validate_spec
from bundles.writer import write_bundle
from orchestrator import artifacts
from orchestrator.capture import Capture
from orchestrator.errors import HostError, ProtocolError, RunscError, SandboxError
from orchestrator.host import workspace
from orchestrator.host.cgroups import DEFAULT_CPU_WEIGHT, CgroupLimits, Cgroups
from orchestrator.language import Language
from orchestrator.outcome import RESULT_LIMIT_BYTES, RunRecord
from orchestrator.runtime.argv import JoinCgroups
from orchestrator.settings import Limits
from orchestrator.start import Boot, Restore

log = logging.getLogger(__name__)

BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
MAX_FRAME_BYTES = RESULT_LIMIT_BYTES  # a control frame carries at most main()'s result
KILL_WAIT_S = 5.0
KILL_RETRY_S = 0.25
KILL_COMMAND_TIMEOUT_S = 2.0  # `runsc kill` answers in ~30 ms; a stopped (SIGSTOP) sandbox never does
BOOT_CPU_WEIGHT = 10  # a pool member booting ahead yields the CPU to sandboxes serving requests
EXIT_GRACE_S = 2.0


class FrameTooLargeError(ProtocolError):
    """The runner's frame (main()'s result) is larger than MAX_FRAME_BYTES."""


def new_sandbox_id(language: str) -> str:
    return f"{language}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Job:
    """One request, as the sandbox needs it."""

    source: bytes
    arguments: dict
    timeout_s: float
    request_id: str = "-"


@dataclass
class SandboxHost:
    """What a sandbox needs from the host side, injected."""

    runtime: object  # RunscRuntime or a fake with the same methods
    cgroups: Cgroups | None
    state_dir: pathlib.Path
    uid: int
    gid: int
    limits: Limits
    boot_timeout_s: float = 60.0
    seccomp: dict | None = None  # the spec's linux.seccomp, enforced by runsc --oci-seccomp
    bounded_workspace: bool = True  # a size-limited tmpfs per workspace (needs root)
    network: object | None = None  # egress mode: host.netns.SandboxNetworks; None: runsc's own empty netns
    resolv_conf: str | None = None  # egress mode: the file naming the resolver (host.resolver), bound read-only
    meminfo: pathlib.Path | None = None  # host.meminfo: what runsc reads for MemTotal when we join the cgroups
    sealed: object | None = None  # host.sealed.SealedImages: the sealed images of the languages that have one

    def sealed_image(self, language: Language, rootfs_tree: pathlib.Path) -> pathlib.Path | None:
        """The sealed image a sandbox of ``language`` on ``rootfs_tree`` runs from, if any."""
        if self.sealed is None or not language.sealed:
            return None
        return self.sealed.image_for(language.name, rootfs_tree)


def preload_env(language: Language, preload: bool) -> dict[str, str]:
    """What the runner is started with beyond the language's env (part of a snapshot's key:
    a restore must see the spec its image was checkpointed with)."""
    return {"SANDBOX_PRELOAD": ",".join(language.preload)} if preload and language.preload else {}


def sandbox_spec(language: Language, host: SandboxHost, rootfs_tree: pathlib.Path, extra_env: dict[str, str], *,
                 workspace: str, cgroups_path: str, netns_path: str | None, sandbox_id: str) -> dict:
    """The validated OCI config of a sandbox (pure: the snapshot store builds it with
    placeholders for the per-sandbox fields, as part of an image's key)."""
    params = SpecParams(
        rootfs=str(rootfs_tree),
        args=tuple(language.process_args()),
        env={**BASE_ENV, **language.env, **extra_env},
        workspace_source=workspace,
        runner_source=str(language.definition_dir) if language.runner else None,
        cgroups_path=cgroups_path,
        memory_bytes=host.limits.memory_bytes,
        pids=host.limits.pids,
        tmp_bytes=host.limits.tmp_bytes,
        uid=host.uid,
        gid=host.gid,
        seccomp=host.seccomp,
        netns_path=netns_path,
        resolv_conf_source=host.resolv_conf,
        annotations={"dev.gvisor-sandbox.language": language.name},
    )
    image = host.sealed_image(language, rootfs_tree)
    if image is not None:
        params = dataclasses.replace(params, rootfs=str(host.sealed.empty_root), sealed_image=str(image),
                                     workspace_bytes=host.limits.workspace_bytes)
    spec = build_spec(params)
    try:
        validate_spec(spec)
    except SpecError as exc:
        raise SandboxError(f"build spec: {exc}", sandbox_id=sandbox_id) from exc
    return spec


class Sandbox:
    def __init__(self, language: Language, rootfs: pathlib.Path, host: SandboxHost, *, preload: bool = False,
                 warm: bool = False, start: Boot | Restore | None = None):
        """``preload``: import the language's preload list before reporting ready.  ``warm``:
        started ahead for a pool, at a low CPU weight until it is handed a request.
        ``start``: how it starts (default: booted); a restored sandbox runs on the tree and
        with the preload of its image."""
        self.id = new_sandbox_id(language.name)
        self.language = language
        self._start = start or Boot()
        image = self._start.image
        self.rootfs = rootfs  # may be the store's `current` link: resolved once, at boot
        self.rootfs_tree = image.rootfs_tree if image is not None else pathlib.Path(os.path.realpath(rootfs))
        self.host = host
        self.preload = (image.preload if image is not None else preload) and bool(language.preload)
        self.warm = warm
        self.booted_at: float | None = None
        self.boot_ms: float | None = None
        self.preload_errors: dict = {}
        self.reseeded: list | None = None  # what a restored runner reseeded on resume
        # Sealed: no host workspace; the runner writes the source and sends the artifacts.
        self.sealed = host.sealed_image(language, self.rootfs_tree) is not None
        self.artifacts: list[tuple[str, bytes]] = []  # what a sealed runner sent
        self._stack = contextlib.AsyncExitStack()
        self._dirs: workspace.SandboxDirs | None = None
        self._net = None  # host.netns.SandboxNet in egress mode
        self._process: asyncio.subprocess.Process | None = None
        self._stdout: Capture | None = None
        self._stderr: Capture | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = False
        self._reported = False
        self._cpu_ns_before_run: int | None = None
        self._destroyed = False

    def __repr__(self) -> str:
        return f"Sandbox({self.id})"

    @property
    def workspace_dir(self) -> pathlib.Path | None:
        """The host directory the sandbox sees as its workspace; None when it is sealed."""
        assert self._dirs is not None
        return None if self.sealed else self._dirs.workspace

    @property
    def is_on_current_rootfs(self) -> bool:
        """False once a rebuild switched the language's tree after this sandbox booted."""
        return pathlib.Path(os.path.realpath(self.rootfs)) == self.rootfs_tree

    @property
    def start_kind(self) -> str:
        """``booted`` or ``restored``."""
        return self._start.kind

    @property
    def has_run(self) -> bool:
        """True once it was handed its request (or checkpointed)."""
        return self._used

    @property
    def is_alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    # -- boot -----------------------------------------------------------------------------

    async def boot(self) -> None:
        """Prepare the host side; for the runner protocol also start it (boot or restore) and
        wait until ready."""
        started = time.monotonic()
        try:
            size = self.host.limits.workspace_bytes if self.host.bounded_workspace else None
            self._dirs = workspace.create_sandbox_dirs(self.host.state_dir, self.id, self.host.uid, self.host.gid,
                                                       size_bytes=size, workspace=not self.sealed)
            self._stack.callback(workspace.remove_sandbox_dirs, self._dirs)
            if self.host.cgroups is not None:
                limits = self.host.limits
                weight = BOOT_CPU_WEIGHT if self.warm else DEFAULT_CPU_WEIGHT
                self.host.cgroups.create(self.id, CgroupLimits(memory_bytes=limits.memory_bytes, pids=limits.pids,
                                                               cpus=limits.cpus, cpu_weight=weight))
                self._stack.push_async_callback(asyncio.to_thread, self.host.cgroups.remove, self.id)
            if self.host.network is not None:
                self._net = await asyncio.to_thread(self.host.network.create, self.id)
                self._stack.push_async_callback(asyncio.to_thread, self.host.network.remove, self._net)
            if self.language.can_boot_ahead:
                self._check_rootfs()
                await self._launch(self.boot_env())
                await self._await_ready()
        except BaseException:
            await self.destroy()
            raise
        finally:
            self._start.finish()
        self.booted_at = time.monotonic()
        self.boot_ms = (self.booted_at - started) * 1000
        log.debug("sandbox=%s booted in %.0f ms preload=%s", self.id, self.boot_ms, self.preload)

    def _check_rootfs(self) -> None:
        """A rootfs removed or renamed under the running service is named as such, not left to
        runsc's "mounting root on root ... no such file or directory"."""
        if not self.rootfs_tree.is_dir():
            raise HostError(f"boot sandbox {self.id}: the {self.language.name} rootfs {self.rootfs} is missing "
                            f"(it resolves to {self.rootfs_tree}); run `make build` or restore it")

    def boot_env(self) -> dict[str, str]:
        return preload_env(self.language, self.preload)

    def spec(self, extra_env: dict[str, str]) -> dict:
        assert self._dirs is not None
        cgroups = self.host.cgroups
        return sandbox_spec(self.language, self.host, self.rootfs_tree, extra_env,
                            workspace=str(self._dirs.workspace),
                            cgroups_path=cgroups.cgroups_path(self.id) if cgroups else f"/gvisor-sandbox/{self.id}",
                            netns_path=self._net.path if self._net is not None else None, sandbox_id=self.id)

    async def _launch(self, extra_env: dict[str, str]) -> None:
        assert self._dirs is not None
        try:
            write_bundle(self._dirs.bundle, self.spec(extra_env))
        except OSError as exc:  # e.g. the state dir's filesystem is full
            raise HostError(f"write bundle of sandbox {self.id}: {exc}") from exc
        child_ends: list[int] = []
        try:
            if self.language.can_boot_ahead:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                self._stack.callback(ours.close)
                child_ends.append(theirs.detach())
            else:
                ours = None
                child_ends.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            child_ends.append(out_w)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            child_ends.append(err_w)
            self._stdout = Capture(out_r, self.host.limits.output_bytes)
            self._stack.callback(self._stdout.close)
            self._stderr = Capture(err_r, self.host.limits.output_bytes)
            self._stack.callback(self._stderr.close)
            # A script-protocol program is started for its request: always booted.
            start = self._start if ours is not None else Boot()
            # The stop is registered first and the spawn is not cut short by a cancellation:
            # a runsc whose spawn was interrupted would run on untracked, and a restored
            # container keep its state.
            self._stack.push_async_callback(self._stop)
            launch = asyncio.ensure_future(start.launch(self.host.runtime, self.id, self._dirs.bundle,
                                                        self._dirs.log_file, stdin=child_ends[0], stdout=out_w,
                                                        stderr=err_w, join=self._join()))
            try:
                self._process = await asyncio.shield(launch)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    self._process = await launch
                raise
        finally:
            for fd in child_ends:
                os.close(fd)
        if ours is not None:
            self._reader, self._writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_FRAME_BYTES)

    def _join(self) -> JoinCgroups | None:
        """The cgroups runsc is started in, for a runtime that does not join them itself."""
        cgroups = self.host.cgroups
        if cgroups is None:
            return None
        return JoinCgroups(procs=cgroups.procs_files(self.id), meminfo=self.host.meminfo)

    async def _read_frame(self) -> dict | None:
        """The runner's next frame, or None at EOF (the sandbox is gone)."""
        assert self._reader is not None
        try:
            line = await self._reader.readline()
        except (ValueError, asyncio.LimitOverrunError) as exc:  # a frame over the reader's limit
            raise FrameTooLargeError(f"read control frame: over {MAX_FRAME_BYTES} bytes", sandbox_id=self.id) from exc
        except ConnectionError:
            return None
        if not line:
            return None
        try:
            frame = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"decode control frame: {exc}", sandbox_id=self.id) from exc
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise ProtocolError("decode control frame: not an object with a type", sandbox_id=self.id)
        return frame

    async def _read_report(self) -> dict | None:
        """The runner's report of a run: its next frame after the artifact frames, whose files
        (checked: the runner runs the user's code) go to ``artifacts``."""
        while True:
            frame = await self._read_frame()
            if frame is None or frame["type"] != "artifact":
                return frame
            await self._receive_artifact(frame)

    async def _receive_artifact(self, frame: dict) -> None:
        assert self._reader is not None
        name, size = frame.get("name"), frame.get("size")
        problem = None
        if not self.sealed:
            problem = "an artifact frame from a sandbox with a host workspace"
        elif not isinstance(name, str) or not artifacts.is_acceptable_name(name) or name == self.language.source_file:
            problem = f"the artifact name {name!r} is not acceptable"
        elif any(name == known for known, _ in self.artifacts):
            problem = f"the artifact {name!r} came twice"
        elif not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= artifacts.MAX_SIZE:
            problem = f"the artifact size {size!r} is not within 1..{artifacts.MAX_SIZE} bytes"
        elif len(self.artifacts) >= artifacts.MAX_COUNT:
            problem = f"more than {artifacts.MAX_COUNT} artifacts"
        if problem is not None:
            raise ProtocolError(f"run: {problem}", sandbox_id=self.id)
        try:
            data = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ProtocolError(f"run: the artifact {name!r} ended early", sandbox_id=self.id) from exc
        self.artifacts.append((name, data))

    async def _send_frame(self, frame: dict) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(frame, ensure_ascii=False).encode("utf-8") + b"\n")
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def _await_ready(self) -> None:
        try:
            frame = await asyncio.wait_for(self._start.handshake(self._send_frame, self._read_frame),
                                           self.host.boot_timeout_s)
        except asyncio.TimeoutError:
            raise SandboxError(f"boot: not ready within {self.host.boot_timeout_s:.0f} s", sandbox_id=self.id) from None
        if frame is None:
            raise SandboxError(f"boot: the sandbox exited before it was ready: {await self._failure_text()}",
                               sandbox_id=self.id)
        if frame["type"] != "ready":
            raise ProtocolError(f"boot: expected a ready frame, got {frame['type']!r}", sandbox_id=self.id)
        self.preload_errors = frame.get("preload_errors") or {}
        self.reseeded = frame.get("reseeded")
        if self.preload_errors:
            log.warning("sandbox=%s preload failed for %s", self.id, self.preload_errors)

    async def _failure_text(self) -> str:
        """Why a sandbox died on its own before doing its job: exit code, stderr, runsc's log."""
        code = None
        if self._process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                code = await asyncio.wait_for(self._process.wait(), 2.0)
        parts = [f"exit code {code}"]
        if self._stderr is not None:
            self._stderr.drain()
            if self._stderr.data.strip():
                parts.append("stderr: " + self._stderr.data.decode("utf-8", "replace").strip()[-500:])
        if self._dirs is not None:
            with contextlib.suppress(OSError):
                tail = self._dirs.log_file.read_text(errors="replace").strip()[-500:]
                if tail:
                    parts.append("runsc: " + tail)
        return "; ".join(parts)

    # -- run ------------------------------------------------------------------------------

    async def run(self, job: Job) -> RunRecord:
        """Run ``job``; the program's fate (error, timeout, OOM, flood) is in the record."""
        if self._used:
            raise SandboxError("run: this sandbox has already served a request", sandbox_id=self.id)
        self._used = True
        assert self._dirs is not None
        source_name = self.language.source_file
        if not self.sealed:
            workspace.write_workspace_file(self._dirs, source_name,
                                           job.source + self.language.source_suffix.encode("utf-8"))
        started = time.monotonic()
        if self.language.can_boot_ahead:
            if not self.is_alive:
                raise SandboxError("run: the sandbox is no longer running", sandbox_id=self.id)
            if self.host.cgroups is not None:
                if self.warm:
                    self.host.cgroups.set_cpu_weight(self.id, DEFAULT_CPU_WEIGHT)
                self._cpu_ns_before_run = self.host.cgroups.cpu_ns(self.id)
            frame = {"type": "run", "source": source_name, "arguments": job.arguments,
                     "code": (job.source + self.language.source_suffix.encode("utf-8")).decode("utf-8")}
            if self.sealed:
                frame.update(write_source=True, artifacts=artifacts.runner_rules(exclude=(source_name,)))
            await self._send_frame(frame)
        else:
            arguments = json.dumps(job.arguments, ensure_ascii=False)
            workspace.write_workspace_file(self._dirs, "arguments.json", arguments.encode("utf-8"))
            started = time.monotonic()
            await self._launch({"SANDBOX_ARGUMENTS": arguments})
        record = await self._wait(job, started)
        record.has_result_channel = self.language.can_boot_ahead
        return record

    async def _wait(self, job: Job, started: float) -> RunRecord:
        assert self._process is not None and self._stdout is not None and self._stderr is not None
        record = RunRecord()
        waiters = {
            "exit": asyncio.ensure_future(self._process.wait()),
            "stdout": asyncio.ensure_future(self._stdout.exceeded.wait()),
            "stderr": asyncio.ensure_future(self._stderr.exceeded.wait()),
        }
        if self._reader is not None:
            waiters["frame"] = asyncio.ensure_future(self._read_report())
        try:
            done, _ = await asyncio.wait(waiters.values(), timeout=job.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            record.wall_ms = (time.monotonic() - started) * 1000
            frame_task = waiters.get("frame")
            if not done:
                record.timed_out = True
            elif waiters["stdout"] in done or waiters["stderr"] in done:
                record.output_exceeded = "stdout" if waiters["stdout"] in done else "stderr"
            else:
                frame = None
                if frame_task is not None:
                    if not frame_task.done():
                        # The sandbox exited: a frame it sent before is already in the socket.
                        await asyncio.wait({frame_task}, timeout=1.0)
                    if frame_task.done() and not frame_task.cancelled():
                        try:
                            frame = frame_task.result()
                        except FrameTooLargeError:
                            record.output_exceeded = "result"
                if frame is not None and frame.get("type") == "done":
                    exit_code = frame.get("exit_code", 1)
                    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
                        raise ProtocolError(f"run: the done frame's exit code {exit_code!r} is not an integer",
                                            sandbox_id=self.id)
                    record.reported = self._reported = True
                    record.exit_code = exit_code
                    record.returned = bool(frame.get("returned")) and isinstance(frame.get("result_json"), str)
                    record.result_json = frame.get("result_json") if record.returned else None
                    if isinstance(frame.get("duration_ms"), (int, float)):
                        record.sandbox_ms = float(frame["duration_ms"])
                elif frame is not None:
                    raise ProtocolError(f"run: expected a done frame, got {frame['type']!r}", sandbox_id=self.id)
                elif record.output_exceeded is None:
                    record.exit_code = await self._process.wait()
        finally:
            for task in waiters.values():
                task.cancel()
        if record.timed_out or record.output_exceeded:
            await self._kill()
        else:
            await self._collect_output_end()
        self._stdout.drain()
        self._stderr.drain()
        if record.output_exceeded is None and (self._stdout.exceeded.is_set() or self._stderr.exceeded.is_set()):
            record.output_exceeded = "stdout" if self._stdout.exceeded.is_set() else "stderr"
        record.stdout, record.stderr = self._stdout.data, self._stderr.data
        if self.host.cgroups is not None:
            # A runner that reported its end was not OOM-killed: skip that counter on the hot path.
            usage = self.host.cgroups.usage(self.id, oom=not record.reported)
            record.memory_peak_bytes = usage.memory_peak_bytes
            if usage.cpu_ns is not None:
                record.cpu_ms = (usage.cpu_ns - (self._cpu_ns_before_run or 0)) / 1e6
            record.oom_killed = bool(usage.oom_kills) and not record.timed_out
            record.pids_limited = bool(usage.pids_limit_hits) and not record.timed_out
        elif not record.reported and record.exit_code == 137 and not record.timed_out:
            record.oom_killed = True
        return record

    async def _collect_output_end(self) -> None:
        """After the program ended: if the sandbox is exiting too, read its output to EOF."""
        assert self._process is not None and self._stdout is not None and self._stderr is not None
        if self._process.returncode is None:
            return  # the runner reported; what it wrote before that is already in the pipes
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(self._stdout.closed.wait(), self._stderr.closed.wait()), 1.0)

    async def wait_exit(self) -> None:
        """Return when the sandbox's process has exited (at once if it never started)."""
        if self._process is not None:
            await self._process.wait()

    # -- teardown -------------------------------------------------------------------------

    async def _kill(self) -> None:
        """Kill every process of the sandbox and wait for ``runsc run`` to exit.

        ``runsc kill`` first, bounded: a sandbox still being created may not accept it yet, so
        it is repeated until ``runsc run`` exits.  When it fails (a stopped sandbox never
        answers it; without the runsc binary there is none), the sandbox's host processes are
        SIGKILLed through its cgroup instead.  Past KILL_WAIT_S ``runsc run`` is killed itself
        and the sandbox deleted by force."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        deadline = time.monotonic() + KILL_WAIT_S
        while process.returncode is None and time.monotonic() < deadline:
            try:
                await self.host.runtime.kill(self.id, timeout=KILL_COMMAND_TIMEOUT_S)
            except RunscError as exc:
                log.warning("sandbox=%s %s", self.id, exc)
                self._kill_tasks("runsc kill failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), KILL_RETRY_S)
        if process.returncode is None:
            log.warning("sandbox=%s runsc run did not exit after kill; killing it and deleting the sandbox", self.id)
            self._kill_tasks("runsc run did not exit")
            process.kill()
            await process.wait()
            await self.host.runtime.delete(self.id)

    def _kill_tasks(self, why: str) -> int:
        """SIGKILL the sandbox's host processes through its cgroup (none without cgroups)."""
        if self.host.cgroups is None:
            return 0
        killed = self.host.cgroups.kill_tasks(self.id)
        if killed:
            log.warning("sandbox=%s %s: killed its %d host processes through its cgroup", self.id, why, killed)
        return killed

    async def checkpoint(self, image_dir: pathlib.Path, *, uncompressed: bool = True) -> None:
        """Save this ready, never used sandbox into ``image_dir``; it exits and is then of no
        further use (destroy it)."""
        if self._used or not self.is_alive:
            raise SandboxError("checkpoint: only a ready, unused sandbox can be saved", sandbox_id=self.id)
        self._used = True
        await self.host.runtime.checkpoint(self.id, image_dir, uncompressed=uncompressed)
        assert self._process is not None
        with contextlib.suppress(asyncio.TimeoutError):  # it exits by itself once saved
            await asyncio.wait_for(self._process.wait(), EXIT_GRACE_S)

    async def _stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None and self._reported:
            # The runner said it is done and is exiting by itself: no need for a runsc kill.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), EXIT_GRACE_S)
        try:
            await self._kill()
            cgroups = self.host.cgroups
            await self._start.release(self.host.runtime, self.id,
                                      (lambda: cgroups.is_empty(self.id)) if cgroups is not None else None)
        except RunscError as exc:
            # runsc could not end or delete it (no binary, no answer): kill what is left of it
            # and remove its runsc files below, so nothing of it outlives the request.
            log.error("sandbox=%s stop: %s", self.id, exc)
            self._kill_tasks("runsc could not delete it")
        finally:
            if self._writer is not None:
                self._writer.close()
            self.host.runtime.reap_orphans()
            self.host.runtime.forget(self.id)

    async def destroy(self) -> None:
        """Undo everything ``boot`` and ``run`` did; safe to call more than once.

        A cancellation (a closing pool, a disconnecting client) does not cut the teardown
        short: it finishes, then the cancellation goes on.  Cut short, a restored sandbox
        would keep its runsc state (the delete comes last) and a booted one its processes."""
        if self._destroyed:
            return
        self._destroyed = True
        teardown = asyncio.ensure_future(self._teardown())
        cancelled = False
        while not teardown.done():
            try:
                await asyncio.shield(teardown)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _teardown(self) -> None:
        try:
            await self._stack.aclose()
        except (SandboxError, HostError, OSError) as exc:
            log.error("sandbox=%s teardown: %s", self.id, exc)
