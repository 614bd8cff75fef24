"""Running external commands: the only module of rootfs_builder that spawns processes.

Each command runs in its own process group with a timeout; on timeout or interrupt the group
gets SIGTERM (mmdebstrap then unmounts and removes its chroot), and SIGKILL if it lingers.
"""

import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO

from .errors import BuildError

log = logging.getLogger(__name__)

CAPTURE = subprocess.PIPE  # sink value: collect the output and return it
TERM_GRACE_SECONDS = 60


def run_command(argv: Sequence[str], *, timeout: float, sink: int | IO = CAPTURE,
                env: Mapping[str, str] | None = None, cwd: os.PathLike | None = None) -> str:
    """Run argv to completion; return its output when captured, else "".

    stdout and stderr both go to sink: CAPTURE, an open file (a log) or a file descriptor.
    Raises BuildError when the command cannot start, exits non-zero or times out.
    """
    name = os.path.basename(argv[0])
    log.debug("run %s", shlex.join(argv))
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        raise BuildError(f"run {name}: {exc.strerror or exc}") from exc
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise BuildError(f"run {name}: timed out after {timeout:.0f} s") from None
    except BaseException:  # KeyboardInterrupt: do not leave the group running
        _stop(proc)
        raise
    log.debug("%s exited with %d after %.1f s", name, proc.returncode, time.monotonic() - started)
    if proc.returncode != 0:
        lines = [line for line in (output or "").splitlines() if line.strip()]
        detail = f": {lines[-1].strip()}" if lines else ""
        raise BuildError(f"run {name}: exited with {proc.returncode}{detail}")
    return output or ""


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within the grace time."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
