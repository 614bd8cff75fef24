"""The Node.js runner over its control socket, on the host's node: a sealed run writes its
source and sends its artifacts by the service's rules before "done"."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess

import pytest

from tests.unit.control_frames import read_until_done

RUNNER = pathlib.Path(__file__).resolve().parents[2] / "languages" / "nodejs" / "runner.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="no node on this host")

CODE = """const fs = require('fs');
function main({ fail }) {
  fs.writeFileSync('artifacts/plot.png', 'PNG');
  fs.writeFileSync('table.csv', 'a,b');
  fs.writeFileSync('notes.txt', 'not an artifact type');
  fs.writeFileSync('artifacts/big.png', 'x'.repeat(2000));
  fs.writeFileSync('artifacts/empty.png', '');
  fs.symlinkSync('/etc/passwd', 'artifacts/link.csv');
  process.chdir('/');
  if (fail) { throw new Error('no'); }
  return fs.readFileSync(__filename, 'utf8').length;
}

module.exports = { main };"""
RULES = {"max_count": 10, "max_bytes": 1000, "suffixes": [".png", ".csv", ".js"], "exclude": ["main.js"]}


def sealed_run(workdir: pathlib.Path, arguments: dict) -> list[dict]:
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([NODE, str(RUNNER)], stdin=theirs, cwd=workdir, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    theirs.close()
    reader = ours.makefile("rb")
    try:
        assert json.loads(reader.readline())["type"] == "ready"
        assert (workdir / "artifacts").is_dir()  # made before "ready"
        ours.sendall(json.dumps({"type": "run", "source": "main.js", "arguments": arguments, "code": CODE,
                                 "write_source": True, "artifacts": RULES}).encode() + b"\n")
        return read_until_done(reader)
    finally:
        ours.close()
        process.wait(timeout=10)


def test_a_sealed_run_writes_its_source_and_sends_the_artifacts_by_the_services_rules(tmp_path):
    frames = sealed_run(tmp_path, {"fail": False})
    done = frames[-1]
    assert done["exit_code"] == 0 and json.loads(done["result_json"])["value"] == len(CODE)
    assert [(f["name"], f["data"]) for f in frames[:-1]] == [("plot.png", b"PNG"), ("table.csv", b"a,b")]
    assert (tmp_path / "main.js").read_text() == CODE


def test_a_failed_sealed_run_sends_no_artifacts(tmp_path):
    frames = sealed_run(tmp_path, {"fail": True})
    assert [f["type"] for f in frames] == ["done"] and frames[0]["exit_code"] == 1
