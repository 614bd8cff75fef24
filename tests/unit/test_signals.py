"""The service's stop signals: SIGTERM/SIGINT stop it, but a signal sent to a child it forked
without an exec (pyroute2 does, to enter a network namespace, and SIGTERMs the child when done)
must not: with asyncio's add_signal_handler the child's handler wrote to the inherited wakeup fd
and the service shut down right after start-up in egress mode."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from orchestrator.__main__ import install_stop_handlers


@pytest.fixture
def restore_signal_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


async def test_a_forked_childs_sigterm_does_not_stop_the_service(restore_signal_handlers):
    stop = asyncio.Event()
    install_stop_handlers(asyncio.get_running_loop(), stop)
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # like pyroute2's child: still busy when the parent SIGTERMs it
        os.write(ready_w, b"x")  # past fork's own signal bookkeeping, which drops what came before
        time.sleep(10)
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    os.kill(child, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM  # the default action
    await asyncio.sleep(0.3)
    assert not stop.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(stop.wait(), 5)


async def test_sigint_stops_too(restore_signal_handlers):
    stop = asyncio.Event()
    install_stop_handlers(asyncio.get_running_loop(), stop)
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(stop.wait(), 5)
