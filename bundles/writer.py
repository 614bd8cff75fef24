"""The one place that writes a bundle to disk."""

from __future__ import annotations

import json
import os
import pathlib


def render_spec(spec: dict) -> str:
    """Canonical text of a config (sorted keys, stable indentation) for the file and goldens."""
    return json.dumps(spec, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_bundle(bundle_dir: pathlib.Path, spec: dict) -> pathlib.Path:
    """Write ``config.json`` into ``bundle_dir`` atomically (temp file + rename); return its path."""
    bundle_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = bundle_dir / "config.json"
    temporary = bundle_dir / ".config.json.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render_spec(spec))
    os.replace(temporary, target)
    return target
