"""runsc argv building (pure): global flags before the subcommand, flags only when known or
enabled, sandbox ids checked, and the parsers of `runsc flags` / `runsc --version`."""

from __future__ import annotations

import pathlib

import pytest

from orchestrator.runtime.argv import (
    BASELINE_FLAGS,
    NETNS_WORKAROUND_STEP,
    JoinCgroups,
    RunscConfig,
    check_sandbox_id,
    checkpoint_argv,
    delete_argv,
    flags_argv,
    kill_argv,
    list_argv,
    parse_flag_names,
    parse_version,
    restore_argv,
    run_argv,
    version_argv,
)

BIN = pathlib.Path("/usr/bin/runsc")
ROOT = pathlib.Path("/run/gvisor-sandbox/runsc")
GLOBAL = ["--root=/run/gvisor-sandbox/runsc", "--platform=ptrace", "--network=none", "--overlay2=none"]


def config(**changes) -> RunscConfig:
    return RunscConfig(binary=BIN, root=ROOT, **changes)


def test_run_argv():
    argv = run_argv(config(), "sb-1", pathlib.Path("/state/sb-1/bundle"), pathlib.Path("/state/sb-1/runsc.log"))
    assert argv == ["/usr/bin/runsc", *GLOBAL, "--log=/state/sb-1/runsc.log", "run",
                    "--bundle=/state/sb-1/bundle", "sb-1"]


def test_kill_delete_list_argv():
    assert kill_argv(config(), "sb-1") == ["/usr/bin/runsc", *GLOBAL, "kill", "--all", "sb-1", "KILL"]
    assert kill_argv(config(), "sb-1", "TERM")[-1] == "TERM"
    assert delete_argv(config(), "sb-1") == ["/usr/bin/runsc", *GLOBAL, "delete", "--force", "sb-1"]
    assert list_argv(config()) == ["/usr/bin/runsc", *GLOBAL, "list", "--quiet"]
    assert version_argv(BIN) == ["/usr/bin/runsc", "--version"]
    assert flags_argv(BIN) == ["/usr/bin/runsc", "flags"]


def test_checkpoint_and_restore_argv():
    image = pathlib.Path("/state/snapshots/.making-python-1")
    assert checkpoint_argv(config(), "sb-1", image) == [
        "/usr/bin/runsc", *GLOBAL, "checkpoint", f"--image-path={image}", "--compression=none", "sb-1"]
    assert "--compression=none" not in checkpoint_argv(config(), "sb-1", image, uncompressed=False)
    assert restore_argv(config(), "sb-2", pathlib.Path("/state/sb-2/bundle"), image,
                        pathlib.Path("/state/sb-2/runsc.log")) == [
        "/usr/bin/runsc", *GLOBAL, "--log=/state/sb-2/runsc.log", "restore", f"--image-path={image}",
        "--bundle=/state/sb-2/bundle", "sb-2"]


def wrapper_steps(argv: list[str]) -> list[str]:
    """The steps of a start wrapper's shell script, and a check that it execs runsc's argv."""
    shell = argv.index("sh")
    assert argv[shell:shell + 2] == ["sh", "-c"] and argv[shell + 3] == "sh"
    assert argv[shell + 4] == "/usr/bin/runsc"
    steps = argv[shell + 2].split(" && ")
    assert steps[-1] == 'exec "$@"'  # exec keeps the pid: the caller's handle is runsc itself
    return steps[:-1]


def test_run_and_restore_start_with_the_oom_score_adj_and_nothing_else_does():
    oom = config(oom_score_adj=500, network="sandbox", netns_workaround=True)
    run = run_argv(oom, "sb-1", pathlib.Path("/b"), pathlib.Path("/l"))
    restore = restore_argv(oom, "sb-1", pathlib.Path("/b"), pathlib.Path("/i"), pathlib.Path("/l"))
    for argv in (run, restore):
        # One shell, in the netns workaround's private mount namespace.
        assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
        assert wrapper_steps(argv) == [NETNS_WORKAROUND_STEP, "echo 500 > /proc/self/oom_score_adj"]
    assert wrapper_steps(run_argv(config(oom_score_adj=-3), "sb-1", pathlib.Path("/b"), pathlib.Path("/l"))) == [
        "echo -3 > /proc/self/oom_score_adj"]
    assert kill_argv(oom, "sb-1")[0] == delete_argv(oom, "sb-1")[0] == "/usr/bin/runsc"
    with pytest.raises(ValueError):
        run_argv(config(oom_score_adj=1001), "sb-1", pathlib.Path("/b"), pathlib.Path("/l"))


PROCS = (pathlib.Path("/sys/fs/cgroup/memory/gvisor sandbox/sb-1/cgroup.procs"),
         pathlib.Path("/sys/fs/cgroup/pids/gvisor sandbox/sb-1/cgroup.procs"))


@pytest.mark.parametrize("build", [
    lambda c, join: run_argv(c, "sb-1", pathlib.Path("/b"), pathlib.Path("/l"), join),
    lambda c, join: restore_argv(c, "sb-1", pathlib.Path("/b"), pathlib.Path("/i"), pathlib.Path("/l"), join),
], ids=["run", "restore"])
def test_joined_cgroups_the_wrapper_writes_its_pid_then_runsc_ignores_cgroups(build):
    joined = config(join_cgroups=True, oom_score_adj=500)
    argv = build(joined, JoinCgroups(procs=PROCS))
    assert argv[0] == "sh"  # no mount namespace without a meminfo stand-in
    assert wrapper_steps(argv) == ["echo 500 > /proc/self/oom_score_adj",
                                   "echo $$ > '/sys/fs/cgroup/memory/gvisor sandbox/sb-1/cgroup.procs'",
                                   "echo $$ > '/sys/fs/cgroup/pids/gvisor sandbox/sb-1/cgroup.procs'"]
    runsc = argv[argv.index("/usr/bin/runsc"):]
    assert "--ignore-cgroups" in runsc[:runsc.index("run" if "run" in runsc else "restore")]

    with_meminfo = build(joined, JoinCgroups(procs=PROCS, meminfo=pathlib.Path("/state dir/meminfo")))
    assert with_meminfo[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert wrapper_steps(with_meminfo)[0] == "mount --bind '/state dir/meminfo' /proc/meminfo"

    with pytest.raises(ValueError, match="no cgroups to join"):
        build(joined, None)
    # runsc that manages cgroups itself: the join is not the wrapper's business, nor the flag.
    plain = build(config(), JoinCgroups(procs=PROCS, meminfo=pathlib.Path("/m")))
    assert plain[0] == "/usr/bin/runsc" and "--ignore-cgroups" not in plain


def test_joined_cgroups_every_command_tells_runsc_to_leave_cgroups_alone():
    joined = config(join_cgroups=True)
    for argv in (kill_argv(joined, "sb-1"), delete_argv(joined, "sb-1"), list_argv(joined),
                 checkpoint_argv(joined, "sb-1", pathlib.Path("/i"))):
        assert "--ignore-cgroups" in argv
    assert "--ignore-cgroups" not in delete_argv(config(), "sb-1")
    with pytest.raises(ValueError):
        JoinCgroups(procs=())


def test_restore_gets_the_netns_workaround_like_run():
    wrapped = restore_argv(config(network="sandbox", netns_workaround=True), "sb-2", pathlib.Path("/b"),
                           pathlib.Path("/i"), pathlib.Path("/l"))
    assert wrapped[:3] == ["unshare", "--mount", "--propagation"] and "restore" in wrapped
    with pytest.raises(ValueError):
        restore_argv(config(), "bad id", pathlib.Path("/b"), pathlib.Path("/i"), pathlib.Path("/l"))


@pytest.mark.parametrize("build", [
    lambda c: run_argv(c, "sb-1", pathlib.Path("/b"), pathlib.Path("/l")),
    lambda c: restore_argv(c, "sb-1", pathlib.Path("/b"), pathlib.Path("/i"), pathlib.Path("/l")),
    lambda c: checkpoint_argv(c, "sb-1", pathlib.Path("/i")),
    lambda c: kill_argv(c, "sb-1"),
    lambda c: delete_argv(c, "sb-1"),
    lambda c: list_argv(c),
], ids=["run", "restore", "checkpoint", "kill", "delete", "list"])
def test_global_flags_come_before_the_subcommand(build):
    argv = build(config(oci_seccomp=True, debug_log_dir=pathlib.Path("/var/log/runsc")))
    subcommand = next(i for i, arg in enumerate(argv)
                      if arg in ("run", "restore", "checkpoint", "kill", "delete", "list"))
    assert argv[0] == "/usr/bin/runsc"
    assert all(arg.startswith("--") for arg in argv[1:subcommand])
    for flag in ("--root=", "--platform=", "--network=", "--oci-seccomp", "--debug-log="):
        assert any(arg.startswith(flag) for arg in argv[1:subcommand]), flag
    assert not any(arg.startswith(("--root", "--platform", "--oci-seccomp", "--log")) for arg in argv[subcommand:])


def test_log_only_on_run():
    assert not any(arg.startswith("--log=") for arg in kill_argv(config(), "sb-1"))
    assert not any(arg.startswith("--log=") for arg in delete_argv(config(), "sb-1"))
    assert not any(arg.startswith("--log=") for arg in list_argv(config()))


@pytest.mark.parametrize(("known", "expected"), [
    (None, True),  # not probed: the baseline has overlay2
    (frozenset({"root", "platform", "network", "overlay2"}), True),
    (frozenset({"root", "platform", "network"}), False),
    (frozenset(), False),
])
def test_overlay2_only_when_known(known, expected):
    assert ("--overlay2=none" in list_argv(config(known_flags=known))) is expected


@pytest.mark.parametrize(("enabled", "expected"), [(False, False), (True, True)])
def test_oci_seccomp_only_when_enabled(enabled, expected):
    argv = run_argv(config(oci_seccomp=enabled), "sb-1", pathlib.Path("/b"), pathlib.Path("/l"))
    assert ("--oci-seccomp" in argv) is expected


def test_platform_network_and_debug_log():
    argv = list_argv(config(platform="systrap", network="sandbox", debug_log_dir=pathlib.Path("/var/log/runsc")))
    assert argv[1:4] == ["--root=/run/gvisor-sandbox/runsc", "--platform=systrap", "--network=sandbox"]
    assert argv[-4:] == ["--debug", "--debug-log=/var/log/runsc/", "list", "--quiet"]
    assert "--debug" not in list_argv(config())


def test_knows_uses_the_baseline_until_probed():
    assert config().knows("oci-seccomp")
    assert not config().knows("nvproxy")
    assert config(known_flags=frozenset({"nvproxy"})).knows("nvproxy")
    assert not config(known_flags=frozenset({"nvproxy"})).knows("oci-seccomp")
    assert {"root", "platform", "network", "overlay2", "oci-seccomp"} <= BASELINE_FLAGS


@pytest.mark.parametrize("sandbox_id", ["", "a b", "../x", "a/b", "x;rm", "\n", "é", "sb-é", "a" * 129, "id\n"])
def test_invalid_sandbox_ids_are_rejected(sandbox_id):
    with pytest.raises(ValueError, match="invalid sandbox id"):
        check_sandbox_id(sandbox_id)
    for build in (lambda: run_argv(config(), sandbox_id, pathlib.Path("/b"), pathlib.Path("/l")),
                  lambda: kill_argv(config(), sandbox_id), lambda: delete_argv(config(), sandbox_id)):
        with pytest.raises(ValueError, match="invalid sandbox id"):
            build()


@pytest.mark.parametrize("sandbox_id", ["sb-1", "python_preload.3", "a" * 128, "A+b"])
def test_valid_sandbox_ids_pass(sandbox_id):
    assert check_sandbox_id(sandbox_id) == sandbox_id


RUNSC_FLAGS = """\
Usage: runsc <flags> <subcommand> <subcommand args>

  -TESTONLY-unsafe-nonroot
    	TEST ONLY; do not ever use! This skips many security measures that isolate the host from the sandbox.
  -debug
    	enable debug logging.
  -debug-log string
    	additional location for logs. If it ends with '/', log files are created inside the directory with default names.
  -network value
    	specifies which network to use: sandbox (default), host, none. Using network inside the sandbox is more secure because it's isolated from the host network. (default sandbox)
  -oci-seccomp
    	Enables loading OCI seccomp filters inside the sandbox.
  -overlay2 value
    	Specifies the overlay configuration (default root:memory)
  --platform string
    	specified which platform to use: ptrace (default), kvm. (default "ptrace")
Subcommands for internal use:
	boot             launch a sandbox process
"""


def test_parse_flag_names():
    assert parse_flag_names(RUNSC_FLAGS) == frozenset(
        {"TESTONLY-unsafe-nonroot", "debug", "debug-log", "network", "oci-seccomp", "overlay2", "platform"})


def test_parse_flag_names_of_nothing():
    assert parse_flag_names("") == frozenset()


@pytest.mark.parametrize(("text", "expected"), [
    ("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n", "0.0~20221219.0"),
    ("runsc version release-20240513.0\nspec: 1.1.0-rc.1\n", "release-20240513.0"),
    ("\n  runsc version 1.2\n", "1.2"),
    ("", "unknown"),
    ("   \n", "unknown"),
])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_forget_removes_only_the_named_sandboxs_runsc_files(tmp_path):
    from orchestrator.runtime.runsc import RunscRuntime

    runtime = RunscRuntime(RunscConfig(binary=BIN, root=tmp_path))
    ours = ["python-0123456789abcdef_sandbox:python-0123456789abcdef.lock",
            "python-0123456789abcdef_sandbox:python-0123456789abcdef.state", "runsc-python-0123456789abcdef.sock"]
    other = "python-fedcba9876543210_sandbox:python-fedcba9876543210.lock"
    for name in [*ours, other]:
        (tmp_path / name).write_text("")
    assert runtime.forget("python-0123456789abcdef") == sorted(ours)
    assert [p.name for p in tmp_path.iterdir()] == [other]
    assert runtime.forget("python-0123456789abcdef") == []


async def test_list_ids_goes_by_the_files_when_runsc_list_fails(tmp_path, caplog):
    """After a crash `runsc list` may fail on a half-written state file or miss a container
    still being created: every id a lock, state or socket file names is reaped too."""
    from orchestrator.runtime.runsc import RunscRuntime

    runtime = RunscRuntime(RunscConfig(binary=pathlib.Path("/bin/false"), root=tmp_path))
    for name in ("python-0123456789abcdef_sandbox:python-0123456789abcdef.lock",
                 "nodejs-fedcba9876543210_sandbox:nodejs-fedcba9876543210.state",
                 "runsc-python-aaaaaaaaaaaaaaaa.sock", "unrelated.txt", "bad id_sandbox:bad id.state"):
        (tmp_path / name).write_text("")
    with caplog.at_level("WARNING", logger="orchestrator.runtime.runsc"):
        ids = await runtime.list_ids()
    assert ids == ["nodejs-fedcba9876543210", "python-0123456789abcdef", "python-aaaaaaaaaaaaaaaa"]
    assert "list sandboxes: exit 1" in caplog.text


def test_spawning_a_missing_runsc_names_the_binary(tmp_path):
    from orchestrator.runtime.runsc import RunscRuntime

    missing = tmp_path / "runsc"
    runtime = RunscRuntime(RunscConfig(binary=missing, root=tmp_path))
    problem = runtime._spawn_problem(FileNotFoundError(2, "No such file or directory"))
    assert problem.startswith(f"the runsc binary {missing} is missing or not executable (No such file or directory)")
    assert "SANDBOX_RUNSC" in problem


def runsc_files(root: pathlib.Path, sandbox_id: str) -> list[pathlib.Path]:
    names = (f"{sandbox_id}_sandbox:{sandbox_id}.lock", f"{sandbox_id}_sandbox:{sandbox_id}.state",
             f"runsc-{sandbox_id}.sock")
    for name in names:
        (root / name).write_text("")
    return [root / name for name in names]


async def test_an_exited_restored_container_is_discarded_without_runsc(tmp_path, caplog):
    """Its processes gone, its three files are all that is left: removed, quietly, and the
    runsc binary (here one that would fail) never runs."""
    from orchestrator.runtime.runsc import RunscRuntime

    runtime = RunscRuntime(RunscConfig(binary=pathlib.Path("/bin/false"), root=tmp_path))
    files = runsc_files(tmp_path, "sb-1")
    other = runsc_files(tmp_path, "sb-2")
    assert await runtime.discard_exited("sb-1", lambda: True) is True
    assert not any(path.exists() for path in files) and all(path.exists() for path in other)
    assert "leftovers" not in caplog.text


async def test_a_container_whose_processes_stay_is_deleted_by_runsc(tmp_path):
    calls = []

    async def delete(sandbox_id, **_):
        calls.append(sandbox_id)

    from orchestrator.runtime.runsc import RunscRuntime

    runtime = RunscRuntime(RunscConfig(binary=BIN, root=tmp_path))
    runtime.delete = delete
    files = runsc_files(tmp_path, "sb-1")
    checks = []
    assert await runtime.discard_exited("sb-1", lambda: checks.append(1) and False, wait_s=0.05) is False
    assert calls == ["sb-1"] and len(checks) >= 2  # it waited, then asked runsc
    assert all(path.exists() for path in files)  # runsc's delete is what removes them then
