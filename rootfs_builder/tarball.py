"""Rootfs tarballs: hashing and safe extraction with tarfile.

A tarball is a plain or compressed tar of a root tree (mmdebstrap output, `docker export`).
Before anything is written every member is checked, whatever the Python version's filters do:

- names are taken relative to the root ("/etc/x", "./etc/x" and "etc/x" are the same) and may
  not contain "..";
- no member may be written through, or replace, a symlink of the archive (symlinks themselves
  may point anywhere: in the sandbox they resolve inside the tree);
- a hard link must name an earlier regular file of the archive, by a relative name.

Extraction then uses filter="tar" (which also clears setuid/setgid/sticky and group/other
write bits) and numeric owners (ids are those of the tree, not names looked up on the host).
Device nodes are kept (created when running as root).
"""

import hashlib
import logging
import pathlib
import tarfile

from .errors import TarballRejectedError

log = logging.getLogger(__name__)


def hash_tarball(path: pathlib.Path) -> str:
    """sha256 (hex) of the tarball's bytes."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise TarballRejectedError(f"read tarball {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def extract_tarball(path: pathlib.Path, dest: pathlib.Path) -> None:
    """Extract the tarball at path into the new directory dest after checking every member."""
    dest.mkdir(mode=0o755)
    try:
        with tarfile.open(path, "r:*") as archive:
            members = archive.getmembers()
            check_members(members, path)
            archive.extractall(dest, members=members, numeric_owner=True, filter="tar")
    except tarfile.FilterError as exc:
        raise TarballRejectedError(f"extract tarball {path}: unsafe member: {exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise TarballRejectedError(f"extract tarball {path}: not a readable tar archive: {exc}") from exc
    except OSError as exc:
        raise TarballRejectedError(f"extract tarball {path}: {exc}") from exc


def check_members(members: list[tarfile.TarInfo], path: pathlib.Path) -> None:
    """Raise TarballRejectedError on the first member that could write outside the tree."""
    symlinks: set[str] = set()
    regular_files: set[str] = set()

    def reject(member: tarfile.TarInfo, detail: str) -> TarballRejectedError:
        return TarballRejectedError(f"extract tarball {path}: unsafe member {member.name!r}: {detail}")

    for member in members:
        name = _normalize(member.name)
        if name is None:
            raise reject(member, "'..' in its path")
        if name in symlinks:
            raise reject(member, "replaces a symlink")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in symlinks:
                raise reject(member, "its path goes through a symlink")
        if member.islnk():
            target = _normalize(member.linkname)
            if member.linkname.startswith("/") or target not in regular_files:
                raise reject(member, f"hard link to {member.linkname!r}, not an earlier regular file")
        if member.issym():
            symlinks.add(name)
            regular_files.discard(name)
        elif member.isreg() or member.islnk():
            regular_files.add(name)


def _normalize(name: str) -> str | None:
    """Member name relative to the root without "." parts; None if it contains ".."."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)
