"""The on-disk store of built trees: layout, the `current` symlink and manifests.

    <rootfs-dir>/<language>/<hash16>/rootfs/        the tree, shared read-only by all sandboxes
    <rootfs-dir>/<language>/<hash16>/manifest.json
    <rootfs-dir>/<language>/current -> <hash16>     switched atomically once tree and manifest exist
    <rootfs-dir>/<language>/.build-*/               work directories of builds (never current)
    <rootfs-dir>/<language>/.lock, build.log        build lock; output of the last logged build

The service uses find_rootfs and list_rootfs, which only read. The writers below are for the
builder, which holds the language's lock while it uses them.
"""

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import BuildError, RootfsError
from .recipe import check_name

log = logging.getLogger(__name__)

CURRENT = "current"
TREE = "rootfs"
MANIFEST = "manifest.json"
LOCK = ".lock"
WORK_PREFIX = ".build-"
HASH_DIR = re.compile(r"[0-9a-f]{16}")
FIX = "run `make build`"


@dataclass(frozen=True)
class InstalledRootfs:
    name: str
    path: pathlib.Path  # .../<name>/<hash16>/rootfs (resolved, absolute)
    manifest: dict


def find_rootfs(rootfs_dir: pathlib.Path, name: str) -> InstalledRootfs:
    """The current tree of language `name`; RootfsError if it is missing or corrupt."""
    check_name(name)
    current = rootfs_dir / name / CURRENT
    target = current_hash(rootfs_dir / name)
    if target is None:
        raise RootfsError(f"find rootfs {name}: no {current}; {FIX}")
    if not HASH_DIR.fullmatch(target):
        raise RootfsError(f"find rootfs {name}: {current} -> {target!r} is not a hash directory; {FIX}")
    tree = rootfs_dir / name / target / TREE
    if not tree.is_dir():
        raise RootfsError(f"find rootfs {name}: {tree} is missing; {FIX}")
    manifest_path = rootfs_dir / name / target / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise RootfsError(f"find rootfs {name}: unreadable {manifest_path} ({exc}); {FIX}") from exc
    if not isinstance(manifest, dict) or manifest.get("name") != name \
            or not str(manifest.get("inputs_hash", "")).startswith(target):
        raise RootfsError(f"find rootfs {name}: {manifest_path} does not describe this tree; {FIX}")
    return InstalledRootfs(name=name, path=tree.resolve(), manifest=manifest)


def list_rootfs(rootfs_dir: pathlib.Path) -> list[InstalledRootfs]:
    """Every language with a `current` tree, by name; RootfsError if one of them is corrupt."""
    if not rootfs_dir.is_dir():
        return []
    return [find_rootfs(rootfs_dir, entry.name) for entry in sorted(rootfs_dir.iterdir())
            if current_hash(entry) is not None]


def current_hash(language_dir: pathlib.Path) -> str | None:
    """The hash directory name `current` points to, or None when there is no `current` link."""
    try:
        return os.readlink(language_dir / CURRENT)
    except OSError:
        return None


def is_installed(rootfs_dir: pathlib.Path, name: str, inputs_hash: str) -> bool:
    """True if the current tree of `name` exists, is sound and was made from inputs_hash."""
    try:
        return find_rootfs(rootfs_dir, name).manifest["inputs_hash"] == inputs_hash
    except RootfsError:
        return False


@contextlib.contextmanager
def lock_language(language_dir: pathlib.Path) -> Iterator[None]:
    """Hold the language's build lock (fails at once if another build holds it)."""
    fd = os.open(language_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"lock {language_dir}: another build or import is running") from None
        yield
    finally:
        os.close(fd)


def create_work_dir(language_dir: pathlib.Path) -> pathlib.Path:
    """A new, empty work directory under language_dir (removed with remove_tree when done)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=language_dir))
    os.chmod(work, 0o755)  # apt inside mmdebstrap downloads as _apt, and needs to get in
    return work


def remove_stale_work(language_dir: pathlib.Path) -> None:
    """Remove work directories left by interrupted builds (call with the lock held)."""
    for entry in language_dir.glob(f"{WORK_PREFIX}*"):
        log.info("removing %s left by an interrupted build", entry)
        remove_tree(entry)


def write_manifest(directory: pathlib.Path, manifest: dict) -> None:
    """Write directory/manifest.json: sorted keys, indent 2."""
    (directory / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")


def install_tree(language_dir: pathlib.Path, out_dir: pathlib.Path, hash16: str) -> pathlib.Path:
    """Move out_dir (holding rootfs/ and manifest.json) to <hash16>, make it current, prune
    all but it and the previous tree.

    If <hash16> is already current (a forced rebuild) the two directories are exchanged
    atomically and the old tree ends up at out_dir, to be removed with the work directory.
    """
    final = language_dir / hash16
    os.chmod(out_dir, 0o755)
    os.sync()  # the tree must be on disk before `current` can point to it
    if current_hash(language_dir) == hash16 and final.is_dir():
        _exchange(out_dir, final)
    else:
        if final.exists() or final.is_symlink():
            remove_tree(final)
        os.rename(out_dir, final)
    previous = current_hash(language_dir)
    switch_current(language_dir, hash16)
    # The previous tree stays: sandboxes a running service booted on it keep working (the
    # service boots new ones on `current`).  Anything older goes.
    for entry in language_dir.iterdir():
        if HASH_DIR.fullmatch(entry.name) and entry.name not in (hash16, previous):
            log.info("removing old tree %s", entry)
            remove_tree(entry)
    return final / TREE


def switch_current(language_dir: pathlib.Path, hash16: str) -> None:
    """Point language_dir/current at hash16 atomically (new symlink, then rename over)."""
    temporary = language_dir / f".{CURRENT}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(hash16, temporary)
    os.replace(temporary, language_dir / CURRENT)
    fd = os.open(language_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: pathlib.Path) -> None:
    """Remove a directory tree or file, refusing if anything is mounted inside it."""
    real = os.path.realpath(path)
    for mount_point in _mount_points():
        if mount_point == real or mount_point.startswith(real + "/"):
            raise BuildError(f"remove {path}: {mount_point} is still mounted; unmount it first")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _mount_points() -> list[str]:
    try:
        lines = pathlib.Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    fields = [line.split() for line in lines]
    # mountinfo field 5 is the mount point, with " ", "\t", "\n" and "\\" written as octal escapes
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f[4]) for f in fields if len(f) > 4]


def _exchange(a: pathlib.Path, b: pathlib.Path) -> None:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(a), None, str(b))
