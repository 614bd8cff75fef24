"""host.sealed without root: image names, the argv of a build, and pruning under flocks."""

from __future__ import annotations

import fcntl
import os
import pathlib

from orchestrator.host import sealed
from orchestrator.host.sealed import SealedImages


def make_runner(path: pathlib.Path, text: str = "print('runner')\n") -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "runner.py").write_text(text)
    (path / "language.toml").write_text('name = "python"\n')
    return path


def test_an_image_is_named_by_the_tree_and_the_runners_content(tmp_path):
    runner = make_runner(tmp_path / "runner")
    tree_a, tree_b = tmp_path / "a", tmp_path / "b"
    tree_a.mkdir()
    tree_b.mkdir()
    name = sealed.image_name("python", tree_a, runner)
    assert name.startswith("python-") and name.endswith(".erofs")
    assert sealed.image_name("python", tree_a, runner) == name
    assert sealed.image_name("python", tree_b, runner) != name
    make_runner(runner, "print('edited')\n")
    assert sealed.image_name("python", tree_a, runner) != name


def test_the_build_binds_the_runner_in_a_private_namespace_and_skips_inline_data(tmp_path):
    argv = sealed.build_argv("/usr/bin/mkfs.erofs", pathlib.Path("/t"), pathlib.Path("/r"), pathlib.Path("/i"))
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert "-E noinline_data" in argv[6] and 'mount --bind -o ro "$1" "$2/opt/sandbox/runner"' in argv[6]
    assert argv[-4:] == ["/r", "/t", "/usr/bin/mkfs.erofs", "/i"]


def test_a_tree_without_the_runner_directory_is_refused_with_the_reason(tmp_path):
    images = SealedImages(tmp_path / "images", tmp_path / "root", mkfs="/bin/false")
    tree = tmp_path / "tree"
    tree.mkdir()
    assert images.prepare("python", tree, make_runner(tmp_path / "runner")) is None
    assert "no /opt/sandbox/runner directory" in images.status()["off"]["python"]
    assert images.image_for("python", tree) is None


def test_without_mkfs_the_language_is_not_sealed_and_status_says_why(tmp_path):
    images = SealedImages(tmp_path / "images", tmp_path / "root", mkfs=None)
    tree = tmp_path / "tree"
    (tree / "opt/sandbox/runner").mkdir(parents=True)
    assert images.prepare("python", tree, make_runner(tmp_path / "runner")) is None
    assert "apt-get install erofs-utils" in images.status()["off"]["python"]


def test_an_existing_image_is_used_and_held_and_prune_removes_only_what_nobody_holds(tmp_path):
    runner = make_runner(tmp_path / "runner")
    tree = tmp_path / "tree"
    (tree / "opt/sandbox/runner").mkdir(parents=True)
    directory = tmp_path / "images"
    directory.mkdir()
    ours = directory / sealed.image_name("python", tree, runner)
    ours.write_bytes(b"image")
    unused = directory / "python-0000000000000000.erofs"
    unused.write_bytes(b"old")
    theirs = directory / "nodejs-1111111111111111.erofs"
    theirs.write_bytes(b"another service's")
    young_tmp = directory / ".python-2222222222222222.erofs.1.tmp"
    young_tmp.write_bytes(b"a build under way")
    old_tmp = directory / ".python-3333333333333333.erofs.2.tmp"
    old_tmp.write_bytes(b"a build that died")
    os.utime(old_tmp, (1, 1))
    other_service = os.open(theirs, os.O_RDONLY)
    fcntl.flock(other_service, fcntl.LOCK_SH)
    images = SealedImages(directory, tmp_path / "root", mkfs=None)  # no build needed: the image is there
    try:
        assert images.prepare("python", tree, runner) == ours
        assert images.image_for("python", tree.resolve()) == ours
        assert (tmp_path / "root").is_dir() and not any((tmp_path / "root").iterdir())
        assert sorted(images.prune()) == sorted([unused.name, old_tmp.name])
        assert sorted(p.name for p in directory.iterdir()) == sorted([ours.name, theirs.name, young_tmp.name])
        assert images.status()["images"]["python"]["size_bytes"] == 5
    finally:
        images.close()
        os.close(other_service)
    # Once no service holds them, they go too.
    assert sorted(SealedImages(directory, tmp_path / "root").prune()) == sorted([ours.name, theirs.name])
