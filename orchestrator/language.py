"""Languages as data: one ``language.toml`` per directory, loaded at start-up.

A definition names its rootfs, the argv that starts it, how code reaches it (``protocol``)
and its static check.  Adding a language means adding a directory with a definition, no
code.  Two protocols exist:

``runner``  argv starts a runner program (shipped next to the definition and mounted
            read-only at ``/opt/sandbox/runner``) that speaks the control protocol on fd 0:
            it can boot ahead of a request (with its preload list imported), gets the
            request later, and returns a structured result on a channel user code does not
            print to.
``script``  argv runs the source file directly (``{source}``); arguments arrive as the JSON
            file ``arguments.json`` in the working directory and in ``$SANDBOX_ARGUMENTS``;
            there is no structured result (``result`` is null) and no warm boot.

argv may use ``{runner}`` (the runner's path inside the sandbox) and ``{source}`` (the
source file's path inside the sandbox).
"""

from __future__ import annotations

import pathlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bundles.spec import RUNNER_MOUNT, WORKSPACE
from orchestrator.errors import ConfigError
from orchestrator.static_check import CHECKERS

PROTOCOLS = ("runner", "script")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDERS = ("{runner}", "{source}")
_KEYS = {"name", "rootfs", "argv", "protocol", "runner", "source_file", "source_suffix", "static_check",
         "preload", "env", "description", "snapshot", "snapshot_note", "sealed"}


@dataclass(frozen=True)
class Language:
    name: str
    rootfs: str
    argv: tuple[str, ...]
    protocol: str
    source_file: str
    definition_dir: pathlib.Path
    runner: str | None = None
    source_suffix: str = ""
    static_check: str = "none"
    preload: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    snapshot: bool = True  # may its sandboxes be restored from a snapshot (the runner reseeds on resume)?
    snapshot_note: str = ""  # why not, when not
    sealed: bool = False  # its runner writes the source and sends the artifacts (host.sealed, bundles.spec)

    @property
    def source_path(self) -> str:
        """Where the user's source file is inside the sandbox."""
        return f"{WORKSPACE}/{self.source_file}"

    def process_args(self) -> list[str]:
        """The argv of the sandbox's process, placeholders filled in."""
        runner = f"{RUNNER_MOUNT}/{self.runner}" if self.runner else ""
        return [arg.replace("{runner}", runner).replace("{source}", self.source_path) for arg in self.argv]

    @property
    def can_boot_ahead(self) -> bool:
        return self.protocol == "runner"


def load_language(path: pathlib.Path) -> Language:
    """Parse and validate one ``language.toml``; every error names the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"load language {path}: {exc}") from exc

    def fail(message: str) -> ConfigError:
        return ConfigError(f"load language {path}: {message}")

    unknown = set(data) - _KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise fail("'name' must be lower-case letters, digits, '-' or '_' (at most 32)")
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, str) or not rootfs:
        raise fail("'rootfs' must name a rootfs (or be an absolute path to one)")
    protocol = data.get("protocol", "runner")
    if protocol not in PROTOCOLS:
        raise fail(f"'protocol' must be one of {PROTOCOLS}")
    argv = data.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise fail("'argv' must be a non-empty list of non-empty strings")
    source_file = data.get("source_file")
    if not isinstance(source_file, str) or not _FILE_RE.match(source_file):
        raise fail("'source_file' must be a plain file name such as main.py")
    runner = data.get("runner")
    if protocol == "runner":
        if not isinstance(runner, str) or not _FILE_RE.match(runner):
            raise fail("protocol 'runner' needs 'runner', the runner's file name next to the definition")
        if not (path.parent / runner).is_file():
            raise fail(f"runner file {path.parent / runner} does not exist")
        if not any("{runner}" in arg for arg in argv):
            raise fail("argv must contain {runner} for protocol 'runner'")
    elif runner is not None:
        raise fail("'runner' is only meaningful with protocol 'runner'")
    elif not any("{source}" in arg for arg in argv):
        raise fail("argv must contain {source} for protocol 'script'")
    for arg in argv:
        stripped = arg
        for placeholder in _PLACEHOLDERS:
            stripped = stripped.replace(placeholder, "")
        if "{" in stripped or "}" in stripped:
            raise fail(f"argv item {arg!r} has an unknown placeholder (known: {', '.join(_PLACEHOLDERS)})")
    static_check = data.get("static_check", "none")
    if static_check != "none" and static_check not in CHECKERS:
        raise fail(f"'static_check' must be 'none' or one of {sorted(CHECKERS)}")
    preload = data.get("preload", [])
    if not isinstance(preload, list) or not all(isinstance(m, str) and m for m in preload):
        raise fail("'preload' must be a list of module names")
    if preload and protocol != "runner":
        raise fail("'preload' needs protocol 'runner'")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and _ENV_NAME_RE.match(k) and isinstance(v, str) for k, v in env.items()
    ):
        raise fail("'env' must be a table of NAME = \"value\" strings")
    suffix = data.get("source_suffix", "")
    if not isinstance(suffix, str):
        raise fail("'source_suffix' must be a string")
    snapshot = data.get("snapshot", protocol == "runner")
    if not isinstance(snapshot, bool):
        raise fail("'snapshot' must be true or false")
    if snapshot and protocol != "runner":
        raise fail("'snapshot' needs protocol 'runner' (a runner that answers 'resume')")
    snapshot_note = data.get("snapshot_note", "")
    if not isinstance(snapshot_note, str):
        raise fail("'snapshot_note' must be a string")
    sealed = data.get("sealed", False)
    if not isinstance(sealed, bool):
        raise fail("'sealed' must be true or false")
    if sealed and protocol != "runner":
        raise fail("'sealed' needs protocol 'runner' (a runner that writes the source and sends the artifacts)")
    return Language(
        name=name,
        rootfs=rootfs,
        argv=tuple(argv),
        protocol=protocol,
        source_file=source_file,
        definition_dir=path.parent.resolve(),
        runner=runner,
        source_suffix=suffix,
        static_check=static_check,
        preload=tuple(preload),
        env=dict(sorted(env.items())),
        description=str(data.get("description", "")),
        snapshot=snapshot,
        snapshot_note=snapshot_note,
        sealed=sealed,
    )


def load_languages(dirs: Iterable[pathlib.Path]) -> dict[str, Language]:
    """Every ``<dir>/<name>/language.toml`` in order; a later directory overrides a name."""
    dirs = tuple(dirs)
    languages: dict[str, Language] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError(f"SANDBOX_LANGUAGES_DIR: {directory} is not a directory")
        for definition in sorted(directory.glob("*/language.toml")):
            language = load_language(definition)
            if language.name != definition.parent.name:
                raise ConfigError(
                    f"load language {definition}: name {language.name!r} differs from its directory "
                    f"{definition.parent.name!r}"
                )
            languages[language.name] = language
    if not languages:
        raise ConfigError(f"SANDBOX_LANGUAGES_DIR: no language definitions (*/language.toml) in {', '.join(map(str, dirs))}")
    return languages
