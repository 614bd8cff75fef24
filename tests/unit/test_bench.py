"""The benchmark's pure parts: percentiles, the JSON document, ratios between sides, targets, the
table and the plot, and the small helpers of ``orchestrator.bench`` that need neither runsc nor a
network.  The closed loop and the HTTP client are in ``test_bench_load``."""

from __future__ import annotations

import json

import pytest

from orchestrator.bench import cli, floor, host, plot, report, table, workload
from orchestrator.bench.client import Reply
from orchestrator.bench.measurement import Measurement, ScenarioRun, percentile, summarize
from orchestrator.bench.target import TARGETS, Target, evaluate_targets


def make_side(samples: dict[str, list[float]] | None = None, *, errors: dict[str, int] | None = None,
              memory: dict[str, list[float]] | None = None, sustained: dict[str, ScenarioRun] | None = None,
              target: str = "fake") -> dict:
    measurements = {key: Measurement(samples_ms=list(values), errors=(errors or {}).get(key, 0))
                    for key, values in (samples or {}).items()}
    return report.build_side(target, measurements, memory or {}, sustained or {}, [])


def make_doc(samples: dict[str, list[float]] | None = None, *, compare: dict | None = None,
             baseline: dict | None = None, **side) -> dict:
    return report.build_document({"target": "fake"}, make_side(samples, **side), compare, baseline)


def scenario_run(name: str, wall_s: float, kinds: dict[str, tuple[list[float], int]],
                 served: dict[str, dict[str, int]] | None = None, host_cpu_s: float | None = None) -> ScenarioRun:
    """``kinds``: kind -> (latencies of the successful runs, failed runs)."""
    return ScenarioRun(name, clients=4, duration_s=wall_s, wall_s=wall_s, kinds={
        kind: Measurement(samples_ms=list(samples), errors=failed, served=dict((served or {}).get(kind, {})))
        for kind, (samples, failed) in kinds.items()}, host_cpu_s=host_cpu_s)


def target(doc: dict, name_start: str) -> dict:
    (row,) = [row for row in doc["targets"] if row["name"].startswith(name_start)]
    return row


# -- percentiles and measurements ----------------------------------------------------------------

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


def test_summary_counts_samples_errors_and_how_runs_were_served():
    summary = summarize(Measurement(samples_ms=[3.0, 1.0, 2.0], errors=2, notes=["HTTP 500"],
                                    served={"warm": 4, "booted": 1}, extra={"wall_s": 1.5}), "label")
    assert (summary["n"], summary["errors"], summary["p50"], summary["min"], summary["max"]) == (3, 2, 2.0, 1.0, 3.0)
    assert summary["mean"] == 2.0 and summary["wall_s"] == 1.5 and summary["notes"] == ["HTTP 500"]
    assert summary["served"] == {"booted": 1, "warm": 4}
    empty = summarize(Measurement(errors=4), "label")
    assert (empty["n"], empty["p50"], empty["mean"], empty["served"]) == (0, None, None, {})


def test_measurement_add_keeps_successes_a_few_distinct_problems_and_the_start():
    measurement = Measurement()
    measurement.add(Reply(True, 12.0, "hello", start="warm"))
    for _ in range(3):
        measurement.add(Reply(False, 5.0, "hello", start="booted", problem="status x"))
    measurement.add(Reply(False, 9.0, "hello", start=None, problem="no answer: ClientError"))
    for index in range(5):
        measurement.add(Reply(False, 1.0, "hello", start="unknown", problem=f"other {index}"))
    assert measurement.samples_ms == [12.0] and measurement.errors == 9 and measurement.runs == 10
    assert measurement.notes == ["status x", "no answer: ClientError", "other 0"]  # at most three
    assert measurement.served == {"warm": 1, "booted": 3, "unknown": 5}  # no answer: not served at all


def test_scenario_run_accounting():
    run = scenario_run("mix", 10.0, {"hello": ([1.0] * 50, 0), "pandas": ([2.0] * 28, 2), "node": ([3.0] * 20, 0)},
                       served={"hello": {"warm": 50}, "pandas": {"restored": 25, "booted": 5}, "node": {"warm": 20}})
    assert (run.ok, run.failed) == (98, 2)
    assert run.runs_per_s() == 9.8 and run.runs_per_s("pandas") == 2.8
    assert run.served() == {"booted": 5, "restored": 25, "warm": 70}
    assert ScenarioRun("hello", 4, 1.0, 0.0, {"hello": Measurement()}).runs_per_s() is None
    # The host's CPU over the scenario, per successful run; none measured or no success: none.
    assert run.host_cpu_ms_per_run() is None
    run.host_cpu_s = 14.7
    assert run.host_cpu_ms_per_run() == pytest.approx(150.0)
    assert scenario_run("hello", 1.0, {"hello": ([], 3)}, host_cpu_s=2.0).host_cpu_ms_per_run() is None


def test_host_busy_cpu_counts_work_not_idle_waiting_or_steal():
    class Times:  # psutil's cpu_times() fields on Linux
        user, nice, system, idle, iowait, irq, softirq, steal, guest, guest_nice = 10, 1, 5, 100, 7, 0.5, 1.5, 9, 3, 0
    assert host.busy_cpu_s(Times) == 18.0
    assert host.host_busy_cpu_s() > 0


def test_only_a_loopback_endpoint_gets_the_hosts_cpu_figure():
    assert host.is_loopback("http://127.0.0.1:19385") and host.is_loopback("http://127.3.4.5/")
    assert host.is_loopback("http://localhost:9385") and host.is_loopback("http://[::1]:9385/run")
    assert not host.is_loopback("http://10.0.0.11:9385") and not host.is_loopback("http://sandbox.example:9385")
    assert not host.is_loopback("not a url")


# -- one side ------------------------------------------------------------------------------------

def test_ratios_only_where_both_sides_were_measured():
    doc = make_doc({"floor_run": [200.0], "hello_cold": [300.0], "hello_warm": [10.0]})
    ratios = {row["name"]: row["value"] for row in doc["ratios"]}
    assert ratios == {"cold hello / raw runsc run": 1.5, "warm hello / raw runsc run": 0.05,
                      "cold hello / warm hello": 30.0}


def test_ratio_with_a_zero_or_empty_denominator_is_left_out():
    assert make_doc({"floor_run": [], "hello_cold": [300.0]})["ratios"] == []


def test_scenario_summary():
    run = scenario_run("mix", 10.0, {"hello": ([10.0, 20.0, 30.0, 40.0], 0), "pandas": ([900.0, 1100.0], 1),
                                     "node": ([500.0], 0)}, served={"hello": {"warm": 4}, "pandas": {"booted": 3}})
    run.notes.append("a note")
    summary = report.summarize_scenario(run)
    assert summary["host_cpu_ms_per_run"] is None
    assert summary["quiet_cpu_ms_per_s"] is None
    run.host_cpu_s, run.quiet_cpu_ms_per_s = 0.35, 87.06
    assert report.summarize_scenario(run)["host_cpu_ms_per_run"] == 50.0
    assert report.summarize_scenario(run)["quiet_cpu_ms_per_s"] == 87.1
    assert summary["label"] == "mix hello 5 : pandas 3 : node 2"
    assert summary["mix"] == {"hello": 5, "pandas": 3, "node": 2}
    assert (summary["runs"], summary["ok"], summary["failed"], summary["runs_per_s"]) == (8, 7, 1, 0.7)
    assert summary["served"] == {"booted": 3, "warm": 4} and summary["notes"] == ["a note"]
    pandas = summary["kinds"]["pandas"]
    assert (pandas["n"], pandas["errors"], pandas["p50"], pandas["p99"]) == (2, 1, 900.0, 1100.0)
    assert pandas["runs_per_s"] == 0.2
    assert list(summary["kinds"]) == ["hello", "pandas", "node"]


def test_side_lists_scenarios_in_the_table_order():
    side = make_side(sustained={"mix": scenario_run("mix", 1.0, {"hello": ([1.0], 0)}),
                                "hello": scenario_run("hello", 1.0, {"hello": ([1.0], 0)})})
    assert list(side["sustained"]) == ["hello", "mix"]


# -- two sides -----------------------------------------------------------------------------------

def test_comparison_orients_every_ratio_so_that_above_one_means_ours_is_better():
    ours = {"hello": scenario_run("hello", 10.0, {"hello": ([100.0] * 90, 0)}, host_cpu_s=9.0),
            "pandas": scenario_run("pandas", 10.0, {"pandas": ([1000.0] * 25, 0)})}
    theirs = {"hello": scenario_run("hello", 10.0, {"hello": ([2000.0] * 20, 0)}, host_cpu_s=8.0),
              "mix": scenario_run("mix", 10.0, {"hello": ([1.0], 0)})}
    compare = make_side({"hello_warm": [40.0]}, sustained=theirs, target="http://original")
    doc = make_doc({"hello_warm": [10.0], "pandas_warm": [8.0]}, sustained=ours, compare=compare)
    assert doc["compare"]["target"] == "http://original"
    assert doc["comparison"]["workloads"] == [{"workload": "hello_warm", "ours_p50": 10.0, "other_p50": 40.0,
                                               "ratio": 4.0}]
    (hello,) = doc["comparison"]["sustained"]  # pandas and mix ran on one side only
    assert hello == {"scenario": "hello", "ours_runs_per_s": 9.0, "other_runs_per_s": 2.0, "runs_per_s_ratio": 4.5,
                     "host_cpu_ratio": 4.0,  # 400 ms of host CPU per run against our 100
                     "ours_failed": 0, "other_failed": 0,
                     "kinds": [{"kind": "hello", "ours_p50": 100.0, "other_p50": 2000.0, "p50_ratio": 20.0}]}


def test_comparison_of_a_side_with_no_successes_has_no_ratio():
    ours = {"pandas": scenario_run("pandas", 10.0, {"pandas": ([], 7)})}
    theirs = {"pandas": scenario_run("pandas", 10.0, {"pandas": ([5000.0], 0)})}
    doc = make_doc(sustained=ours, compare=make_side(sustained=theirs))
    (row,) = doc["comparison"]["sustained"]
    assert row["runs_per_s_ratio"] == 0.0 and row["ours_failed"] == 7 and row["host_cpu_ratio"] is None
    assert row["kinds"] == [{"kind": "pandas", "ours_p50": None, "other_p50": 5000.0, "p50_ratio": None}]


def test_baseline_ratio_is_baseline_over_ours():
    baseline = make_doc({"hello_warm": [100.0], "burst": [900.0], "pandas_warm": [80.0]})
    doc = make_doc({"hello_warm": [20.0], "burst": [300.0], "floor_run": [250.0]}, baseline=baseline)
    assert doc["baseline"]["source"] == "fake"
    assert doc["baseline"]["ratios"] == [
        {"workload": "hello_warm", "ours_p50": 20.0, "other_p50": 100.0, "ratio": 5.0},
        {"workload": "burst", "ours_p50": 300.0, "other_p50": 900.0, "ratio": 3.0},
    ]


# -- targets -------------------------------------------------------------------------------------

def test_targets_pass_fail_and_missing():
    doc = make_doc({"hello_warm": [20.0, 24.0, 90.0], "pandas_warm": [41.0], "overhead": [5.0]})
    assert target(doc, "hello warm")["passed"] is True  # p50 24 <= 25, the slow outlier does not count
    assert target(doc, "pandas warm") == {"name": "pandas warm p50 <= 40 ms", "limit": 40, "unit": "ms",
                                          "at_least": False, "measured": 41.0, "passed": False, "other": None}
    assert target(doc, "service overhead")["passed"] is True  # the limit itself passes
    missing = target(doc, "hello while 4 loops")
    assert missing["measured"] is None and missing["passed"] is None
    assert len(doc["targets"]) == len(TARGETS)


def test_throughput_targets_are_floors_and_failures_must_be_zero():
    sustained = {"hello": scenario_run("hello", 10.0, {"hello": ([10.0] * 120, 0)}),
                 "pandas": scenario_run("pandas", 10.0, {"pandas": ([1400.0] * 24, 1)}),
                 "mix": scenario_run("mix", 10.0, {"hello": ([1.0] * 30, 0), "pandas": ([1.0] * 15, 0),
                                                   "node": ([1.0] * 10, 0)})}
    doc = make_doc(sustained=sustained)
    assert target(doc, "hello only >= 12")["measured"] == 12.0 and target(doc, "hello only >= 12")["passed"] is True
    assert target(doc, "pandas only >= 2.5")["measured"] == 2.4 and target(doc, "pandas only >= 2.5")["passed"] is False
    assert target(doc, "pandas only p50")["passed"] is True
    assert target(doc, "pandas only: 0 failed") == {"name": "pandas only: 0 failed runs", "limit": 0, "unit": "failed",
                                                    "at_least": False, "measured": 1, "passed": False, "other": None}
    assert target(doc, "mix 5:3:2 >= 5")["measured"] == 5.5 and target(doc, "mix 5:3:2 >= 5")["passed"] is True
    assert target(doc, "mix 5:3:2: 0 failed")["passed"] is True


def test_pool_empty_target_and_the_other_sides_figure():
    compare = make_side({"pandas_warm": [2500.0]}, sustained={"hello": scenario_run("hello", 10.0,
                                                                                  {"hello": ([1.0] * 20, 0)})})
    doc = make_doc({"pandas_pool_empty": [480.0, 520.0, 450.0], "pandas_warm": [9.0]}, compare=compare)
    assert target(doc, "pandas, its pool empty")["measured"] == 480.0
    assert target(doc, "pandas, its pool empty")["passed"] is True
    assert target(doc, "pandas warm")["other"] == 2500.0
    hello = target(doc, "hello only >= 12")
    assert hello["measured"] is None and hello["passed"] is None and hello["other"] == 2.0


def test_a_target_is_data():
    floor_target = Target("x >= 3", 3, "runs/s", lambda side: side["value"], at_least=True)
    ceiling = Target("x <= 3", 3, "ms", lambda side: side["value"])
    rows = evaluate_targets({"value": 3}, {"value": 1}, (floor_target, ceiling))
    assert [(row["passed"], row["other"]) for row in rows] == [(True, 1), (True, 1)]
    assert [row["passed"] for row in evaluate_targets({"value": 2.9}, None, (floor_target, ceiling))] == [False, True]


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
    doc = make_doc(memory={"python": [20.0, 30.0, 25.0], "python_preload": [70.0, 50.0]})
    assert doc["memory"]["python"] == {"n": 3, "median_mb": 25.0, "samples_mb": [20.0, 30.0, 25.0]}
    assert target(doc, "idle warm sandbox (python)")["passed"] is True
    preload = target(doc, "idle warm sandbox (python_preload)")
    assert preload["measured"] == 60.0 and preload["passed"] is True


# -- the document and its presentation ----------------------------------------------------------

def test_document_shape_is_json_and_ordered():
    sustained = {"hello": scenario_run("hello", 2.0, {"hello": ([5.0, 6.0], 1)}, served={"hello": {"warm": 3}})}
    doc = make_doc({"hello_warm": [10.0, 12.0], "floor_run": [200.0]}, errors={"hello_warm": 1},
                   memory={"python": [19.0]}, sustained=sustained)
    loaded = json.loads(json.dumps(doc))
    assert loaded == doc
    assert set(doc) == {"schema", "meta", "workloads", "memory", "sustained", "skipped", "ratios", "compare",
                        "comparison", "baseline", "targets"}
    assert doc["schema"] == report.SCHEMA and doc["baseline"] is None and doc["compare"] is None
    assert list(doc["workloads"]) == ["floor_run", "hello_warm"]  # the table's order, not the input's
    warm = doc["workloads"]["hello_warm"]
    assert set(warm) >= {"label", "n", "errors", "p50", "p95", "p99", "mean", "min", "max", "served", "notes",
                         "samples_ms"}
    assert (warm["n"], warm["errors"], warm["samples_ms"]) == (2, 1, [10.0, 12.0])
    assert doc["sustained"]["hello"]["runs_per_s"] == 1.0 and doc["sustained"]["hello"]["failed"] == 1
    for row in doc["targets"]:
        assert set(row) == {"name", "limit", "unit", "at_least", "measured", "passed", "other"}


def test_table_shows_workloads_targets_and_skips():
    doc = make_doc({"hello_warm": [10.0], "pandas_warm": [50.0]})
    doc["skipped"].append({"what": "floors", "why": "not chosen"})
    doc["meta"]["leftovers"] = []
    text = table.format_table(doc)
    assert "/run hello, warm" in text and "10.0" in text
    assert "PASS  hello warm p50 <= 25 ms" in text
    assert "FAIL  pandas warm p50 <= 40 ms" in text
    assert "n/a   service overhead p50 <= 5 ms" in text
    assert "skipped: floors: not chosen" in text
    assert "clean-up: nothing left behind" in text
    assert "sustained" not in text and "compare" not in text


def test_table_puts_ours_beside_the_compare_endpoint():
    ours = {"hello": scenario_run("hello", 10.0, {"hello": ([100.0] * 90, 0)},
                                  served={"hello": {"warm": 30, "booted": 60}}, host_cpu_s=13.5),
            "mix": scenario_run("mix", 10.0, {"hello": ([50.0] * 25, 0), "pandas": ([900.0] * 15, 0),
                                              "node": ([300.0] * 10, 0)},
                                served={"pandas": {"restored": 15}})}
    theirs = {"hello": scenario_run("hello", 10.0, {"hello": ([2000.0] * 20, 0)}, served={"hello": {"unknown": 20}},
                                    host_cpu_s=8.0)}
    ours["hello"].quiet_cpu_ms_per_s = 42.04
    theirs["hello"].kinds["hello"].notes.append("status program_runner_error exit_code -10: Container pool is busy")
    compare = make_side({"hello_warm": [700.0]}, sustained=theirs, target="http://127.0.0.1:19385")
    compare["skipped"].append({"what": "cold workloads", "why": "foreign"})
    text = table.format_table(make_doc({"hello_warm": [7.0]}, sustained=ours, compare=compare))
    lines = text.splitlines()
    assert "compare: http://127.0.0.1:19385" in lines
    assert "sustained load: closed loop, 4 clients, 10 s per scenario (runs/s: successful runs / wall time; " in text
    ours_hello = next(line for line in lines if line.split()[:2] == ["hello", "ours"])
    # CPU ms: 13.5 s / 90; quiet: 42.0 ms/s before the scenario
    assert ours_hello.split()[2:9] == ["9.00", "0", "150.0", "42.0", "100.0", "100.0", "100.0"]
    assert next(line for line in lines if line.split()[:2] == ["hello", "compare"]).split()[2:5] == \
        ["2.00", "0", "400.0"] and "quiet: the host's busy CPU in ms per second" in text
    assert ours_hello.endswith("warm 30, booted 60")
    assert next(line for line in lines if line.split()[:2] == ["hello", "compare"]).endswith("unknown 20")
    ratio = lines[lines.index(ours_hello) + 2]
    assert ratio.split() == ["ratio", "4.50x", "2.67x", "20.00x"]  # runs/s, host CPU per run, p50
    assert "mix hello 5 : pandas 3 : node 2" in lines
    mix_all = next(line for line in lines if line.split()[:2] == ["all", "ours"])
    assert mix_all.split()[2:6] == ["5.00", "0", "-", "-"] and mix_all.endswith("restored 15")  # no CPU measured
    assert any(line.split()[:3] == ["all", "compare", "not"] for line in lines)  # mix ran on our side only
    assert "/run hello, warm" in text and "100.00x" in text  # idle workloads: 700 / 7
    assert "skipped: compare: cold workloads: foreign" in text
    assert "  compare, hello only, hello: status program_runner_error exit_code -10: Container pool is busy" in lines
    assert "(compare: 2.00 runs/s)" in next(line for line in lines if "hello only >= 12" in line)
    assert "measured 9.00 runs/s" in next(line for line in lines if "hello only >= 12" in line)
    assert "PASS  hello warm p50 <= 25 ms" in text and "measured 7.0 ms  (compare: 700.0 ms)" in text


def test_served_order_known_ways_first():
    assert table.format_served({"unknown": 1, "booted": 2, "warm": 3, "restored": 4, "zzz": 5}) == \
        "warm 3, restored 4, booted 2, unknown 1, zzz 5"
    assert table.format_served({}) == "-"


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    sustained = {"mix": scenario_run("mix", 1.0, {"hello": ([5.0, 7.0], 0), "pandas": ([], 1)})}
    doc = make_doc({"floor_run": [200.0, 210.0], "hello_warm": [10.0, 11.0, 30.0]}, memory={"python": [20.0]},
                   sustained=sustained)
    assert [row["label"] for row in plot.plot_rows(doc)] == [
        "raw runsc run: python3 print", "/run hello, warm", "mix hello 5 : pandas 3 : node 2: hello"]
    path = tmp_path / "out" / "bench.png"
    assert plot.plot(doc, path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.plot(make_doc({}), tmp_path / "empty.png") is False


# -- pure helpers of the runner ------------------------------------------------------------------

def test_overhead_uses_warm_successes_with_a_runner_time():
    replies = [Reply(True, 12.0, start="warm", run_ms=2.0), Reply(True, 300.0, start="booted", run_ms=2.0),
               Reply(True, 200.0, start="restored", run_ms=2.0), Reply(False, 9.0, start="warm", run_ms=1.0),
               Reply(True, 8.0, start="warm")]
    assert workload.overhead_of(replies).samples_ms == [10.0]
    assert workload.overhead_of(replies[1:]) is None


def test_floor_bundle_is_minimal_and_read_only(tmp_path):
    bundle = floor.write_floor_bundle(tmp_path / "b", tmp_path / "rootfs", ["python3", "-c", "print(1)"])
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}
    assert spec["process"]["terminal"] is False and spec["process"]["args"] == ["python3", "-c", "print(1)"]
    assert spec["process"]["user"]["uid"] != 0


def test_sandbox_of_a_runsc_process_and_its_profile(tmp_path):
    assert host._bundle_of(["runsc", "--root=/r", "run", "--bundle=/s/sandboxes/python-1/bundle", "python-1"]) \
        == "/s/sandboxes/python-1/bundle"
    assert host._bundle_of(["runsc-gofer", "--root=/r", "gofer", "--bundle", "/b"]) == "/b"
    assert host._bundle_of(["runsc", "--root=/r", "list"]) is None
    bundle = tmp_path / "sandboxes" / "python-2" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({
        "process": {"env": ["PATH=/bin", "SANDBOX_PRELOAD=numpy,pandas"]},
        "annotations": {"dev.gvisor-sandbox.language": "python"}}))
    assert host._profile_of(tmp_path, "python-2") == "python_preload"
    (bundle / "config.json").write_text(json.dumps({"process": {"env": ["PATH=/bin"]}}))
    assert host._profile_of(tmp_path, "python-2") == "python"
    assert host._profile_of(tmp_path, "python-missing") == "unknown"


def test_quick_and_default_options():
    default = cli.parse_args([])
    assert (default.iterations, default.pandas_iterations, default.loop_iterations) == (20, 5, 10)
    assert default.plan.groups == {"floors", "cold", "pool-empty", "idle", "sustained"}
    assert [scenario.name for scenario in default.plan.scenarios] == ["hello", "pandas", "mix"]
    assert (default.plan.clients, default.plan.duration_s) == (4, 60.0)
    quick = cli.parse_args(["--quick"])
    assert (quick.iterations, quick.pandas_iterations, quick.loop_iterations, quick.duration) == (5, 2, 3, 10.0)
    assert cli.parse_args(["--iterations", "8", "--pandas-iterations", "3"]).pandas_iterations == 3
    with pytest.raises(SystemExit):
        cli.parse_args(["--iterations", "0"])


def test_choosing_groups_and_scenarios():
    args = cli.parse_args(["--only", "sustained", "--scenario", "pandas,mix", "--duration", "3", "--clients", "2",
                           "--compare-url", "http://127.0.0.1:19385"])
    assert args.plan.groups == {"sustained"} and args.compare_url == "http://127.0.0.1:19385"
    assert [scenario.name for scenario in args.plan.scenarios] == ["pandas", "mix"]
    assert (args.plan.duration_s, args.plan.clients) == (3.0, 2)
    both = cli.parse_args(["--only", "sustained,pool-empty", "--only", "floors", "--skip-floors"])
    assert both.plan.groups == {"sustained", "pool-empty"}
    assert cli.parse_args(["--skip-cold"]).plan.groups == {"floors", "pool-empty", "idle", "sustained"}
    for bad in (["--only", "warmish"], ["--scenario", "nope"], ["--only", ","], ["--clients", "0"],
                ["--service-env", "POOL=1"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)
    assert cli.parse_args(["--service-env", "SANDBOX_MAX_CONCURRENCY=16"]).service_env == [
        ("SANDBOX_MAX_CONCURRENCY", "16")]
