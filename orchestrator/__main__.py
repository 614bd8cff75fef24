"""Entry point: ``python -m orchestrator [serve]``.  The only place that reads ``os.environ``
(through ``Settings.from_env``) and configures logging."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from orchestrator.errors import ServiceError
from orchestrator.http.app import create_app
from orchestrator.service import start_service
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator")


async def serve(settings: Settings) -> None:
    service = await start_service(settings)
    app = create_app(service.executor, max_request_bytes=settings.max_request_bytes)

    async def close_service(_app: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(close_service)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("listening on http://%s:%d (languages: %s)", settings.host, settings.port,
             ", ".join(sorted(service.languages)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description="gVisor code-execution service")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except ServiceError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
