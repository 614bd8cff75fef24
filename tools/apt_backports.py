"""``make setup`` on Debian bookworm: add a bookworm-backports apt source, the Debian way.

bookworm's own runsc (0.0~20221219) cannot checkpoint without compression, so snapshots are
off with it; bookworm-backports carries 0.0~20240729.  The mirror (and its keyring) is taken
from the host's own apt sources, so a local mirror keeps working: this file names no mirror.

    python3 tools/apt_backports.py [--sources-dir /etc/apt] [--os-release /etc/os-release]

Prints what it did; exits 0 when a backports source is (now) configured or when the host is
not bookworm (nothing to do: the distribution's or the operator's own runsc is used), 1 when
no bookworm source with the main component was found to derive one from.  Standard library
only: it runs before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from dataclasses import dataclass

RELEASE = "bookworm"
BACKPORTS = f"{RELEASE}-backports"
TARGET = "gvisor-sandbox-backports.sources"


@dataclass(frozen=True)
class Source:
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def parse_deb822(text: str) -> list[Source]:
    """Sources of type ``deb`` in a ``.sources`` file (stanzas separated by blank lines)."""
    sources = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        sources.append(Source(tuple(fields.get("uris", "").split()), tuple(fields.get("suites", "").split()),
                              tuple(fields.get("components", "").split()), fields.get("signed-by") or None))
    return sources


def parse_one_line(text: str) -> list[Source]:
    """Sources of type ``deb`` in a one-line ``.list`` file (options in brackets)."""
    sources = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        signed_by = None
        if rest.startswith("["):
            options, _, rest = rest[1:].partition("]")
            for option in options.split():
                name, _, value = option.partition("=")
                if name == "signed-by":
                    signed_by = value
        parts = rest.split()
        if len(parts) >= 3:
            sources.append(Source((parts[0],), (parts[1],), tuple(parts[2:]), signed_by))
    return sources


def read_sources(apt_dir: pathlib.Path) -> list[Source]:
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    sources = [source for path in files if path.is_file() for source in parse_one_line(path.read_text())]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        sources += parse_deb822(path.read_text())
    return sources


def backports_stanza(sources: list[Source]) -> str | None:
    """The stanza to write, or None when no ``bookworm ... main`` source exists to copy."""
    for source in sources:
        if RELEASE in source.suites and "main" in source.components and source.uris:
            lines = ["Types: deb", f"URIs: {source.uris[0]}", f"Suites: {BACKPORTS}", "Components: main"]
            if source.signed_by:
                lines.append(f"Signed-By: {source.signed_by}")
            return "\n".join(lines) + "\n"
    return None


def codename(os_release: pathlib.Path) -> str | None:
    try:
        for line in os_release.read_text().splitlines():
            name, _, value = line.partition("=")
            if name == "VERSION_CODENAME":
                return value.strip().strip('"')
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apt-dir", type=pathlib.Path, default=pathlib.Path("/etc/apt"))
    parser.add_argument("--os-release", type=pathlib.Path, default=pathlib.Path("/etc/os-release"))
    args = parser.parse_args(argv)
    release = codename(args.os_release)
    if release != RELEASE:
        print(f"backports: this host is {release or 'not Debian'}, not {RELEASE}: using its own runsc")
        return 0
    sources = read_sources(args.apt_dir)
    if any(BACKPORTS in source.suites for source in sources):
        print(f"backports: a {BACKPORTS} source is already configured")
        return 0
    stanza = backports_stanza(sources)
    if stanza is None:
        print(f"backports: no '{RELEASE} main' apt source to take the mirror from; add {BACKPORTS} yourself",
              file=sys.stderr)
        return 1
    target = args.apt_dir / "sources.list.d" / TARGET
    target.write_text(stanza)
    print(f"backports: wrote {target} (mirror of the host's {RELEASE} source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
