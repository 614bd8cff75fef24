"""Request -> result: static check, a concurrency slot, a fresh sandbox, classification.

Knows nothing about HTTP.  Each request gets a sandbox nobody has used; the sandbox is torn
down in the background after the answer is ready (its slot is held until then, so teardown
counts against the concurrency cap and cannot pile up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from dataclasses import dataclass

from orchestrator import outcome
from orchestrator.artifacts import collect_artifacts
from orchestrator.errors import CapacityError
from orchestrator.language import Language
from orchestrator.sandbox import Job, Sandbox, SandboxHost
from orchestrator.settings import Settings
from orchestrator.static_check import CHECKERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    language: str
    source: str
    arguments: dict
    request_id: str = "-"


class Executor:
    def __init__(self, settings: Settings, languages: dict[str, Language], rootfs: dict[str, pathlib.Path],
                 host: SandboxHost):
        self.settings = settings
        self.languages = languages
        self.rootfs = rootfs
        self.host = host
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._teardowns: set[asyncio.Task] = set()
        self.running = 0

    def static_issues(self, language: Language, source: str) -> list[str]:
        if not self.settings.enable_static_check or language.static_check == "none":
            return []
        checked = source + language.source_suffix
        return [issue.render() for issue in CHECKERS[language.static_check](checked)]

    async def execute(self, request: RunRequest) -> dict:
        language = self.languages[request.language]
        issues = self.static_issues(language, request.source)
        if issues:
            log.info("request=%s rejected by the static check (%d issues)", request.request_id, len(issues))
            return outcome.unsafe_code_result(issues)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.settings.queue_timeout_s)
        except asyncio.TimeoutError:
            raise CapacityError(f"acquire sandbox: none free within {self.settings.queue_timeout_s:.0f} s") from None
        sandbox = Sandbox(language, self.rootfs[language.name], self.host)
        self.running += 1
        try:
            await sandbox.boot()
            job = Job(source=request.source.encode("utf-8"), arguments=request.arguments,
                      timeout_s=self.settings.limits.timeout_s, request_id=request.request_id)
            record = await sandbox.run(job)
            if record.exit_code == 0 and not (record.timed_out or record.oom_killed or record.output_exceeded):
                record.artifacts = await asyncio.to_thread(
                    collect_artifacts, sandbox.workspace_dir, exclude=frozenset({language.source_file, "arguments.json"}))
            result = outcome.classify(record, memory_limit_bytes=self.settings.limits.memory_bytes,
                                      output_limit_bytes=self.settings.limits.output_bytes)
            log.info("request=%s sandbox=%s language=%s status=%s exit_code=%s time_ms=%.0f",
                     request.request_id, sandbox.id, language.name, result["status"], result["exit_code"],
                     record.wall_ms)
            return result
        finally:
            self.running -= 1
            self._retire(sandbox)

    def _retire(self, sandbox: Sandbox) -> None:
        """Destroy ``sandbox`` in the background, then give its slot back."""
        async def teardown() -> None:
            try:
                await sandbox.destroy()
            finally:
                self._slots.release()

        task = asyncio.get_running_loop().create_task(teardown(), name=f"teardown-{sandbox.id}")
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def close(self) -> None:
        """Wait for every pending teardown."""
        while self._teardowns:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._teardowns))
