"""Where sandbox cgroups go: SANDBOX_CGROUP_PARENT, a systemd unit's delegated subtree, or the
default; and the service moving into its leaf, against fake v1 hybrid and v2 hierarchies in a
temp dir (no root: the delegation mark is read through an injected getxattr)."""

from __future__ import annotations

import pathlib

import pytest

from orchestrator.errors import HostError
from orchestrator.host import placement
from orchestrator.host.cgroups import Cgroups, CgroupLimits
from orchestrator.host.placement import (DEFAULT_PARENT, Placement, find_unit, is_delegated, open_cgroups,
                                         parse_proc_cgroup, plan_placement)

UNIT = "system.slice/gvisor-sandbox.service"

# /proc/self/cgroup of a Type=notify service with Delegate=yes under systemd 252, as seen in a
# container on this kind of host (cgroup v1 hybrid: systemd realises the unit in pids, devices,
# memory and cpu, not in cpuacct, blkio, cpuset or freezer).
HYBRID_PROC = f"""9:name=systemd:/{UNIT}
8:pids:/{UNIT}
7:blkio:/
6:freezer:/
5:devices:/{UNIT}
4:memory:/{UNIT}
3:cpuset:/
2:cpuacct:/
1:cpu:/{UNIT}
0::/{UNIT}
"""
V2_PROC = f"0::/{UNIT}\n"


def always(_unit: str) -> bool:
    return True


def never(_unit: str) -> bool:
    return False


# -- parsing --------------------------------------------------------------------------------

def test_parse_proc_cgroup():
    own = parse_proc_cgroup(HYBRID_PROC)
    assert own["name=systemd"] == own[""] == own["memory"] == f"/{UNIT}"
    assert own["cpuset"] == "/"
    assert parse_proc_cgroup("2:cpu,cpuacct:/user.slice\nbroken\n") == {"cpu,cpuacct": "/user.slice"}


@pytest.mark.parametrize(("path", "unit"), [
    (f"/{UNIT}", UNIT),
    (f"/{UNIT}/service", UNIT),  # already in its leaf
    ("/system.slice/docker-abc.scope/inner", "system.slice/docker-abc.scope"),
    ("/user.slice/user-0.slice/session-1.scope", "user.slice/user-0.slice/session-1.scope"),
    ("/", None),
    ("/user.slice", None),
    ("/gvisor-sandbox/python-1", None),
])
def test_find_unit(path, unit):
    assert find_unit(path) == unit


# -- planning ---------------------------------------------------------------------------------

def test_delegated_unit_gets_sandboxes_and_service_leaf():
    own = parse_proc_cgroup(HYBRID_PROC)
    plan = plan_placement(None, "5d2b0c", own, always)
    assert plan.parent == f"{UNIT}/sandboxes"
    assert plan.unit == UNIT and plan.is_delegated
    assert plan.service_leaf == f"{UNIT}/service"
    assert plan.describe() == (f"sandboxes in /{UNIT}/sandboxes (delegated by systemd unit gvisor-sandbox.service; "
                               f"the service runs in /{UNIT}/service)")


def test_v2_delegated_unit():
    plan = plan_placement(None, "5d2b0c", parse_proc_cgroup(V2_PROC), always)
    assert (plan.parent, plan.service_leaf) == (f"{UNIT}/sandboxes", f"{UNIT}/service")


def test_configured_parent_overrides_delegation():
    plan = plan_placement("/my/parent/", "5d2b0c", parse_proc_cgroup(HYBRID_PROC), always)
    assert plan == Placement(parent="my/parent", reason="SANDBOX_CGROUP_PARENT", own=parse_proc_cgroup(HYBRID_PROC))
    assert not plan.is_delegated and plan.service_leaf is None


def test_unit_without_delegation_keeps_the_default_and_says_why():
    plan = plan_placement(None, "5d2b0c", parse_proc_cgroup(HYBRID_PROC), never)
    assert plan.parent == DEFAULT_PARENT and not plan.is_delegated
    assert "gvisor-sandbox.service, which has no Delegate=yes" in plan.reason


@pytest.mark.parametrize(("invocation_id", "proc"), [
    (None, HYBRID_PROC),                      # a shell in a unit's cgroup, not started by systemd
    ("5d2b0c", "0::/\n"),                     # a container's root cgroup
    ("5d2b0c", "0::/user.slice/user-0.slice\n"),
    ("5d2b0c", ""),                           # no /proc/self/cgroup
])
def test_not_a_systemd_service(invocation_id, proc):
    plan = plan_placement(None, invocation_id, parse_proc_cgroup(proc), always)
    assert (plan.parent, plan.unit, plan.reason) == (DEFAULT_PARENT, None, "not a systemd service")


def test_legacy_hierarchy_without_unified_uses_name_systemd():
    own = parse_proc_cgroup(f"3:name=systemd:/{UNIT}\n2:memory:/{UNIT}\n")
    assert plan_placement(None, "5d2b0c", own, always).unit == UNIT


def test_is_delegated_reads_systemds_mark(tmp_path):
    marks = {str(tmp_path / "unified" / UNIT): {"trusted.delegate": b"1"},
             str(tmp_path / "v2" / UNIT): {"user.delegate": b"1"},
             str(tmp_path / "other" / UNIT): {"trusted.delegate": b"0"}}

    def getxattr(path: str, name: str) -> bytes:
        try:
            return marks[path][name]
        except KeyError:
            raise OSError(61, "No data available") from None

    assert is_delegated(tmp_path, UNIT, getxattr=getxattr)  # hybrid: the cgroup2 mount at unified
    assert is_delegated(tmp_path / "v2", UNIT, getxattr=getxattr)
    assert not is_delegated(tmp_path / "other", UNIT, getxattr=getxattr)
    assert not is_delegated(tmp_path / "none", UNIT, getxattr=getxattr)


def test_place_reads_the_process_cgroup_file(tmp_path, monkeypatch):
    proc = tmp_path / "cgroup"
    proc.write_text(V2_PROC)
    monkeypatch.setattr(placement, "is_delegated", lambda root, unit: unit == UNIT)
    assert placement.place(None, "5d2b0c", tmp_path, proc_cgroup=proc).unit == UNIT
    assert placement.place(None, None, tmp_path, proc_cgroup=proc).unit is None
    assert placement.place(None, "5d2b0c", tmp_path, proc_cgroup=tmp_path / "missing").parent == DEFAULT_PARENT


# -- the service moves into its leaf; our cgroups stay inside the unit ---------------------------

def _v2_node(node: pathlib.Path, controllers: str = "cpuset cpu io memory pids") -> None:
    node.mkdir(parents=True, exist_ok=True)
    (node / "cgroup.controllers").write_text(controllers + "\n")
    (node / "cgroup.subtree_control").write_text("")
    (node / "cgroup.procs").write_text("")


@pytest.fixture
def v2_unit(tmp_path) -> pathlib.Path:
    root = tmp_path / "v2"
    for node in (root, root / "system.slice", root / UNIT):
        _v2_node(node)
    return root


@pytest.fixture
def hybrid_unit(tmp_path) -> pathlib.Path:
    """The hierarchies of HYBRID_PROC, with the unit where systemd realised it."""
    root = tmp_path / "hybrid"
    for hierarchy in ("memory", "pids", "cpu", "cpuacct", "devices", "blkio", "cpuset", "freezer", "systemd",
                      "unified"):
        (root / hierarchy).mkdir(parents=True)
        (root / hierarchy / "cgroup.procs").write_text("")
    for hierarchy in ("memory", "pids", "cpu", "devices", "systemd", "unified"):
        (root / hierarchy / UNIT).mkdir(parents=True)
    return root


def test_v2_service_leaf_then_controllers_from_the_unit_down(v2_unit):
    plan = plan_placement(None, "5d2b0c", parse_proc_cgroup(V2_PROC), always)
    cgroups = open_cgroups(plan, v2_unit, move_pid=4242)
    assert (v2_unit / UNIT / "service" / "cgroup.procs").read_text() == "4242"
    _v2_node(v2_unit / UNIT / "sandboxes")  # the kernel would create the interface files
    cgroups.prepare(CgroupLimits(memory_bytes=1024**3))
    assert cgroups.cgroups_path("python-1") == f"/{UNIT}/sandboxes/python-1"
    assert (v2_unit / UNIT / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (v2_unit / UNIT / "sandboxes" / "memory.max").read_text() == "1073741824"
    # Nothing above the delegated unit is written: those belong to systemd.
    for node in (v2_unit, v2_unit / "system.slice"):
        assert (node / "cgroup.subtree_control").read_text() == ""
    cgroups.create("python-1", CgroupLimits(pids=64))
    assert cgroups.list_sandboxes() == ["python-1"]  # the service leaf is no sandbox


def test_hybrid_service_leaf_only_where_systemd_put_the_unit(hybrid_unit):
    plan = plan_placement(None, "5d2b0c", parse_proc_cgroup(HYBRID_PROC), always)
    cgroups = open_cgroups(plan, hybrid_unit, move_pid=4242)
    moved = sorted(p.relative_to(hybrid_unit).parts[0] for p in hybrid_unit.glob(f"*/{UNIT}/service"))
    assert moved == ["cpu", "devices", "memory", "pids", "systemd", "unified"]
    assert (hybrid_unit / "unified" / UNIT / "service" / "cgroup.procs").read_text() == "4242"
    assert not (hybrid_unit / "cpuset" / UNIT).exists()
    cgroups.prepare(CgroupLimits(memory_bytes=1024**3, cpus=1.5))
    limits = hybrid_unit / "memory" / UNIT / "sandboxes" / "memory.limit_in_bytes"
    assert limits.read_text() == "1073741824"
    assert (hybrid_unit / "cpu" / UNIT / "sandboxes" / "cpu.cfs_quota_us").read_text() == "150000"
    # cpuacct is not systemd's here: the unit's path is replicated there, as runsc does in cpuset.
    assert (hybrid_unit / "cpuacct" / UNIT / "sandboxes").is_dir()
    # A sandbox's cgroups as runsc leaves them after a crash (empty directories on a real cgroupfs).
    for hierarchy in ("memory", "pids", "cpuset", "systemd"):
        (hybrid_unit / hierarchy / UNIT / "sandboxes" / "python-1").mkdir(parents=True, exist_ok=True)
    assert cgroups.list_sandboxes() == ["python-1"]
    cgroups.remove("python-1")
    for written in hybrid_unit.glob(f"*/{UNIT}/sandboxes/*.*"):
        written.unlink()  # interface files: on a real cgroupfs they go with the directory
    cgroups.remove_parent()
    assert list(hybrid_unit.glob(f"*/{UNIT}/sandboxes")) == []
    assert (hybrid_unit / "memory" / UNIT / "service").is_dir()  # systemd trims the unit itself


def test_no_move_outside_a_delegated_unit(hybrid_unit):
    cgroups = Cgroups(hybrid_unit, DEFAULT_PARENT)
    with pytest.raises(HostError, match="not inside a delegated unit"):
        cgroups.enter_leaf(f"{UNIT}/service", 4242, parse_proc_cgroup(HYBRID_PROC))
    plan = plan_placement(None, None, parse_proc_cgroup(HYBRID_PROC), always)
    open_cgroups(plan, hybrid_unit, move_pid=4242)
    assert list(hybrid_unit.glob(f"*/{UNIT}/service")) == []


def test_move_fails_clearly_when_the_process_is_elsewhere(hybrid_unit):
    plan = plan_placement(None, "5d2b0c", parse_proc_cgroup(HYBRID_PROC), always)
    cgroups = Cgroups(hybrid_unit, plan.parent, delegated=plan.unit)
    with pytest.raises(HostError, match=f"it is in /{UNIT} in no hierarchy"):
        cgroups.enter_leaf(plan.service_leaf, 4242, parse_proc_cgroup("0::/elsewhere.service\n"))


def test_parent_outside_the_delegated_unit_is_refused(v2_unit):
    with pytest.raises(HostError, match="is not inside the delegated"):
        Cgroups(v2_unit, "gvisor-sandbox", delegated=UNIT)


def test_verify_writes_nothing(v2_unit):
    plan = plan_placement(None, "5d2b0c", parse_proc_cgroup(V2_PROC), always)
    cgroups = Cgroups(v2_unit, plan.parent, delegated=plan.unit)
    before = sorted(p for p in v2_unit.rglob("*"))
    cgroups.verify()
    assert sorted(p for p in v2_unit.rglob("*")) == before
    assert (v2_unit / UNIT / "cgroup.subtree_control").read_text() == ""
    (v2_unit / UNIT / "cgroup.controllers").write_text("cpu memory\n")
    with pytest.raises(HostError, match=r"controllers \['pids'\] are not available"):
        cgroups.verify()
