"""Sealed rootfs images: an EROFS image of a language's rootfs tree with its runner inside,
so that a sandbox needs no host directory and runsc starts no gofer for it.

Why: runsc's gofer is a process pair of its own per sandbox (it re-executes itself, forks a
/proc unmounter, builds its seccomp filter): measured here, a restored Python sandbox's whole
life costs ~130 ms of host CPU with the gofer and ~100 ms without.  runsc 20240729 and later
start no gofer when the root is an EROFS image named by the ``dev.gvisor.spec.rootfs.*``
annotations and no mount is a bind (``bundles.spec``: the workspace is then a tmpfs inside
gVisor).

An image is built with ``mkfs.erofs -E noinline_data`` (gVisor reads no inline file data)
from the tree, with the language's definition directory bind-mounted read-only over the
tree's ``/opt/sandbox/runner`` in a private mount namespace of the build's own (the tree is
not modified; it must have that directory, as the recipes' trees do).  Its name is a digest
of the tree's path (the rootfs store names a tree by its inputs) and of the runner
directory's files, so a rebuilt tree or an edited runner gives another image; it is written
under a temporary name and renamed.  The images live in one directory that several services
may share: each holds a shared ``flock`` on the images it uses, and ``prune`` removes only
images that nobody holds.

Images are made when the service starts (``prepare``, ~2 s for the Python tree here); a
tree that appears later (``make build`` while the service runs) is served unsealed until
the next start, which ``status`` says.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from orchestrator.errors import HostError

log = logging.getLogger(__name__)

MKFS = "mkfs.erofs"
RUNNER_DIR_IN_TREE = "opt/sandbox/runner"
BUILD_TIMEOUT_S = 600.0
SUFFIX = ".erofs"


def runner_digest(runner_dir: pathlib.Path) -> str:
    """A digest of the runner directory's regular files (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in runner_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def image_name(language: str, tree: pathlib.Path, runner_dir: pathlib.Path) -> str:
    key = hashlib.sha256(f"{os.path.realpath(tree)}\0{runner_digest(runner_dir)}".encode()).hexdigest()[:16]
    return f"{language}-{key}{SUFFIX}"


def build_argv(mkfs: str, tree: pathlib.Path, runner_dir: pathlib.Path, target: pathlib.Path) -> list[str]:
    """The build as one command: a private mount namespace, the runner bound over the tree's
    runner directory there, then mkfs.erofs over the tree."""
    script = 'mount --bind -o ro "$1" "$2/' + RUNNER_DIR_IN_TREE + '" && exec "$3" --quiet -E noinline_data "$4" "$2"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(runner_dir), str(tree), mkfs, str(target)]


def build_image(mkfs: str, tree: pathlib.Path, runner_dir: pathlib.Path, target: pathlib.Path) -> None:
    """Write ``target`` atomically; HostError with mkfs's words when it fails."""
    if not (tree / RUNNER_DIR_IN_TREE).is_dir():
        raise HostError(f"seal {tree}: it has no /{RUNNER_DIR_IN_TREE} directory to hold the runner")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        result = subprocess.run(build_argv(mkfs, tree, runner_dir, temporary), capture_output=True,
                                timeout=BUILD_TIMEOUT_S, check=False)
        if result.returncode != 0:
            words = (result.stderr or result.stdout).decode("utf-8", "replace").strip()[-300:]
            raise HostError(f"seal {tree}: mkfs.erofs exited {result.returncode}: {words}")
        os.chmod(temporary, 0o444)
        os.replace(temporary, target)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"seal {tree}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


@dataclass
class SealedImages:
    """The images this service uses, one per (language, tree) made at start-up."""

    directory: pathlib.Path
    empty_root: pathlib.Path  # the spec's root path for a sealed sandbox: an empty directory
    mkfs: str | None = None
    images: dict[tuple[str, pathlib.Path], pathlib.Path] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # language -> why it is not sealed
    built_ms: dict[str, float] = field(default_factory=dict)
    _locks: dict[pathlib.Path, int] = field(default_factory=dict)

    def image_for(self, language: str, tree: pathlib.Path) -> pathlib.Path | None:
        return self.images.get((language, tree))

    def prepare(self, language: str, tree: pathlib.Path, runner_dir: pathlib.Path) -> pathlib.Path | None:
        """Find or build the image of ``tree`` with ``runner_dir``; None (and the reason kept)
        when it cannot be had.  Synchronous: call it in a thread."""
        tree = pathlib.Path(os.path.realpath(tree))
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.empty_root.mkdir(mode=0o555, parents=True, exist_ok=True)
            os.chmod(self.empty_root, 0o555)  # whatever the umask (a unit's UMask=0077) took away
            if any(self.empty_root.iterdir()):
                raise HostError(f"seal: the sealed sandboxes' root {self.empty_root} is not empty")
            target = self.directory / image_name(language, tree, runner_dir)
            if not target.is_file():
                if self.mkfs is None:
                    raise HostError(f"seal: {MKFS} is not installed (apt-get install erofs-utils)")
                started = time.monotonic()
                build_image(self.mkfs, tree, runner_dir, target)
                self.built_ms[language] = round((time.monotonic() - started) * 1000, 1)
                log.info("sealed %s: built %s in %.0f ms", language, target, self.built_ms[language])
            self._hold(target)
        except (HostError, OSError) as exc:
            self.reasons[language] = str(exc)
            log.warning("sealed %s: off: %s", language, exc)
            return None
        self.images[(language, tree)] = target
        self.reasons.pop(language, None)
        return target

    def _hold(self, target: pathlib.Path) -> None:
        """A shared lock on ``target`` for this service's life: ``prune`` skips it."""
        if target in self._locks:
            return
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._locks[target] = fd

    def prune(self) -> list[str]:
        """Remove every image in the directory that no service holds, and temporaries older
        than a build may take (a younger one may be another service's build under way)."""
        removed = []
        if not self.directory.is_dir():
            return removed
        for path in sorted(self.directory.iterdir()):
            if path.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime > BUILD_TIMEOUT_S:
                        path.unlink()
                        removed.append(path.name)
                continue
            if path in self._locks or not path.name.endswith(SUFFIX):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # another service uses it (or builds it)
            finally:
                os.close(fd)
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def close(self) -> None:
        for fd in self._locks.values():
            os.close(fd)
        self._locks.clear()

    def status(self) -> dict:
        return {"directory": str(self.directory),
                "images": {language: {"path": str(path), "size_bytes": _size(path),
                                      "built_ms": self.built_ms.get(language)}
                           for (language, _), path in self.images.items()},
                "off": dict(self.reasons)}


def _size(path: pathlib.Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def find_mkfs() -> str | None:
    return shutil.which(MKFS) or next((str(p) for p in (pathlib.Path("/usr/bin/mkfs.erofs"),
                                                         pathlib.Path("/sbin/mkfs.erofs")) if p.is_file()), None)
