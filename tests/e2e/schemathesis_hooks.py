"""Loaded by schemathesis (``SCHEMATHESIS_HOOKS``) in ``test_fuzz``: how to draw a valid
``code_b64``.  The schema says it with ``contentEncoding: base64`` and ``contentMediaType:
text/plain; charset=utf-8``, which OpenAPI 3.1 (JSON Schema 2020-12) keeps as annotations
only, so schemathesis would draw any string as "valid"; its ``format: base64`` gets this
strategy: the base64 of any UTF-8 text, exactly what the service accepts."""

import base64

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format("base64", st.text().map(lambda text: base64.b64encode(text.encode("utf-8")).decode()))
