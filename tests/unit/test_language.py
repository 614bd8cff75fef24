"""Language definitions: the shipped ones load with the expected argv, and each validation rule
of language.toml refuses a definition that breaks it."""

from __future__ import annotations

import pathlib

import pytest

from orchestrator.errors import ConfigError
from orchestrator.language import load_language, load_languages

REPO = pathlib.Path(__file__).resolve().parents[2]

VALID_RUNNER = """\
name = "{name}"
rootfs = "python"
argv = ["python3", "{{runner}}"]
runner = "runner.py"
source_file = "main.py"
"""

VALID_SCRIPT = """\
name = "bash"
rootfs = "python"
protocol = "script"
argv = ["/bin/bash", "{source}"]
source_file = "main.sh"
"""


def write_language(base: pathlib.Path, directory: str, text: str, *, runner: str | None = "runner.py") -> pathlib.Path:
    folder = base / directory
    folder.mkdir(parents=True)
    if runner:
        (folder / runner).write_text("# runner\n")
    path = folder / "language.toml"
    path.write_text(text)
    return path


def test_shipped_languages_load():
    languages = load_languages([REPO / "languages"])
    assert sorted(languages) == ["nodejs", "python"]

    python = languages["python"]
    assert python.process_args() == ["python3", "-I", "-B", "/opt/sandbox/runner/runner.py"]
    assert python.protocol == "runner" and python.can_boot_ahead
    assert python.source_path == "/workspace/main.py"
    assert python.static_check == "python"
    assert python.rootfs == "python"
    assert python.env["MPLBACKEND"] == "Agg"
    assert python.definition_dir == (REPO / "languages" / "python").resolve()
    assert python.sealed  # its runner writes the source and sends the artifacts

    nodejs = languages["nodejs"]
    assert nodejs.process_args() == ["node", "/opt/sandbox/runner/runner.js"]
    assert nodejs.source_path == "/workspace/main.js"
    assert nodejs.source_suffix == "\n\nmodule.exports = { main };"
    assert nodejs.static_check == "nodejs"
    assert nodejs.preload == ("axios",)
    assert nodejs.sealed


def test_a_script_language_loads(tmp_path):
    write_language(tmp_path, "bash", VALID_SCRIPT, runner=None)
    languages = load_languages([tmp_path])
    bash = languages["bash"]
    assert bash.protocol == "script"
    assert not bash.can_boot_ahead
    assert bash.runner is None
    assert bash.static_check == "none"
    assert bash.process_args() == ["/bin/bash", "/workspace/main.sh"]


def test_a_later_directory_overrides_an_earlier_one_by_name(tmp_path):
    override = VALID_RUNNER.format(name="python").replace('rootfs = "python"', 'rootfs = "/srv/custom-python"')
    write_language(tmp_path / "extra", "python", override)
    write_language(tmp_path / "extra", "bash", VALID_SCRIPT, runner=None)
    languages = load_languages([REPO / "languages", tmp_path / "extra"])
    assert sorted(languages) == ["bash", "nodejs", "python"]
    assert languages["python"].rootfs == "/srv/custom-python"
    assert languages["python"].definition_dir == (tmp_path / "extra" / "python").resolve()
    assert languages["nodejs"].rootfs == "nodejs"


def test_env_is_sorted_and_kept(tmp_path):
    text = VALID_SCRIPT + '\n[env]\nZED = "1"\nALPHA = "two"\n'
    language = load_language(write_language(tmp_path, "bash", text, runner=None))
    assert list(language.env.items()) == [("ALPHA", "two"), ("ZED", "1")]


@pytest.mark.parametrize(("text", "runner", "message"), [
    (VALID_SCRIPT + 'colour = "blue"\n', None, r"unknown keys \['colour'\]"),
    (VALID_SCRIPT.replace('name = "bash"', 'name = "Bash!"'), None, "'name' must be"),
    (VALID_SCRIPT.replace('name = "bash"', 'name = 3'), None, "'name' must be"),
    (VALID_SCRIPT.replace('rootfs = "python"', 'rootfs = ""'), None, "'rootfs' must name"),
    (VALID_SCRIPT.replace('protocol = "script"', 'protocol = "stdin"'), None, "'protocol' must be one of"),
    (VALID_SCRIPT.replace('argv = ["/bin/bash", "{source}"]', "argv = []"), None, "'argv' must be a non-empty"),
    (VALID_SCRIPT.replace('"main.sh"', '"../main.sh"'), None, "'source_file' must be a plain file name"),
    (VALID_RUNNER.format(name="bash"), None, "runner file .* does not exist"),
    (VALID_RUNNER.format(name="bash").replace('runner = "runner.py"\n', ""), None, "protocol 'runner' needs 'runner'"),
    (VALID_RUNNER.format(name="bash").replace('"{runner}"', '"-c"'), "runner.py", r"argv must contain \{runner\}"),
    (VALID_SCRIPT.replace('"{source}"', '"main.sh"'), None, r"argv must contain \{source\} for protocol 'script'"),
    (VALID_SCRIPT + 'runner = "runner.py"\n', "runner.py", "'runner' is only meaningful with protocol 'runner'"),
    (VALID_SCRIPT.replace('"{source}"]', '"{source}", "{foo}"]'), None, r"unknown placeholder"),
    (VALID_SCRIPT + 'static_check = "cobol"\n', None, "'static_check' must be 'none' or one of"),
    (VALID_SCRIPT + 'preload = ["numpy"]\n', None, "'preload' needs protocol 'runner'"),
    (VALID_RUNNER.format(name="bash") + 'preload = "numpy"\n', "runner.py", "'preload' must be a list"),
    (VALID_SCRIPT + "\n[env]\nCOUNT = 3\n", None, "'env' must be a table"),
    (VALID_SCRIPT + '\n[env]\n"BAD-NAME" = "x"\n', None, "'env' must be a table"),
    (VALID_SCRIPT + "source_suffix = 1\n", None, "'source_suffix' must be a string"),
    (VALID_SCRIPT + "sealed = true\n", None, "'sealed' needs protocol 'runner'"),
    (VALID_RUNNER.format(name="bash") + 'sealed = "yes"\n', "runner.py", "'sealed' must be true or false"),
    ("name = ", None, "load language"),
])
def test_invalid_definitions_are_refused(tmp_path, text, runner, message):
    path = write_language(tmp_path, "bash", text, runner=runner)
    with pytest.raises(ConfigError, match=message) as caught:
        load_language(path)
    assert str(caught.value).startswith(f"load language {path}: ")
    # load_languages reports the same error.
    with pytest.raises(ConfigError, match=message):
        load_languages([tmp_path])


def test_name_must_match_its_directory(tmp_path):
    write_language(tmp_path, "shell", VALID_SCRIPT, runner=None)
    with pytest.raises(ConfigError, match="name 'bash' differs from its directory 'shell'"):
        load_languages([tmp_path])


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="SANDBOX_LANGUAGES_DIR: .* is not a directory"):
        load_languages([tmp_path / "absent"])


def test_directory_without_definitions_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="SANDBOX_LANGUAGES_DIR: no language definitions"):
        load_languages([tmp_path])
