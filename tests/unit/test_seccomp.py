"""Seccomp profiles as data: loading, derivation, errors, and validity inside a spec."""

from __future__ import annotations

import json

import pytest

from bundles.spec import SpecParams, build_spec
from bundles.validate import spec_problems
from seccomp.profile import ProfileError, load_profile, profile_names


def names(profile: dict) -> list[str]:
    return profile["syscalls"][0]["names"]


def test_shipped_profiles():
    assert profile_names() == ["default", "strict"]


def test_default_allows_what_an_interpreter_needs_and_sorts_it():
    allowed = names(load_profile("default"))
    assert allowed == sorted(allowed) and len(allowed) > 250
    for syscall in ("read", "write", "openat", "mmap", "clone", "clone3", "execve", "futex", "socket", "arch_prctl"):
        assert syscall in allowed
    for syscall in ("mount", "ptrace", "reboot", "init_module", "bpf", "unshare", "setns", "keyctl"):
        assert syscall not in allowed
    assert load_profile("default")["defaultAction"] == "SCMP_ACT_ERRNO"


def test_strict_is_default_minus_its_deny_list():
    default, strict = set(names(load_profile("default"))), set(names(load_profile("strict")))
    removed = default - strict
    assert strict < default
    assert {"socket", "connect", "execve", "fork", "symlink"} <= removed
    assert "read" in strict and "sendto" in strict and "recvfrom" in strict  # the runner's control socket


def write(directory, name, data):
    (directory / f"{name}.json").write_text(json.dumps(data))


def test_derivation_errors(tmp_path):
    write(tmp_path, "base", {"allow": ["read", "write"]})
    write(tmp_path, "bad", {"base": "base", "deny": ["mount"]})
    write(tmp_path, "loop", {"base": "loop", "deny": []})
    write(tmp_path, "empty", {"allow": []})
    assert names(load_profile("base", tmp_path)) == ["read", "write"]
    with pytest.raises(ProfileError, match="does not allow"):
        load_profile("bad", tmp_path)
    with pytest.raises(ProfileError, match="too deep"):
        load_profile("loop", tmp_path)
    with pytest.raises(ProfileError, match="non-empty"):
        load_profile("empty", tmp_path)
    with pytest.raises(ProfileError, match="unknown seccomp profile"):
        load_profile("../etc/passwd", tmp_path)


@pytest.mark.parametrize("name", ["default", "strict"])
def test_profiles_fit_the_oci_schema(name):
    params = SpecParams(rootfs="/r", args=("python3",), env={"PATH": "/usr/bin"}, workspace_source="/w",
                        cgroups_path="/g/x", memory_bytes=1 << 28, pids=128, tmp_bytes=1 << 26,
                        seccomp=load_profile(name))
    assert spec_problems(build_spec(params)) == []
