"""Reading a sandbox's stdout or stderr pipe with a cap, without blocking the event loop."""

from __future__ import annotations

import asyncio
import os


class Capture:
    """Keeps the first ``limit`` bytes of a pipe; flags ``exceeded`` as soon as more arrive.

    Past the limit it keeps draining (and discarding) so the writer never blocks on us.
    ``drain()`` reads synchronously whatever the pipe holds right now: once the runner has
    said it is done, everything it wrote before is in the pipe, so nothing is lost.
    """

    def __init__(self, fd: int, limit: int):
        self.fd = fd
        self.limit = limit
        self.total = 0
        self._data = bytearray()
        self.exceeded = asyncio.Event()
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self.drain)

    @property
    def data(self) -> bytes:
        return bytes(self._data)

    def drain(self) -> None:
        while not self.closed.is_set():
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._stop_reading()
                return
            self.total += len(chunk)
            room = self.limit - len(self._data)
            if room > 0:
                self._data += chunk[:room]
            if self.total > self.limit:
                self.exceeded.set()

    def _stop_reading(self) -> None:
        if not self.closed.is_set():
            self._loop.remove_reader(self.fd)
            self.closed.set()

    def close(self) -> None:
        self._stop_reading()
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = -1
