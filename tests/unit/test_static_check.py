import dataclasses
import textwrap

import pytest

from orchestrator.static_check import (
    CHECKERS,
    Issue,
    check_nodejs,
    check_python,
    imported_modules,
)


def rendered(issues: list[Issue]) -> list[str]:
    return [issue.render() for issue in issues]


# --- Python: imports -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "os",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "ctypes",
        "pickle",
        "threading",
        "multiprocessing",
        "asyncio",
        "http.client",
        "ftplib",
        "telnetlib",
        "builtins",
    ],
)
def test_dangerous_import_is_flagged_on_its_line(module):
    code = f"x = 1\nimport {module}\n"
    assert check_python(code) == [Issue(2, f"Import: {module}")]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os.path", [Issue(1, "Import: os.path")]),
        ("import os as o", [Issue(1, "Import: os")]),
        ("import json, socket", [Issue(1, "Import: socket")]),
        ("import http.client.foo", [Issue(1, "Import: http.client.foo")]),
        ("def main():\n    import subprocess", [Issue(2, "Import: subprocess")]),
    ],
)
def test_import_variants(code, expected):
    assert check_python(code) == expected


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("from os import path", "From Import: os"),
        ("from os.path import join", "From Import: os.path"),
        ("from subprocess import run, PIPE", "From Import: subprocess"),
        ("from builtins import eval as e", "From Import: builtins"),
        ("from http.client import HTTPConnection", "From Import: http.client"),
        ("from http import client", "From Import: http.client"),
        ("from sys import *", "From Import: sys"),
    ],
)
def test_dangerous_from_import_is_flagged(code, message):
    assert check_python("\n\n" + code) == [Issue(3, message)]


@pytest.mark.parametrize(
    "code",
    [
        "import http",
        "import http.server",
        "from http import server, HTTPStatus",
        "from http.server import HTTPServer",
        "import osmosis",
        "import systemd_helper",
        "from . import os",
    ],
)
def test_lookalike_and_harmless_imports_are_accepted(code):
    assert check_python(code) == []


# --- Python: calls, attributes, definitions --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "eval",
        "exec",
        "open",
        "__import__",
        "compile",
        "input",
        "system",
        "popen",
        "remove",
        "rename",
        "rmdir",
        "chdir",
        "chmod",
        "chown",
        "getattr",
        "setattr",
        "globals",
        "locals",
        "ctypes",
    ],
)
def test_dangerous_bare_call_is_flagged(name):
    code = f"def main():\n    return {name}('x')\n"
    assert check_python(code) == [Issue(2, f"Call: {name}")]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("obj.eval('1')", ["Line 1: Call: eval"]),
        ("items.remove(3)", []),
        ("df.rename(columns={'a': 'b'})", []),
        ("import re\npattern = re.compile('a+')", []),
        ("from PIL import Image\nimg = Image.open('a.png')", []),
        ("import os\nos.remove('x')", ["Line 1: Import: os", "Line 2: Attribute Access: os.remove"]),
        ("a.b.c.popen('ls')", ["Line 1: Call: popen"]),
        (
            "import builtins\nbuiltins.exec('import os')",
            [
                "Line 1: Import: builtins",
                "Line 2: Attribute Access: builtins.exec",
                "Line 2: Call: exec",
            ],
        ),
    ],
)
def test_dangerous_attribute_call_is_flagged_by_its_name(code, expected):
    assert rendered(check_python(code)) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "shutil.rmtree('/')",
            ["Line 1: Attribute Access: shutil.rmtree", "Line 1: Call: shutil.rmtree"],
        ),
        (
            "subprocess.Popen(['ls'])",
            ["Line 1: Attribute Access: subprocess.Popen", "Line 1: Call: subprocess.Popen"],
        ),
        (
            "subprocess.call(['ls'])",
            ["Line 1: Attribute Access: subprocess.call", "Line 1: Call: subprocess.call"],
        ),
        (
            "pickle.loads(b'')",
            ["Line 1: Attribute Access: pickle.loads", "Line 1: Call: pickle.loads"],
        ),
        (
            "os.system('ls')",
            ["Line 1: Attribute Access: os.system", "Line 1: Call: system"],
        ),
    ],
)
def test_dotted_dangerous_call_is_flagged(code, expected):
    assert rendered(check_python(code)) == expected


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("f = os.environ", "Attribute Access: os.environ"),
        ("p = os.path.join('a', 'b')", "Attribute Access: os.path"),
        ("n = sys.argv", "Attribute Access: sys.argv"),
        ("s = socket.AF_INET", "Attribute Access: socket.AF_INET"),
        ("c = http.client.HTTPConnection", "Attribute Access: http.client.HTTPConnection"),
    ],
)
def test_attribute_access_on_dangerous_module_name(code, message):
    assert check_python("\n" + code) == [Issue(2, message)]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def eval(x):\n    return x", [Issue(1, "Function Definition: eval")]),
        ("async def open():\n    pass", [Issue(1, "Function Definition: open")]),
        ("x = 1\ninput = 'y'", [Issue(2, "Assignment to dangerous variable: input")]),
        ("a = system = 3", [Issue(1, "Assignment to dangerous variable: system")]),
    ],
)
def test_defining_or_assigning_dangerous_names(code, expected):
    assert check_python(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "f = lambda s: eval(s)",
            ["Line 1: Call: eval", "Line 1: Lambda with dangerous function call"],
        ),
        (
            "r = [open(p) for p in paths]",
            ["Line 1: Call: open", "Line 1: List comprehension with dangerous function call"],
        ),
        (
            "r = {compile(p) for p in paths}",
            ["Line 1: Call: compile", "Line 1: Set comprehension with dangerous function call"],
        ),
        (
            "r = {eval(k): v for k, v in d}",
            [
                "Line 1: Call: eval",
                "Line 1: Dict comprehension with dangerous function call in key",
            ],
        ),
        (
            "r = {k: exec(v) for k, v in d}",
            [
                "Line 1: Call: exec",
                "Line 1: Dict comprehension with dangerous function call in value",
            ],
        ),
        (
            "def g():\n    yield input()",
            ["Line 2: Call: input", "Line 2: Yield with dangerous function call"],
        ),
        ("r = list(eval(x) for x in xs)", ["Line 1: Call: eval"]),
        ("r = [f(eval(x)) for x in xs]", ["Line 1: Call: eval"]),
    ],
)
def test_dangerous_calls_inside_lambdas_comprehensions_and_yields(code, expected):
    assert rendered(check_python(code)) == expected


# --- Python: accepted code -------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "x = 16 * 1024",
        "s = 'a' + 'b'",
        "n = 2 ** 10 - 1",
        "y = -1 + (3 % 2) / 4.0",
        "z = b'ab' * 3",
        "def main():\n    return {'result': 1 << 20}",
    ],
)
def test_arithmetic_between_constants_is_accepted(code):
    assert check_python(code) == []


DATA_SCIENCE_CODE = textwrap.dedent(
    """\
    import json
    import math
    from collections import Counter

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import requests


    def main(arg1: str, arg2: int = 3) -> dict:
        df = pd.DataFrame({"a": np.arange(10), "b": np.linspace(0, 1, 10)})
        df["c"] = df["a"] * df["b"] + 16 * 1024
        summary = df.describe().to_dict()
        counts = Counter(word.lower() for word in arg1.split())
        fig, ax = plt.subplots()
        ax.plot(df["a"], df["c"])
        resp = requests.get("https://example.com/api", params={"q": arg1}, timeout=5)
        squares = [math.sqrt(i) for i in range(arg2)]
        return {"summary": json.dumps(summary), "counts": dict(counts),
                "status": resp.status_code, "squares": squares}
    """
)


def test_ordinary_data_science_code_is_accepted():
    assert check_python(DATA_SCIENCE_CODE) == []


def test_empty_code_is_accepted():
    assert check_python("") == []


# --- Python: parse errors and ordering -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("def main(:\n    pass", 1),
        ("x = 1\ny = 2\nz = (\n", 3),
        ("x = 1\n    y = 2\n", 2),
        ("s = 'unterminated\n", 1),
    ],
)
def test_syntax_error_is_a_single_parsing_error_with_its_line(code, line):
    issues = check_python(code)
    assert len(issues) == 1
    assert issues[0].line == line
    assert issues[0].message.startswith("Parsing Error: ")
    assert len(issues[0].message) > len("Parsing Error: ")


@pytest.mark.parametrize("code", ["x = 1\0", "-" * 100_000 + "1", "a" + ".b" * 100_000])
def test_unparsable_code_is_a_single_parsing_error(code):
    issues = check_python(code)
    assert len(issues) == 1
    assert issues[0].message.startswith("Parsing Error: ")


def test_issues_are_sorted_by_line_then_message_and_deduplicated():
    code = textwrap.dedent(
        """\
        x = 1
        import sys
        y = eval(eval(x)) + exec(x)
        import os
        import socket, ctypes
        """
    )
    assert rendered(check_python(code)) == [
        "Line 2: Import: sys",
        "Line 3: Call: eval",
        "Line 3: Call: exec",
        "Line 4: Import: os",
        "Line 5: Import: ctypes",
        "Line 5: Import: socket",
    ]


def test_render_uses_upstream_format():
    assert Issue(7, "Import: os").render() == "Line 7: Import: os"
    assert Issue(-1, "Parsing Error: x").render() == "Line -1: Parsing Error: x"


def test_issue_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Issue(1, "x").line = 2  # type: ignore[misc]


# --- Node.js ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("const cp = require('child_process');", "Require: child_process"),
        ("const fs = require('fs');", "Require: fs"),
        ("const w = require('worker_threads');", "Require: worker_threads"),
        ("const cp = require('node:child_process');", "Require: child_process"),
        ("const fs = require('node:fs');", "Require: fs"),
        ("const w = require(\"node:worker_threads\");", "Require: worker_threads"),
        ("const fsp = require('fs/promises');", "Require: fs"),
        ("const fsp = require('node:fs/promises');", "Require: fs"),
        ("const fs = await import('fs');", "Import: fs"),
        ("const cp = await import(\"node:child_process\");", "Import: child_process"),
        ("import(`worker_threads`).then(m => m);", "Import: worker_threads"),
        ("return eval('1+1');", "Call: eval"),
        ("return eval ('1+1');", "Call: eval"),
        ("const f = new Function('return 1');", "Call: Function"),
        ("const f = Function('return 1');", "Call: Function"),
        ("process.binding('spawn_sync');", "Call: process.binding"),
        ("process . binding ('fs');", "Call: process.binding"),
    ],
)
def test_node_pattern_is_flagged_on_its_line(snippet, message):
    code = f"// header\nasync function main() {{\n  {snippet}\n}}\n"
    assert check_nodejs(code) == [Issue(3, message)]


@pytest.mark.parametrize(
    "snippet",
    [
        "require('fs')",
        'require("fs")',
        "require(`fs`)",
        "require( 'fs' )",
        "require ( \"fs\" )",
        "require(\n  'fs'\n)",
        "require\t(`fs`)",
    ],
)
def test_node_require_fs_spellings_are_flagged(snippet):
    assert check_nodejs(f"\n{snippet};") == [Issue(2, "Require: fs")]


@pytest.mark.parametrize(
    "code",
    [
        "const axios = require(\"axios\");",
        "const lodash = require('lodash');",
        "const fse = require('fsevents');",
        "const x = require('./fs');",
        "const x = require('fs-extra-lookalike');",
        "const v = evaluate(1); const r = retrieval(2);",
        "function myFunction() { return 1; } myFunction();",
        "const f = async () => process.bindings;",
        "async function main(args) { return { answer: args.value ?? null }; }",
        "",
    ],
)
def test_ordinary_node_code_is_accepted(code):
    assert check_nodejs(code) == []


def test_node_issues_are_sorted_and_deduplicated():
    code = textwrap.dedent(
        """\
        const fs = require('fs');
        async function main() {
          const a = eval('1'); const b = eval('2');
          const cp = require('child_process'); const f = new Function('x');
          return process.binding('x');
        }
        """
    )
    assert rendered(check_nodejs(code)) == [
        "Line 1: Require: fs",
        "Line 3: Call: eval",
        "Line 4: Call: Function",
        "Line 4: Require: child_process",
        "Line 5: Call: process.binding",
    ]


# --- imported_modules and CHECKERS -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "import pandas as pd\nfrom matplotlib import pyplot\nimport numpy.linalg\n",
            {"pandas", "matplotlib", "numpy"},
        ),
        ("import os.path, json", {"os", "json"}),
        ("from scipy.stats import norm", {"scipy"}),
        ("def main():\n    import requests\n    return requests", {"requests"}),
        ("from . import sibling\nfrom .pkg import thing\nimport math", {"math"}),
        ("x = 1", set()),
        ("", set()),
    ],
)
def test_imported_modules(code, expected):
    assert imported_modules(code) == frozenset(expected)


@pytest.mark.parametrize("code", ["import pandas as\n", "def main(:\n    pass", "x = 1\0"])
def test_imported_modules_of_unparsable_code_is_none(code):
    assert imported_modules(code) is None


def test_checkers_map_language_names_to_checkers():
    assert dict(CHECKERS) == {"python": check_python, "nodejs": check_nodejs}
    assert CHECKERS["python"]("import os") == [Issue(1, "Import: os")]
    assert CHECKERS["nodejs"]("require('fs')") == [Issue(1, "Require: fs")]


def test_checkers_cannot_be_modified():
    with pytest.raises(TypeError):
        CHECKERS["ruby"] = check_python  # type: ignore[index]
