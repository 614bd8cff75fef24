"""The staging area of a build: what mmdebstrap's hooks copy into the new tree, prepared on the host.

    stage/pip/        requirements.txt (+ hostca.crt): copied to the chroot's /tmp for pip
    stage/overlay/    a tree merged over the new root: recipe [files], /usr/local/bin/node,
                      /opt/nodejs/node_modules
    stage/npm/        npm's working directory, cache and packed tarballs (not copied)
"""

import logging
import os
import pathlib
import shutil
import tarfile
from typing import IO

from .command import run_command
from .errors import BuildError
from .inventory import NODE_MODULES
from .recipe import Recipe

log = logging.getLogger(__name__)

NPM_TIMEOUT_SECONDS = 900
NODE_BINARY_MEMBER = "package/bin/node"
NODE_BINARY = "/usr/local/bin/node"
REQUIREMENTS = "requirements.txt"
HOST_CA = "hostca.crt"


def stage_pip_inputs(recipe: Recipe, pip_dir: pathlib.Path, ca_bundle: pathlib.Path | None) -> None:
    """Copy the recipe's requirements file (and the host CA bundle, if any) into pip_dir."""
    pip_dir.mkdir(mode=0o755)
    shutil.copyfile(recipe.directory / recipe.requirements, pip_dir / REQUIREMENTS)
    if ca_bundle is not None:
        shutil.copyfile(ca_bundle, pip_dir / HOST_CA)  # follows symlinks: copy-in would not


def stage_overlay(recipe: Recipe, stage_dir: pathlib.Path, sink: int | IO) -> pathlib.Path | None:
    """Build stage_dir/overlay for the recipe; None if the recipe adds nothing to the tree."""
    if not (recipe.files or recipe.node_package or recipe.package_json):
        return None
    overlay = stage_dir / "overlay"
    for target, source in sorted(recipe.files.items()):
        dest = _overlay_path(overlay, target)
        shutil.copyfile(recipe.directory / source, dest)
        os.chmod(dest, 0o644)
    npm_dir = stage_dir / "npm"
    if recipe.node_package:
        fetch_node_binary(f"{recipe.node_package}@{recipe.node_version}", npm_dir,
                          _overlay_path(overlay, NODE_BINARY), sink)
    if recipe.package_json:
        install_node_modules(recipe.directory / recipe.package_json, npm_dir,
                             _overlay_path(overlay, NODE_MODULES), sink)
    # sync-in copies directory modes too, "." included: keep them those of a root tree
    for directory, _, _ in os.walk(overlay):
        os.chmod(directory, 0o755)
    return overlay


def fetch_node_binary(spec: str, npm_dir: pathlib.Path, dest: pathlib.Path, sink: int | IO) -> None:
    """`npm pack spec` and copy the package's bin/node to dest, mode 0755."""
    pack_dir = npm_dir / "pack"
    pack_dir.mkdir(parents=True)
    run_command(["npm", "pack", spec, "--loglevel=warn", "--cache", str(npm_dir / "cache"),
                 "--pack-destination", str(pack_dir)],
                timeout=NPM_TIMEOUT_SECONDS, sink=sink, cwd=pack_dir)
    packed = sorted(pack_dir.glob("*.tgz"))
    if len(packed) != 1:
        raise BuildError(f"fetch {spec}: expected one .tgz from npm pack, got {len(packed)}")
    try:
        with tarfile.open(packed[0]) as archive:
            member = archive.getmember(NODE_BINARY_MEMBER)
            if not member.isreg():
                raise BuildError(f"fetch {spec}: {NODE_BINARY_MEMBER} is not a regular file")
            with archive.extractfile(member) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise BuildError(f"fetch {spec}: the package has no {NODE_BINARY_MEMBER}") from None
    except tarfile.TarError as exc:
        raise BuildError(f"fetch {spec}: unreadable package {packed[0].name}: {exc}") from exc
    os.chmod(dest, 0o755)


def install_node_modules(package_json: pathlib.Path, npm_dir: pathlib.Path, dest: pathlib.Path,
                         sink: int | IO) -> None:
    """Install package_json's dependencies with the host's npm and move node_modules to dest."""
    project = npm_dir / "project"
    project.mkdir(parents=True)
    shutil.copyfile(package_json, project / "package.json")
    run_command(["npm", "install", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts",
                 "--cache", str(npm_dir / "cache")],
                timeout=NPM_TIMEOUT_SECONDS, sink=sink, cwd=project)
    node_modules = project / "node_modules"
    if node_modules.is_dir():
        os.rename(node_modules, dest)
    else:  # no dependencies
        dest.mkdir()


def _overlay_path(overlay: pathlib.Path, target: str) -> pathlib.Path:
    """overlay path for the absolute rootfs path target, its parent directories created."""
    path = overlay / target.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
