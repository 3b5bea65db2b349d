"""Schemathesis hooks for ``schema_fuzz.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

Generated bodies name random models and ask for up to millions of tokens, so almost none
would reach the engine. For about two thirds of the generated JSON objects (chosen by a
hash of the body, so a run is reproducible) this names the served model
(``ADARAS_FUZZ_MODEL``) and caps the token and choice counts (16 tokens when none is
given), so the engine and the steering path see many of the generated requests quickly;
the rest go out as generated.

With ``ADARAS_FUZZ_CALL_LOG`` set, every call is appended to that file as one JSON line
(operation, status; for a 5xx also the request body and the response), as it happens, so
what a run found survives the run being stopped at its wall-clock limit.
"""

from __future__ import annotations

import hashlib
import json
import os

import schemathesis

MODEL = os.environ.get("ADARAS_FUZZ_MODEL", "")
CALL_LOG = os.environ.get("ADARAS_FUZZ_CALL_LOG", "")
CAPS = {"max_tokens": 16, "max_completion_tokens": 16, "max_output_tokens": 16, "n": 2,
        "best_of": 2,
        "prompt_logprobs": 2, "top_logprobs": 2, "logprobs": 2}


def _pick(body: dict) -> int:
    raw = json.dumps(body, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).digest()[0]


@schemathesis.hook
def map_body(context, body):  # noqa: ANN001, ANN201 - schemathesis' hook signature
    if not MODEL or not isinstance(body, dict) or _pick(body) % 3 == 0:
        return body
    body = dict(body)
    body["model"] = MODEL
    for key, cap in CAPS.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[key] = cap
    # No length given means "up to the context length": slow on a CPU, and not the point.
    length_key = "max_output_tokens" if "input" in body else "max_tokens"
    if body.get(length_key) is None and body.get("max_completion_tokens") is None:
        body[length_key] = 16
    return body


def _text(blob) -> str:  # noqa: ANN001
    if blob is None:
        return ""
    if isinstance(blob, bytes):
        return blob.decode("utf-8", "replace")
    return str(blob)


@schemathesis.hook
def after_call(context, case, response):  # noqa: ANN001, ANN201 - schemathesis' signature
    if not CALL_LOG:
        return
    request = getattr(response, "request", None)
    entry = {"method": getattr(request, "method", case.method),
             "path": case.path, "status": response.status_code}
    if response.status_code >= 500:
        entry["body"] = _text(getattr(request, "body", None))[:2000]
        entry["response"] = _text(response.content)[:600]
    with open(CALL_LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
