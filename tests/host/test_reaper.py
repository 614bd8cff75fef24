"""runtime.reaper on this host: orphaned runsc helpers (named ``exe``) come to us as their
subreaper and are reaped; our own children are left to whoever waits for them."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from orchestrator.runtime.reaper import become_subreaper, reap_orphans

ORPHAN = r"""
import ctypes, os, sys, time
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(15, b"exe", 0, 0, 0)  # PR_SET_NAME: named like runsc's helpers
    time.sleep(0.3)
    os._exit(0)
print(pid, flush=True)
os._exit(0)  # the helper is orphaned: it goes to the nearest subreaper
"""


def state(pid: int) -> str | None:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2]


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    if os.geteuid() != 0:
        pytest.skip("host tests need root")
    assert become_subreaper()


def test_an_orphaned_helper_is_adopted_and_reaped():
    parent = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=10)
    orphan = int(parent.stdout)
    deadline = time.monotonic() + 10
    while state(orphan) != "Z":  # ours now, and exited
        assert time.monotonic() < deadline, f"the orphan never became our zombie (state {state(orphan)})"
        time.sleep(0.02)
    assert reap_orphans() >= 1
    assert state(orphan) is None


def test_an_orphan_whose_parent_another_thread_started_is_reaped_too():
    """The reaper reads only the main thread's children: the kernel hands orphans to the
    subreaper's first live thread, not to the thread that started their parent."""
    import threading

    started, done = threading.Event(), threading.Event()
    result = {}

    def start_parent():  # and stay alive while the orphan is adopted
        result["parent"] = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=10)
        started.set()
        done.wait(20)

    thread = threading.Thread(target=start_parent)
    thread.start()
    try:
        assert started.wait(15)
        orphan = int(result["parent"].stdout)
        deadline = time.monotonic() + 10
        while state(orphan) != "Z":
            assert time.monotonic() < deadline, f"the orphan never became our zombie (state {state(orphan)})"
            time.sleep(0.02)
        assert reap_orphans() >= 1
        assert state(orphan) is None
    finally:
        done.set()
        thread.join()


def test_our_own_children_are_not_reaped_behind_their_waiter():
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    deadline = time.monotonic() + 10
    while state(child.pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    reap_orphans()
    assert child.wait(timeout=5) == 7, "the exit status was stolen from the process's own waiter"


def test_kill_strays_kills_only_the_processes_of_our_runsc_root(tmp_path):
    """What a service killed with -9 left running under its --root is killed at the next
    start; a process of another root (another service on this host) is not."""
    from orchestrator.runtime.reaper import find_strays, kill_strays

    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--root={tmp_path}/runsc"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--root={tmp_path}/runsc2"])
    try:
        deadline = time.monotonic() + 10
        while ours.pid not in find_strays(f"--root={tmp_path}/runsc") and time.monotonic() < deadline:
            time.sleep(0.02)  # until the interpreter's cmdline is in place
        assert find_strays(f"--root={tmp_path}/runsc") == [ours.pid]
        assert kill_strays(f"--root={tmp_path}/runsc", wait_s=0) == [ours.pid]
        assert ours.wait(timeout=10) == -9
        assert other.poll() is None
        assert find_strays(f"--root={tmp_path}/runsc") == []
    finally:
        for process in (ours, other):
            if process.poll() is None:
                process.kill()
                process.wait()
