"""deploy/haproxy: the configuration rendered for N nodes, its derived timeouts, and HAProxy's
own verdict on it (``haproxy -c``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from deploy.haproxy.render import Node, RenderError, parse_node, render
from orchestrator import outcome
from tests.conftest import REPO, require_haproxy

NODES = [Node("node1", "10.0.0.11:9385"), Node("node2", "10.0.0.12:9385"), Node("b3", "[fd00::13]:9385")]


def rendered(**changes) -> str:
    options = dict(agent_port=9386, maxconn=8, run_timeout_s=10.0, queue_timeout_s=10.0)
    return render(NODES, **{**options, **changes})


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_what_the_issue_asks_of_the_config():
    config = lines(rendered())
    for expected in ("balance leastconn", "option httpchk GET /readyz", "http-check expect status 200",
                     "retry-on conn-failure 503", "option redispatch 1", "option forwardfor",
                     "stats socket /run/haproxy/admin.sock mode 660 level admin", "timeout queue 10s",
                     "server node1 10.0.0.11:9385", "server b3 [fd00::13]:9385"):
        assert expected in config, expected
    defaults = next(line for line in config if line.startswith("default-server"))
    for word in ("check", "maxconn 8", "agent-check", "agent-port 9386", "agent-inter 1s", "weight 100"):
        assert word in defaults, word
    # never retried where the run may have executed
    assert not any(word in line for line in config if line.startswith("retry-on")
                   for word in ("empty-response", "response-timeout", "junk-response", "all-retryable-errors"))


def test_haproxys_own_answers_are_result_bodies():
    """502/503/504 that HAProxy makes itself keep RAGFlow's rules: every key, stdout "", stderr set."""
    errors = {}
    for line in lines(rendered()):
        if line.startswith("http-error"):
            match = re.fullmatch(r"http-error status (\d+) content-type application/json string '(.*)'", line)
            assert match, line
            errors[int(match.group(1))] = json.loads(match.group(2))
    assert set(errors) == {502, 503, 504}
    keys = set(outcome.empty_result())
    for status, body in errors.items():
        assert set(body) == keys and body["stdout"] == "" and body["stderr"], status
        assert body["status"] == "program_runner_error" and body["result"] is None
    assert errors[503]["exit_code"] == -10  # nothing ran: no node, or no slot within the queue timeout
    assert errors[502]["exit_code"] == errors[504]["exit_code"] == -3  # the run may have executed
    assert "50s" in errors[504]["stderr"]


def test_timeouts_follow_the_run_timeout():
    assert "timeout server 50s" in lines(rendered())  # 10 s slot wait + 10 s run + 30 s start margin
    config = lines(rendered(run_timeout_s=120.0, queue_timeout_s=2.5))
    assert "timeout server 153s" in config and "timeout client 153s" in config and "timeout queue 3s" in config


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.11:9385", Node("node1", "10.0.0.11:9385")),
    ("edge=10.0.0.11:9385", Node("edge", "10.0.0.11:9385")),
    ("[fd00::1]:9385", Node("node1", "[fd00::1]:9385")),
    ("sandbox-2.internal:9385", Node("node1", "sandbox-2.internal:9385")),
])
def test_parse_node(text, expected):
    assert parse_node(text, 1) == expected


@pytest.mark.parametrize("text", ["10.0.0.11", "10.0.0.11:http", "10.0.0.11:70000", "bad name=10.0.0.1:1",
                                  ":9385", "a;b:9385"])
def test_parse_node_rejects(text):
    with pytest.raises(RenderError):
        parse_node(text, 1)


def test_render_rejects_duplicate_names_and_no_nodes():
    with pytest.raises(RenderError, match="differ"):
        render([NODES[0], NODES[0]], agent_port=9386, maxconn=8, run_timeout_s=10, queue_timeout_s=10)
    with pytest.raises(RenderError, match="no nodes"):
        render([], agent_port=9386, maxconn=8, run_timeout_s=10, queue_timeout_s=10)


def test_haproxy_accepts_the_rendered_config(tmp_path):
    haproxy = require_haproxy()
    path = tmp_path / "haproxy.cfg"
    path.write_text(rendered(stats_socket=str(tmp_path / "admin.sock")))
    done = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_command_line_reads_the_nodes_settings(tmp_path):
    """SANDBOX_TIMEOUT etc. mean what they mean to a node; a missing maxconn is a clear error."""
    env = {"PATH": os.environ["PATH"], "SANDBOX_TIMEOUT": "1m30s", "SANDBOX_MAX_CONCURRENCY": "6",
           "SANDBOX_LB_AGENT_PORT": "9386"}
    command = [sys.executable, "deploy/haproxy/render.py", "10.0.0.11:9385", "10.0.0.12:9385"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "timeout server 130s" in done.stdout and "maxconn 6 agent-check agent-port 9386" in done.stdout
    done = subprocess.run(command, cwd=REPO, env={**env, "SANDBOX_MAX_CONCURRENCY": ""}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "SANDBOX_MAX_CONCURRENCY" in done.stderr
    done = subprocess.run(command, cwd=REPO, env={**env, "SANDBOX_TIMEOUT": "ten"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "SANDBOX_TIMEOUT" in done.stderr
