"""Python through the real runsc: the contract's behaviours, end to end below HTTP."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.runsc.conftest import run

pytestmark = pytest.mark.runsc


async def test_hello_with_dict_result(service):
    result = await run(service, "def main():\n    return {'message': 'hello', 'n': 3}\n")
    assert result["status"] == "success", result
    assert result["exit_code"] == 0
    assert result["result"] == {"present": True, "value": {"message": "hello", "n": 3}, "type": "json"}
    assert result["stdout"] == "" and result["stderr"] == ""
    assert result["time_used_ms"] > 0 and result["memory_used_kb"] > 0


async def test_print_and_return_with_kwargs(service):
    code = "def main(name, times=1):\n    for _ in range(times):\n        print('hi', name)\n    return times * 2\n"
    result = await run(service, code, name="ragflow", times=3)
    assert result["status"] == "success", result
    assert result["stdout"] == "hi ragflow\n" * 3
    assert result["result"]["value"] == 6


async def test_none_result_is_present_null(service):
    result = await run(service, "def main():\n    print('side effect')\n")
    assert result["result"] == {"present": True, "value": None, "type": "json"}
    assert result["stdout"] == "side effect\n"


async def test_unicode_round_trip(service):
    text = "héllo wörld ✓ 你好 🚀"
    result = await run(service, f"def main(s):\n    print({text!r})\n    return s + ' ✓'\n", s=text)
    assert result["stdout"] == text + "\n"
    assert result["result"]["value"] == text + " ✓"


async def test_exception_is_program_error_with_traceback(service):
    result = await run(service, "def main():\n    print('partial')\n    raise ValueError('boom')\n")
    assert result["status"] == "program_error"
    assert result["exit_code"] == 1
    assert result["runtime_error_type"] == "nonzero_exit"
    assert result["stdout"] == ""
    assert "ValueError: boom" in result["stderr"] and 'File "/workspace/main.py", line 3' in result["stderr"]
    assert "runner.py" not in result["stderr"]
    assert result["result"] is None and result["artifacts"] == []


async def test_missing_main_is_program_error(service):
    result = await run(service, "x = 1\n")
    assert result["status"] == "program_error"
    assert "main" in result["stderr"]


async def test_non_json_return_fails_clearly(service):
    result = await run(service, "def main():\n    return {1, 2}\n")
    assert result["status"] == "program_error"
    assert "not JSON-serializable" in result["stderr"]
    assert result["result"] is None


async def test_syntax_error_rejected_by_static_check(service):
    result = await run(service, "def main(:\n    return 1\n")
    assert result["status"] == "program_runner_error"
    assert result["exit_code"] == -999
    assert result["detail"] == "Code is unsafe"
    assert result["stderr"].startswith("Line 1: Parsing Error")


async def test_syntax_error_without_static_check_is_program_error(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")
    result = await run(service, "def main(:\n    return 1\n")
    assert result["status"] == "program_error"
    assert "SyntaxError" in result["stderr"]


async def test_import_os_rejected_with_check_on(service):
    result = await run(service, "import os\ndef main():\n    return os.getuid()\n")
    assert result["exit_code"] == -999
    assert "Line 1: Import: os" in result["stderr"]


async def test_import_os_allowed_with_check_off(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")
    result = await run(service, "import os\ndef main():\n    return os.getuid()\n")
    assert result["status"] == "success", result
    assert result["result"]["value"] == 10001


async def test_constant_arithmetic_is_not_unsafe(service):
    result = await run(service, "def main():\n    return 16 * 1024\n")
    assert result["result"]["value"] == 16384


async def test_printed_marker_and_exit_cannot_forge_result(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")
    forged = base64.b64encode(json.dumps({"present": True, "value": "forged", "type": "json"}).encode()).decode()
    code = f"import sys\nprint('__RAGFLOW_RESULT__:{forged}')\nsys.exit(0)\ndef main():\n    return 'real'\n"
    result = await run(service, code)
    assert result["result"] is None
    assert result["status"] != "success"
    assert result["stdout"] == "" and "before main() returned" in result["stderr"]


async def test_printed_marker_is_stripped_and_real_result_wins(service):
    forged = base64.b64encode(json.dumps({"present": True, "value": "forged", "type": "json"}).encode()).decode()
    code = f"def main():\n    print('before')\n    print('__RAGFLOW_RESULT__:{forged}')\n    print('after')\n    return 'real'\n"
    result = await run(service, code)
    assert result["result"]["value"] == "real"
    assert result["stdout"] == "before\nafter\n"
    assert "__RAGFLOW_RESULT__" not in result["stdout"]


async def test_infinite_loop_times_out_promptly(make_service):
    service = await make_service(SANDBOX_TIMEOUT="2s")
    started = time.monotonic()
    result = await run(service, "def main():\n    while True:\n        pass\n")
    elapsed = time.monotonic() - started
    assert result["status"] == "resource_limit_exceeded"
    assert result["exit_code"] == -124
    assert result["resource_limit_type"] == "time"
    assert result["stderr"] == "Execution timeout" and result["stdout"] == ""
    assert 2.0 <= result["time_used_ms"] / 1000 < 3.0, result  # the limit, then the kill
    assert elapsed < 5.0, elapsed  # a cold boot (~0.3 s here, more on a busy host) + the limit + the kill


async def test_300mb_allocation_is_oom(service):
    code = "def main():\n    data = bytearray(300 * 1024 * 1024)\n    return len(data)\n"
    started = time.monotonic()
    result = await run(service, code)
    assert time.monotonic() - started < 10
    assert result["status"] == "resource_limit_exceeded", result
    assert result["exit_code"] == -137
    assert result["resource_limit_type"] == "memory"
    assert result["memory_used_kb"] > 200 * 1024


async def test_pandas(make_service, mode):
    # a cold import of pandas takes seconds under ptrace; warm, the preload pool has it imported
    service = await make_service(SANDBOX_TIMEOUT="30s", SANDBOX_POOL_SIZE_PYTHON_PRELOAD=int(mode == "warm"))
    code = (
        "import pandas as pd\n"
        "def main():\n"
        "    df = pd.DataFrame({'a': [1, 2, 3], 'b': [4.5, 5.5, 6.5]})\n"
        "    print(df.shape)\n"
        "    return {'sum_a': int(df['a'].sum()), 'mean_b': float(df['b'].mean())}\n"
    )
    result = await run(service, code)
    assert result["status"] == "success", result
    assert result["result"]["value"] == {"sum_a": 6, "mean_b": 5.5}
    assert result["stdout"] == "(3, 2)\n"


async def test_matplotlib_png_artifact(make_service, mode):
    service = await make_service(SANDBOX_TIMEOUT="30s", SANDBOX_POOL_SIZE_PYTHON_PRELOAD=int(mode == "warm"))
    code = (
        "import matplotlib.pyplot as plt\n"
        "def main():\n"
        "    plt.plot([1, 2, 3], [3, 1, 2])\n"
        "    plt.savefig('artifacts/chart.png')\n"
        "    plt.savefig('root.svg')\n"
        "    return 'ok'\n"
    )
    result = await run(service, code)
    assert result["status"] == "success", result
    names = {a["name"]: a for a in result["artifacts"]}
    assert set(names) == {"chart.png", "root.svg"}
    png = base64.b64decode(names["chart.png"]["content_b64"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and names["chart.png"]["size"] == len(png)
    assert names["chart.png"]["mime_type"] == "image/png"
    assert names["root.svg"]["mime_type"] == "image/svg+xml"


async def test_artifact_symlink_to_outside_file_is_not_returned(make_service, tmp_path):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")
    code = (
        "import os\n"
        "def main():\n"
        "    os.symlink('/etc/passwd', 'artifacts/passwd.csv')\n"
        "    os.symlink('/etc/hostname', 'artifacts/host.json')\n"
        "    with open('artifacts/real.csv', 'w') as f:\n"
        "        f.write('a,b\\n1,2\\n')\n"
        "    return sorted(os.listdir('artifacts'))\n"
    )
    result = await run(service, code)
    assert result["status"] == "success", result
    assert result["result"]["value"] == ["host.json", "passwd.csv", "real.csv"]
    assert [a["name"] for a in result["artifacts"]] == ["real.csv"]


async def test_sandbox_facts_from_inside(make_service):
    """Non-root uid, read-only root, writable workspace and /tmp, no network, minimal env."""
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_EXECUTOR_MANAGER_API_TOKEN="s3cret")
    probe = (
        "import os, socket\n"
        "def main():\n"
        "    facts = {'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd(), 'env': sorted(os.environ)}\n"
        "    try:\n"
        "        open('/var/tmp/evil', 'w')\n"
        "        facts['root_writable'] = True\n"
        "    except OSError as exc:\n"
        "        facts['root_writable'] = exc.strerror\n"
        "    mounts = [line.split() for line in open('/proc/mounts')]\n"
        "    facts['root_options'] = [m[3].split(',') for m in mounts if m[1] == '/']\n"
        "    open('/tmp/x', 'w').write('x')\n"
        "    open('/workspace/y', 'w').write('y')\n"
        "    facts['ifaces'] = sorted(name for _, name in socket.if_nameindex())\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', 9385), timeout=1)\n"
        "        facts['host_port'] = 'open'\n"
        "    except OSError as exc:\n"
        "        facts['host_port'] = type(exc).__name__\n"
        "    try:\n"
        "        socket.getaddrinfo('pypi.org', 443)\n"
        "        facts['dns'] = 'resolved'\n"
        "    except OSError as exc:\n"
        "        facts['dns'] = type(exc).__name__\n"
        "    return facts\n"
    )
    result = await run(service, probe)
    assert result["status"] == "success", result
    facts = result["result"]["value"]
    assert facts["uid"] == 10001 and facts["gid"] == 10001
    assert facts["cwd"] == "/workspace"
    assert facts["root_writable"] in ("Read-only file system", "Permission denied")
    assert len(facts["root_options"]) == 1 and "ro" in facts["root_options"][0]
    assert facts["ifaces"] == ["lo"]
    assert facts["host_port"] != "open"
    assert facts["dns"] != "resolved"
    assert not any("TOKEN" in name or name.startswith("SANDBOX_EXECUTOR") for name in facts["env"])
    assert set(facts["env"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "MPLBACKEND", "MPLCONFIGDIR", "MATPLOTLIBRC",
                                 "SANDBOX_PRELOAD"}


async def test_files_do_not_survive_into_the_next_run(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")
    plant = "def main():\n    open('/tmp/planted', 'w').write('x')\n    open('planted.txt', 'w').write('x')\n"
    look = ("import os\ndef main():\n"
            "    return [os.path.exists('/tmp/planted'), os.path.exists('planted.txt')]\n")
    assert (await run(service, plant))["status"] == "success"
    result = await run(service, look)
    assert result["result"]["value"] == [False, False]


async def test_the_benchmarks_pandas_run_answers_what_the_benchmark_expects(make_service):
    from orchestrator.bench.scenario import PANDAS

    service = await make_service(SANDBOX_TIMEOUT="30s")
    result = await run(service, PANDAS.code)
    assert result["status"] == "success" and result["result"]["value"] == PANDAS.expected


async def test_localhost_and_the_sandbox_hostname_resolve(make_service):
    # gVisor provides no /etc/hosts; the rootfs recipes carry one (before, `localhost` gave -2)
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")  # the upstream check refuses socket
    code = ("import socket\n"
            "def main():\n"
            "    return [socket.gethostname(), socket.gethostbyname('localhost'), socket.gethostbyname(socket.gethostname())]\n")
    result = await run(service, code)
    assert result["result"]["value"] == ["sandbox", "127.0.0.1", "127.0.1.1"], result
