"""bundles/: the built spec pinned by golden files, the schema and each named semantic check,
the atomic writer, and the import boundary of the pure packages.

Regenerate the goldens after an intended change with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import os
import pathlib
import stat

import pytest

from bundles.spec import SpecParams, build_spec
from bundles.validate import SEMANTIC_CHECKS, SpecError, schema_problems, spec_problems, validate_spec
from bundles.writer import render_spec, write_bundle

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"

PYTHON_PARAMS = SpecParams(
    rootfs="/var/lib/gvisor-sandbox/rootfs/python/current/rootfs",
    args=("python3", "-I", "-B", "/opt/sandbox/runner/runner.py"),
    env={"PATH": "/usr/local/bin:/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": "/workspace"},
    workspace_source="/run/gvisor-sandbox/sandboxes/sb-1/workspace",
    runner_source="/opt/gvisor-sandbox/languages/python",
    cgroups_path="/gvisor-sandbox/sb-1",
    memory_bytes=256 * 1024**2,
    pids=128,
    tmp_bytes=64 * 1024**2,
    annotations={"dev.gvisor-sandbox.language": "python"},
)

SCRIPT_SECCOMP_PARAMS = SpecParams(
    rootfs="/srv/rootfs/bash",
    args=("/bin/bash", "/workspace/main.sh"),
    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    workspace_source="/run/gvisor-sandbox/sandboxes/sb-2/workspace",
    cgroups_path="/gvisor-sandbox/sb-2",
    memory_bytes=64 * 1024**2,
    pids=64,
    tmp_bytes=16 * 1024**2,
    uid=20000,
    gid=20001,
    cpu_shares=512,
    seccomp={
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["exit_group", "read", "write"], "action": "SCMP_ACT_ALLOW"}],
    },
)

GOLDEN_CASES = {"spec_python.json": PYTHON_PARAMS, "spec_script_seccomp.json": SCRIPT_SECCOMP_PARAMS}


@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_spec_matches_golden(golden):
    text = render_spec(build_spec(GOLDEN_CASES[golden]))
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} is missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8")


def test_build_spec_is_deterministic_and_does_not_share_input():
    params = SCRIPT_SECCOMP_PARAMS
    first, second = build_spec(params), build_spec(params)
    assert first == second
    first["linux"]["seccomp"]["defaultAction"] = "SCMP_ACT_ALLOW"
    assert params.seccomp["defaultAction"] == "SCMP_ACT_ERRNO"


def test_built_spec_facts():
    spec = build_spec(PYTHON_PARAMS)
    assert spec["process"]["env"] == ["HOME=/workspace", "MPLBACKEND=Agg", "PATH=/usr/local/bin:/usr/bin:/bin"]
    assert spec["linux"]["resources"] == {"memory": {"limit": 268435456, "swap": 268435456}, "pids": {"limit": 128}}
    assert "seccomp" not in spec["linux"]
    assert [m["destination"] for m in spec["mounts"]][-1] == "/opt/sandbox/runner"
    script = build_spec(SCRIPT_SECCOMP_PARAMS)
    assert "/opt/sandbox/runner" not in [m["destination"] for m in script["mounts"]]
    assert "annotations" not in script
    assert script["linux"]["resources"]["cpu"] == {"shares": 512}


@pytest.mark.parametrize("params", [PYTHON_PARAMS, SCRIPT_SECCOMP_PARAMS], ids=["python", "script_seccomp"])
def test_built_specs_validate(params):
    spec = build_spec(params)
    assert spec_problems(spec) == []
    validate_spec(spec)


def _set(path: str, value):
    def mutate(spec):
        *parents, last = path.split("/")
        node = spec
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return mutate


DELETE = object()


@pytest.mark.parametrize(("mutate", "expected"), [
    (_set("ociVersion", DELETE), "schema: (root): 'ociVersion' is a required property"),
    (_set("process/args", "python3"), "schema: process/args: 'python3' is not of type 'array'"),
    (_set("process/user/uid", "10001"), "schema: process/user/uid: '10001' is not of type 'integer'"),
    (_set("hostname", 7), "schema: hostname: 7 is not of type 'string'"),
    (_set("linux/namespaces/0", {"type": "galaxy"}), "schema: linux/namespaces/0: {'type': 'galaxy'} is not valid under any of the given schemas"),
], ids=["no_ociVersion", "args_string", "uid_string", "hostname_int", "bad_namespace"])
def test_schema_violations_are_reported(mutate, expected):
    spec = build_spec(PYTHON_PARAMS)
    mutate(spec)
    problems = schema_problems(spec)
    assert any(problem.startswith(expected) for problem in problems), problems
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert any(problem.startswith(expected) for problem in caught.value.problems)
    assert str(caught.value).startswith("invalid sandbox spec: ")


def test_a_type_error_in_the_spec_is_reported_not_raised():
    spec = build_spec(PYTHON_PARAMS)
    spec["linux"]["resources"]["memory"]["limit"] = "256m"
    spec["process"] = "python3"
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    problems = caught.value.problems
    assert "schema: process: 'python3' is not of type 'object'" in problems
    assert "resource_limits: cannot check a malformed spec" in problems
    assert "unprivileged_user: cannot check a malformed spec" in problems


def _add_mount(mount):
    def mutate(spec):
        spec["mounts"].append(mount)
    return mutate


def _runner_mount_options(options):
    def mutate(spec):
        runner = next(m for m in spec["mounts"] if m["destination"] == "/opt/sandbox/runner")
        runner["options"] = options
    return mutate


def _drop_namespace(kind):
    def mutate(spec):
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != kind]
    return mutate


def _env(*entries):
    def mutate(spec):
        spec["process"]["env"] += list(entries)
    return mutate


def _tmp_options(options):
    def mutate(spec):
        next(m for m in spec["mounts"] if m["destination"] == "/tmp")["options"] = options
    return mutate


def _drop_workspace(spec):
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/workspace"]


def _annotate(**entries):
    def mutate(spec):
        spec.setdefault("annotations", {}).update({key.replace("_", "."): value for key, value in entries.items()})
    return mutate


SEMANTIC_CASES = [
    ("root_read_only", _set("root/readonly", False), "root filesystem is not read-only"),
    ("root_read_only", _set("root/readonly", DELETE), "root filesystem is not read-only"),
    ("unprivileged_user", _set("process/user/uid", 0), "process runs as uid 0"),
    ("unprivileged_user", _set("process/user/gid", 0), "process runs with gid 0"),
    ("unprivileged_user", _set("process/user/additionalGids", [10001, 0]), "process runs with gid 0"),
    ("no_capabilities", _set("process/capabilities/bounding", ["CAP_SYS_ADMIN"]), "capability set bounding is not empty"),
    ("no_capabilities", _set("process/capabilities", DELETE),
     "capabilities are not set explicitly (the runtime's defaults would apply)"),
    ("no_new_privileges", _set("process/noNewPrivileges", False), "noNewPrivileges is not set"),
    ("minimal_env", _env("SANDBOX_EXECUTOR_MANAGER_API_TOKEN=x"),
     "environment variable SANDBOX_EXECUTOR_MANAGER_API_TOKEN looks like a secret"),
    ("minimal_env", _env("AWS_REGION=eu"), "environment variable AWS_REGION looks like a secret"),
    ("minimal_env", _env("HOME=/root"), "environment has duplicate names"),
    ("private_namespaces", _drop_namespace("network"), "namespace network is not private"),
    ("private_namespaces", _drop_namespace("pid"), "namespace pid is not private"),
    ("private_namespaces", _set("linux/namespaces/4", {"type": "network", "path": "/proc/1/ns/net"}),
     "namespace network joins a host path"),
    ("mounts", _runner_mount_options(["rbind", "rw"]), "bind mount at /opt/sandbox/runner is writable"),
    ("mounts", _add_mount({"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "ro"]}),
     "unexpected bind mount at /host"),
    ("mounts", _add_mount({"destination": "/host", "type": "none", "source": "/", "options": ["rbind", "rw"]}),
     "bind mount at /host is writable"),
    ("mounts", _tmp_options(["nosuid", "mode=1777"]), "tmpfs at /tmp has no size limit"),
    ("mounts", _drop_workspace, "no workspace mount"),
    ("resource_limits", _set("linux/resources/memory/swap", 512 * 1024**2),
     "memory+swap differs from the memory limit (swap would extend it)"),
    ("resource_limits", _set("linux/resources/memory", {}), "memory is not limited"),
    ("resource_limits", _set("linux/resources/pids", {"limit": 0}), "pids are not limited"),
    ("resource_limits", _set("linux/cgroupsPath", DELETE), "no cgroupsPath: limits would not be enforced"),
    ("no_terminal", _set("process/terminal", True), "process asks for a terminal"),
    ("sealed_root", _annotate(**{"dev_gvisor_spec_rootfs_source": "/img.erofs", "dev_gvisor_spec_rootfs_type": "bind"}),
     "rootfs annotation type 'bind' is not erofs"),
    ("sealed_root", _annotate(**{"dev_gvisor_spec_rootfs_source": "img.erofs", "dev_gvisor_spec_rootfs_type": "erofs"}),
     "rootfs annotation source 'img.erofs' is not an absolute path"),
    ("sealed_root", _annotate(**{"dev_gvisor_spec_rootfs_source": "/img.erofs", "dev_gvisor_spec_rootfs_type": "erofs",
                                 "dev_gvisor_spec_rootfs_overlay": "memory"}),
     "unexpected rootfs annotation dev.gvisor.spec.rootfs.overlay (an overlay would make the root writable)"),
]


SEALED_PARAMS = dataclasses.replace(PYTHON_PARAMS, rootfs="/run/gvisor-sandbox/sealed-root",
                                    sealed_image="/var/lib/gvisor-sandbox/sealed/python-0123456789abcdef.erofs",
                                    workspace_bytes=64 * 1024**2)


def test_a_sealed_spec_has_no_host_directory_but_its_empty_root():
    """No bind mount at all (runsc then starts no gofer): the root comes from the EROFS image,
    the workspace is a bounded tmpfs the sandbox uid owns; it passes every check."""
    spec = build_spec(SEALED_PARAMS)
    validate_spec(spec)
    assert [m for m in spec["mounts"] if m["type"] == "bind"] == []
    workspace = next(m for m in spec["mounts"] if m["destination"] == "/workspace")
    assert workspace["type"] == "tmpfs"
    assert {"uid=10001", "gid=10001", f"size={64 * 1024**2}", "mode=0755"} <= set(workspace["options"])
    assert spec["root"] == {"path": "/run/gvisor-sandbox/sealed-root", "readonly": True}
    assert spec["annotations"]["dev.gvisor.spec.rootfs.source"] == SEALED_PARAMS.sealed_image
    assert spec["annotations"]["dev.gvisor.spec.rootfs.type"] == "erofs"
    assert spec["annotations"]["dev.gvisor-sandbox.language"] == "python"


def test_a_sealed_spec_needs_the_workspace_size():
    with pytest.raises(ValueError, match="workspace_bytes"):
        build_spec(dataclasses.replace(SEALED_PARAMS, workspace_bytes=None))


def test_every_semantic_check_has_a_case():
    assert {name for name, _, _ in SEMANTIC_CASES} == set(SEMANTIC_CHECKS)


@pytest.mark.parametrize(("check", "mutate", "expected"), SEMANTIC_CASES,
                         ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(SEMANTIC_CASES)])
def test_semantic_check_fires(check, mutate, expected):
    spec = build_spec(PYTHON_PARAMS)
    mutate(spec)
    assert schema_problems(spec) == []  # the mutation is schema-valid: only the named check sees it
    assert SEMANTIC_CHECKS[check](copy.deepcopy(spec)) != []
    problems = spec_problems(spec)
    assert f"{check}: {expected}" in problems
    assert all(problem.startswith(f"{check}: ") for problem in problems), problems
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert caught.value.problems == problems


def test_write_bundle_writes_config_atomically_with_mode_0600(tmp_path):
    spec = build_spec(PYTHON_PARAMS)
    bundle = tmp_path / "bundles" / "sb-1"
    target = write_bundle(bundle, spec)
    assert target == bundle / "config.json"
    assert target.read_text(encoding="utf-8") == render_spec(spec)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.stat().st_mode) & 0o077 == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json"]  # no temp file left behind

    # A rewrite replaces the file (a new inode), never truncates the old one in place.
    before = target.stat().st_ino
    other = build_spec(SCRIPT_SECCOMP_PARAMS)
    write_bundle(bundle, other)
    assert target.read_text(encoding="utf-8") == render_spec(other)
    assert target.stat().st_ino != before
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json"]


def test_render_spec_is_canonical():
    assert render_spec({"b": 1, "a": ["é"]}) == '{\n  "a": [\n    "é"\n  ],\n  "b": 1\n}\n'


FORBIDDEN_IMPORTS = ("asyncio", "subprocess", "aiohttp", "pyroute2", "orchestrator")


def _imported_modules(path: pathlib.Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            modules.add(str(node.args[0].value))
    return modules


PURE_MODULES = sorted(p for package in ("bundles", "seccomp") for p in (REPO / package).rglob("*.py"))


def test_pure_packages_have_modules():
    names = {p.relative_to(REPO).as_posix() for p in PURE_MODULES}
    assert {"bundles/spec.py", "bundles/validate.py", "bundles/writer.py", "seccomp/profile.py"} <= names


@pytest.mark.parametrize("path", PURE_MODULES, ids=[p.relative_to(REPO).as_posix() for p in PURE_MODULES])
def test_pure_packages_import_no_side_effect_libraries(path):
    bad = sorted(module for module in _imported_modules(path)
                 if module.split(".")[0] in FORBIDDEN_IMPORTS)
    assert bad == [], f"{path.relative_to(REPO)} imports {bad}"


def test_import_parser_sees_forbidden_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio.subprocess\nfrom orchestrator.errors import ConfigError\n"
                      "import importlib\nimportlib.import_module('pyroute2')\n")
    assert _imported_modules(sample) == {"asyncio.subprocess", "orchestrator.errors", "importlib", "pyroute2"}


# -- the schema verdict is cached per shape: the per-sandbox strings must not matter ---------------

def _resolve(schema_file: str, pointer: str) -> dict:
    import json as _json

    from bundles.validate import SCHEMA_DIR

    node = _json.loads((SCHEMA_DIR / schema_file).read_text())
    for part in pointer.strip("/").split("/"):
        node = node[part]
    while "$ref" in node:
        target_file, _, target = node["$ref"].partition("#")
        node = _resolve(target_file or schema_file, target)
    return node


@pytest.mark.parametrize(("schema_file", "pointer"), [
    ("config-schema.json", "/properties/root/properties/path"),
    ("defs.json", "/definitions/Mount/properties/source"),
    ("config-linux.json", "/linux/properties/cgroupsPath"),
    ("defs-linux.json", "/definitions/NamespaceReference/properties/path"),
    ("defs.json", "/definitions/mapStringString/patternProperties/.{1,}"),
])
def test_volatile_fields_are_plain_strings_in_the_schema(schema_file, pointer):
    node = _resolve(schema_file, pointer)
    assert node.get("type") == "string"
    assert not {"pattern", "format", "enum", "minLength", "maxLength"} & set(node)


def test_cached_verdict_still_sees_wrong_types_in_volatile_fields():
    from bundles.validate import schema_problems

    spec = build_spec(PYTHON_PARAMS)
    spec["root"]["path"] = 5
    assert any("root/path" in problem for problem in schema_problems(spec))
    spec = build_spec(PYTHON_PARAMS)
    spec["mounts"][0]["source"] = ["x"]
    assert any("mounts/0/source" in problem for problem in schema_problems(spec))
