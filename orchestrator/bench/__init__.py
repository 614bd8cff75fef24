"""The ops benchmark: ``python -m orchestrator.bench [options]`` (``make bench BENCH_ARGS=...``).

One module per concern:

scenario     what is sent, as data: kinds of run (code, language, expected result) and the
             sustained scenarios (mixes of kinds by weight)
client       one run over HTTP, judged (status, expected result) and how it was served
             (X-Sandbox-Start, else X-Sandbox-Warm, else unknown); waiting on our pools
load         the closed loop: N clients, each sending its next run when the last answers
workload     the idle-host workloads: sequential, a burst, hellos beside infinite loops
floor        raw runsc run / exec, without the service
service      our own service, started and stopped by the benchmark
host         idle sandbox memory, leftovers, our cgroup parent
side         the chosen groups against our service or a foreign endpoint
measurement  what a workload or a scenario produced, percentiles (pure)
report       the JSON document: sides, comparison, ratios (pure)
target       the targets, as data (pure)
table, plot  the text table and the PNG
cli          options and the order of things

Progress goes to stderr, the table to stdout, the document to ``bench-results/bench.json``.
"""
