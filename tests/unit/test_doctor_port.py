"""doctor's port check: the HTTP port, and the HAProxy agent's when one is set."""

from __future__ import annotations

import socket

from orchestrator.doctor import check_port
from orchestrator.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_port_check_covers_the_agent_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        http = free_port()
        check = await check_port(Settings(host="127.0.0.1", port=http, lb_agent_port=busy))
        assert not check.ok and f"127.0.0.1:{busy}" in check.detail and "SANDBOX_LB_AGENT_PORT" in check.fix
        check = await check_port(Settings(host="127.0.0.1", port=busy))
        assert not check.ok and "SANDBOX_EXECUTOR_MANAGER_PORT" in check.fix
    agent = free_port()
    check = await check_port(Settings(host="127.0.0.1", port=http, lb_agent_port=agent))
    assert check.ok and f"127.0.0.1:{agent}" in check.detail
    assert (await check_port(Settings(host="127.0.0.1", port=http))).ok
