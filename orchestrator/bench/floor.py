"""The floors: what runsc itself costs on this host, without the service.  A raw ``runsc run``
of ``python3 -c 'print(1)'`` over the python rootfs (a minimal bundle of our own, its own
``--root``) and a raw ``runsc exec /bin/true`` into one running sandbox."""

from __future__ import annotations

import json
import logging
import pathlib
import subprocess
import time
import uuid

from orchestrator.bench.measurement import Measurement

log = logging.getLogger(__name__)

RUNSC_TIMEOUT_S = 60.0


def write_floor_bundle(directory: pathlib.Path, rootfs: pathlib.Path, args: list[str]) -> pathlib.Path:
    """A minimal OCI bundle: the rootfs as a read-only root, no terminal, /proc only."""
    spec = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 65534, "gid": 65534}, "args": args,
                    "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"], "cwd": "/"},
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "network")]},
    }
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(spec, indent=2))
    return directory


def measure_floors(runsc: list[str], rootfs: pathlib.Path, work: pathlib.Path, iterations: int) -> dict[str, Measurement]:
    """``runsc`` is the binary with its global flags (``--root`` of our own included)."""
    hello = write_floor_bundle(work / "floor-hello", rootfs, ["python3", "-c", "print(1)"])
    sleeper = write_floor_bundle(work / "floor-sleep", rootfs, ["sleep", "3600"])
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    out_path, err_path = work / "floor.stdout", work / "floor.stderr"
    run = Measurement()
    log.info(f"floor: runsc run python3 print x{iterations} (+1 warm-up)")
    for index in range(iterations + 1):
        sandbox_id = f"{prefix}-run-{index}"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            started = time.perf_counter()
            try:
                code = subprocess.run([*runsc, "run", f"--bundle={hello}", sandbox_id], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=err, timeout=RUNSC_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = None
                delete_container(runsc, sandbox_id)
            elapsed = (time.perf_counter() - started) * 1000
        if index == 0:
            continue
        if code == 0 and out_path.read_bytes() == b"1\n":
            run.samples_ms.append(elapsed)
        else:
            run.errors += 1
            run.notes.append(f"exit {code}: {err_path.read_text(errors='replace').strip()[-200:]}")
    execs = Measurement()
    sleeper_id = f"{prefix}-exec"
    log.info(f"floor: runsc exec /bin/true x{iterations} (+1 warm-up) into one running sandbox")
    try:
        with open(err_path, "wb") as err:
            code = subprocess.run([*runsc, "run", "--detach", f"--bundle={sleeper}", sleeper_id],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                  timeout=RUNSC_TIMEOUT_S).returncode
        if code != 0:
            execs.errors += 1
            execs.notes.append(f"runsc run --detach exited {code}: {err_path.read_text(errors='replace')[-200:]}")
            return {"floor_run": run, "floor_exec": execs}
        for index in range(iterations + 1):
            started = time.perf_counter()
            try:
                code = subprocess.run([*runsc, "exec", sleeper_id, "/bin/true"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      timeout=RUNSC_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = None
            elapsed = (time.perf_counter() - started) * 1000
            if index and code == 0:
                execs.samples_ms.append(elapsed)
            elif index:
                execs.errors += 1
    finally:
        delete_container(runsc, sleeper_id)
    return {"floor_run": run, "floor_exec": execs}


def delete_container(runsc: list[str], sandbox_id: str) -> None:
    subprocess.run([*runsc, "delete", "--force", sandbox_id], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=RUNSC_TIMEOUT_S)

