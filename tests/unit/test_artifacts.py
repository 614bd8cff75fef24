"""Artifact collection from a workspace written by untrusted code: allow-list, limits, and
never following a symlink or blocking on a FIFO."""

from __future__ import annotations

import base64
import os
import threading

import pytest

from orchestrator.artifacts import MAX_COUNT, MAX_SIZE, collect_artifacts, is_acceptable_name

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "workspace"
    (root / "artifacts").mkdir(parents=True)
    return root


def names(found):
    return [artifact["name"] for artifact in found]


@pytest.mark.parametrize(("name", "mime"), [
    ("chart.png", "image/png"),
    ("photo.jpg", "image/jpeg"),
    ("photo.JPEG", "image/jpeg"),
    ("drawing.svg", "image/svg+xml"),
    ("report.pdf", "application/pdf"),
    ("table.csv", "text/csv"),
    ("data.json", "application/json"),
    ("page.html", "text/html"),
])
def test_allowed_file_is_collected_with_mime_size_and_base64(workspace, name, mime):
    (workspace / "artifacts" / name).write_bytes(PNG)
    assert collect_artifacts(workspace) == [
        {"name": name, "mime_type": mime, "size": len(PNG), "content_b64": base64.b64encode(PNG).decode("ascii")}
    ]


@pytest.mark.parametrize("name", [
    "empty.png",  # (written empty below)
    ".hidden.png",
    "notes.txt",
    "script.py",
    "archive.tar.gz",
    "noext",
    "tab\there.png",
    "new\nline.png",
    "bell\x07.csv",
    "del\x7f.csv",
    "a..b.png",
    "back\\slash.png",
])
def test_unacceptable_files_are_skipped(workspace, name):
    (workspace / "artifacts" / name).write_bytes(b"" if name == "empty.png" else b"data")
    (workspace / "artifacts" / "ok.csv").write_bytes(b"a,b\n")
    assert names(collect_artifacts(workspace)) == ["ok.csv"]


@pytest.mark.parametrize(("name", "expected"), [
    ("chart.png", True), ("x.CSV", True), ("", False), (".png", False), ("a/b.png", False),
    ("..png", False), ("a\x00.png", False), ("é.png", True),
])
def test_is_acceptable_name(name, expected):
    assert is_acceptable_name(name) is expected


def test_symlink_to_a_file_outside_is_not_followed(workspace, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("SECRET")
    (workspace / "artifacts" / "leak.csv").symlink_to(secret)
    (workspace / "leak2.csv").symlink_to(secret)
    (workspace / "artifacts" / "real.csv").write_text("public")
    found = collect_artifacts(workspace)
    assert names(found) == ["real.csv"]
    assert all(base64.b64decode(a["content_b64"]) != b"SECRET" for a in found)


def test_artifacts_directory_replaced_by_a_symlink_is_not_followed(workspace, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.csv").write_text("SECRET")
    (workspace / "artifacts").rmdir()
    (workspace / "artifacts").symlink_to(elsewhere, target_is_directory=True)
    assert collect_artifacts(workspace) == []


def test_workspace_itself_a_symlink_is_refused(workspace, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(workspace, target_is_directory=True)
    with pytest.raises(OSError):
        collect_artifacts(link)


def test_fifo_does_not_block_and_is_skipped(workspace):
    os.mkfifo(workspace / "artifacts" / "x.csv")
    os.mkfifo(workspace / "y.csv")
    (workspace / "artifacts" / "z.csv").write_text("z")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(collect_artifacts(workspace)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "collect_artifacts blocked on a FIFO"
    assert names(result[0]) == ["z.csv"]


def test_directories_are_skipped(workspace):
    (workspace / "artifacts" / "dir.png").mkdir()
    assert collect_artifacts(workspace) == []


def test_file_over_the_size_limit_is_skipped(workspace):
    with open(workspace / "artifacts" / "big.csv", "wb") as handle:
        handle.truncate(MAX_SIZE + 1)
    with open(workspace / "artifacts" / "exact.csv", "wb") as handle:
        handle.truncate(MAX_SIZE)
    found = collect_artifacts(workspace)
    assert names(found) == ["exact.csv"]
    assert found[0]["size"] == 10 * 1024 * 1024


def test_at_most_ten_are_returned(workspace):
    for i in range(15):
        (workspace / "artifacts" / f"f{i:02d}.csv").write_text(str(i))
        (workspace / f"r{i:02d}.csv").write_text(str(i))
    found = collect_artifacts(workspace)
    assert MAX_COUNT == 10
    assert names(found) == [f"f{i:02d}.csv" for i in range(10)]


def test_root_files_fill_up_to_the_limit(workspace):
    for i in range(8):
        (workspace / "artifacts" / f"f{i}.csv").write_text(str(i))
    for i in range(5):
        (workspace / f"r{i}.csv").write_text(str(i))
    assert names(collect_artifacts(workspace)) == [f"f{i}.csv" for i in range(8)] + ["r0.csv", "r1.csv"]


def test_root_files_are_collected_except_excluded_and_shadowed(workspace):
    (workspace / "chart.png").write_bytes(b"root chart")
    (workspace / "data.json").write_bytes(b"root data")
    (workspace / "arguments.json").write_bytes(b"{}")
    (workspace / "main.py").write_bytes(b"print(1)")
    (workspace / "artifacts" / "data.json").write_bytes(b"artifact data")
    found = collect_artifacts(workspace, exclude=frozenset({"arguments.json"}))
    assert names(found) == ["data.json", "chart.png"]
    assert base64.b64decode(found[0]["content_b64"]) == b"artifact data"
    assert base64.b64decode(found[1]["content_b64"]) == b"root chart"


def test_no_artifacts_directory(tmp_path):
    (tmp_path / "plot.svg").write_text("<svg/>")
    assert names(collect_artifacts(tmp_path)) == ["plot.svg"]


def test_unreadable_file_is_skipped(workspace):
    if os.geteuid() == 0:
        pytest.skip("root reads files regardless of their mode")
    path = workspace / "artifacts" / "locked.csv"
    path.write_text("x")
    path.chmod(0)
    assert collect_artifacts(workspace) == []


def test_has_candidates_is_a_cheap_guard(tmp_path):
    from orchestrator.artifacts import has_candidates

    workspace = tmp_path / "ws"
    (workspace / "artifacts").mkdir(parents=True)
    (workspace / "main.py").write_text("x")
    assert not has_candidates(workspace, exclude=frozenset({"main.py"}))
    (workspace / "notes.txt").write_text("not an allowed extension")
    assert not has_candidates(workspace, exclude=frozenset({"main.py"}))
    (workspace / "artifacts" / "plot.png").write_bytes(b"\x89PNG")
    assert has_candidates(workspace, exclude=frozenset({"main.py"}))
    (workspace / "artifacts" / "plot.png").unlink()
    (workspace / "table.csv").write_text("a,b\n")
    assert has_candidates(workspace, exclude=frozenset({"main.py"}))
    assert not has_candidates(workspace, exclude=frozenset({"main.py", "table.csv"}))
