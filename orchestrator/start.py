"""How a sandbox starts: booted by ``runsc run``, or restored by ``runsc restore`` from a
snapshot image (``orchestrator.snapshot``).

Both end with the runner ready on the control channel, blocked reading its request; they
differ in three steps, and only there:

launch     which runsc command starts the sandbox
handshake  a booted runner says "ready" by itself; a restored one is a clone of the process
           that was checkpointed while it waited for a request, so it is told to ``resume``
           (it reseeds its random generators) and then says "ready"
release    ``runsc run`` deletes its container when it exits; ``runsc restore`` leaves the
           stopped container behind: once its processes are gone (its cgroup is empty) its
           files are removed, else it is deleted by ``runsc delete``

A ``Restore`` holds a lease on its image until the restore is over (``finish``): the store
deletes a replaced image only when no restore reads it any more.
"""

from __future__ import annotations

import pathlib
from collections.abc import Awaitable, Callable
from typing import Protocol

Send = Callable[[dict], Awaitable[None]]
Read = Callable[[], Awaitable["dict | None"]]


class ImageLease(Protocol):
    path: pathlib.Path
    rootfs_tree: pathlib.Path
    preload: bool

    def release(self) -> None: ...


class Boot:
    kind = "booted"
    image = None

    async def launch(self, runtime, sandbox_id: str, bundle: pathlib.Path, log_file: pathlib.Path, *,
                     stdin: int, stdout: int, stderr: int, join=None):
        return await runtime.start(sandbox_id, bundle, log_file, stdin=stdin, stdout=stdout, stderr=stderr, join=join)

    async def handshake(self, send: Send, read: Read) -> dict | None:
        return await read()

    async def release(self, runtime, sandbox_id: str, exited=None) -> None:
        """Nothing: ``runsc run`` deleted the container when it exited."""

    def finish(self) -> None:
        """Nothing to give back."""


class Restore:
    kind = "restored"

    def __init__(self, image: ImageLease):
        self.image = image
        self._finished = False

    async def launch(self, runtime, sandbox_id: str, bundle: pathlib.Path, log_file: pathlib.Path, *,
                     stdin: int, stdout: int, stderr: int, join=None):
        return await runtime.restore(sandbox_id, bundle, log_file, self.image.path,
                                     stdin=stdin, stdout=stdout, stderr=stderr, join=join)

    async def handshake(self, send: Send, read: Read) -> dict | None:
        await send({"type": "resume"})
        return await read()

    async def release(self, runtime, sandbox_id: str, exited=None) -> None:
        """``exited``: whether the sandbox's processes are all gone (its cgroup is empty);
        then its files are removed without a ``runsc delete``.  None: no way to tell, delete."""
        if exited is None:
            await runtime.delete(sandbox_id)
        else:
            await runtime.discard_exited(sandbox_id, exited)

    def finish(self) -> None:
        """The restore is over (ready or failed): the image may go once nobody else reads it."""
        if not self._finished:
            self._finished = True
            self.image.release()
