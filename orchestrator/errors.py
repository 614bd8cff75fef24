"""The service's whole exception tree.

    ServiceError
    ├── ConfigError        a setting or a language definition is invalid (start-up)
    ├── BadRequestError    the client's request cannot be run (HTTP 4xx)
    ├── CapacityError      refused before any sandbox saw the code: no slot within the
    │                      wait, or the node drains (HTTP 503, -10 body: safe to retry)
    ├── SandboxError       a sandbox could not be created, booted or driven (-3 body)
    │   ├── RunscError       a runsc command failed or timed out
    │   └── ProtocolError    the in-sandbox runner broke the control protocol
    └── HostError          the host is not fit to run sandboxes: rootfs missing,
                           cgroup or namespace set-up failed (-3 body)

The user's program failing, timing out or being OOM-killed is a *result*, never one of
these.  Foreign libraries' errors are translated once, at the edge of the module that
uses them (``raise ... from exc``); only the HTTP middleware turns these into responses.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigError(ServiceError):
    """An invalid setting or language definition; the message names the variable or file."""


class BadRequestError(ServiceError):
    """The client sent something we will not run.

    ``details`` follows FastAPI's 422 shape: ``[{"type", "loc", "msg", "input"}]``.
    """

    def __init__(self, message: str, *, status: int = 422, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.details = details if details is not None else [
            {"type": "value_error", "loc": ["body"], "msg": message, "input": None}
        ]


class CapacityError(ServiceError):
    """The run was refused before any sandbox saw its code: no concurrency slot became free
    within the configured wait (``reason`` "busy"), or the node drains ("draining")."""

    def __init__(self, message: str, *, reason: str = "busy"):
        super().__init__(message)
        self.reason = reason


class SandboxError(ServiceError):
    """A sandbox could not be created, booted or driven."""

    def __init__(self, message: str, *, sandbox_id: str | None = None):
        super().__init__(f"{message} (sandbox {sandbox_id})" if sandbox_id else message)
        self.sandbox_id = sandbox_id


class RunscError(SandboxError):
    """A runsc command exited non-zero or did not finish in time."""


class ProtocolError(SandboxError):
    """The runner inside the sandbox sent something that breaks the control protocol."""


class HostError(ServiceError):
    """The host cannot run sandboxes (rootfs missing, cgroup or netns set-up failed)."""
