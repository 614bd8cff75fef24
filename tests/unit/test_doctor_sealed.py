"""doctor's sealed check: never a failure, always the reason."""

from __future__ import annotations

import pathlib

from orchestrator.doctor import check_sealed
from orchestrator.settings import Settings


def fake_runsc(directory: pathlib.Path, version: str) -> pathlib.Path:
    """A runsc that says its version and lists two flags (``runsc flags``, ``help``)."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "runsc"
    binary.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'runsc version {version}'; exit 0; fi\n"
                      "echo '  -root string' >&2\necho '  -platform string' >&2\n")
    binary.chmod(0o755)
    return binary


async def test_the_sealed_check_names_what_is_missing(tmp_path):
    new = fake_runsc(tmp_path / "new", "0.0~20240729.0")
    old = fake_runsc(tmp_path / "old", "0.0~20221219.0")
    off = await check_sealed(Settings.from_env({"SANDBOX_SEALED": "off"}))
    assert off.ok and "SANDBOX_SEALED=off" in off.detail
    predates = await check_sealed(Settings.from_env({"SANDBOX_RUNSC": str(old)}), mkfs="/usr/bin/mkfs.erofs")
    assert predates.ok and "predates 20240729" in predates.detail
    missing = await check_sealed(Settings.from_env({"SANDBOX_RUNSC": str(new)}), mkfs=None)
    assert missing.ok and "erofs-utils" in missing.detail
    ready = await check_sealed(Settings.from_env({"SANDBOX_RUNSC": str(new)}), mkfs="/usr/bin/mkfs.erofs")
    assert ready.ok and ready.detail.startswith("Python runs sealed")
