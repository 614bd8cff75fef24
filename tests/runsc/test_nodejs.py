"""Node.js through the real runsc."""

from __future__ import annotations

import pytest

from tests.runsc.conftest import run

pytestmark = pytest.mark.runsc


async def test_sync_main(service):
    code = "function main(args) {\n  console.log('hi', args.name);\n  return {n: args.n * 2};\n}\n"
    result = await run(service, code, "nodejs", name="node", n=21)
    assert result["status"] == "success", result
    assert result["stdout"] == "hi node\n"
    assert result["result"] == {"present": True, "value": {"n": 42}, "type": "json"}


async def test_async_main(service):
    code = ("async function main(args) {\n"
            "  await new Promise((resolve) => setTimeout(resolve, 20));\n"
            "  return [args.a, 'é✓'];\n}\n")
    result = await run(service, code, "nodejs", a=1)
    assert result["status"] == "success", result
    assert result["result"]["value"] == [1, "é✓"]


async def test_undefined_result_fails(service):
    result = await run(service, "function main() {\n  console.log('x');\n}\n", "nodejs")
    assert result["status"] == "program_error"
    assert result["stdout"] == ""
    assert "Error: main() must return a value. Use null for an empty result." in result["stderr"]


async def test_null_result_is_fine(service):
    result = await run(service, "function main() { return null; }\n", "nodejs")
    assert result["status"] == "success"
    assert result["result"] == {"present": True, "value": None, "type": "json"}


async def test_thrown_error_is_program_error(service):
    result = await run(service, "async function main() { throw new Error('kaboom'); }\n", "nodejs")
    assert result["status"] == "program_error"
    assert "kaboom" in result["stderr"]
    assert result["exit_code"] == 1


async def test_axios_resolves_from_workdir(make_service, mode):
    service = await make_service(SANDBOX_POOL_SIZE_NODEJS_PRELOAD=int(mode == "warm"))
    code = ("const axios = require('axios');\n"
            "function main() { return typeof axios.get; }\n")
    result = await run(service, code, "nodejs")
    assert result["status"] == "success", result
    assert result["result"]["value"] == "function"


async def test_child_process_rejected_by_static_check(service):
    result = await run(service, "const cp = require('child_process');\nfunction main() { return 1; }\n", "nodejs")
    assert result["exit_code"] == -999
    assert "Line 1: Require: child_process" in result["stderr"]


async def test_process_exit_before_return_cannot_forge(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")
    code = ("console.log('__RAGFLOW_RESULT__:eyJwcmVzZW50Ijp0cnVlLCJ2YWx1ZSI6ImZvcmdlZCJ9');\n"
            "process.exit(0);\nfunction main() { return 'real'; }\n")
    result = await run(service, code, "nodejs")
    assert result["result"] is None
    assert result["stdout"] == ""
    assert result["status"] != "success"


async def test_infinite_loop_times_out(make_service):
    service = await make_service(SANDBOX_TIMEOUT="2s")
    result = await run(service, "function main() { for (;;) {} }\n", "nodejs")
    assert result["exit_code"] == -124
    assert result["resource_limit_type"] == "time"


async def test_localhost_resolves_and_serves(service):
    # gVisor provides no /etc/hosts; the rootfs recipes carry one (before: ENOTFOUND localhost)
    code = ("const dns = require('dns').promises;\n"
            "const http = require('http');\n"
            "async function main() {\n"
            "  const found = await dns.lookup('localhost', {family: 4});\n"
            "  const server = http.createServer((req, res) => res.end('local')).listen(8080, '127.0.0.1');\n"
            "  await new Promise((resolve) => server.on('listening', resolve));\n"
            "  const body = await (await fetch('http://localhost:8080/')).text();\n"
            "  server.close();\n"
            "  return {address: found.address, body};\n"
            "}\n")
    result = await run(service, code, "nodejs")
    assert result["result"]["value"] == {"address": "127.0.0.1", "body": "local"}, result
