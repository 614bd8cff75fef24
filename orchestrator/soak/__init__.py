"""``make soak`` (``python -m orchestrator.soak``): the real service under a closed-loop load
of every kind of outcome for a long time, then proof that it held.

The service is started as the benchmark starts it (``orchestrator.bench.service``: its own
port, state dir and cgroup parent, no rate limit).  Once its pools and snapshot images are
ready, N clients send the cases of ``cases.CASES`` in a fixed weighted cycle, each checked
against the classification its answer must carry; the service process's RSS and open file
descriptors are sampled throughout.  A warm-up (the first part of the duration) is followed
by a pause until the service is at rest again: its RSS and FDs then are the baseline; after
the load, at rest again, they are the end.  At the end the service is stopped (SIGTERM) and
the host is searched for anything of it: runsc processes and containers, runsc state files,
sandbox cgroups and the parent, workspace mounts, sandbox directories, network namespaces,
veths, nftables tables.  Snapshot images are kept by design (the next start reuses them) and
reported, not counted.

Pass: 0 unexpected answers, RSS and FDs grown by less than ``MAX_GROWTH_PCT`` from the
baseline to the end, nothing left.  Writes ``soak.json``, ``soak.png`` (latency, RSS and FDs
over time) and prints one summary line.
"""
