"""tools/apt_backports.py: the backports source is derived from the host's own bookworm
source (deb822 or one-line), never from a mirror name of ours."""

from __future__ import annotations

import pathlib

from tools import apt_backports

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.internal.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def apt_tree(tmp_path: pathlib.Path, *, sources: str = "", listing: str = "") -> pathlib.Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if sources:
        (apt / "sources.list.d" / "debian.sources").write_text(sources)
    if listing:
        (apt / "sources.list").write_text(listing)
    return apt


def os_release(tmp_path: pathlib.Path, codename: str) -> pathlib.Path:
    path = tmp_path / "os-release"
    path.write_text(f'PRETTY_NAME="Debian"\nVERSION_CODENAME={codename}\n')
    return path


def test_the_mirror_and_keyring_come_from_the_hosts_deb822_source(tmp_path):
    apt = apt_tree(tmp_path, sources=DEB822)
    assert apt_backports.main(["--apt-dir", str(apt), "--os-release", str(os_release(tmp_path, "bookworm"))]) == 0
    written = (apt / "sources.list.d" / apt_backports.TARGET).read_text()
    assert written == ("Types: deb\nURIs: http://mirror.internal.example/debian\nSuites: bookworm-backports\n"
                       "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def test_one_line_sources_work_too(tmp_path):
    apt = apt_tree(tmp_path, listing="# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://local/debian bookworm main\n"
                                     "deb-src http://local/debian bookworm main\n")
    assert apt_backports.main(["--apt-dir", str(apt), "--os-release", str(os_release(tmp_path, "bookworm"))]) == 0
    written = (apt / "sources.list.d" / apt_backports.TARGET).read_text()
    assert "URIs: http://local/debian\n" in written and "Signed-By: /k.gpg" in written


def test_an_existing_backports_source_is_left_alone(tmp_path):
    apt = apt_tree(tmp_path, sources=DEB822.replace("bookworm-updates", "bookworm-backports"))
    assert apt_backports.main(["--apt-dir", str(apt), "--os-release", str(os_release(tmp_path, "bookworm"))]) == 0
    assert not (apt / "sources.list.d" / apt_backports.TARGET).exists()


def test_other_releases_do_nothing(tmp_path):
    apt = apt_tree(tmp_path, sources=DEB822)
    assert apt_backports.main(["--apt-dir", str(apt), "--os-release", str(os_release(tmp_path, "trixie"))]) == 0
    assert not (apt / "sources.list.d" / apt_backports.TARGET).exists()


def test_no_bookworm_main_source_is_an_error(tmp_path, capsys):
    apt = apt_tree(tmp_path, sources=DEB822.replace("Components: main contrib", "Components: contrib")
                   .replace("bookworm-security\nComponents: main", "bookworm-security\nComponents: contrib"))
    assert apt_backports.main(["--apt-dir", str(apt), "--os-release", str(os_release(tmp_path, "bookworm"))]) == 1
    assert "no 'bookworm main' apt source" in capsys.readouterr().err


def test_disabled_stanzas_are_skipped():
    assert apt_backports.parse_deb822("Types: deb\nEnabled: no\nURIs: http://x\nSuites: bookworm\nComponents: main\n") == []
