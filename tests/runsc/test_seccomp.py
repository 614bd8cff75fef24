"""seccomp through runsc --oci-seccomp: profiles from seccomp/ actually enforced inside."""

from __future__ import annotations

import pytest

from tests.runsc.conftest import run

pytestmark = pytest.mark.runsc

PROBE = (
    "import socket, subprocess\n"
    "def main():\n"
    "    socket.socket()\n"
    "    return subprocess.run(['/bin/true']).returncode\n"
)


async def test_strict_profile_denies_socket_creation(make_service):
    service = await make_service(SANDBOX_ENABLE_SECCOMP="true", SANDBOX_SECCOMP_PROFILE="strict",
                                 SANDBOX_ENABLE_AST_ANALYSIS="false")
    result = await run(service, PROBE)
    assert result["status"] == "unauthorized_access", result
    assert result["unauthorized_access_type"] == "disallowed_syscall"
    assert "Operation not permitted" in result["stderr"]
    assert result["stdout"] == ""


async def test_strict_profile_still_runs_ordinary_code(make_service):
    service = await make_service(SANDBOX_ENABLE_SECCOMP="true", SANDBOX_SECCOMP_PROFILE="strict",
                                 SANDBOX_ENABLE_AST_ANALYSIS="false")
    code = "import json, threading\ndef main():\n    t = threading.Thread(target=print, args=('t',))\n    t.start(); t.join()\n    return json.loads('[1, 2]')\n"
    result = await run(service, code)
    assert result["status"] == "success", result
    assert result["stdout"] == "t\n" and result["result"]["value"] == [1, 2]


async def test_default_profile_allows_what_containers_allow(make_service):
    service = await make_service(SANDBOX_ENABLE_SECCOMP="true", SANDBOX_ENABLE_AST_ANALYSIS="false")
    result = await run(service, PROBE)
    assert result["status"] == "success", result
    assert result["result"]["value"] == 0


async def test_profile_is_ignored_without_the_setting(make_service):
    service = await make_service(SANDBOX_SECCOMP_PROFILE="strict", SANDBOX_ENABLE_AST_ANALYSIS="false")
    result = await run(service, PROBE)
    assert result["status"] == "success", result
