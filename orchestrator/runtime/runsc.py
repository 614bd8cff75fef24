"""The runsc driver: the only code that spawns processes for sandboxes.

Every command is awaited with a timeout; on timeout or cancellation the child is killed and
reaped.  Each argv and its duration is logged at DEBUG.  Failures become ``RunscError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.errors import RunscError
from orchestrator.runtime import argv as runsc_argv
from orchestrator.runtime.argv import JoinCgroups, RunscConfig
from orchestrator.runtime import reaper
from orchestrator.runtime.reaper import reap_orphans

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 20.0
CHECKPOINT_TIMEOUT_S = 60.0
REAP_INTERVAL_S = 0.01
DISCARD_WAIT_S = 1.0
_MISSING = ("does not exist", "not found", "no such", "cannot load container", "not running")


@dataclass(frozen=True)
class RunscInfo:
    binary: pathlib.Path
    version: str
    flags: frozenset[str]
    checkpoint_flags: frozenset[str] = frozenset()  # of `runsc checkpoint` (e.g. compression)
    restore_flags: frozenset[str] = frozenset()

    @property
    def checkpoints_uncompressed(self) -> bool:
        """runsc 20240729 and later can write an image restore reads without inflating it;
        the 2022 build always compresses (a restore then costs ~0.9 s, more than a boot)."""
        return "compression" in self.checkpoint_flags


async def run_command(argv: list[str], *, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str, str]:
    """Run ``argv`` to completion within ``timeout``; return (exit code, stdout, stderr)."""
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise RunscError(f"start {argv[0]}: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise RunscError(f"{' '.join(argv[-3:])}: no answer within {timeout:.0f} s") from exc
    finally:
        log.debug("argv=%s rc=%s duration_ms=%.1f", argv, process.returncode, (time.monotonic() - started) * 1000)
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


async def probe_runsc(binary: pathlib.Path) -> RunscInfo:
    """Version and known flags of the installed runsc; RunscError when it is unusable."""
    if not os.access(binary, os.X_OK):
        raise RunscError(f"probe runsc: {binary} is not an executable file (install gVisor: apt-get install runsc)")
    code, out, err = await run_command(runsc_argv.version_argv(binary))
    if code != 0:
        raise RunscError(f"probe runsc: `{binary} --version` exited {code}: {err.strip()[-300:]}")
    version = runsc_argv.parse_version(out)
    code, out, err = await run_command(runsc_argv.flags_argv(binary))
    # `runsc flags` prints to stdout or stderr depending on the build.
    flags = runsc_argv.parse_flag_names(out + "\n" + err)
    if not flags:
        raise RunscError(f"probe runsc: `{binary} flags` listed no flags (exit {code})")
    subcommand_flags = []
    for subcommand in ("checkpoint", "restore"):
        code, out, err = await run_command(runsc_argv.help_argv(binary, subcommand))
        subcommand_flags.append(runsc_argv.parse_flag_names(out + "\n" + err) if code == 0 else frozenset())
    return RunscInfo(binary=binary, version=version, flags=flags, checkpoint_flags=subcommand_flags[0],
                     restore_flags=subcommand_flags[1])


class RunscRuntime:
    """Starts, kills, deletes and lists sandboxes under one ``--root`` of our own."""

    def __init__(self, config: RunscConfig):
        self.config = config

    async def start(self, sandbox_id: str, bundle: pathlib.Path, log_file: pathlib.Path, *,
                    stdin: int, stdout: int, stderr: int, join: JoinCgroups | None = None) -> asyncio.subprocess.Process:
        """``runsc run`` in the background; the returned process exits with the sandbox.
        ``join``: the sandbox's cgroups, which the start wrapper joins when runsc runs with
        ``--ignore-cgroups`` (``RunscConfig.join_cgroups``)."""
        argv = runsc_argv.run_argv(self.config, sandbox_id, bundle, log_file, join)
        return await self._spawn(argv, "start", sandbox_id, stdin=stdin, stdout=stdout, stderr=stderr)

    async def restore(self, sandbox_id: str, bundle: pathlib.Path, log_file: pathlib.Path, image_dir: pathlib.Path, *,
                      stdin: int, stdout: int, stderr: int, join: JoinCgroups | None = None
                      ) -> asyncio.subprocess.Process:
        """``runsc restore`` from ``image_dir`` in the background, with new stdio; the returned
        process exits with the restored sandbox.  Remove the container after that
        (``discard_exited``, or ``delete`` while processes remain)."""
        argv = runsc_argv.restore_argv(self.config, sandbox_id, bundle, image_dir, log_file, join)
        return await self._spawn(argv, "restore", sandbox_id, stdin=stdin, stdout=stdout, stderr=stderr)

    async def _spawn(self, argv: list[str], verb: str, sandbox_id: str, **stdio: int) -> asyncio.subprocess.Process:
        log.debug("sandbox=%s argv=%s", sandbox_id, argv)
        binary = self.config.binary
        if argv[0] != str(binary) and not os.access(binary, os.X_OK):
            # Behind a wrapper (argv's module docstring) the exec would fail in the wrapper's
            # shell, as an exit status and a line on the sandbox's stderr: say it here instead.
            raise RunscError(f"{verb} sandbox: {self._missing(binary, 'No such file or directory')}",
                             sandbox_id=sandbox_id)
        try:
            return await asyncio.create_subprocess_exec(*argv, start_new_session=True, **stdio)
        except OSError as exc:
            raise RunscError(f"{verb} sandbox: {self._spawn_problem(exc)}", sandbox_id=sandbox_id) from exc

    def _spawn_problem(self, exc: OSError) -> str:
        """Why runsc could not be started, naming the binary when it is gone."""
        if not os.access(self.config.binary, os.X_OK):
            return self._missing(self.config.binary, exc.strerror)
        return str(exc)

    @staticmethod
    def _missing(binary: pathlib.Path, why: str | None) -> str:
        return f"the runsc binary {binary} is missing or not executable ({why}): reinstall runsc or fix SANDBOX_RUNSC"

    async def checkpoint(self, sandbox_id: str, image_dir: pathlib.Path, *, uncompressed: bool = True) -> None:
        """Save the running sandbox into ``image_dir`` (which must exist); the sandbox exits."""
        argv = runsc_argv.checkpoint_argv(self.config, sandbox_id, image_dir, uncompressed=uncompressed)
        code, _, err = await run_command(argv, timeout=CHECKPOINT_TIMEOUT_S)
        if code != 0:
            raise RunscError(f"checkpoint sandbox: exit {code}: {err.strip()[-300:]}", sandbox_id=sandbox_id)

    async def kill(self, sandbox_id: str, *, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """SIGKILL every process in the sandbox; a sandbox that is already gone is fine."""
        await self._tolerant(runsc_argv.kill_argv(self.config, sandbox_id), "kill", sandbox_id, timeout=timeout)

    async def delete(self, sandbox_id: str, *, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """Forcefully delete the sandbox's state; a sandbox that is already gone is fine.

        ``runsc delete`` waits until the sandbox's gofer is gone, and a zombie counts as there:
        orphaned helpers are reaped while it runs (see ``runtime.reaper``)."""
        delete = asyncio.ensure_future(
            self._tolerant(runsc_argv.delete_argv(self.config, sandbox_id), "delete", sandbox_id, timeout=timeout))
        try:
            while not delete.done():
                reap_orphans()
                await asyncio.wait({delete}, timeout=REAP_INTERVAL_S)
        finally:
            if not delete.done():
                delete.cancel()
        await delete
        reap_orphans()

    async def discard_exited(self, sandbox_id: str, exited: Callable[[], bool], *,
                             wait_s: float = DISCARD_WAIT_S) -> bool:
        """Remove a stopped container whose processes are all gone without a ``runsc delete``:
        its files in our ``--root`` are all that is left of it (``forget``).  ``exited`` says
        whether its processes are gone (its cgroup is empty); they are waited for, reaping
        runsc's orphaned helpers meanwhile, up to ``wait_s``, and then deleted by runsc after
        all.  True when no ``runsc delete`` was needed.

        Why: after a restore this is the end of every sandbox, and a ``runsc delete`` is a
        whole runsc process (~7 ms of CPU, ~20 ms) for three files."""
        runsc_argv.check_sandbox_id(sandbox_id)
        started = time.monotonic()
        deadline = started + wait_s
        while True:
            reap_orphans()
            if exited():
                self.forget(sandbox_id, quiet=True)
                log.debug("sandbox=%s gone %.1f ms after its runsc exited; files removed", sandbox_id,
                          (time.monotonic() - started) * 1000)
                return True
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(REAP_INTERVAL_S)
        log.debug("sandbox=%s processes still there after %.1f s; runsc delete", sandbox_id, wait_s)
        await self.delete(sandbox_id)
        return False

    def reap_orphans(self) -> int:
        """Reap runsc helpers orphaned to this process (after a sandbox's runsc exited)."""
        return reap_orphans()

    def forget(self, sandbox_id: str, *, quiet: bool = False) -> list[str]:
        """Remove what runsc left of a sandbox whose processes are gone: a ``runsc run`` killed
        while it created its container can leave a lock file that ``delete`` (no state: "does
        not exist") never removes.  Only files named after the id, in our own ``--root``.
        ``quiet``: they are expected (``discard_exited``), not leftovers worth a warning."""
        runsc_argv.check_sandbox_id(sandbox_id)
        removed = []
        names = (f"{sandbox_id}_sandbox:{sandbox_id}.lock", f"{sandbox_id}_sandbox:{sandbox_id}.state",
                 f"runsc-{sandbox_id}.sock")
        for path in (self.config.root / name for name in names):
            if path.is_file() or path.is_socket():
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed and not quiet:
            log.warning("sandbox=%s removed runsc leftovers: %s", sandbox_id, ", ".join(removed))
        return removed

    async def list_ids(self) -> list[str]:
        """Containers under our ``--root``: ``runsc list``, plus every id its files name (a
        ``runsc run`` killed while it created its container leaves files ``list`` does not
        show; a broken state file can make ``list`` fail)."""
        root = self.config.root
        if not root.exists():
            return []
        ids = set()
        try:
            code, out, err = await run_command(runsc_argv.list_argv(self.config))
            if code != 0:
                raise RunscError(f"list sandboxes: exit {code}: {err.strip()[-300:]}")
            ids.update(line.strip() for line in out.splitlines() if line.strip())
        except RunscError as exc:
            log.warning("%s; going by the files under %s", exc, root)
        for entry in root.iterdir():
            name = entry.name
            if name.endswith((".state", ".lock")) and "_sandbox:" in name:
                ids.add(name.partition("_sandbox:")[0])
            elif name.startswith("runsc-") and name.endswith(".sock"):
                ids.add(name.removeprefix("runsc-").removesuffix(".sock"))
        return sorted(sandbox_id for sandbox_id in ids if runsc_argv.SANDBOX_ID.fullmatch(sandbox_id))

    def kill_strays(self) -> list[int]:
        """SIGKILL the runsc processes still running under our ``--root`` after the service
        that started them died, and wait until they are gone (``reaper.kill_strays``).  Only
        before this service starts sandboxes of its own: blocking, call it in a thread."""
        return reaper.kill_strays(f"--root={self.config.root}")

    async def _tolerant(self, argv: list[str], verb: str, sandbox_id: str, *,
                        timeout: float = COMMAND_TIMEOUT_S) -> None:
        code, _, err = await run_command(argv, timeout=timeout)
        if code != 0 and not any(marker in err.lower() for marker in _MISSING):
            raise RunscError(f"{verb} sandbox: exit {code}: {err.strip()[-300:]}", sandbox_id=sandbox_id)
