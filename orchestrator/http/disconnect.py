"""A client that goes away mid-run gets its run cancelled: the sandbox is destroyed and the
concurrency slot freed at once, instead of the program running to its time limit for nobody.

aiohttp cancels a handler on a lost connection only when the whole server runs with
``handler_cancellation=True``; this middleware does it for the given paths alone (``/run``:
the other handlers answer at once), by watching the request's transport while the handler
runs.  The executor's teardown is shielded from the cancellation (``Sandbox.destroy``), so a
cancelled run still leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

from aiohttp import web

log = logging.getLogger(__name__)

POLL_S = 0.2
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the access log may


def _is_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def cancel_on_disconnect(paths: Collection[str]):
    """Middleware: run the handlers of ``paths`` as tasks and cancel one whose client is gone."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path not in paths:
            return await handler(request)
        task = asyncio.ensure_future(handler(request))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=POLL_S)
                if done:
                    return task.result()
                if _is_gone(request):
                    break
        except asyncio.CancelledError:  # the server is closing: the run goes with it
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        log.warning("%s %s: the client went away mid-run; cancelling the run", request.method, request.path)
        task.cancel()
        # Nobody is there to read what it ended with (it may have just finished).
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return web.Response(status=CLIENT_CLOSED)

    return middleware
