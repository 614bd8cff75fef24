"""A stand-in for ``RunscRuntime`` in tests that need no root and no runsc.

``FakeRuntime`` reads the bundle it is given and runs the process on the host, without any
isolation: the in-sandbox paths of the spec (``/workspace``, the runner mount) are mapped to
their host sources, ``python3`` becomes this interpreter and ``node`` the host's node.  It
drives the real runners over the real control protocol, so the executor, the classification
and the HTTP layer are exercised for real; only isolation and limits are absent.
``hooks`` let tests make a start fail or hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import signal
import socket
import sys
from dataclasses import dataclass, field

from orchestrator.errors import RunscError


@dataclass
class FakeRuntime:
    started: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    checkpointed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    fail_start: bool = False
    _processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    _relays: set = field(default_factory=set)

    @staticmethod
    def _host_argv(spec: dict) -> tuple[list[str], str, dict[str, str]]:
        mapping = {m["destination"]: m["source"] for m in spec["mounts"] if m["type"] == "bind"}

        def to_host(arg: str) -> str:
            for destination, source in mapping.items():
                if arg == destination or arg.startswith(destination + "/"):
                    return source + arg[len(destination):]
            return arg

        args = [to_host(arg) for arg in spec["process"]["args"]]
        if args[0] == "python3":
            args[0] = sys.executable
        elif shutil.which(args[0]) is not None:
            args[0] = shutil.which(args[0])
        env = dict(entry.split("=", 1) for entry in spec["process"]["env"])
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        env.pop("HOME", None)
        return args, to_host(spec["process"]["cwd"]), env

    async def start(self, sandbox_id: str, bundle: pathlib.Path, log_file: pathlib.Path, *,
                    stdin: int, stdout: int, stderr: int, join=None) -> asyncio.subprocess.Process:
        if self.fail_start:
            raise RunscError("start sandbox: fake failure", sandbox_id=sandbox_id)
        spec = json.loads((bundle / "config.json").read_text())
        args, cwd, env = self._host_argv(spec)
        process = await asyncio.create_subprocess_exec(
            *args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True)
        self.started.append(sandbox_id)
        self._processes[sandbox_id] = process
        return process

    async def checkpoint(self, sandbox_id: str, image_dir: pathlib.Path, *, uncompressed: bool = True) -> None:
        """A stand-in image: the process is not saved, only that it was checkpointed; it then
        exits, as a checkpointed sandbox does."""
        self.checkpointed.append(sandbox_id)
        (image_dir / "fake-image.json").write_text(json.dumps({"sandbox": sandbox_id}))
        await self.kill(sandbox_id)

    async def restore(self, sandbox_id: str, bundle: pathlib.Path, log_file: pathlib.Path, image_dir: pathlib.Path, *,
                      stdin: int, stdout: int, stderr: int, join=None) -> asyncio.subprocess.Process:
        """Boot the runner afresh and hide its own "ready": to the caller it looks like a runner
        restored while waiting for its request (it answers ``resume`` with "ready")."""
        if not (image_dir / "fake-image.json").is_file():
            raise RunscError(f"restore sandbox: no image in {image_dir}", sandbox_id=sandbox_id)
        inner, outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        caller = socket.socket(fileno=os.dup(stdin))
        try:
            process = await self.start(sandbox_id, bundle, log_file, stdin=inner.fileno(), stdout=stdout, stderr=stderr)
        finally:
            inner.close()
        self.restored.append(sandbox_id)
        task = asyncio.get_running_loop().create_task(self._relay(outer, caller))
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        return process

    @staticmethod
    async def _relay(runner: socket.socket, caller: socket.socket) -> None:
        """Drop the runner's first frame, then copy both ways until either side closes."""
        runner_reader, runner_writer = await asyncio.open_unix_connection(sock=runner)
        caller_reader, caller_writer = await asyncio.open_unix_connection(sock=caller)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while chunk := await reader.read(1 << 16):
                    writer.write(chunk)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        try:
            await runner_reader.readline()
            await asyncio.gather(pump(runner_reader, caller_writer), pump(caller_reader, runner_writer))
        finally:
            runner_writer.close()
            caller_writer.close()

    def reap_orphans(self) -> int:
        return 0

    def forget(self, sandbox_id: str, *, quiet: bool = False) -> list[str]:
        return []

    async def discard_exited(self, sandbox_id: str, exited, *, wait_s: float = 1.0) -> bool:
        await self.delete(sandbox_id)
        return False

    def kill_strays(self) -> list[int]:
        return []

    async def kill(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        self.killed.append(sandbox_id)
        process = self._processes.get(sandbox_id)
        if process is not None and process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def delete(self, sandbox_id: str, *, timeout: float | None = None) -> None:
        self._processes.pop(sandbox_id, None)

    async def list_ids(self) -> list[str]:
        return sorted(sid for sid, p in self._processes.items() if p.returncode is None)
