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
import sys
from dataclasses import dataclass, field

from orchestrator.errors import RunscError


@dataclass
class FakeRuntime:
    started: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    fail_start: bool = False
    _processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

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
                    stdin: int, stdout: int, stderr: int) -> asyncio.subprocess.Process:
        if self.fail_start:
            raise RunscError("start sandbox: fake failure", sandbox_id=sandbox_id)
        spec = json.loads((bundle / "config.json").read_text())
        args, cwd, env = self._host_argv(spec)
        process = await asyncio.create_subprocess_exec(
            *args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True)
        self.started.append(sandbox_id)
        self._processes[sandbox_id] = process
        return process

    async def kill(self, sandbox_id: str) -> None:
        self.killed.append(sandbox_id)
        process = self._processes.get(sandbox_id)
        if process is not None and process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def delete(self, sandbox_id: str) -> None:
        self._processes.pop(sandbox_id, None)

    async def list_ids(self) -> list[str]:
        return sorted(sid for sid, p in self._processes.items() if p.returncode is None)
