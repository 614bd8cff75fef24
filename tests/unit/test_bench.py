"""The benchmark's pure parts: percentiles, ratios, targets, the JSON document, the table and the
small helpers of ``orchestrator.bench`` that need neither runsc nor a network."""

from __future__ import annotations

import json

import pytest

from orchestrator import bench, bench_report
from orchestrator.bench_report import TARGETS, Measurement, percentile


def make_doc(samples: dict[str, list[float]], *, errors: dict[str, int] | None = None,
             memory: dict[str, list[float]] | None = None, baseline: dict | None = None) -> dict:
    measurements = {key: Measurement(samples_ms=list(values), errors=(errors or {}).get(key, 0))
                    for key, values in samples.items()}
    return bench_report.build_document({"target": "fake"}, measurements, memory or {}, [], baseline)


def target(doc: dict, name_start: str) -> dict:
    (row,) = [row for row in doc["targets"] if row["name"].startswith(name_start)]
    return row


# -- percentiles -------------------------------------------------------------------------------

def test_percentile_nearest_rank():
    samples = [float(value) for value in range(1, 11)]
    assert percentile(samples, 50) == 5.0
    assert percentile(samples, 90) == 9.0
    assert percentile(samples, 95) == 10.0
    assert percentile(samples, 99) == 10.0
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 10.0


def test_percentile_is_a_measured_value_and_ignores_order():
    samples = [30.0, 10.0, 20.0, 40.0]
    assert percentile(samples, 50) == 20.0  # not the interpolated 25
    assert percentile(samples, 51) == 30.0
    assert percentile([7.5], 99) == 7.5


def test_percentile_of_nothing_is_none_and_bad_p_is_refused():
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_counts_samples_and_errors():
    summary = bench_report.summarize(Measurement(samples_ms=[3.0, 1.0, 2.0], errors=2, notes=["HTTP 500"],
                                                 extra={"wall_s": 1.5}), "label")
    assert (summary["n"], summary["errors"], summary["p50"], summary["min"], summary["max"]) == (3, 2, 2.0, 1.0, 3.0)
    assert summary["mean"] == 2.0 and summary["wall_s"] == 1.5 and summary["notes"] == ["HTTP 500"]
    empty = bench_report.summarize(Measurement(errors=4), "label")
    assert (empty["n"], empty["p50"], empty["mean"]) == (0, None, None)


# -- ratios -----------------------------------------------------------------------------------

def test_ratios_only_where_both_sides_were_measured():
    doc = make_doc({"floor_run": [200.0], "hello_cold": [300.0], "hello_warm": [10.0]})
    ratios = {row["name"]: row["value"] for row in doc["ratios"]}
    assert ratios == {"cold hello / raw runsc run": 1.5, "warm hello / raw runsc run": 0.05,
                      "cold hello / warm hello": 30.0}


def test_ratio_with_a_zero_or_empty_denominator_is_left_out():
    doc = make_doc({"floor_run": [], "hello_cold": [300.0]})
    assert doc["ratios"] == []


def test_baseline_ratio_is_baseline_over_ours():
    baseline = make_doc({"hello_warm": [100.0], "burst": [900.0], "pandas_warm": [80.0]})
    doc = make_doc({"hello_warm": [20.0], "burst": [300.0], "floor_run": [250.0]}, baseline=baseline)
    assert doc["baseline"]["source"] == "fake"
    assert doc["baseline"]["ratios"] == [
        {"workload": "hello_warm", "baseline_p50": 100.0, "ours_p50": 20.0, "ratio": 5.0},
        {"workload": "burst", "baseline_p50": 900.0, "ours_p50": 300.0, "ratio": 3.0},
    ]


# -- targets ----------------------------------------------------------------------------------

def test_targets_pass_fail_and_missing():
    doc = make_doc({"hello_warm": [20.0, 24.0, 90.0], "pandas_warm": [41.0], "overhead": [5.0]})
    assert target(doc, "hello warm")["passed"] is True  # p50 24 <= 25, the slow outlier does not count
    assert target(doc, "pandas warm") == {"name": "pandas warm p50 <= 40 ms", "limit": 40, "unit": "ms",
                                          "measured": 41.0, "passed": False}
    assert target(doc, "service overhead")["passed"] is True  # the limit itself passes
    missing = target(doc, "hello while 4 loops")
    assert missing["measured"] is None and missing["passed"] is None
    assert len(doc["targets"]) == len(TARGETS)


def test_cold_hello_target_is_relative_to_the_runsc_floor():
    assert target(make_doc({"floor_run": [250.0], "hello_cold": [300.0]}), "cold hello")["passed"] is True
    failing = target(make_doc({"floor_run": [250.0], "hello_cold": [310.0]}), "cold hello")
    assert failing["measured"] == 1.24 and failing["passed"] is False
    assert target(make_doc({"hello_cold": [310.0]}), "cold hello")["passed"] is None


def test_burst_target_counts_errors():
    assert target(make_doc({"burst": [1.0] * 32}), "32 requests")["passed"] is True
    failing = target(make_doc({"burst": [1.0] * 31}, errors={"burst": 1}), "32 requests")
    assert failing["measured"] == 1 and failing["passed"] is False


def test_memory_targets_per_profile():
    doc = make_doc({}, memory={"python": [20.0, 30.0, 25.0], "python_preload": [70.0, 50.0]})
    assert doc["memory"]["python"] == {"n": 3, "median_mb": 25.0, "samples_mb": [20.0, 30.0, 25.0]}
    assert target(doc, "idle warm sandbox (python)")["passed"] is True
    preload = target(doc, "idle warm sandbox (python_preload)")
    assert preload["measured"] == 60.0 and preload["passed"] is True


# -- the document and its presentation --------------------------------------------------------

def test_document_shape_is_json_and_ordered():
    doc = make_doc({"hello_warm": [10.0, 12.0], "floor_run": [200.0]}, errors={"hello_warm": 1},
                   memory={"python": [19.0]})
    loaded = json.loads(json.dumps(doc))
    assert loaded == doc
    assert set(doc) == {"schema", "meta", "workloads", "memory", "skipped", "ratios", "baseline", "targets"}
    assert doc["schema"] == bench_report.SCHEMA and doc["baseline"] is None
    assert list(doc["workloads"]) == ["floor_run", "hello_warm"]  # the table's order, not the input's
    warm = doc["workloads"]["hello_warm"]
    assert set(warm) >= {"label", "n", "errors", "p50", "p95", "p99", "mean", "min", "max", "notes", "samples_ms"}
    assert (warm["n"], warm["errors"], warm["samples_ms"]) == (2, 1, [10.0, 12.0])
    for row in doc["targets"]:
        assert set(row) == {"name", "limit", "unit", "measured", "passed"}


def test_table_shows_workloads_targets_and_skips():
    doc = make_doc({"hello_warm": [10.0], "pandas_warm": [50.0]})
    doc["skipped"].append({"what": "floors", "why": "--skip-floors"})
    doc["meta"]["leftovers"] = []
    table = bench_report.format_table(doc)
    assert "/run hello, warm" in table and "10.0" in table
    assert "PASS  hello warm p50 <= 25 ms" in table
    assert "FAIL  pandas warm p50 <= 40 ms" in table
    assert "n/a   service overhead p50 <= 5 ms" in table
    assert "skipped: floors: --skip-floors" in table
    assert "clean-up: nothing left behind" in table


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    doc = make_doc({"floor_run": [200.0, 210.0], "hello_warm": [10.0, 11.0, 30.0]}, memory={"python": [20.0]})
    path = tmp_path / "out" / "bench.png"
    assert bench_report.plot(doc, path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench_report.plot(make_doc({}), tmp_path / "empty.png") is False


# -- pure helpers of the runner ---------------------------------------------------------------

def test_record_keeps_successes_and_a_few_distinct_problems():
    measurement = Measurement()
    bench.record(measurement, bench.Reply(True, 12.0, run_ms=1.0, warm=True))
    for _ in range(3):
        bench.record(measurement, bench.Reply(False, 5.0, warm=False, problem="status x"))
    assert measurement.samples_ms == [12.0] and measurement.errors == 3
    assert measurement.notes == ["status x"]
    assert measurement.extra == {"warm": 1, "cold": 3}


def test_overhead_uses_warm_successes_with_a_runner_time():
    replies = [bench.Reply(True, 12.0, run_ms=2.0, warm=True), bench.Reply(True, 300.0, run_ms=2.0, warm=False),
               bench.Reply(False, 9.0, run_ms=1.0, warm=True), bench.Reply(True, 8.0, warm=True)]
    assert bench.overhead_of(replies).samples_ms == [10.0]
    assert bench.overhead_of(replies[1:]) is None


def test_floor_bundle_is_minimal_and_read_only(tmp_path):
    bundle = bench.write_floor_bundle(tmp_path / "b", tmp_path / "rootfs", ["python3", "-c", "print(1)"])
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}
    assert spec["process"]["terminal"] is False and spec["process"]["args"] == ["python3", "-c", "print(1)"]
    assert spec["process"]["user"]["uid"] != 0


def test_sandbox_of_a_runsc_process_and_its_profile(tmp_path):
    assert bench._bundle_of(["runsc", "--root=/r", "run", "--bundle=/s/sandboxes/python-1/bundle", "python-1"]) \
        == "/s/sandboxes/python-1/bundle"
    assert bench._bundle_of(["runsc-gofer", "--root=/r", "gofer", "--bundle", "/b"]) == "/b"
    assert bench._bundle_of(["runsc", "--root=/r", "list"]) is None
    bundle = tmp_path / "sandboxes" / "python-2" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({
        "process": {"env": ["PATH=/bin", "SANDBOX_PRELOAD=numpy,pandas"]},
        "annotations": {"dev.gvisor-sandbox.language": "python"}}))
    assert bench._profile_of(tmp_path, "python-2") == "python_preload"
    (bundle / "config.json").write_text(json.dumps({"process": {"env": ["PATH=/bin"]}}))
    assert bench._profile_of(tmp_path, "python-2") == "python"
    assert bench._profile_of(tmp_path, "python-missing") == "unknown"


def test_quick_and_default_iterations():
    default = bench.parse_args([])
    assert (default.iterations, default.pandas_iterations, default.loop_iterations) == (20, 5, 10)
    quick = bench.parse_args(["--quick"])
    assert (quick.iterations, quick.pandas_iterations, quick.loop_iterations) == (5, 2, 3)
    assert bench.parse_args(["--iterations", "8", "--pandas-iterations", "3"]).pandas_iterations == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--iterations", "0"])
