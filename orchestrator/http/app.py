"""The aiohttp application: thin handlers and the one middleware that maps errors to HTTP.

``/run`` answers HTTP 200 with a result body for every execution outcome, including our own
failures (RAGFlow's Go client retries 5xx, which would run user code again).  The one
exception is a run refused before any sandbox saw its code (``CapacityError``: no concurrency
slot within the wait, or the node drains): HTTP 503 with the contract's -10 body and
``Retry-After``, which a balancer (HAProxy ``retry-on 503``) or RAGFlow's Go client may retry
anywhere, since nothing ran.  Client errors are 4xx with a JSON body.  When a token is
configured ``/run`` and ``/status`` need it (401 otherwise); when a rate limit is set, ``/run``
is limited per token or client address (``guard.client_key``; 429 with the -429 body).
``/``, ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` stay open.  ``/readyz``
is the load balancer's view (``orchestrator.balancer``).  Handlers know nothing about runsc.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from orchestrator import outcome
from orchestrator.balancer import Drain, readiness
from orchestrator.errors import BadRequestError, CapacityError, ServiceError
from orchestrator.executor import Executor
from orchestrator.http.guard import Network, RateLimiter, client_key, token_matches
from orchestrator.http.openapi import openapi_document
from orchestrator.http.request import parse_run_request
from orchestrator.http.disconnect import cancel_on_disconnect
from orchestrator.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

RUN_PATH = "/run"
PROTECTED = (RUN_PATH, "/status")
RETRY_AFTER_S = 1  # a refused run: the balancer retries elsewhere at once, a client after this
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@dataclass
class AppState:
    executor: Executor
    metrics: Metrics = field(default_factory=Metrics)
    api_token: str | None = None
    limiter: RateLimiter | None = None
    trusted_proxies: tuple[Network, ...] = ()
    drain: Drain = field(default_factory=Drain)


STATE = web.AppKey("state", AppState)


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
        # Refused before any sandbox saw the code: 503, so it may be retried elsewhere.
        log.warning("request=%s refused (%s): %s", REQUEST_ID.get(), exc.reason, exc)
        request.app[STATE].metrics.refused.labels(exc.reason).inc()
        response = _json(outcome.busy_result(), status=503)
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
    except web.HTTPRequestEntityTooLarge as exc:
        return _json({"detail": [{"type": "too_large", "loc": ["body"], "msg": exc.text, "input": None}]},
                     status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _json({"detail": exc.reason}, status=exc.status)
        if "Allow" in exc.headers:  # a 405 must say which methods are (RFC 9110 15.5.6)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
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


@web.middleware
async def guard_middleware(request: web.Request, handler):
    """Token check and rate limit, before anything reads the body."""
    state = request.app[STATE]
    if request.path in PROTECTED and state.api_token and not token_matches(request.headers, state.api_token):
        state.metrics.unauthorized.inc()
        return _json({"detail": "missing or wrong token: send Authorization: Bearer <token> or X-Sandbox-Token"},
                     status=401)
    if request.path == RUN_PATH and state.limiter is not None:
        key = client_key(token=state.api_token, peer=request.remote,
                         forwarded_for=request.headers.getall("X-Forwarded-For", ()),
                         trusted=state.trusted_proxies)
        allowed, retry_s = state.limiter.allow(key)
        if not allowed:
            state.metrics.rate_limited.inc()
            response = _json(outcome.rate_limited_result(), status=429)
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_s)))
            return response
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """The load balancer's check: 200 while this node takes runs, 503 while it drains or no
    sandbox can start (``balancer.readiness``)."""
    state = request.app[STATE]
    state.drain.checked()
    code, body = readiness(state.executor.load(), state.drain)
    return _json(body, status=code)


async def status(request: web.Request) -> web.Response:
    """Pool and capacity state (``/healthz`` stays exactly upstream's ``{"status": "ok"}``)."""
    state = request.app[STATE]
    return _json({"status": "draining" if state.drain.is_draining else "ok", "drain": state.drain.phase,
                  **state.executor.status()})


async def serve_metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def serve_openapi(request: web.Request) -> web.Response:
    return _json(openapi_document(sorted(request.app[STATE].executor.languages)))


async def run(request: web.Request) -> web.Response:
    state = request.app[STATE]
    started = time.perf_counter()
    body = await request.read()
    run_request = parse_run_request(body, state.executor.languages, request_id=REQUEST_ID.get())
    if state.drain.refuses_runs:
        raise CapacityError("run: the node is draining", reason="draining")
    execution = await state.executor.execute(run_request)
    state.metrics.observe_run(run_request.language, execution.result, time.perf_counter() - started)
    response = _json(execution.result)
    response.headers["X-Request-Id"] = REQUEST_ID.get()
    if execution.sandbox_id is not None:
        response.headers["X-Sandbox-Id"] = execution.sandbox_id
        response.headers["X-Sandbox-Warm"] = "1" if execution.warm else "0"
    if execution.start is not None:
        response.headers["X-Sandbox-Start"] = execution.start
    if execution.sandbox_ms is not None:
        response.headers["X-Sandbox-Run-Ms"] = f"{execution.sandbox_ms:.3f}"
    if execution.cpu_ms is not None:
        response.headers["X-Sandbox-Cpu-Ms"] = f"{execution.cpu_ms:.3f}"
    return response


def create_app(executor: Executor, *, max_request_bytes: int, api_token: str | None = None,
               rate_limit: tuple[int, float] | None = None, trusted_proxies: tuple[Network, ...] = (),
               metrics: Metrics | None = None, drain: Drain | None = None) -> web.Application:
    state = AppState(executor=executor, metrics=metrics or Metrics(), api_token=api_token,
                     limiter=RateLimiter(*rate_limit) if rate_limit else None, trusted_proxies=tuple(trusted_proxies),
                     drain=drain or Drain())
    state.metrics.watch_pools(executor.status)
    app = web.Application(middlewares=[error_middleware, guard_middleware, cancel_on_disconnect({RUN_PATH})],
                          client_max_size=max_request_bytes)
    app[STATE] = state
    app.router.add_get("/", health)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/openapi.json", serve_openapi)
    app.router.add_post(RUN_PATH, run)
    return app
