"""Validation of a sandbox's OCI config: the runtime-spec JSON schema, then named checks.

The schema is the OCI runtime-spec's own (vendored under ``schema/``, pinned version, with its
licence).  The semantic checks state what the schema cannot: the properties every sandbox of
this service must have.  Each check is a function ``spec -> list of problems`` with a name;
``validate_spec`` runs all of them and raises ``SpecError`` listing every problem found.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from collections.abc import Callable

import jsonschema
import referencing
from referencing.jsonschema import DRAFT4

from bundles.spec import (ALL_CAPABILITY_SETS, NAMESPACES, NETNS_DIR, RESOLV_CONF, ROOTFS_SOURCE_ANNOTATION,
                          ROOTFS_TYPE_ANNOTATION, RUNNER_MOUNT, WORKSPACE)

SCHEMA_VERSION = "1.0.2"
SCHEMA_DIR = pathlib.Path(__file__).resolve().parent / "schema" / f"runtime-spec-v{SCHEMA_VERSION}"
# Names that suggest a secret of the service's own; no sandbox env var may look like one.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|PRIVATE_KEY|^SANDBOX_EXECUTOR|^AWS_",
                          re.IGNORECASE)
_NETNS_NAME = re.compile(r"[A-Za-z0-9][\w.+-]{0,200}", re.ASCII)


class SpecError(ValueError):
    """The config breaks the OCI schema or one of our semantic checks."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid sandbox spec: " + "; ".join(problems))
        self.problems = problems


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((path.name, referencing.Resource.from_contents(contents, default_specification=DRAFT4)))
    registry = referencing.Registry().with_resources(resources)
    root = registry.contents("config-schema.json")
    return jsonschema.Draft4Validator(root, registry=registry)


# Host paths and names that differ between otherwise identical sandboxes.  In the pinned
# schema each of them is a plain string (FilePath or "type": "string", no pattern), so
# replacing them by another string cannot change the verdict; tests pin that assumption.
VOLATILE_PLACEHOLDER = "<per-sandbox>"


def _without_volatile(spec: dict) -> dict:
    """A copy of ``spec`` with the per-sandbox strings replaced by one placeholder."""
    shape = json.loads(json.dumps(spec))
    if isinstance(shape.get("root"), dict) and isinstance(shape["root"].get("path"), str):
        shape["root"]["path"] = VOLATILE_PLACEHOLDER
    linux = shape.get("linux")
    if isinstance(linux, dict):
        if isinstance(linux.get("cgroupsPath"), str):
            linux["cgroupsPath"] = VOLATILE_PLACEHOLDER
        for namespace in linux.get("namespaces", []) if isinstance(linux.get("namespaces"), list) else []:
            if isinstance(namespace, dict) and isinstance(namespace.get("path"), str):
                namespace["path"] = VOLATILE_PLACEHOLDER
    for mount in shape.get("mounts", []) if isinstance(shape.get("mounts"), list) else []:
        if isinstance(mount, dict) and isinstance(mount.get("source"), str):
            mount["source"] = VOLATILE_PLACEHOLDER
    if isinstance(shape.get("annotations"), dict):
        shape["annotations"] = {k: VOLATILE_PLACEHOLDER if isinstance(v, str) else v
                                for k, v in shape["annotations"].items()}
    return shape


@functools.lru_cache(maxsize=256)
def _schema_problems_of(canonical: str) -> tuple[str, ...]:
    spec = json.loads(canonical)
    problems = []
    for error in sorted(_validator().iter_errors(spec), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        problems.append(f"schema: {where}: {error.message}")
    return tuple(problems)


def schema_problems(spec: dict) -> list[str]:
    """Every way ``spec`` breaks the vendored OCI runtime-spec schema.

    Full jsonschema validation costs ~8 ms, on the cold path of every request; specs that
    differ only in per-sandbox paths and ids get the same verdict, so it is computed once
    per shape (problems then name the placeholder instead of the path)."""
    return list(_schema_problems_of(json.dumps(_without_volatile(spec), sort_keys=True)))


def check_root_read_only(spec: dict) -> list[str]:
    return [] if spec.get("root", {}).get("readonly") is True else ["root filesystem is not read-only"]


def check_unprivileged_user(spec: dict) -> list[str]:
    user = spec.get("process", {}).get("user", {})
    problems = []
    if user.get("uid", 0) == 0:
        problems.append("process runs as uid 0")
    if user.get("gid", 0) == 0 or 0 in user.get("additionalGids", []):
        problems.append("process runs with gid 0")
    return problems


def check_no_capabilities(spec: dict) -> list[str]:
    caps = spec.get("process", {}).get("capabilities")
    if caps is None:
        return ["capabilities are not set explicitly (the runtime's defaults would apply)"]
    return [f"capability set {name} is not empty" for name in ALL_CAPABILITY_SETS if caps.get(name) != []]


def check_no_new_privileges(spec: dict) -> list[str]:
    return [] if spec.get("process", {}).get("noNewPrivileges") is True else ["noNewPrivileges is not set"]


def check_minimal_env(spec: dict) -> list[str]:
    problems = []
    names = [entry.partition("=")[0] for entry in spec.get("process", {}).get("env", [])]
    if len(names) != len(set(names)):
        problems.append("environment has duplicate names")
    problems += [f"environment variable {name} looks like a secret" for name in names if _SECRET_NAME.search(name)]
    return problems


def is_our_netns_path(path: str) -> bool:
    """A named network namespace directly under ``NETNS_DIR`` (egress mode's, made by the
    orchestrator), never ``/proc/<pid>/ns/net`` or anything else of the host's."""
    directory, _, name = path.rpartition("/")
    return directory == NETNS_DIR and bool(_NETNS_NAME.fullmatch(name))


def check_private_namespaces(spec: dict) -> list[str]:
    """Every namespace is new, except that the network namespace may be one of ours."""
    present = {ns.get("type"): ns for ns in spec.get("linux", {}).get("namespaces", [])}
    problems = [f"namespace {kind} is not private" for kind in NAMESPACES if kind not in present]
    problems += [f"namespace {kind} joins a host path" for kind, ns in present.items()
                 if ns.get("path") is not None and not (kind == "network" and is_our_netns_path(ns["path"]))]
    return problems


def check_mounts(spec: dict) -> list[str]:
    """Only the workspace bind is writable; every other bind is read-only; tmpfs is bounded."""
    problems = []
    for mount in spec.get("mounts", []):
        options = mount.get("options", [])
        destination = mount.get("destination")
        # runsc treats any mount with a bind/rbind option as a bind, whatever its type.
        if mount.get("type") == "bind" or {"bind", "rbind"} & set(options):
            if destination == WORKSPACE:
                continue
            if destination not in (RUNNER_MOUNT, RESOLV_CONF):
                problems.append(f"unexpected bind mount at {destination}")
            if "ro" not in options:
                problems.append(f"bind mount at {destination} is writable")
        elif mount.get("type") == "tmpfs" and not any(opt.startswith("size=") for opt in options):
            problems.append(f"tmpfs at {destination} has no size limit")
    if not any(m.get("destination") == WORKSPACE for m in spec.get("mounts", [])):
        problems.append("no workspace mount")
    return problems


def check_sealed_root(spec: dict) -> list[str]:
    """A root from runsc's rootfs annotations is a read-only EROFS image at an absolute path."""
    annotations = spec.get("annotations") or {}
    source, kind = annotations.get(ROOTFS_SOURCE_ANNOTATION), annotations.get(ROOTFS_TYPE_ANNOTATION)
    if source is None and kind is None:
        return []
    problems = []
    if kind != "erofs":
        problems.append(f"rootfs annotation type {kind!r} is not erofs")
    if not isinstance(source, str) or not source.startswith("/"):
        problems.append(f"rootfs annotation source {source!r} is not an absolute path")
    unknown = sorted(key for key in annotations if key.startswith("dev.gvisor.spec.rootfs.")
                     and key not in (ROOTFS_SOURCE_ANNOTATION, ROOTFS_TYPE_ANNOTATION))
    problems += [f"unexpected rootfs annotation {key} (an overlay would make the root writable)" for key in unknown]
    return problems


def check_resource_limits(spec: dict) -> list[str]:
    linux = spec.get("linux", {})
    resources = linux.get("resources", {})
    memory = resources.get("memory", {})
    problems = []
    if not linux.get("cgroupsPath"):
        problems.append("no cgroupsPath: limits would not be enforced")
    if not memory.get("limit", 0) > 0:
        problems.append("memory is not limited")
    elif memory.get("swap") != memory.get("limit"):
        problems.append("memory+swap differs from the memory limit (swap would extend it)")
    if not resources.get("pids", {}).get("limit", 0) > 0:
        problems.append("pids are not limited")
    return problems


def check_no_terminal(spec: dict) -> list[str]:
    return ["process asks for a terminal"] if spec.get("process", {}).get("terminal") else []


SEMANTIC_CHECKS: dict[str, Callable[[dict], list[str]]] = {
    "root_read_only": check_root_read_only,
    "unprivileged_user": check_unprivileged_user,
    "no_capabilities": check_no_capabilities,
    "no_new_privileges": check_no_new_privileges,
    "minimal_env": check_minimal_env,
    "private_namespaces": check_private_namespaces,
    "mounts": check_mounts,
    "sealed_root": check_sealed_root,
    "resource_limits": check_resource_limits,
    "no_terminal": check_no_terminal,
}


def spec_problems(spec: dict) -> list[str]:
    """Schema problems, then each named check's problems prefixed with its name."""
    problems = schema_problems(spec)
    for name, check in SEMANTIC_CHECKS.items():
        try:
            problems += [f"{name}: {problem}" for problem in check(spec)]
        except (AttributeError, TypeError):  # a part has the wrong type: the schema said which
            problems.append(f"{name}: cannot check a malformed spec")
    return problems


def validate_spec(spec: dict) -> None:
    """Raise ``SpecError`` unless ``spec`` passes the schema and every semantic check."""
    problems = spec_problems(spec)
    if problems:
        raise SpecError(problems)
