"""The pipeline, the same for every source:

    tarball (mmdebstrap output, or an imported one) -> extract into <language>/.build-*/out/rootfs
    -> mount points -> check the interpreter -> manifest -> rename to <hash16> -> switch `current`

Nothing becomes current before the tree and its manifest are complete; a failure removes the
work directory and leaves the current tree as it was.
"""

import contextlib
import datetime
import logging
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from . import BUILDER_VERSION
from .errors import BuildError, RootfsError, TarballRejectedError
from .inventory import Prober, describe_interpreter, list_packages, probe_version
from .mmdebstrap import PipAccess, build_argv, run_mmdebstrap
from .recipe import Recipe, check_name, hash_import, hash_recipe
from .stage import stage_overlay, stage_pip_inputs
from .store import (
    LOCK, TREE, create_work_dir, find_rootfs, install_tree, is_installed, lock_language, remove_stale_work,
    remove_tree, write_manifest,
)
from .tarball import extract_tarball, hash_tarball

log = logging.getLogger(__name__)

BUILD_LOG = "build.log"
TARBALL = "rootfs.tar"
# Mount points of the service (bundles/spec.py), emptied: the tree is shared and mounted read-only,
# so they must exist beforehand (runsc would otherwise create them in the tree on the host).
MOUNT_POINTS = {"workspace": 0o755, "tmp": 0o1777, "opt/sandbox": 0o755, "opt/sandbox/runner": 0o755}
SYSTEM_MOUNT_POINTS = ("proc", "sys", "dev")  # created if missing, content kept


@dataclass(frozen=True)
class Outcome:
    name: str
    action: str  # "built", "imported" or "up to date"
    inputs_hash: str
    path: pathlib.Path  # the current tree
    seconds: float


def build_recipe(recipe: Recipe, rootfs_dir: pathlib.Path, *, pip: PipAccess, force: bool = False,
                 keep_tarball: bool = False, stream: bool = False,
                 probe: Prober = probe_version) -> Outcome:
    """Build the recipe's tree with mmdebstrap unless its inputs are already current (or force).

    stream: pass the output of mmdebstrap and npm through to stderr instead of <language>/build.log.
    """
    started = time.monotonic()
    inputs_hash = hash_recipe(recipe)
    if not force and is_installed(rootfs_dir, recipe.name, inputs_hash):
        return _unchanged(rootfs_dir, recipe.name, inputs_hash)
    source = {"kind": "mmdebstrap", "suite": recipe.suite, "mirror": recipe.mirror,
              "variant": recipe.variant, "packages": list(recipe.packages)}
    with _work_dir(rootfs_dir, recipe.name) as (language_dir, work):
        log_path = None if stream else language_dir / BUILD_LOG
        tarball = work / TARBALL
        with _output(log_path) as sink:
            try:
                stage = work / "stage"
                stage.mkdir()
                pip_dir = None
                if recipe.requirements:
                    pip_dir = stage / "pip"
                    stage_pip_inputs(recipe, pip_dir, pip.ca_bundle)
                overlay = stage_overlay(recipe, stage, sink)
                argv = build_argv(recipe, tarball, pip_dir=pip_dir, overlay=overlay, pip=pip)
                run_mmdebstrap(argv, work, sink)
            except BuildError as exc:
                raise BuildError(f"{exc}; output in {log_path}" if log_path else str(exc)) from exc
        path = _install(tarball, language_dir, work, name=recipe.name, inputs_hash=inputs_hash,
                        interpreter=recipe.interpreter, source=source, probe=probe,
                        keep_tarball=keep_tarball)
    return Outcome(recipe.name, "built", inputs_hash, path, time.monotonic() - started)


def import_tarball(tarball: pathlib.Path, rootfs_dir: pathlib.Path, *, name: str, interpreter: str,
                   probe: Prober = probe_version) -> Outcome:
    """Install a rootfs tarball (`docker export` format, plain or compressed) as `name`'s tree."""
    started = time.monotonic()
    check_name(name)
    sha256 = hash_tarball(tarball)
    inputs_hash = hash_import(sha256, name, interpreter)
    if is_installed(rootfs_dir, name, inputs_hash):
        return _unchanged(rootfs_dir, name, inputs_hash)
    source = {"kind": "import", "tarball": tarball.name, "sha256": sha256}
    with _work_dir(rootfs_dir, name) as (language_dir, work):
        path = _install(tarball, language_dir, work, name=name, inputs_hash=inputs_hash,
                        interpreter=interpreter, source=source, probe=probe)
    return Outcome(name, "imported", inputs_hash, path, time.monotonic() - started)


def prepare_mount_points(tree: pathlib.Path) -> None:
    """Make MOUNT_POINTS empty directories with their modes and SYSTEM_MOUNT_POINTS directories."""
    for relative in SYSTEM_MOUNT_POINTS:
        path = _confined(tree, relative)
        if not path.is_dir() or path.is_symlink():
            _remove_entry(path)
            path.mkdir(mode=0o755)
    for relative, mode in MOUNT_POINTS.items():
        path = _confined(tree, relative)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _remove_entry(path)
        path.mkdir()
        os.chmod(path, mode)


def _confined(tree: pathlib.Path, relative: str) -> pathlib.Path:
    """tree/relative, refused if one of its parents is a symlink (it could lead out of the tree)."""
    for parent in reversed(pathlib.PurePath(relative).parents[:-1]):
        if (tree / parent).is_symlink():
            raise TarballRejectedError(f"prepare mount point /{relative}: /{parent} is a symlink")
    return tree / relative


def _remove_entry(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _install(tarball: pathlib.Path, language_dir: pathlib.Path, work: pathlib.Path, *, name: str,
             inputs_hash: str, interpreter: str, source: dict, probe: Prober,
             keep_tarball: bool = False) -> pathlib.Path:
    out = work / "out"
    out.mkdir()
    tree = out / TREE
    extract_tarball(tarball, tree)
    prepare_mount_points(tree)
    manifest = {
        "name": name,
        "inputs_hash": inputs_hash,
        "source": source,
        "interpreter": describe_interpreter(tree, interpreter, probe),
        "packages": list_packages(tree),
        "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder_version": BUILDER_VERSION,
    }
    write_manifest(out, manifest)
    if keep_tarball:
        os.rename(tarball, out / TARBALL)
    return install_tree(language_dir, out, inputs_hash[:16])


def _unchanged(rootfs_dir: pathlib.Path, name: str, inputs_hash: str) -> Outcome:
    return Outcome(name, "up to date", inputs_hash, find_rootfs(rootfs_dir, name).path, 0.0)


@contextlib.contextmanager
def _work_dir(rootfs_dir: pathlib.Path, name: str) -> Iterator[tuple[pathlib.Path, pathlib.Path]]:
    """Lock <rootfs-dir>/<name>, yield it and a fresh work directory, remove that afterwards.

    A language directory created here is removed again if the work fails and leaves nothing
    in it (an interrupted import leaves no trace; a failed build keeps its build.log).
    """
    language_dir = rootfs_dir / name
    created = not language_dir.exists()
    language_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        with lock_language(language_dir):
            remove_stale_work(language_dir)
            work = create_work_dir(language_dir)
            try:
                yield language_dir, work
            finally:
                _remove_quietly(work)
    except BaseException:
        if created and {p.name for p in language_dir.iterdir()} <= {LOCK}:
            _remove_quietly(language_dir)
        raise


@contextlib.contextmanager
def _output(log_path: pathlib.Path | None) -> Iterator[int | IO]:
    """Where command output goes: the log file, or our stderr when streaming."""
    if log_path is None:
        yield sys.stderr
        return
    with open(log_path, "w") as log_file:
        yield log_file


def _remove_quietly(path: pathlib.Path) -> None:
    """Remove path; a failure is logged, never raised (it must not hide the original error)."""
    try:
        remove_tree(path)
    except (RootfsError, OSError) as exc:
        log.error("could not remove %s: %s", path, exc)
