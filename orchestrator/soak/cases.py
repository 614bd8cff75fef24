"""What the soak sends, as data: every kind of outcome the contract knows, each with the
classification a correct answer carries.

A case is a ``/run`` request and an ``Expect``ation; ``judge`` says what is wrong with an
answer (None: it is the expected one).  A new kind of outcome is a new entry in ``CASES``.
Nothing here does I/O.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from types import MappingProxyType

ANY = object()  # result.value not checked


@dataclass(frozen=True)
class Expect:
    """The fields a correct answer has (None: not checked)."""

    status: str
    exit_code: int | None = None
    resource_limit_type: str | None = None
    runtime_error_type: str | None = None
    detail: str | None = None
    value: object = ANY  # result.value, on success
    stderr_has: str | None = None
    artifacts: tuple[tuple[str, str], ...] = ()  # (name, mime type) that must be there


@dataclass(frozen=True)
class Case:
    """A request and the answers that are correct for it (more than one where the outcome
    honestly depends on a race, e.g. which of a fork bomb's forks meets the pids limit)."""

    name: str
    language: str
    code: str
    expect: Expect | tuple[Expect, ...]
    arguments: dict = field(default_factory=dict)

    @property
    def expectations(self) -> tuple[Expect, ...]:
        return self.expect if isinstance(self.expect, tuple) else (self.expect,)

    def body(self) -> bytes:
        return json.dumps({"code_b64": base64.b64encode(self.code.encode()).decode(), "language": self.language,
                           "arguments": self.arguments}).encode()


def judge(case: Case, status: int, body: object) -> str | None:
    """What is wrong with this answer to ``case``; None when it is one of the expected ones.
    Beyond the case's own expectation, every answer keeps the contract's rules: HTTP 200, and
    on a non-success an empty stdout, a non-empty stderr and no result or artifacts."""
    if status != 200:
        return f"HTTP {status}"
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    problems = [_mismatch(expect, body) for expect in case.expectations]
    return None if None in problems else " / ".join(problems)


def _mismatch(expect: Expect, body: dict) -> str | None:
    got = body.get("status")
    if got != expect.status:
        return f"status {got} (exit_code {body.get('exit_code')}), expected {expect.status}: {str(body.get('stderr'))[:160]}"
    for name in ("exit_code", "resource_limit_type", "runtime_error_type", "detail"):
        wanted = getattr(expect, name)
        if wanted is not None and body.get(name) != wanted:
            return f"{name} {body.get(name)!r}, expected {wanted!r}"
    stderr = body.get("stderr") or ""
    if expect.stderr_has is not None and expect.stderr_has not in stderr:
        return f"stderr lacks {expect.stderr_has!r}: {stderr[:160]!r}"
    if got == "success":
        result = body.get("result")
        if not isinstance(result, dict) or not result.get("present"):
            return f"no result: {json.dumps(result)[:100]}"
        if expect.value is not ANY and result.get("value") != expect.value:
            return f"result.value {json.dumps(result.get('value'))[:100]}, expected {json.dumps(expect.value)[:100]}"
        artifacts = {(item.get("name"), item.get("mime_type")): item for item in body.get("artifacts") or []}
        for wanted in expect.artifacts:
            item = artifacts.get(wanted)
            if item is None or not item.get("size") or not item.get("content_b64"):
                return f"artifact {wanted} missing or empty (got {sorted(artifacts)})"
    else:
        if body.get("stdout") != "" or not stderr:
            return "a failure must have an empty stdout and a non-empty stderr"
        if body.get("result") is not None or body.get("artifacts"):
            return "a failure must carry no result and no artifacts"
    return None


_FORGED = base64.b64encode(json.dumps({"present": True, "value": "forged", "type": "json"}).encode()).decode()

CASES = MappingProxyType({case.name: case for case in (
    Case("hello", "python", "def main():\n    return 'hi'\n", Expect("success", 0, value="hi")),
    Case("pandas", "python",
         "import pandas as pd\n\n\ndef main():\n    return int(pd.DataFrame({'a': [1, 2, 3]}).a.sum())\n",
         Expect("success", 0, value=6)),
    Case("node_async", "nodejs",
         "async function main(args) {\n  await new Promise((resolve) => setTimeout(resolve, 20));\n"
         "  return { n: args.n * 2 };\n}\n",
         Expect("success", 0, value={"n": 6}), arguments={"n": 3}),
    Case("matplotlib_artifact", "python",
         "import matplotlib.pyplot as plt\n\n\ndef main():\n    fig, ax = plt.subplots(figsize=(3, 2))\n"
         "    ax.plot([1, 2, 3], [1, 4, 9])\n    fig.savefig('artifacts/chart.png')\n    return 'plotted'\n",
         Expect("success", 0, value="plotted", artifacts=(("chart.png", "image/png"),))),
    Case("syntax_error", "python", "def main(:\n    return 1\n",
         Expect("program_runner_error", -999, detail="Code is unsafe", stderr_has="Parsing Error")),
    Case("exception", "python", "def main():\n    raise ValueError('soak boom')\n",
         Expect("program_error", 1, runtime_error_type="nonzero_exit", stderr_has="ValueError: soak boom")),
    Case("non_json_result", "python", "def main():\n    return {1, 2}\n",
         Expect("program_error", 1, stderr_has="not JSON-serializable")),
    Case("marker_spoof", "python",
         f"def main():\n    print('__RAGFLOW_RESULT__:{_FORGED}')\n    raise SystemExit(0)\n",
         Expect("program_error", 0, stderr_has="before main() returned")),
    Case("timeout", "python", "def main():\n    while True:\n        pass\n",
         Expect("resource_limit_exceeded", -124, resource_limit_type="time")),
    Case("oom", "python",
         "def main():\n    chunks = []\n    while True:\n        chunks.append(b'x' * (32 << 20))\n",
         Expect("resource_limit_exceeded", resource_limit_type="memory")),
    Case("fork_bomb", "python",
         "import posix, time\n\n\ndef main():\n    children = failures = 0\n    for _ in range(300):\n"
         "        try:\n            if posix.fork() == 0:\n                time.sleep(60)\n"
         "                posix._exit(0)\n            children += 1\n        except OSError:\n"
         "            failures += 1\n    return failures > 0\n",
         (Expect("success", 0, value=True),  # every fork past the limit got EAGAIN
          # or gVisor itself could not start a thread and the sandbox died of it
          Expect("resource_limit_exceeded", detail="pids_limit_exceeded"))),
    Case("output_flood", "python", "def main():\n    while True:\n        print('flood' * 200)\n",
         Expect("resource_limit_exceeded", -25, resource_limit_type="output")),
    Case("disk_fill", "python",
         "import errno, pathlib\n\n\ndef main():\n    chunk = b'x' * (1 << 20)\n    try:\n"
         "        with pathlib.Path('/workspace/fill').open('wb') as handle:\n            while True:\n"
         "                handle.write(chunk)\n                handle.flush()\n    except OSError as exc:\n"
         "        return errno.errorcode[exc.errno]\n",
         Expect("success", 0, value="ENOSPC")),
)})
