"""The soak's pure parts: its cases judge answers as the contract says, the cycle keeps the
weights, the report's verdict and summary line; and the cases' expectations match what the
service really answers, through the real runners over the fake runtime (no isolation, so the
cases that need real limits or the rootfs's packages are checked on real runsc by ``make soak``)."""

from __future__ import annotations

import base64
import json
import shutil
from collections import Counter

import pytest

from orchestrator.settings import Limits

from orchestrator import outcome
from orchestrator.soak import report
from orchestrator.soak.cases import CASES, judge
from orchestrator.soak.load import WEIGHTS, Reply, cycle
from orchestrator.soak.monitor import Sample


def success(value, **fields) -> dict:
    return outcome.empty_result(result={"present": True, "value": value, "type": "json"}, **fields)


def test_every_kind_of_outcome_is_a_case():
    assert set(CASES) == {"hello", "pandas", "node_async", "matplotlib_artifact", "syntax_error", "exception",
                          "non_json_result", "marker_spoof", "timeout", "oom", "fork_bomb", "output_flood",
                          "disk_fill"}
    for case in CASES.values():
        body = json.loads(case.body())
        assert base64.b64decode(body["code_b64"]).decode() == case.code and body["language"] == case.language


def test_judge_accepts_the_expected_answer_and_says_what_is_wrong_otherwise():
    hello = CASES["hello"]
    assert judge(hello, 200, success("hi")) is None
    assert judge(hello, 503, success("hi")) == "HTTP 503"
    assert judge(hello, 200, success("ho")) == 'result.value "ho", expected "hi"'
    assert "status program_error" in judge(hello, 200, outcome.failure_result("program_error", 1, "boom"))
    timeout = CASES["timeout"]
    assert judge(timeout, 200, outcome.failure_result("resource_limit_exceeded", -124, "Execution timeout",
                                                      resource_limit_type="time")) is None
    assert "exit_code -137" in judge(timeout, 200, outcome.failure_result("resource_limit_exceeded", -137, "x",
                                                                          resource_limit_type="memory"))


def test_judge_holds_every_failure_to_the_contract():
    """A failure with partial stdout or a result turns into a success for RAGFlow: unexpected."""
    exception = CASES["exception"]
    body = outcome.failure_result("program_error", 1, "ValueError: soak boom", runtime_error_type="nonzero_exit")
    assert judge(exception, 200, body) is None
    assert "empty stdout" in judge(exception, 200, {**body, "stdout": "partial"})
    assert "no result" in judge(exception, 200, {**body, "result": {"present": True, "value": 1, "type": "json"}})


def test_judge_checks_artifacts_and_takes_any_listed_alternative():
    chart = {"name": "chart.png", "mime_type": "image/png", "size": 10, "content_b64": "AA=="}
    assert judge(CASES["matplotlib_artifact"], 200, success("plotted", artifacts=[chart])) is None
    assert "artifact" in judge(CASES["matplotlib_artifact"], 200, success("plotted"))
    fork = CASES["fork_bomb"]
    assert judge(fork, 200, success(True)) is None
    died = outcome.failure_result("resource_limit_exceeded", 2, "Process limit exceeded", detail="pids_limit_exceeded")
    assert judge(fork, 200, died) is None
    assert judge(fork, 200, outcome.failure_result("program_error", 2, "Process exited with code 2")) is not None


def test_the_cycle_keeps_the_weights_spread_out():
    order = cycle()
    counts = Counter(case.name for case in order)
    assert counts == {name: WEIGHTS.get(name, 1) for name in CASES}
    names = [case.name for case in order]
    assert all(a != b for a, b in zip(names, names[1:])), names  # no case twice in a row


def _reply(case="hello", ok=True, ms=10.0, start="restored") -> Reply:
    return Reply(case, 1.0, ms, None if ok else "status program_error", start)


def _sample(rss_mb: float, fds: int, phase: str) -> Sample:
    return Sample(0.0, int(rss_mb * 2**20), fds, phase)


NOTHING = {kind: [] for kind in ("runsc", "state", "cgroups", "mounts", "directories", "netns", "nft")}
META = {"duration_s": 120.0, "clients": 4}


def test_a_clean_soak_passes_with_its_numbers_in_the_summary():
    doc = report.build(META, [_reply(), _reply("oom", start="warm")], [], _sample(50, 40, "baseline"),
                       _sample(52, 40, "end"), NOTHING, ["python-abc"])
    doc["summary"] = report.summary(doc)
    assert doc["passed"] and doc["cases"]["hello"]["runs"] == 1
    assert doc["summary"] == ("soak PASS: 120 s at concurrency 4, 2 runs of 2 kinds, 0 unexpected; after warm-up "
                              "RSS 50.0 -> 52.0 MB (+4.0%), FDs 40 -> 40 (+0.0%); nothing left after stop")


@pytest.mark.parametrize(("replies", "end", "left", "failed"), [
    ([_reply(ok=False)], _sample(50, 40, "end"), NOTHING, "unexpected"),
    ([_reply()], _sample(56, 40, "end"), NOTHING, "rss"),
    ([_reply()], _sample(50, 44, "end"), NOTHING, "fds"),
    ([_reply()], _sample(50, 40, "end"), {**NOTHING, "mounts": ["/tmp/x/workspace"]}, "leftovers"),
    ([], _sample(50, 40, "end"), NOTHING, "unexpected"),  # nothing ran: nothing proven
])
def test_each_check_fails_the_soak(replies, end, left, failed):
    doc = report.build(META, replies, [], _sample(50, 40, "baseline"), end, left, [])
    assert not doc["passed"] and doc["checks"][failed] is False
    assert report.summary(doc).startswith("soak FAIL")


def test_a_service_gone_before_the_end_fails_and_says_so():
    doc = report.build(META, [_reply()], [], _sample(50, 40, "baseline"), None, NOTHING, [])
    assert not doc["passed"] and "not measured at rest" in report.summary(doc)


RUNNER_CASES = ["hello", "syntax_error", "exception", "non_json_result", "marker_spoof", "timeout", "output_flood"]
if shutil.which("node"):
    RUNNER_CASES.append("node_async")


@pytest.mark.parametrize("name", RUNNER_CASES)
async def test_the_expectation_matches_what_the_service_answers(make_client, name):
    client = await make_client(limits=Limits(timeout_s=2, output_bytes=64 * 1024))
    case = CASES[name]
    response = await client.post("/run", data=case.body(), headers={"Content-Type": "application/json"})
    assert judge(case, response.status, await response.json()) is None
