"""The aiohttp application: thin handlers and the one middleware that maps errors to HTTP.

``/run`` answers HTTP 200 with a result body for every execution outcome, including our own
failures (RAGFlow's Go client retries 5xx, which would run user code again).  Client errors
are 4xx with a JSON body.  Handlers know nothing about runsc.
"""

from __future__ import annotations

import contextvars
import json
import logging
import uuid

from aiohttp import web

from orchestrator import outcome
from orchestrator.errors import BadRequestError, CapacityError, ServiceError
from orchestrator.executor import Executor
from orchestrator.http.request import parse_run_request

log = logging.getLogger(__name__)

EXECUTOR = web.AppKey("executor", Executor)
RUN_PATH = "/run"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _json(body, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda value: json.dumps(value, ensure_ascii=False))


@web.middleware
async def error_middleware(request: web.Request, handler):
    REQUEST_ID.set(request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:12])
    try:
        return await handler(request)
    except BadRequestError as exc:
        return _json({"detail": exc.details}, status=exc.status)
    except CapacityError as exc:
        log.warning("request=%s %s", REQUEST_ID.get(), exc)
        return _json(outcome.busy_result())
    except web.HTTPRequestEntityTooLarge as exc:
        return _json({"detail": [{"type": "too_large", "loc": ["body"], "msg": exc.text, "input": None}]},
                     status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"detail": exc.reason}, status=exc.status)
    except ServiceError as exc:
        log.error("request=%s %s", REQUEST_ID.get(), exc)
        if request.path == RUN_PATH:
            return _json(outcome.internal_error_result(str(exc)))
        return _json({"detail": str(exc)}, status=500)
    except Exception as exc:  # the HTTP boundary: never crash, never leak a 500 on /run
        log.exception("request=%s unexpected error", REQUEST_ID.get())
        if request.path == RUN_PATH:
            return _json(outcome.internal_error_result(f"internal error: {type(exc).__name__}"))
        return _json({"detail": "internal error"}, status=500)


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    """Pool and capacity state (``/healthz`` stays exactly upstream's ``{"status": "ok"}``)."""
    return _json({"status": "ok", **request.app[EXECUTOR].status()})


async def run(request: web.Request) -> web.Response:
    executor = request.app[EXECUTOR]
    body = await request.read()
    run_request = parse_run_request(body, executor.languages, request_id=REQUEST_ID.get())
    execution = await executor.execute(run_request)
    response = _json(execution.result)
    response.headers["X-Request-Id"] = REQUEST_ID.get()
    if execution.sandbox_id is not None:
        response.headers["X-Sandbox-Id"] = execution.sandbox_id
        response.headers["X-Sandbox-Warm"] = "1" if execution.warm else "0"
    if execution.sandbox_ms is not None:
        response.headers["X-Sandbox-Run-Ms"] = f"{execution.sandbox_ms:.3f}"
    if execution.cpu_ms is not None:
        response.headers["X-Sandbox-Cpu-Ms"] = f"{execution.cpu_ms:.3f}"
    return response


def create_app(executor: Executor, *, max_request_bytes: int) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=max_request_bytes)
    app[EXECUTOR] = executor
    app.router.add_get("/", health)
    app.router.add_get("/healthz", health)
    app.router.add_get("/status", status)
    app.router.add_post(RUN_PATH, run)
    return app
