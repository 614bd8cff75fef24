"""Seccomp profiles as data, and the loader that turns one into the spec's ``linux.seccomp``.

A profile file in ``profiles/`` is either a full allowlist (``defaultAction``,
``architectures``, ``allow``: syscall names) or a derivation (``base``: another profile,
``deny``: names removed from its allowlist).  ``load_profile`` resolves derivations and
returns the OCI runtime-spec form, deterministic (sorted names).  runsc applies it inside the
sandbox only with ``--oci-seccomp``; a denied syscall fails with EPERM ("Operation not
permitted"), which the service reports as unauthorized_access / disallowed_syscall.
"""

from __future__ import annotations

import functools
import json
import pathlib

PROFILES_DIR = pathlib.Path(__file__).resolve().parent / "profiles"
_MAX_DEPTH = 8


class ProfileError(ValueError):
    """A profile is missing or malformed."""


def profile_names(directory: pathlib.Path = PROFILES_DIR) -> list[str]:
    return sorted(path.stem for path in directory.glob("*.json"))


def _read(name: str, directory: pathlib.Path) -> dict:
    path = directory / f"{name}.json"
    if not name.replace("-", "").replace("_", "").isalnum() or not path.is_file():
        raise ProfileError(f"unknown seccomp profile {name!r} (known: {', '.join(profile_names(directory))})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"read seccomp profile {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"seccomp profile {path}: not a JSON object")
    return data


def _allowlist(name: str, directory: pathlib.Path, depth: int = 0) -> tuple[str, list[str], set[str]]:
    if depth > _MAX_DEPTH:
        raise ProfileError(f"seccomp profile {name!r}: 'base' chain too deep (a cycle?)")
    data = _read(name, directory)
    if "base" in data:
        action, arches, allowed = _allowlist(data["base"], directory, depth + 1)
        deny = data.get("deny", [])
        if not isinstance(deny, list) or not all(isinstance(n, str) for n in deny):
            raise ProfileError(f"seccomp profile {name!r}: 'deny' must be a list of syscall names")
        unknown = set(deny) - allowed
        if unknown:
            raise ProfileError(f"seccomp profile {name!r}: denies {sorted(unknown)}, which its base does not allow")
        return action, arches, allowed - set(deny)
    allow = data.get("allow")
    if not isinstance(allow, list) or not allow or not all(isinstance(n, str) for n in allow):
        raise ProfileError(f"seccomp profile {name!r}: 'allow' must be a non-empty list of syscall names")
    action = data.get("defaultAction", "SCMP_ACT_ERRNO")
    arches = data.get("architectures", [])
    return action, list(arches), set(allow)


@functools.cache
def load_profile(name: str, directory: pathlib.Path = PROFILES_DIR) -> dict:
    """The OCI ``linux.seccomp`` object of profile ``name``."""
    action, arches, allowed = _allowlist(name, directory)
    return {
        "defaultAction": action,
        "architectures": arches,
        "syscalls": [{"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"}],
    }
