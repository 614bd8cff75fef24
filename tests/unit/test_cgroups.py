"""The cgroup writer against fake v1 and v2 hierarchies in a temp dir (no root needed: these are
plain directories and files standing in for the kernel's)."""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile

import pytest

from orchestrator.errors import HostError
from orchestrator.host.cgroups import CgroupLimits, Cgroups, Usage, detect_version

PARENT = "gvisor-sandbox"
LIMITS = CgroupLimits(memory_bytes=256 * 1024**2, pids=128, cpus=0.5, cpu_weight=50)


@pytest.fixture
def v1_root(tmp_path) -> pathlib.Path:
    root = tmp_path / "cgroup-v1"
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        (root / controller).mkdir(parents=True)
    return root


@pytest.fixture
def v2_root(tmp_path) -> pathlib.Path:
    root = tmp_path / "cgroup-v2"
    root.mkdir()
    _v2_node(root)
    return root


def _v2_node(node: pathlib.Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> None:
    node.mkdir(parents=True, exist_ok=True)
    (node / "cgroup.controllers").write_text(controllers + "\n")
    (node / "cgroup.subtree_control").write_text("")


def files(directory: pathlib.Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}


# -- detection and paths ----------------------------------------------------------------------

def test_detect_version(v1_root, v2_root, tmp_path):
    assert detect_version(v1_root) == 1
    assert detect_version(v2_root) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(HostError, match="neither a cgroup v2 mount nor a v1 hierarchy"):
        detect_version(tmp_path / "empty")
    with pytest.raises(HostError):
        Cgroups(tmp_path / "empty", PARENT)


@pytest.mark.parametrize(("parent", "expected"), [
    ("gvisor-sandbox", "/gvisor-sandbox/sb-1"),
    ("/system.slice/gvisor/", "/system.slice/gvisor/sb-1"),
])
def test_cgroups_path(v2_root, parent, expected):
    assert Cgroups(v2_root, parent).cgroups_path("sb-1") == expected


# -- v1 ---------------------------------------------------------------------------------------

def test_v1_prepare_creates_the_parent_in_every_controller(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    assert cgroups.version == 1
    cgroups.prepare()
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        assert (v1_root / controller / PARENT).is_dir()
        assert files(v1_root / controller / PARENT) == {}
    cgroups.prepare()  # idempotent


def test_v1_prepare_writes_totals_and_memsw_only_when_present(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    (v1_root / "memory" / PARENT).mkdir()
    (v1_root / "memory" / PARENT / "memory.memsw.limit_in_bytes").write_text("9223372036854771712")
    cgroups.prepare(CgroupLimits(memory_bytes=1024**3, cpus=2.0))
    assert files(v1_root / "memory" / PARENT) == {
        "memory.limit_in_bytes": "1073741824", "memory.memsw.limit_in_bytes": "1073741824"}
    assert files(v1_root / "cpu" / PARENT) == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "200000"}
    assert files(v1_root / "pids" / PARENT) == {}


def test_v1_create_writes_the_limits(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", LIMITS)
    # The leaf is new, so it has no memsw file (the kernel would have made one): none is written.
    assert files(v1_root / "memory" / PARENT / "sb-1") == {"memory.limit_in_bytes": "268435456"}
    assert files(v1_root / "pids" / PARENT / "sb-1") == {"pids.max": "128"}
    assert files(v1_root / "cpu" / PARENT / "sb-1") == {
        "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000", "cpu.shares": "512"}
    assert (v1_root / "cpuacct" / PARENT / "sb-1").is_dir()


@pytest.mark.parametrize(("weight", "shares"), [(100, "1024"), (10, "102"), (1, "10"), (0, "2"), (10000, "102400")])
def test_v1_set_cpu_weight(v1_root, weight, shares):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", CgroupLimits())
    cgroups.set_cpu_weight("sb-1", weight)
    assert (v1_root / "cpu" / PARENT / "sb-1" / "cpu.shares").read_text() == shares


def test_v1_create_without_the_parent_fails_cleanly(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    with pytest.raises(HostError, match="create cgroup for sandbox sb-1: "):
        cgroups.create("sb-1", LIMITS)
    assert cgroups.list_sandboxes() == []


def test_v1_failed_create_undoes_only_what_it_made(v1_root, caplog):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    foreign = v1_root / "pids" / PARENT / "sb-1"
    foreign.mkdir()  # already there (not made by this call): must survive the undo
    with pytest.raises(HostError, match=r"create cgroup for sandbox sb-1: \[Errno 17\] File exists"):
        cgroups.create("sb-1", LIMITS)
    assert not (v1_root / "memory" / PARENT / "sb-1").exists()
    assert foreign.is_dir()


def test_v1_usage(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", CgroupLimits())
    memory = v1_root / "memory" / PARENT / "sb-1"
    (memory / "memory.max_usage_in_bytes").write_text("52428800\n")
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (v1_root / "cpuacct" / PARENT / "sb-1" / "cpuacct.usage").write_text("123456789\n")
    (v1_root / "pids" / PARENT / "sb-1" / "pids.events").write_text("max 17\n")
    assert cgroups.usage("sb-1") == Usage(memory_peak_bytes=52428800, oom_kills=2, cpu_ns=123456789,
                                          pids_limit_hits=17)
    assert cgroups.usage("sb-1", oom=False).pids_limit_hits is None  # the program reported its end


def test_v1_usage_without_counters_is_unknown(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", CgroupLimits())
    (v1_root / "memory" / PARENT / "sb-1" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert cgroups.usage("sb-1") == Usage(None, None, None)
    assert cgroups.usage("never-created") == Usage(None, None, None)


def test_v1_remove_deletes_every_leaf_and_tolerates_missing_ones(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", CgroupLimits())
    cgroups.create("sb-2", CgroupLimits())
    (v1_root / "cpuacct" / PARENT / "sb-1").rmdir()  # already gone in one controller
    cgroups.remove("sb-1")
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        assert not (v1_root / controller / PARENT / "sb-1").exists()
        assert (v1_root / controller / PARENT / "sb-2").is_dir()
    cgroups.remove("sb-1")  # a second remove is a no-op
    cgroups.remove("never-created")


def test_remove_that_fails_names_the_directory(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", LIMITS)  # the fake leaves hold regular files, so rmdir fails (ENOTEMPTY)
    with pytest.raises(HostError, match=f"remove cgroup {v1_root / 'memory' / PARENT / 'sb-1'}: "):
        cgroups.remove("sb-1", wait_s=0)


def test_v1_list_sandboxes(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    assert cgroups.list_sandboxes() == []  # no parent yet
    cgroups.prepare()
    assert cgroups.list_sandboxes() == []
    cgroups.create("sb-b", CgroupLimits())
    cgroups.create("sb-a", CgroupLimits())
    (v1_root / "pids" / PARENT / "only-in-pids").mkdir()
    (v1_root / "memory" / PARENT / "memory.limit_in_bytes").write_text("1")  # files are not sandboxes
    assert cgroups.list_sandboxes() == ["only-in-pids", "sb-a", "sb-b"]


def test_v1_remove_parent(v1_root):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    (v1_root / "cpuacct" / PARENT).rmdir()
    cgroups.remove_parent()
    assert all(not (v1_root / c / PARENT).exists() for c in ("memory", "pids", "cpu", "cpuacct"))
    cgroups.remove_parent()


# -- v2 ---------------------------------------------------------------------------------------

def test_v2_prepare_enables_controllers_down_a_premade_tree(v2_root):
    _v2_node(v2_root / "system.slice")
    _v2_node(v2_root / "system.slice" / PARENT)
    cgroups = Cgroups(v2_root, f"system.slice/{PARENT}")
    assert cgroups.version == 2
    cgroups.prepare(CgroupLimits(memory_bytes=2 * 1024**3, cpus=1.5))
    for node in (v2_root, v2_root / "system.slice", v2_root / "system.slice" / PARENT):
        assert (node / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    parent = files(v2_root / "system.slice" / PARENT)
    assert parent["memory.max"] == "2147483648"
    assert parent["cpu.max"] == "150000 100000"
    assert "memory.swap.max" not in parent


def test_v2_prepare_writes_swap_max_when_present(v2_root):
    _v2_node(v2_root / PARENT)
    (v2_root / PARENT / "memory.swap.max").write_text("max")
    Cgroups(v2_root, PARENT).prepare(CgroupLimits(memory_bytes=1024**3))
    assert (v2_root / PARENT / "memory.swap.max").read_text() == "0"


def test_v2_prepare_refuses_missing_controllers(v2_root):
    _v2_node(v2_root / PARENT, controllers="cpu memory")
    with pytest.raises(HostError, match=r"controllers \['pids'\] are not available in .*gvisor-sandbox"):
        Cgroups(v2_root, PARENT).prepare()


def test_v2_prepare_of_a_fresh_dir_without_interface_files_fails_cleanly(v2_root):
    with pytest.raises(HostError, match="prepare cgroup parent gvisor-sandbox: "):
        Cgroups(v2_root, PARENT).prepare()
    assert (v2_root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_create_writes_the_limits(v2_root):
    _v2_node(v2_root / PARENT)
    cgroups = Cgroups(v2_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", LIMITS)
    assert files(v2_root / PARENT / "sb-1") == {
        "cpu.max": "50000 100000", "cpu.weight": "50", "memory.max": "268435456", "pids.max": "128"}
    cgroups.set_cpu_weight("sb-1", 10)
    assert (v2_root / PARENT / "sb-1" / "cpu.weight").read_text() == "10"


def test_v2_create_twice_fails_and_keeps_the_first(v2_root):
    _v2_node(v2_root / PARENT)
    cgroups = Cgroups(v2_root, PARENT)
    cgroups.create("sb-1", CgroupLimits())
    with pytest.raises(HostError, match="create cgroup for sandbox sb-1"):
        cgroups.create("sb-1", CgroupLimits())
    assert (v2_root / PARENT / "sb-1").is_dir()


def test_v2_usage(v2_root):
    _v2_node(v2_root / PARENT)
    cgroups = Cgroups(v2_root, PARENT)
    cgroups.create("sb-1", CgroupLimits())
    leaf = v2_root / PARENT / "sb-1"
    (leaf / "memory.peak").write_text("73400320\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    (leaf / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n")
    (leaf / "pids.events").write_text("max 0\n")
    assert cgroups.usage("sb-1") == Usage(memory_peak_bytes=73400320, oom_kills=1, cpu_ns=2_500_000,
                                          pids_limit_hits=0)


def test_v2_usage_without_counters_is_unknown(v2_root):
    _v2_node(v2_root / PARENT)
    cgroups = Cgroups(v2_root, PARENT)
    cgroups.create("sb-1", CgroupLimits())
    (v2_root / PARENT / "sb-1" / "memory.peak").write_text("max\n")
    assert cgroups.usage("sb-1") == Usage(None, None, None)


def test_v2_remove_and_list(v2_root):
    _v2_node(v2_root / PARENT)
    cgroups = Cgroups(v2_root, PARENT)
    cgroups.create("sb-1", CgroupLimits())
    cgroups.create("sb-2", CgroupLimits())
    assert cgroups.list_sandboxes() == ["sb-1", "sb-2"]
    cgroups.remove("sb-1")
    assert not (v2_root / PARENT / "sb-1").exists()
    assert cgroups.list_sandboxes() == ["sb-2"]
    cgroups.remove("sb-1")
    cgroups.remove("sb-2")
    assert cgroups.list_sandboxes() == []


def test_failed_create_logs_a_failing_undo_and_raises_the_original(v1_root, caplog, monkeypatch):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    (v1_root / "cpu" / PARENT / "sb-1").mkdir()
    # Make the undo of the first leaf fail: give it content, as a busy cgroup would refuse rmdir.
    real_mkdir = pathlib.Path.mkdir

    def mkdir_and_fill(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        if self == v1_root / "memory" / PARENT / "sb-1":
            (self / "tasks").write_text("1\n")

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir_and_fill)
    with caplog.at_level(logging.WARNING, logger="orchestrator.host.cgroups"):
        with pytest.raises(HostError, match=r"create cgroup for sandbox sb-1: \[Errno 17\] File exists"):
            cgroups.create("sb-1", LIMITS)
    assert "remove cgroup" in caplog.text and "after a failed create" in caplog.text
    assert not (v1_root / "pids" / PARENT / "sb-1").exists()  # made by this call, then undone
    assert (v1_root / "cpu" / PARENT / "sb-1").is_dir()  # not ours: kept


def test_v1_cleanup_covers_the_hierarchies_runsc_adds(tmp_path):
    """runsc creates the parent (and, until exit, the sandbox) in every v1 hierarchy it knows;
    reaping and remove_parent must cover those too, not only our four controllers."""
    from orchestrator.host.cgroups import V1_CONTROLLERS, Cgroups

    for controller in (*V1_CONTROLLERS, "freezer", "devices"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    (tmp_path / "not-a-hierarchy").mkdir()
    cgroups = Cgroups(tmp_path, "svc")
    cgroups.prepare()
    (tmp_path / "freezer" / "svc" / "left-by-a-crash").mkdir(parents=True)
    assert cgroups.list_sandboxes() == ["left-by-a-crash"]
    cgroups.remove("left-by-a-crash")
    assert not (tmp_path / "freezer" / "svc" / "left-by-a-crash").exists()
    (tmp_path / "devices" / "svc").mkdir()
    cgroups.remove_parent()
    for controller in (*V1_CONTROLLERS, "freezer", "devices"):
        assert not (tmp_path / controller / "svc").exists(), controller


def test_v1_prepare_refuses_a_hierarchy_without_our_controllers(tmp_path):
    """A missing controller is a clear error, not a plain directory made on the cgroup tmpfs."""
    from orchestrator.errors import HostError
    from orchestrator.host.cgroups import Cgroups

    for controller in ("memory", "cpu", "cpuacct"):
        (tmp_path / controller).mkdir()
    with pytest.raises(HostError, match=r"v1 controllers \['pids'\] are not mounted"):
        Cgroups(tmp_path, "svc").prepare()
    assert not (tmp_path / "pids").exists() and not (tmp_path / "memory" / "svc").exists()


def test_v1_cpu_quota_is_clamped_to_the_ancestors(v1_root):
    """v1 refuses a child's quota above an ancestor's (EINVAL): under a unit with CPUQuota=50%
    (or SANDBOX_TOTAL_CPUS=0.5) a 1-core sandbox gets 0.5 core, as v2 would apply it."""
    unit = v1_root / "cpu" / "system.slice" / "x.service"
    unit.mkdir(parents=True)
    (unit / "cpu.cfs_quota_us").write_text("50000\n")
    (unit / "cpu.cfs_period_us").write_text("100000\n")
    (v1_root / "cpu" / "system.slice" / "cpu.cfs_quota_us").write_text("-1\n")
    cgroups = Cgroups(v1_root, "system.slice/x.service/sandboxes")
    cgroups.prepare(CgroupLimits(cpus=4))
    assert (unit / "sandboxes" / "cpu.cfs_quota_us").read_text() == "50000"
    (unit / "sandboxes" / "cpu.cfs_quota_us").write_text("30000\n")  # SANDBOX_TOTAL_CPUS=0.3
    (unit / "sandboxes" / "cpu.cfs_period_us").write_text("100000\n")
    cgroups.create("sb-1", CgroupLimits(cpus=1))
    assert (unit / "sandboxes" / "sb-1" / "cpu.cfs_quota_us").read_text() == "30000"
    cgroups.create("sb-2", CgroupLimits(cpus=0.2))
    assert (unit / "sandboxes" / "sb-2" / "cpu.cfs_quota_us").read_text() == "20000"


# -- what is left, recreation, killing ----------------------------------------------------------

def test_remove_parent_names_what_is_still_in_it(v1_root):
    """A parent that stays busy past the wait: the error lists its child cgroups and tasks
    (runsc 20240729 left test parents behind while a runsc process was still exiting)."""
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    (v1_root / "memory" / PARENT / "python-abc").mkdir()
    (v1_root / "memory" / PARENT / "cgroup.procs").write_text(f"{os.getpid()}\n")
    with pytest.raises(HostError) as caught:
        cgroups.remove_parent(wait_s=0)
    message = str(caught.value)
    assert f"remove cgroup {v1_root / 'memory' / PARENT}" in message
    assert "still in it after 0 s" in message
    assert "child cgroups python-abc" in message
    assert f"tasks {os.getpid()} ({pathlib.Path('/proc/self/comm').read_text().strip()})" in message


def test_remove_dirs_retries_until_the_last_task_left():
    """Busy at first, free once what was in it went away: removed, no error."""
    from orchestrator.host.cgroups import _remove_dirs

    with tempfile.TemporaryDirectory() as root:
        busy = pathlib.Path(root) / "parent"
        (busy / "exiting").mkdir(parents=True)
        waits = []

        def sleep(seconds: float) -> None:  # the runsc process exits while we wait
            waits.append(seconds)
            (busy / "exiting").rmdir()

        _remove_dirs([busy], wait_s=60, sleep=sleep)
        assert not busy.exists() and len(waits) == 1


def test_create_recreates_a_parent_removed_from_outside(v1_root, caplog):
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare(CgroupLimits(memory_bytes=2 * 1024**3))
    for controller in ("memory", "pids", "cpu", "cpuacct"):  # an operator's cleanup
        shutil.rmtree(v1_root / controller / PARENT)
    with caplog.at_level(logging.WARNING, logger="orchestrator.host.cgroups"):
        cgroups.create("sb-1", LIMITS)
    assert "was removed from outside; recreating it" in caplog.text
    assert (v1_root / "memory" / PARENT / "memory.limit_in_bytes").read_text() == str(2 * 1024**3)
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        assert (v1_root / controller / PARENT / "sb-1").is_dir()


def test_create_without_a_prepared_parent_is_an_error(v1_root):
    """Only a parent this object prepared is recreated: a wrong path stays a clear error."""
    with pytest.raises(HostError, match="create cgroup for sandbox sb-1"):
        Cgroups(v1_root, PARENT).create("sb-1", LIMITS)


def test_kill_tasks_kills_every_process_in_the_sandbox_cgroup(v1_root):
    """Even a stopped process (SIGSTOP): SIGKILL reaches it, where `runsc kill` would wait on
    a sandbox that never answers."""
    cgroups = Cgroups(v1_root, PARENT)
    cgroups.prepare()
    cgroups.create("sb-1", LIMITS)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        sleeper.send_signal(signal.SIGSTOP)
        (v1_root / "memory" / PARENT / "sb-1" / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        assert cgroups.kill_tasks("sb-1") == 1
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    assert cgroups.kill_tasks("no-such-sandbox") == 0


def test_procs_files_name_the_sandbox_node_in_each_hierarchy_we_limit(v1_root, v2_root):
    v1 = Cgroups(v1_root, "gvisor-sandbox")
    assert v1.procs_files("sb-1") == tuple(v1_root / c / "gvisor-sandbox" / "sb-1" / "cgroup.procs"
                                           for c in ("memory", "pids", "cpu", "cpuacct"))
    v2 = Cgroups(v2_root, "system.slice/gvisor-sandbox")
    assert v2.procs_files("sb-1") == (v2_root / "system.slice" / "gvisor-sandbox" / "sb-1" / "cgroup.procs",)
