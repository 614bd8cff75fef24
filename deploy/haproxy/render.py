"""Render an HAProxy configuration for N nodes of gvisor-sandbox from ``haproxy.cfg.in``.

    .venv/bin/python deploy/haproxy/render.py 10.0.0.11:9385 10.0.0.12:9385 --agent-port 9386 \
        --bind 0.0.0.0:9385 > /etc/haproxy/haproxy.cfg
    haproxy -c -f /etc/haproxy/haproxy.cfg

Timeouts come from the nodes' settings, read from the environment (``orchestrator.settings``,
so ``SANDBOX_TIMEOUT=2m`` means what it means to a node): ``timeout queue`` is
``SANDBOX_QUEUE_TIMEOUT``, ``timeout server`` (and client) the slot wait plus ``SANDBOX_TIMEOUT``
plus ``START_MARGIN_S`` for the sandbox's start and the result.  ``maxconn`` per node is
``--maxconn`` or ``SANDBOX_MAX_CONCURRENCY`` (the node's agent corrects it at its first check
anyway); ``--agent-port`` defaults to ``SANDBOX_LB_AGENT_PORT``.  ``render`` is pure.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import pathlib
import re
import string
import sys
import json
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator import outcome

TEMPLATE = pathlib.Path(__file__).resolve().parent / "haproxy.cfg.in"
START_MARGIN_S = 30  # a sandbox's start under load (a pandas boot without a snapshot) and the result
CHECK_INTER_S = 1  # health check (/readyz) and agent check every second
FALL = 2  # failed health checks before a node is out
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class RenderError(ValueError):
    """A node or option cannot be turned into a valid configuration."""


@dataclass(frozen=True)
class Node:
    name: str
    address: str  # host:port as HAProxy reads it ([v6]:port for IPv6)


def parse_node(text: str, index: int) -> Node:
    """``host:port``, ``[v6]:port`` or ``name=host:port``; the name defaults to node<index>."""
    name, sep, target = text.strip().rpartition("=")
    name = name if sep else f"node{index}"
    if not _NAME_RE.match(name):
        raise RenderError(f"node {text!r}: invalid server name {name!r} (letters, digits, _ . -)")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise RenderError(f"node {text!r}: expected host:port (e.g. 10.0.0.11:9385)")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", bare):
            raise RenderError(f"node {text!r}: invalid host {host!r}") from None
    return Node(name, f"{host}:{port}")


def _seconds(value: float) -> str:
    return f"{math.ceil(value)}s"


def error_bodies(server_timeout: str) -> dict[int, dict]:
    """The answers HAProxy makes itself, in the contract's result shape (stdout "", stderr set):
    503 (no node can take the run, or none freed a slot within the queue timeout: no sandbox saw
    the code, the -10 body), 502 (the node died or broke off in the middle of the run) and 504
    (no answer within ``timeout server``): the run may have executed, -3."""
    return {
        503: outcome.busy_result(),
        502: outcome.internal_error_result("the node running this code stopped before it answered; "
                                           "the code may have run (HAProxy: 502)"),
        504: outcome.internal_error_result(f"no answer from the node within {server_timeout}; "
                                           "the code may have run (HAProxy: 504)"),
    }


def _http_errors(server_timeout: str) -> str:
    lines = []
    for status, body in error_bodies(server_timeout).items():
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        assert "'" not in text  # the config's single quotes hold it as it is
        lines.append(f"    http-error status {status} content-type application/json string '{text}'")
    return "\n".join(lines)


def render(nodes: Sequence[Node], *, agent_port: int, maxconn: int, run_timeout_s: float, queue_timeout_s: float,
           bind: str = "127.0.0.1:9385", stats_socket: str = "/run/haproxy/admin.sock", log_target: str = "/dev/log",
           user: str | None = "haproxy", template: str | None = None) -> str:
    """The configuration text for ``nodes``."""
    if not nodes:
        raise RenderError("no nodes: give at least one host:port")
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        raise RenderError(f"node names must differ: {', '.join(names)}")
    if not 1 <= agent_port <= 65535 or maxconn < 1:
        raise RenderError("agent port must be 1-65535 and maxconn at least 1")
    user_lines = f"    user {user}\n    group {user}\n" if user else ""
    server_timeout = _seconds(queue_timeout_s + run_timeout_s + START_MARGIN_S)
    values = {
        "node_count": len(nodes), "agent_port": agent_port, "maxconn": maxconn, "bind": bind,
        "stats_socket": stats_socket, "log_target": log_target, "user_lines": user_lines,
        "run_timeout": _seconds(run_timeout_s), "queue_timeout": _seconds(queue_timeout_s),
        "server_timeout": server_timeout, "http_errors": _http_errors(server_timeout),
        "check_inter": f"{CHECK_INTER_S}s", "agent_inter": f"{CHECK_INTER_S}s", "fall": FALL,
        "min_drain_delay": f"{CHECK_INTER_S * (FALL + 1)}s",
        "servers": "\n".join(f"    server {node.name} {node.address}" for node in nodes),
    }
    return string.Template(template if template is not None else TEMPLATE.read_text()).substitute(values)


def main(argv: list[str] | None = None) -> int:
    from orchestrator.errors import ConfigError
    from orchestrator.settings import Settings

    parser = argparse.ArgumentParser(prog="deploy/haproxy/render.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("nodes", nargs="+", metavar="[NAME=]HOST:PORT", help="the nodes' HTTP addresses")
    parser.add_argument("--agent-port", type=int, help="the nodes' SANDBOX_LB_AGENT_PORT (default: that variable)")
    parser.add_argument("--maxconn", type=int, help="runs at once per node: the nodes' SANDBOX_MAX_CONCURRENCY "
                                                     "(default: that variable)")
    parser.add_argument("--bind", default="127.0.0.1:9385", help="where RAGFlow reaches the balancer "
                                                                 "(default 127.0.0.1:9385)")
    parser.add_argument("--stats-socket", default="/run/haproxy/admin.sock", help="the runtime API socket")
    parser.add_argument("--log", default="/dev/log", help="HAProxy's log target (/dev/log, or stdout in the "
                                                          "foreground)")
    parser.add_argument("--user", default="haproxy", help="user and group HAProxy drops to ('' to stay)")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        agent_port = args.agent_port or settings.lb_agent_port
        if agent_port is None:
            raise RenderError("--agent-port: give the nodes' SANDBOX_LB_AGENT_PORT (or set that variable)")
        maxconn = args.maxconn
        if maxconn is None:
            if "max_concurrency" in settings.derived:
                raise RenderError("--maxconn: give the nodes' SANDBOX_MAX_CONCURRENCY (GET /status on a node shows "
                                  "max_concurrency), or set that variable")
            maxconn = settings.max_concurrency
        nodes = [parse_node(text, index) for index, text in enumerate(args.nodes, start=1)]
        text = render(nodes, agent_port=agent_port, maxconn=maxconn, run_timeout_s=settings.limits.timeout_s,
                      queue_timeout_s=settings.queue_timeout_s, bind=args.bind, stats_socket=args.stats_socket,
                      log_target=args.log, user=args.user or None)
    except (RenderError, ConfigError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    if args.output:
        pathlib.Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
