"""Settings.from_env: defaults, the parsers, and a ConfigError naming the variable for every
invalid value."""

from __future__ import annotations

import pathlib

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import HostCapacity, Settings, parse_bool, parse_duration, parse_size

SMALL_HOST = HostCapacity(cpus=1, memory_bytes=8 * 1024**3)


def test_defaults_from_an_empty_environment():
    settings = Settings.from_env({}, SMALL_HOST)
    assert settings.port == 9385
    assert settings.host == "127.0.0.1"
    assert settings.limits.memory_bytes == 256 * 1024**2
    assert settings.limits.timeout_s == 10.0
    assert settings.pool_size == 1
    assert settings.enable_static_check is True
    assert settings.runsc.enable_seccomp is False
    assert settings.runsc.network == "none"
    assert settings.base_images == {}
    assert settings.api_token is None
    assert settings.snapshots == "auto"


@pytest.mark.parametrize(("cpus", "memory_gib", "expected"), [
    (1, 8, {"max_concurrency": 4, "start_parallelism": 2, "pool_boot_parallelism": 1, "pool_size": 1}),
    (2, 24, {"max_concurrency": 8, "start_parallelism": 3, "pool_boot_parallelism": 1, "pool_size": 2}),
    (16, 64, {"max_concurrency": 64, "start_parallelism": 24, "pool_boot_parallelism": 8, "pool_size": 8}),
    # memory caps concurrency: 80% of 2 GiB holds six sandboxes at the default 256m limit
    (16, 2, {"max_concurrency": 6, "start_parallelism": 24, "pool_boot_parallelism": 8, "pool_size": 8}),
])
def test_capacity_defaults_scale_with_the_host(cpus, memory_gib, expected):
    settings = Settings.from_env({}, HostCapacity(cpus=cpus, memory_bytes=memory_gib * 1024**3))
    assert {name: getattr(settings, name) for name in expected} == expected
    status = settings.capacity_status()
    assert all(entry["source"].startswith(f"derived from {cpus} CPUs") for entry in status.values())


def test_capacity_variables_override_the_derived_defaults():
    settings = Settings.from_env({"SANDBOX_MAX_CONCURRENCY": "3", "SANDBOX_START_PARALLELISM": "5",
                                  "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "0"}, HostCapacity(cpus=16, memory_bytes=64 * 1024**3))
    assert (settings.max_concurrency, settings.start_parallelism, settings.pool_size) == (3, 5, 0)
    status = settings.capacity_status()
    assert status["max_concurrency"] == {"value": 3, "variable": "SANDBOX_MAX_CONCURRENCY", "source": "set"}
    assert status["pool_boot_parallelism"]["source"].startswith("derived")


def test_snapshots_setting():
    assert Settings.from_env({"SANDBOX_SNAPSHOTS": "off"}).snapshots == "off"
    with pytest.raises(ConfigError, match="SANDBOX_SNAPSHOTS"):
        Settings.from_env({"SANDBOX_SNAPSHOTS": "sometimes"})


def test_a_rate_with_a_digit_int_refuses_is_a_config_error():
    with pytest.raises(ConfigError, match="SANDBOX_RUN_RATE_LIMIT"):
        Settings.from_env({"SANDBOX_RUN_RATE_LIMIT": "²/minute"})


def test_sealed_settings():
    default = Settings.from_env({})
    assert default.sealed == "auto"
    assert default.sealed_path == default.rootfs_dir.parent / "sealed"
    settings = Settings.from_env({"SANDBOX_SEALED": "off", "SANDBOX_SEALED_DIR": "/srv/sealed"})
    assert settings.sealed == "off" and settings.sealed_path == pathlib.Path("/srv/sealed")
    with pytest.raises(ConfigError, match="SANDBOX_SEALED"):
        Settings.from_env({"SANDBOX_SEALED": "always"})


def test_blank_values_mean_the_default():
    settings = Settings.from_env({"SANDBOX_TIMEOUT": "  ", "SANDBOX_MAX_MEMORY": "", "SANDBOX_EXECUTOR_MANAGER_PORT": ""})
    assert settings.limits.timeout_s == 10.0
    assert settings.limits.memory_bytes == 256 * 1024**2
    assert settings.port == 9385


def test_values_are_read():
    settings = Settings.from_env({
        "SANDBOX_EXECUTOR_MANAGER_PORT": "8080",
        "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "5",
        "SANDBOX_MAX_MEMORY": "1g",
        "SANDBOX_TIMEOUT": "1m30s",
        "SANDBOX_ENABLE_SECCOMP": "yes",
        "SANDBOX_ENABLE_AST_ANALYSIS": "off",
        "SANDBOX_EXECUTOR_MANAGER_HOST": "0.0.0.0",
        "SANDBOX_STATE_DIR": "/tmp/state",
        "SANDBOX_CGROUP_PARENT": "/a/b/",
    })
    assert settings.port == 8080
    assert settings.pool_size == 5
    assert settings.limits.memory_bytes == 1024**3
    assert settings.limits.timeout_s == 90.0
    assert settings.runsc.enable_seccomp is True
    assert settings.enable_static_check is False
    assert settings.host == "0.0.0.0"
    assert settings.state_dir == pathlib.Path("/tmp/state")
    assert settings.cgroup_parent == "a/b"


@pytest.mark.parametrize(("text", "expected"), [
    ("256m", 256 * 1024**2),
    ("1g", 1024**3),
    ("512k", 512 * 1024),
    ("10b", 10),
    ("256M", 256 * 1024**2),
    (" 2G ", 2 * 1024**3),
])
def test_parse_size(text, expected):
    assert parse_size("X", text) == expected


@pytest.mark.parametrize("text", ["0m", "-1m", "1.5g", "1t", "", "abc", "m", "256", "01m", "1 m"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="^X: invalid size"):
        parse_size("X", text)


@pytest.mark.parametrize(("text", "expected"), [
    ("10s", 10.0),
    ("90s", 90.0),
    ("2m", 120.0),
    ("1m30s", 90.0),
    ("500ms", 0.5),
    ("60", 60.0),
    ("1.5", 1.5),
    ("2.5s", 2.5),
    ("1h", 3600.0),
    ("1s500ms", 1.5),
    ("10S", 10.0),
])
def test_parse_duration(text, expected):
    assert parse_duration("X", text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["abc", "0", "-5s", "10x", "", "s", "0s", "25h", "nan", "inf", "-1", "m30"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError, match="^X: "):
        parse_duration("X", text)


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False),
])
def test_parse_bool(text, expected):
    assert parse_bool("X", text) is expected


@pytest.mark.parametrize("text", ["2", "y", "enabled", "", "truee"])
def test_parse_bool_rejects(text):
    with pytest.raises(ConfigError, match="^X: invalid boolean"):
        parse_bool("X", text)


@pytest.mark.parametrize(("name", "value"), [
    ("SANDBOX_TIMEOUT", "abc"),
    ("SANDBOX_TIMEOUT", "0"),
    ("SANDBOX_MAX_MEMORY", "1.5g"),
    ("SANDBOX_MAX_MEMORY", "0m"),
    ("SANDBOX_EXECUTOR_MANAGER_PORT", "http"),
    ("SANDBOX_EXECUTOR_MANAGER_PORT", "0"),
    ("SANDBOX_EXECUTOR_MANAGER_PORT", "65536"),
    ("SANDBOX_ENABLE_SECCOMP", "maybe"),
    ("SANDBOX_ENABLE_AST_ANALYSIS", "2"),
    ("SANDBOX_EXECUTOR_MANAGER_POOL_SIZE", "-1"),
    ("SANDBOX_EXECUTOR_MANAGER_POOL_SIZE", "many"),
    ("SANDBOX_STATE_DIR", "relative/state"),
    ("SANDBOX_CONTAINER_NETWORK", "bridge"),
    ("SANDBOX_CGROUP_PARENT", "a/../b"),
    ("SANDBOX_CGROUP_PARENT", ".."),
    ("SANDBOX_LANGUAGES_DIR", "relative/dir"),
    ("SANDBOX_EXECUTOR_MANAGER_HOST", "example.com"),
])
def test_invalid_value_names_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


@pytest.mark.parametrize("value", ["15m", "16383k", "1m", "10b"])
def test_memory_below_16m_is_refused(value):
    with pytest.raises(ConfigError, match="SANDBOX_MAX_MEMORY: must be at least 16m"):
        Settings.from_env({"SANDBOX_MAX_MEMORY": value})


def test_memory_of_exactly_16m_is_accepted():
    assert Settings.from_env({"SANDBOX_MAX_MEMORY": "16m"}).limits.memory_bytes == 16 * 1024**2


def test_base_images_are_keyed_by_language():
    settings = Settings.from_env({
        "SANDBOX_BASE_PYTHON_IMAGE": " /srv/rootfs/py ",
        "SANDBOX_BASE_NODEJS_IMAGE": "nodejs-22",
        "SANDBOX_BASE_RUBY_IMAGE": "",
        "UNRELATED": "x",
    })
    assert dict(settings.base_images) == {"python": "/srv/rootfs/py", "nodejs": "nodejs-22"}


def test_languages_dir_takes_colon_separated_absolute_paths():
    settings = Settings.from_env({"SANDBOX_LANGUAGES_DIR": "/a/langs::/b/more:"})
    assert settings.languages_dirs == (pathlib.Path("/a/langs"), pathlib.Path("/b/more"))


def test_languages_dir_default_is_the_repository_languages():
    default = Settings.from_env({}).languages_dirs
    assert default == (pathlib.Path(__file__).resolve().parents[2] / "languages",)


def test_container_network_none_is_accepted():
    assert Settings.from_env({"SANDBOX_CONTAINER_NETWORK": "None"}).runsc.network == "none"


@pytest.mark.parametrize(("text", "expected"), [
    ("120/minute", (120, 60.0)), ("5/second", (5, 1.0)), ("1000/hour", (1000, 3600.0)), ("10/m", (10, 60.0)),
    ("off", None), ("0", None),
])
def test_rate_limit_parsing(text, expected):
    assert Settings.from_env({"SANDBOX_RUN_RATE_LIMIT": text}).run_rate_limit == expected


@pytest.mark.parametrize("text", ["120", "abc/minute", "0/minute", "10/day", "-1/second"])
def test_rate_limit_rejects(text):
    with pytest.raises(ConfigError, match="SANDBOX_RUN_RATE_LIMIT"):
        Settings.from_env({"SANDBOX_RUN_RATE_LIMIT": text})


def test_token_is_read_and_never_shown():
    settings = Settings.from_env({"SANDBOX_EXECUTOR_MANAGER_API_TOKEN": "hunter2"})
    assert settings.api_token == "hunter2"
    assert "hunter2" not in repr(settings) and "api_token='***'" in repr(settings)
    assert Settings.from_env({}).api_token is None


def test_pool_sizes_per_profile():
    settings = Settings.from_env({"SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "3", "SANDBOX_POOL_SIZE_PYTHON_PRELOAD": "1",
                                  "SANDBOX_POOL_SIZE_NODEJS": "0"})
    assert settings.pool_size_for("python") == 3
    assert settings.pool_size_for("python_preload") == 1
    assert settings.pool_size_for("nodejs") == 0
    with pytest.raises(ConfigError, match="SANDBOX_POOL_SIZE_PYTHON"):
        Settings.from_env({"SANDBOX_POOL_SIZE_PYTHON": "many"})


def test_cpu_and_total_budgets():
    settings = Settings.from_env({"SANDBOX_MAX_CPUS": "0.5", "SANDBOX_TOTAL_CPUS": "1.5", "SANDBOX_TOTAL_MEMORY": "4g"})
    assert settings.limits.cpus == 0.5 and settings.total_cpus == 1.5 and settings.total_memory_bytes == 4 * 1024**3
    with pytest.raises(ConfigError, match="SANDBOX_MAX_CPUS"):
        Settings.from_env({"SANDBOX_MAX_CPUS": "0"})
    with pytest.raises(ConfigError, match="SANDBOX_TOTAL_MEMORY"):
        Settings.from_env({"SANDBOX_TOTAL_MEMORY": "128m", "SANDBOX_MAX_MEMORY": "256m"})


def test_seccomp_profile_must_exist():
    assert Settings.from_env({"SANDBOX_SECCOMP_PROFILE": "strict"}).runsc.seccomp_profile == "strict"
    with pytest.raises(ConfigError, match="SANDBOX_SECCOMP_PROFILE"):
        Settings.from_env({"SANDBOX_SECCOMP_PROFILE": "nonexistent"})


def test_pids_floor_leaves_room_for_gvisor_itself():
    with pytest.raises(ConfigError, match="SANDBOX_MAX_PIDS"):
        Settings.from_env({"SANDBOX_MAX_PIDS": "32"})


def test_log_format_and_notify_socket():
    settings = Settings.from_env({"SANDBOX_LOG_FORMAT": "JSON", "NOTIFY_SOCKET": "/run/systemd/notify"})
    assert settings.log_format == "json" and settings.notify_socket == "/run/systemd/notify"


def test_cgroup_parent_is_automatic_unless_set_and_invocation_id_is_read():
    settings = Settings.from_env({})
    assert settings.cgroup_parent is None and settings.invocation_id is None  # host.placement decides
    settings = Settings.from_env({"INVOCATION_ID": "5d2b0c9e", "SANDBOX_CGROUP_PARENT": "x"})
    assert settings.invocation_id == "5d2b0c9e" and settings.cgroup_parent == "x"


def test_rate_limit_is_off_by_default():
    """Behind a balancer every request carries its address, and one RAGFlow server is one address."""
    assert Settings.from_env({}).run_rate_limit is None


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.0/8", ("10.0.0.0/8",)),
    (" 10.0.0.0/8, 192.0.2.7 ,fd00::/8,", ("10.0.0.0/8", "192.0.2.7/32", "fd00::/8")),
    ("10.1.2.3/8", ("10.0.0.0/8",)),  # host bits are forgiven
])
def test_trusted_proxies(text, expected):
    networks = Settings.from_env({"SANDBOX_TRUSTED_PROXIES": text}).trusted_proxies
    assert tuple(map(str, networks)) == expected
    assert Settings.from_env({}).trusted_proxies == ()


@pytest.mark.parametrize("text", ["10.0.0.0/33", "proxy.example", "10.0.0.1/8/9"])
def test_trusted_proxies_reject(text):
    with pytest.raises(ConfigError, match="SANDBOX_TRUSTED_PROXIES"):
        Settings.from_env({"SANDBOX_TRUSTED_PROXIES": text})


def test_lb_agent_port_is_off_by_default_and_checked():
    assert Settings.from_env({}).lb_agent_port is None
    assert Settings.from_env({"SANDBOX_LB_AGENT_PORT": "9386"}).lb_agent_port == 9386
    assert Settings.from_env({"SANDBOX_LB_AGENT_PORT": "off"}).lb_agent_port is None
    for bad in ("70000", "agent", "-1"):
        with pytest.raises(ConfigError, match="SANDBOX_LB_AGENT_PORT"):
            Settings.from_env({"SANDBOX_LB_AGENT_PORT": bad})
    with pytest.raises(ConfigError, match="SANDBOX_LB_AGENT_PORT.*HTTP port"):
        Settings.from_env({"SANDBOX_LB_AGENT_PORT": "9385"})


def test_drain_delay():
    assert Settings.from_env({}).drain_delay_s == 5.0
    assert Settings.from_env({"SANDBOX_DRAIN_DELAY": "2500ms"}).drain_delay_s == 2.5
    assert Settings.from_env({"SANDBOX_DRAIN_DELAY": "0"}).drain_delay_s == 0.0
    assert Settings.from_env({"SANDBOX_DRAIN_DELAY": "off"}).drain_delay_s == 0.0
    with pytest.raises(ConfigError, match="SANDBOX_DRAIN_DELAY"):
        Settings.from_env({"SANDBOX_DRAIN_DELAY": "soon"})
