"""The Python runner's JSON codec: the ``_json`` fast path must give exactly what
``json.dumps(ensure_ascii=False, allow_nan=False, separators=(",", ":"))`` and ``json.loads``
give, errors included (it replaces them to keep ``re``/``enum`` out of a cold start)."""

from __future__ import annotations

import collections
import importlib.util
import json
import pathlib

import pytest

from tests.unit.control_frames import read_until_done

RUNNER = pathlib.Path(__file__).resolve().parents[2] / "languages" / "python" / "runner.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("sandbox_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUNNER_MODULE = load_runner()


def reference(value):
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class Mapping(dict):
    pass


def outcome(function, value):
    try:
        return "ok", function(value)
    except (TypeError, ValueError) as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize("value", [
    1, -5, 2**100, 1.5, 1e300, -0.0, 0.1, True, False, None, "é✓\n\"\\", "", "\u2028\x00", [], {}, [1, [2, [3]]],
    {"a": 1, "b": [1, 2.5, None]}, (1, 2), {1: "int key", 2.5: "float key", None: "n", False: "f"},
    collections.OrderedDict(a=1), Mapping(x=Mapping(y=[1])), [float("nan")], float("inf"), {1, 2}, b"bytes",
    object(), complex(1, 2), {(1, 2): 3},
], ids=repr)
def test_dumps_matches_json(value):
    assert outcome(RUNNER_MODULE._dumps, value) == outcome(reference, value)


def test_circular_structures_are_refused_and_do_not_poison_later_calls():
    looped = []
    looped.append(looped)
    with pytest.raises(ValueError):
        RUNNER_MODULE._dumps(looped)
    assert RUNNER_MODULE._dumps([[1], [1]]) == "[[1],[1]]"


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, null, true, false, "x\\u00e9"], "b": {"c": -1e5}}', "[]", '"s"',
                                  "12", "NaN", ' {"x": 1} \n'])
def test_loads_matches_json(text):
    assert repr(RUNNER_MODULE._loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", ['{"a": 1} x', "{", "", "[1,]", "tru"])
def test_loads_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        RUNNER_MODULE._loads(text)


def test_the_fast_path_is_in_use_here():
    assert "json" not in RUNNER_MODULE._dumps.__code__.co_names


def test_reseed_draws_fresh_state_for_what_was_seeded_before_a_checkpoint():
    import random
    import tempfile

    random.seed(1234)  # what every clone of a checkpointed process would repeat
    repeated = random.random()
    random.seed(1234)
    tempfile._get_candidate_names()
    reseeded = RUNNER_MODULE._reseed()
    assert "random" in reseeded and "tempfile" in reseeded
    assert random.random() != repeated
    assert tempfile._name_sequence is None


def start_runner(workdir):
    """The runner as a sandbox starts it, its control socket on fd 0: (process, our end, reader)."""
    import socket
    import subprocess
    import sys

    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-I", "-B", str(RUNNER)], stdin=theirs, cwd=workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    theirs.close()
    return process, ours, ours.makefile("rb")


def test_resume_frames_are_answered_with_ready_until_the_request(tmp_path):
    """The runner's loop as a restored sandbox sees it: resume -> ready (reseeded), then run."""
    process, ours, reader = start_runner(tmp_path)
    try:
        assert json.loads(reader.readline())["type"] == "ready"
        ours.sendall(b'{"type": "resume"}\n')
        frame = json.loads(reader.readline())
        assert frame["type"] == "ready" and isinstance(frame["reseeded"], list)
        ours.sendall(json.dumps({"type": "run", "source": "main.py", "arguments": {"x": 2},
                                 "code": "def main(x):\n    return x * 21\n"}).encode() + b"\n")
        done = json.loads(reader.readline())
        assert done["type"] == "done" and json.loads(done["result_json"])["value"] == 42
    finally:
        ours.close()
        process.wait(timeout=10)


SEALED_CODE = '''
import os
def main():
    with open("artifacts/plot.png", "wb") as f: f.write(b"PNG" * 10)
    with open("table.csv", "w") as f: f.write("a,b\\n1,2\\n")
    with open("notes.txt", "w") as f: f.write("not an artifact type")
    with open("artifacts/big.png", "wb") as f: f.write(b"x" * 2000)
    with open("artifacts/empty.png", "wb"): pass
    os.symlink("/etc/passwd", "artifacts/link.csv")
    os.chdir("/")
    return os.path.getsize(__file__)
'''


def test_a_sealed_run_writes_its_source_and_sends_the_artifacts_by_the_services_rules(tmp_path):
    """What a sealed sandbox's runner does: the workspace (here an empty directory) gets the
    source from the run frame and, before "done", the artifacts come as frames + bytes:
    artifacts/ first, then the root; not a symlink, an empty or oversized file, a name of
    another type or the source itself; wherever main() moved the current directory."""
    process, ours, reader = start_runner(tmp_path)
    try:
        assert json.loads(reader.readline())["type"] == "ready"
        assert (tmp_path / "artifacts").is_dir()  # made before "ready": part of a snapshot
        rules = {"max_count": 10, "max_bytes": 1000, "suffixes": [".png", ".csv", ".py"], "exclude": ["main.py"]}
        ours.sendall(json.dumps({"type": "run", "source": "main.py", "arguments": {}, "code": SEALED_CODE,
                                 "write_source": True, "artifacts": rules}).encode() + b"\n")
        frames = read_until_done(reader)
    finally:
        ours.close()
        process.wait(timeout=10)
    done = frames[-1]
    assert done["exit_code"] == 0 and json.loads(done["result_json"])["value"] == len(SEALED_CODE.encode()), process.stderr.read()
    assert [(f["name"], f["data"]) for f in frames[:-1]] == [("plot.png", b"PNG" * 10), ("table.csv", b"a,b\n1,2\n")]
    assert (tmp_path / "main.py").read_text() == SEALED_CODE


def test_a_failed_sealed_run_sends_no_artifacts_and_the_count_is_capped(tmp_path):
    code = "def main(fail):\n    for i in range(5):\n        open('artifacts/%d.png' % i, 'wb').write(b'x')\n" \
           "    if fail:\n        raise RuntimeError('no')\n"
    for fail, expected in ((True, []), (False, ["0.png", "1.png", "2.png"])):
        workdir = tmp_path / str(fail)
        workdir.mkdir()
        process, ours, reader = start_runner(workdir)
        try:
            json.loads(reader.readline())
            rules = {"max_count": 3, "max_bytes": 100, "suffixes": [".png"], "exclude": []}
            ours.sendall(json.dumps({"type": "run", "source": "main.py", "arguments": {"fail": fail}, "code": code,
                                     "write_source": True, "artifacts": rules}).encode() + b"\n")
            frames = read_until_done(reader)
        finally:
            ours.close()
            process.wait(timeout=10)
        assert frames[-1]["exit_code"] == (1 if fail else 0)
        assert [f["name"] for f in frames[:-1]] == expected
