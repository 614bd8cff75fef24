"""doctor's check that the sandbox uid ("other") can read each language's runner, which comes
from the checkout with whatever modes a clone under a strict umask gave it."""

from __future__ import annotations

import os

from orchestrator.doctor import unreadable_runners
from orchestrator.language import load_languages
from tests.unit.test_language import REPO, VALID_RUNNER, VALID_SCRIPT, write_language


def test_the_shipped_runners_are_readable():
    assert unreadable_runners(load_languages((REPO / "languages",)).values()) == []


def test_runners_a_strict_umask_made_are_reported(tmp_path):
    write_language(tmp_path, "ok", VALID_RUNNER.format(name="ok"))
    write_language(tmp_path, "file", VALID_RUNNER.format(name="file"))
    write_language(tmp_path, "dir", VALID_RUNNER.format(name="dir"))
    write_language(tmp_path, "bash", VALID_SCRIPT, runner=None)  # no runner, nothing to read
    for name in ("ok", "file", "dir"):
        os.chmod(tmp_path / name, 0o755)
        os.chmod(tmp_path / name / "runner.py", 0o644)
    os.chmod(tmp_path / "file" / "runner.py", 0o600)
    os.chmod(tmp_path / "dir", 0o700)
    languages = load_languages((tmp_path,))
    assert unreadable_runners(languages.values()) == [str(tmp_path / "dir"), str(tmp_path / "file" / "runner.py")]
