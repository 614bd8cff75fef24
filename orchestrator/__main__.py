"""Entry point: ``python -m orchestrator [serve|doctor]``.  The only place that reads
``os.environ`` (through ``Settings.from_env``) and configures logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time

from aiohttp import web

from orchestrator import balancer
from orchestrator.errors import ServiceError
from orchestrator.http.app import REQUEST_ID, create_app
from orchestrator.service import Service, start_service
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator")


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the HTTP request being served (``-`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def notify_systemd(settings: Settings, message: str) -> None:
    """sd_notify without a library: one datagram to $NOTIFY_SOCKET (abstract if it starts with @)."""
    if not settings.notify_socket:
        return
    address = settings.notify_socket
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("notify systemd (%s): %s", message, exc)


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop``.

    Not ``loop.add_signal_handler``: its wakeup fd is inherited by children forked without an
    exec, and pyroute2 forks to enter a network namespace, then SIGTERMs the child; that
    signal then reached this loop and stopped the service (egress mode, right after start-up).
    A forked child gets the default action instead."""
    owner = os.getpid()

    def handle(signum: int, _frame) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        loop.call_soon_threadsafe(stop.set)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)


async def serve(settings: Settings) -> None:
    service = await start_service(settings)
    drain = balancer.Drain()
    app = create_app(service.executor, max_request_bytes=settings.max_request_bytes, api_token=settings.api_token,
                     rate_limit=settings.run_rate_limit, trusted_proxies=settings.trusted_proxies,
                     metrics=service.metrics, drain=drain)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    agent = None
    try:
        try:
            await site.start()
        except OSError as exc:
            raise ServiceError(f"listen on {settings.host}:{settings.port}: {exc.strerror}") from exc
        if settings.lb_agent_port is not None:
            agent = await balancer.start_agent(settings.host, settings.lb_agent_port, service.executor.load, drain)
    except ServiceError:
        await runner.cleanup()
        await service.close()
        raise
    log.info("listening on http://%s:%d (languages: %s)%s", settings.host, settings.port,
             ", ".join(sorted(service.languages)),
             f", HAProxy agent on port {settings.lb_agent_port}" if agent is not None else "")
    notify_systemd(settings, "READY=1")
    stop = asyncio.Event()
    install_stop_handlers(asyncio.get_running_loop(), stop)
    await stop.wait()
    await drain_and_stop(settings, service, drain)
    if agent is not None:  # it said 0% until now
        agent.close()
        await agent.wait_closed()
    await service.close()
    await runner.cleanup()
    log.info("stopped")


async def drain_and_stop(settings: Settings, service: Service, drain: balancer.Drain) -> None:
    """Graceful stop (orchestrator.balancer): tell the balancer first (the agent says 0%,
    /readyz 503) and keep taking runs for the drain delay while it notices, when a balancer
    checks this node; then refuse new runs (HTTP 503, safe to retry elsewhere) and let running
    ones finish up to the grace period.  What is left is killed and deleted by the caller."""
    drain.begin()
    notify_systemd(settings, "STOPPING=1")
    delay = settings.drain_delay_s if drain.balancer_seen() else 0.0
    if delay:
        log.info("draining: the balancer is told; taking runs for %.1f s more (SANDBOX_DRAIN_DELAY)", delay)
        await asyncio.sleep(delay)
    drain.close()
    deadline = time.monotonic() + settings.shutdown_grace_s
    log.info("shutting down: %d runs in progress, waiting up to %.0f s", service.executor.running,
             settings.shutdown_grace_s)
    while service.executor.running and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description="gVisor code-execution service")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "doctor", "reap"],
                        help="serve (default); doctor: check the host; reap: remove every sandbox, cgroup, "
                             "namespace and directory this service left")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "doctor":
        from orchestrator.doctor import run_doctor

        return asyncio.run(run_doctor(settings))
    if args.command == "reap":
        from orchestrator.service import reap_all

        try:
            removed = asyncio.run(reap_all(settings))
        except ServiceError as exc:
            print(f"reap: {exc}", file=sys.stderr)
            return 1
        print("reap: removed " + (", ".join(removed) if removed else "nothing (nothing of ours was left)"))
        return 0
    configure_logging(settings)
    try:
        asyncio.run(serve(settings))
    except ServiceError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
