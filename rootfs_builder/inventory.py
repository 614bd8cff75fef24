"""What a rootfs tree holds: its interpreter (path and version) and its package versions.

Paths are looked up the way the sandbox will see them: symlinks are followed *inside* the tree
(an absolute target is relative to the tree root, ".." stops at the root), never on the host.
"""

import importlib.metadata
import json
import logging
import os
import pathlib
import stat
from collections.abc import Callable

from .command import run_command
from .errors import BuildError, TarballRejectedError

log = logging.getLogger(__name__)

SEARCH_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
NODE_MODULES = "/opt/nodejs/node_modules"
PYTHON_PACKAGE_DIRS = (
    "usr/local/lib/python3*/dist-packages",
    "usr/lib/python3/dist-packages",
    "usr/local/lib/python3*/site-packages",
)
PROBE_TIMEOUT_SECONDS = 60
PROBE_USER = "65534:65534"  # nobody: the probe runs a program of the tree, not as root
MAX_SYMLINKS = 40

# (tree, interpreter path inside the tree) -> its `--version` line
Prober = Callable[[pathlib.Path, str], str]


def resolve_in_tree(tree: pathlib.Path, path: str) -> pathlib.Path:
    """Host path of `path` as seen from inside tree, following symlinks confined to the tree."""
    pending = [part for part in path.split("/") if part not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = tree.joinpath(*resolved, part)
        if not candidate.is_symlink():
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise TarballRejectedError(f"resolve {path} in {tree}: too many levels of symlinks")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
    return tree.joinpath(*resolved)


def find_interpreter(tree: pathlib.Path, command: str) -> str:
    """Path inside tree of the executable `command` (a name searched in SEARCH_PATH, or absolute)."""
    candidates = [command] if command.startswith("/") else [f"{d}/{command}" for d in SEARCH_PATH]
    for candidate in candidates:
        try:
            mode = resolve_in_tree(tree, candidate).stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and mode & 0o111:
            return candidate
    where = command if command.startswith("/") else f"{command} in {', '.join(SEARCH_PATH)}"
    raise TarballRejectedError(f"check interpreter: no executable {where} in the tree")


def probe_version(tree: pathlib.Path, path: str) -> str:
    """First line `<path> --version` prints, run in a chroot of tree as nobody (needs root)."""
    argv = ["chroot", f"--userspec={PROBE_USER}", str(tree), path, "--version"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/"}
    try:
        output = run_command(argv, timeout=PROBE_TIMEOUT_SECONDS, env=env)
    except BuildError as exc:
        raise TarballRejectedError(f"check interpreter {path}: {exc}") from exc
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        raise TarballRejectedError(f"check interpreter {path}: `--version` printed nothing")
    return lines[0]


def describe_interpreter(tree: pathlib.Path, command: str, probe: Prober = probe_version) -> dict:
    """The manifest's interpreter entry; raises TarballRejectedError if missing or not working."""
    path = find_interpreter(tree, command)
    return {"command": command, "path": path, "version": probe(tree, path)}


def list_python_packages(tree: pathlib.Path) -> dict[str, str]:
    """name -> version of the Python distributions installed in tree (first found wins)."""
    dirs = []
    for pattern in PYTHON_PACKAGE_DIRS:
        for found in sorted(tree.glob(pattern)):
            confined = resolve_in_tree(tree, "/" + found.relative_to(tree).as_posix())
            if confined.is_dir() and str(confined) not in dirs:
                dirs.append(str(confined))
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=dirs):
        name = dist.metadata["Name"]
        if name and dist.version:
            packages.setdefault(name, dist.version)
    return packages


def list_node_packages(tree: pathlib.Path) -> dict[str, str]:
    """name -> version of the top-level packages in the tree's /opt/nodejs/node_modules."""
    root = resolve_in_tree(tree, NODE_MODULES)
    if not root.is_dir():
        return {}
    names = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("@") and entry.is_dir():
            names += [f"{entry.name}/{sub.name}" for sub in sorted(entry.iterdir())]
        elif not entry.name.startswith("."):
            names.append(entry.name)
    packages = {}
    for name in names:
        manifest = resolve_in_tree(tree, f"{NODE_MODULES}/{name}/package.json")
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            log.debug("skip %s: no readable package.json", name)
            continue
        if isinstance(data, dict) and isinstance(data.get("version"), str):
            packages[name] = data["version"]
    return packages


def list_packages(tree: pathlib.Path) -> dict[str, str]:
    """Python and Node.js packages of the tree in one name -> version mapping."""
    return {**list_node_packages(tree), **list_python_packages(tree)}
