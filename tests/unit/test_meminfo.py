"""host.meminfo: the /proc/meminfo stand-in runsc reads for a sandbox's MemTotal."""

from __future__ import annotations

import re

import pytest

from orchestrator.errors import HostError
from orchestrator.host import meminfo


def test_render_says_the_limit_in_kib_as_proc_meminfo_does():
    text = meminfo.render(256 * 1024**2, 24 * 1024**3)
    assert re.fullmatch(r"MemTotal:\s+262144 kB\n", text)


def test_render_never_says_more_than_the_host_has():
    assert meminfo.render(64 * 1024**3, 2 * 1024**3).split()[1] == str(2 * 1024**2)
    with pytest.raises(ValueError):
        meminfo.render(0, 1024)


def test_write_replaces_the_file_atomically_and_read_only(tmp_path):
    first = meminfo.write(tmp_path, 256 * 1024**2, 8 * 1024**3)
    second = meminfo.write(tmp_path, 512 * 1024**2, 8 * 1024**3)
    assert first == second == tmp_path / "meminfo"
    assert second.read_text().split()[1] == str(512 * 1024)
    assert second.stat().st_mode & 0o777 == 0o444
    assert sorted(path.name for path in tmp_path.iterdir()) == ["meminfo"]  # no temporary left


def test_write_failure_is_a_host_error(tmp_path):
    with pytest.raises(HostError, match="write .*meminfo"):
        meminfo.write(tmp_path / "missing", 256 * 1024**2, 8 * 1024**3)
