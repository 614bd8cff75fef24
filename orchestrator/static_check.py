"""Upstream-compatible static check of submitted code.

RAGFlow's executor_manager rejects code that looks dangerous before running it; clients see the
issues as ``Line <n>: <message>`` lines in stderr. gVisor is the real security boundary here, so
this check is a compatibility feature (it can be switched off per language), not a defence.

Python (AST based). Each finding is an :class:`Issue`; the messages are upstream's:

- ``Import: <name>`` / ``From Import: <module>`` for a dangerous module (:data:`DANGEROUS_MODULES`).
  A module is dangerous when it, or one of its parent packages, is in the set: ``import os.path``
  and ``from os.path import join`` are flagged, as are ``import http.client`` and
  ``from http import client`` (reported as ``From Import: http.client``). ``import http`` and
  ``import http.server`` are not. Upstream compares only the first dotted component, so its
  ``http.client`` entry never matched anything; we honour the entry instead of dropping it.
- ``Call: <name>`` for a call whose function is a bare name in :data:`DANGEROUS_CALLS`, or a
  method in :data:`DANGEROUS_METHODS` (``x.system()``, ``x.eval()``), and ``Call: <dotted>`` when
  the whole dotted callee is listed (``shutil.rmtree``). Upstream flags *every* method named like
  a dangerous call, which rejects everyday code (``df.rename(...)``, ``items.remove(3)``,
  ``re.compile(...)``, ``Image.open(...)``); we do not: those names are flagged as bare calls, and
  on a dangerous module through ``Attribute Access`` (``os.remove``).
- ``Attribute Access: <module>.<attr>`` for any attribute read on a dangerous module's name.
- ``Function Definition: <name>`` / ``Assignment to dangerous variable: <name>`` for defining or
  assigning a name from :data:`DANGEROUS_CALLS`.
- Upstream's extra messages for a lambda, comprehension or ``yield`` whose expression is directly
  such a call (the call itself is flagged too).
- ``Parsing Error: <error>`` when the code does not parse, with the error's line (upstream: -1).

Deliberately *not* reproduced: upstream flags every binary operation between two constants as
"Possible unsafe string concatenation", which rejects ``16 * 1024``. Building a string for
``eval`` is already caught by the ``eval`` call.

Node.js (regex based, as upstream): ``require('child_process'|'fs'|'worker_threads')`` with any
quote style and whitespace, also with the ``node:`` prefix or a subpath (``fs/promises``), dynamic
``import(...)`` of those modules, ``eval(``, ``Function(`` (so also ``new Function(``) and
``process.binding(``. Comments and strings are not special-cased.
"""

from __future__ import annotations

import ast
import functools
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

DANGEROUS_MODULES = frozenset(
    {
        "asyncio",
        "builtins",
        "ctypes",
        "ftplib",
        "http.client",
        "multiprocessing",
        "os",
        "pickle",
        "shutil",
        "socket",
        "subprocess",
        "sys",
        "telnetlib",
        "threading",
    }
)

DANGEROUS_CALLS = frozenset(
    {
        "__import__",
        "chdir",
        "chmod",
        "chown",
        "compile",
        "ctypes",
        "eval",
        "exec",
        "getattr",
        "globals",
        "input",
        "locals",
        "open",
        "pickle.dump",
        "pickle.dumps",
        "pickle.load",
        "pickle.loads",
        "popen",
        "remove",
        "rename",
        "rmdir",
        "setattr",
        "shutil.rmtree",
        "subprocess.Popen",
        "subprocess.call",
        "system",
    }
)

# Method names flagged on any object: they have no everyday harmless meaning.
DANGEROUS_METHODS = frozenset({"__import__", "eval", "exec", "popen", "system"})

# (node type, field holding an expression, message when that expression calls a dangerous name)
_WRAPPED_CALLS = (
    (ast.Lambda, "body", "Lambda with dangerous function call"),
    (ast.ListComp, "elt", "List comprehension with dangerous function call"),
    (ast.SetComp, "elt", "Set comprehension with dangerous function call"),
    (ast.DictComp, "key", "Dict comprehension with dangerous function call in key"),
    (ast.DictComp, "value", "Dict comprehension with dangerous function call in value"),
    (ast.Yield, "value", "Yield with dangerous function call"),
)

_NODE_MODULES = r"(?:node:)?(child_process|fs|worker_threads)(?:/[\w./-]*)?"
_NODE_PATTERNS = (
    (re.compile(rf"""require\s*\(\s*['"`]{_NODE_MODULES}['"`]\s*\)"""), "Require: {}"),
    (re.compile(rf"""import\s*\(\s*['"`]{_NODE_MODULES}['"`]"""), "Import: {}"),
    (re.compile(r"\beval\s*\("), "Call: eval"),
    (re.compile(r"\bFunction\s*\("), "Call: Function"),
    (re.compile(r"\bprocess\s*\.\s*binding\s*\("), "Call: process.binding"),
)


@dataclass(frozen=True)
class Issue:
    line: int  # 1-based; -1 when unknown
    message: str

    def render(self) -> str:
        """Upstream's stderr line for this issue."""
        return f"Line {self.line}: {self.message}"


def check_python(code: str) -> list[Issue]:
    """Issues in Python ``code``, sorted by line then message; empty when it looks safe."""
    tree = _parse(code)
    if isinstance(tree, Issue):
        return [tree]
    return _sorted_unique(issue for node in ast.walk(tree) for issue in _python_issues(node))


def check_nodejs(code: str) -> list[Issue]:
    """Issues in JavaScript ``code``, sorted by line then message; empty when it looks safe."""
    found = []
    for pattern, template in _NODE_PATTERNS:
        for match in pattern.finditer(code):
            line = code.count("\n", 0, match.start()) + 1
            found.append(Issue(line, template.format(*match.groups())))
    return _sorted_unique(found)


def imported_modules(code: str) -> frozenset[str] | None:
    """Top-level names of the modules Python ``code`` imports anywhere; None if it does not parse.

    ``import a.b`` gives ``a``, ``from x.y import z`` gives ``x``; relative imports are ignored.
    """
    tree = _parse(code)
    if isinstance(tree, Issue):
        return None
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return frozenset(names)


_NODE_REQUIRE = re.compile(r"""(?:require|import)\s*\(\s*['"`]((?:node:)?(?:@[\w.-]+/)?[\w.-]+)""")
_NODE_IMPORT_FROM = re.compile(r"""^\s*import\s+(?:[\w*{}\s,]+\s+from\s+)?['"]((?:node:)?(?:@[\w.-]+/)?[\w.-]+)""", re.MULTILINE)


def required_modules(code: str) -> frozenset[str]:
    """Package names JavaScript ``code`` requires or imports (``require('axios/lib/x')`` gives ``axios``)."""
    found = {match.group(1) for match in _NODE_REQUIRE.finditer(code)}
    found |= {match.group(1) for match in _NODE_IMPORT_FROM.finditer(code)}
    return frozenset(name.removeprefix("node:") for name in found)


# Module scanners by static-check name, used to route a request to a pool whose sandboxes
# have already imported what the code imports.
IMPORT_SCANNERS: Mapping[str, Callable[[str], frozenset[str] | None]] = types.MappingProxyType(
    {"python": imported_modules, "nodejs": required_modules}
)

def analyze(checker: str | None, checked: str, scanner: str | None, scanned: str) -> tuple[list[str], frozenset[str] | None]:
    """One request's whole analysis, picklable for a worker process: the rendered issues of
    ``CHECKERS[checker]`` on ``checked`` (none without a checker) and the modules
    ``IMPORT_SCANNERS[scanner]`` finds in ``scanned`` (None without a scanner or when unknown)."""
    issues = [issue.render() for issue in CHECKERS[checker](checked)] if checker else []
    return issues, (IMPORT_SCANNERS[scanner](scanned) if scanner else None)


CHECKERS: Mapping[str, Callable[[str], list[Issue]]] = types.MappingProxyType(
    {"python": check_python, "nodejs": check_nodejs}
)


def _is_dangerous_module(name: str) -> bool:
    """Whether module ``name`` or one of its parent packages is in :data:`DANGEROUS_MODULES`."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in DANGEROUS_MODULES for i in range(1, len(parts) + 1))


@functools.lru_cache(maxsize=2)
def _parse(code: str) -> ast.Module | Issue:
    """The tree of ``code`` (never mutated by its readers), or the parse error as an Issue.

    Cached for the last two sources: a request's code is checked and then scanned for
    imports (to pick its pool), and would otherwise be parsed twice on the hot path."""
    try:
        return ast.parse(code)
    # The parser reports very deep nesting as RecursionError or MemoryError, and NUL bytes as
    # ValueError on some Python versions; all of them mean "does not parse".
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None) or -1
        return Issue(line, f"Parsing Error: {exc}")


def _python_issues(node: ast.AST) -> Iterator[Issue]:
    line = getattr(node, "lineno", -1)
    if isinstance(node, ast.Import):
        for alias in node.names:
            if _is_dangerous_module(alias.name):
                yield Issue(line, f"Import: {alias.name}")
    elif isinstance(node, ast.ImportFrom) and node.module:
        if _is_dangerous_module(node.module):
            yield Issue(line, f"From Import: {node.module}")
        else:
            for alias in node.names:
                if _is_dangerous_module(f"{node.module}.{alias.name}"):
                    yield Issue(line, f"From Import: {node.module}.{alias.name}")
    elif isinstance(node, ast.Call):
        name = _called_name(node)
        if name is not None:
            yield Issue(line, f"Call: {name}")
        dotted = _dotted_name(node.func)
        if dotted is not None and dotted in DANGEROUS_CALLS:
            yield Issue(line, f"Call: {dotted}")
    elif isinstance(node, ast.Attribute):
        owner = _dotted_name(node.value)
        if owner is not None and owner in DANGEROUS_MODULES:
            yield Issue(line, f"Attribute Access: {owner}.{node.attr}")
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if node.name in DANGEROUS_CALLS:
            yield Issue(line, f"Function Definition: {node.name}")
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id in DANGEROUS_CALLS:
                yield Issue(line, f"Assignment to dangerous variable: {target.id}")
    for node_type, field, message in _WRAPPED_CALLS:
        if isinstance(node, node_type):
            inner = getattr(node, field)
            if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name):
                if inner.func.id in DANGEROUS_CALLS:
                    yield Issue(line, message)


def _called_name(call: ast.Call) -> str | None:
    """The bare name (or dangerous method name) ``call`` invokes, if it is flagged."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in DANGEROUS_CALLS:
        return func.id
    if isinstance(func, ast.Attribute) and func.attr in DANGEROUS_METHODS:
        return func.attr
    return None


def _dotted_name(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attribute reads on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _sorted_unique(issues: Iterable[Issue]) -> list[Issue]:
    return sorted(set(issues), key=lambda issue: (issue.line, issue.message))
