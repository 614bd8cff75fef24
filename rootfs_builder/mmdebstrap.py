"""mmdebstrap: the argv for a recipe (pure) and running it to produce the rootfs tarball.

Hooks run on the host with "$1" = the chroot directory (mmdebstrap runs as root, root mode):

    copy-in <stage>/pip/requirements.txt [<stage>/pip/hostca.crt] /tmp
    chroot "$1" env -i PATH=... [PIP_CERT=/tmp/hostca.crt] [PIP_INDEX_URL=...] python3 -m pip install ...
    rm -f "$1"/tmp/requirements.txt "$1"/tmp/hostca.crt
    sync-in <stage>/overlay /

`env -i` keeps the host's pip settings (PIP_FIND_LINKS, ...) out of the chroot; only the index
URLs are forwarded. The host CA bundle is there for TLS-intercepting proxies and is removed.
"""

import os
import pathlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

from .command import run_command
from .errors import BuildError
from .recipe import Recipe
from .stage import HOST_CA, REQUIREMENTS

MMDEBSTRAP_TIMEOUT_SECONDS = 3600
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
FORWARDED_PIP_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
PIP_INSTALL = ["python3", "-m", "pip", "install", "--no-cache-dir", "--break-system-packages",
               "--root-user-action=ignore", "--progress-bar=off", "-r", f"/tmp/{REQUIREMENTS}"]


@dataclass(frozen=True)
class PipAccess:
    """How pip inside the chroot reaches the package index, taken from the host."""
    ca_bundle: pathlib.Path | None = None  # copied in for the build only
    env: Mapping[str, str] = field(default_factory=dict)  # forwarded index URLs


def read_pip_access(environ: Mapping[str, str]) -> PipAccess:
    """PipAccess from the host environment: PIP_CERT or SSL_CERT_FILE or the Debian bundle."""
    ca = pathlib.Path(environ.get("PIP_CERT") or environ.get("SSL_CERT_FILE") or DEFAULT_CA_BUNDLE)
    return PipAccess(ca_bundle=ca if ca.is_file() else None,
                     env={name: environ[name] for name in FORWARDED_PIP_ENV if environ.get(name)})


def build_argv(recipe: Recipe, tarball: pathlib.Path, *, pip_dir: pathlib.Path | None,
               overlay: pathlib.Path | None, pip: PipAccess) -> list[str]:
    """mmdebstrap argv writing the recipe's tree to tarball. Pure."""
    hooks = []
    if pip_dir is not None:
        inputs = [pip_dir / REQUIREMENTS] + ([pip_dir / HOST_CA] if pip.ca_bundle else [])
        hooks.append(_special_hook("copy-in", *inputs, "/tmp"))
        env = [f"PATH={CHROOT_PATH}"] + ([f"PIP_CERT=/tmp/{HOST_CA}"] if pip.ca_bundle else [])
        env += [f"{name}={value}" for name, value in sorted(pip.env.items())]
        hooks.append('chroot "$1" env -i ' + shlex.join(env + PIP_INSTALL))
        hooks.append(f'rm -f "$1"/tmp/{REQUIREMENTS} "$1"/tmp/{HOST_CA}')
    if overlay is not None:
        hooks.append(_special_hook("sync-in", overlay, "/"))
    return [
        "mmdebstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        *(f"--customize-hook={hook}" for hook in hooks),
        recipe.suite,
        str(tarball),
        recipe.mirror,
    ]


def run_mmdebstrap(argv: list[str], tmp_dir: pathlib.Path, sink: int | IO) -> None:
    """Run mmdebstrap with its temporary chroot in tmp_dir (removed with the work directory)."""
    run_command(argv, timeout=MMDEBSTRAP_TIMEOUT_SECONDS, sink=sink,
                env={**os.environ, "TMPDIR": str(tmp_dir)})


def _special_hook(command: str, *paths: os.PathLike | str) -> str:
    """A copy-in / sync-in hook; mmdebstrap splits these on white space, so paths may not hold any."""
    for path in map(str, paths):
        if not path or any(c.isspace() for c in path):
            raise BuildError(f"build mmdebstrap hook: path {path!r} contains white space")
    return " ".join([command, *map(str, paths)])
