"""A method a route does not serve: 405 with the JSON error body and the ``Allow`` header
RFC 9110 requires (schemathesis' unsupported_method check found it missing)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("path", "method", "allowed"), [
    ("/run", "GET", {"POST"}),
    ("/run", "TRACE", {"POST"}),
    ("/healthz", "POST", {"GET", "HEAD"}),
    ("/status", "DELETE", {"GET", "HEAD"}),
    ("/openapi.json", "PUT", {"GET", "HEAD"}),
])
async def test_405_says_which_methods_are_allowed(make_client, path, method, allowed):
    client = await make_client()
    response = await client.request(method, path)
    assert response.status == 405
    assert {name.strip() for name in response.headers["Allow"].split(",")} == allowed
    assert await response.json() == {"detail": "Method Not Allowed"}
