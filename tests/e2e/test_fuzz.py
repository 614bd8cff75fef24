"""schemathesis against the real server's own ``/openapi.json``, loopback only: every check,
its coverage and fuzzing phases, a bounded number of examples per operation; 0 failures.

What it found first (issue 11): 405s without the ``Allow`` header (RFC 9110), and schema-valid
bodies refused because the schema did not say ``code_b64`` is base64 of UTF-8 text nor which
languages exist.  The seed is random and printed, so a failure can be replayed with ``--seed``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 40


def test_schemathesis_finds_nothing(start_server, tmp_path):
    server = start_server(SANDBOX_RUN_RATE_LIMIT="off", SANDBOX_SNAPSHOTS="off", SANDBOX_TIMEOUT="3s")
    assert server.url.startswith("http://127.0.0.1:")
    junit = tmp_path / "schemathesis.xml"
    done = subprocess.run(
        [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "run",
         f"{server.url}/openapi.json", "--checks", "all", "--phases", "coverage,fuzzing",
         "--max-examples", str(MAX_EXAMPLES), "--request-timeout", "60", "--generation-database", "none",
         "--report", "junit", "--report-junit-path", str(junit), "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks", "PYTHONPATH": str(REPO)})
    output = done.stdout + done.stderr
    suite = ElementTree.parse(junit).getroot()
    operations, failures, errors = (int(suite.get(name)) for name in ("tests", "failures", "errors"))
    generated = re.search(r"(\d+) generated", output)
    print(f"schemathesis: {operations} operations, {generated.group(1) if generated else '?'} test cases, "
          f"{failures} failures, {errors} errors")
    assert done.returncode == 0 and failures == 0 and errors == 0, output[-6000:]
    assert operations >= 5 and generated and int(generated.group(1)) >= operations * 5, output[-3000:]
