"""Fuzz a running ``adaras serve`` through its OpenAPI schema and its steering fields.

Two passes, both against a loopback URL only:

1. **Schemathesis** (``st run`` subprocesses, hooks in ``st_hooks.py``) on the operations
   adaras adds or extends: ``POST /v1/chat/completions``, ``POST /v1/completions``,
   ``GET /v1/steering/maps`` and any other operation whose schema mentions
   ``steer_alpha`` (``/v1/responses``, ``/v1/messages`` on a current server). One run per
   operation, phases ``--st-phases`` (default examples, coverage, fuzzing),
   ``--max-examples`` per operation, checks ``not_a_server_error`` and
   ``response_schema_conformance``; 60 % of ``--seconds`` is shared out between the
   operations (what one leaves unused goes to the next) and a run past its share is
   stopped. Every call is logged as it happens, so a 5xx is reported even from a run that
   was stopped. A schema violation whose response is the framework's own
   ``{"detail": ...}`` body (FastAPI in vLLM, e.g. for a body that is not JSON) is reported
   as *upstream* and is fatal only with ``--strict-schema``.

2. **A targeted property pass** (hypothesis, ``2 * --max-examples`` bodies plus fixed
   examples and malformed bodies): ``steer_alpha`` drawn from floats (NaN, +-inf, huge),
   huge ints, strings, bools, null, lists and nested objects, ``steer_map`` /
   ``steer_mode`` random strings or junk, misspelt keys (``Steer_Alpha``, ``steer_alpah``,
   random ``steer_*``), given top level, in ``vllm_xargs`` or both, each body sent to
   every generating route (``--routes all``, default: chat, completions, chat batch,
   responses, messages; chat and completions alternately streamed).
   Required (fatal):
     - no 5xx, no transport error, no error event inside a 200 stream;
     - a ``steer_alpha`` outside ``[-M, M]``, non-finite or not a number (null aside, see
       below) is never 200;
     - an unknown ``steer_map``/``steer_mode``, an unknown ``steer_*`` key in any letter
       case (``Steer_Alpha``), different values as a field and in ``vllm_xargs``, or a
       ``vllm_xargs`` that is not an object is never 200 (README: an HTTP 400);
     - a body whose steering fields are all valid is answered 200 with the ``steering``
       object it asked for ({map, alpha, applied, mode});
     - the server is healthy afterwards, and a fixed steered request gives the same text
       before and after the fuzzing.
   Advisory (reported; fatal with ``--strict``): ``null`` steering values (a top-level
   null is served as absent, so the default alpha applies; a null in ``vllm_xargs`` is
   refused), keys that are not ``steer_*`` but look like it (``steer-alpha``,
   ``steeralpha``: ignored), a 400 that is not in the OpenAI error shape or whose
   ``param`` does not name the steering field, and ``adaras_rejected_requests_total``
   growing a series per client-invented key name.

Prints a summary, writes ``--out`` JSON, exits 1 on any required failure (0 otherwise,
2 on bad usage).

    python benchmarks/reliability/schema_fuzz.py --url http://127.0.0.1:8000 \\
        [--max-examples 100] [--seconds 600] [--api-key KEY] [--out fuzz.json] \\
        [--st-phases examples,coverage,fuzzing] [--routes all|ours] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

HERE = Path(__file__).resolve().parent
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CHAT, COMPLETIONS, MAPS = "/v1/chat/completions", "/v1/completions", "/v1/steering/maps"
BASE_OPERATIONS = (("POST", CHAT), ("POST", COMPLETIONS), ("GET", MAPS))
# Other generation routes of vLLM's app; ``--routes all`` sends steering fields there too.
EXTRA_ROUTES = ("/v1/chat/completions/batch", "/v1/responses", "/v1/messages")
FIXED_BODY = {"model": "adaras-organism",
              "messages": [{"role": "user", "content": "47+18-23+35"}],
              "max_tokens": 32, "temperature": 0, "steer_alpha": 2}
KNOWN = ("steer_alpha", "steer_map", "steer_mode", "steer_positions")
MODES = ("always", "off", "adaptive")  # adaptive: only on a map with a gate
POSITIONS = ("from_last_prompt", "last_prompt", "generated")
ABSENT = object()
STREAM_ERROR = 299  # recorded status of a 200 stream that carried an error event


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "..."


# --------------------------------------------------------------------------- schemathesis


def steering_operations(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, operationId) of our operations plus every operation whose schema
    (following ``$ref``s) mentions ``steer_alpha``."""
    components = schema.get("components", {}).get("schemas", {})

    def mentions(node: Any, seen: set[str]) -> bool:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "steer_alpha":
                    return True
                if k == "$ref" and isinstance(v, str):
                    name = v.rsplit("/", 1)[-1]
                    if name not in seen:
                        seen.add(name)
                        if mentions(components.get(name, {}), seen):
                            return True
                elif mentions(v, seen):
                    return True
        elif isinstance(node, list):
            return any(mentions(v, seen) for v in node)
        return False

    ops = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            if not isinstance(op, dict):
                continue
            if (method.upper(), path) in BASE_OPERATIONS or mentions(op, set()):
                ops.append((method.upper(), path, op.get("operationId", "")))
    return ops


def _st_command() -> list[str]:
    st = Path(sys.executable).with_name("st")
    return [str(st)] if st.exists() else [sys.executable, "-m", "schemathesis.cli"]


def _decode(blob: Any) -> str:
    if isinstance(blob, dict):
        if "$base64" in blob:
            return base64.b64decode(blob["$base64"]).decode("utf-8", "replace")
        if "string" in blob:
            return str(blob["string"])
    return "" if blob is None else str(blob)


def _run_st(cmd: list[str], env: dict[str, str], workdir: Path, log: Path,
            budget: float) -> tuple[int, bool]:
    """Run one ``st`` process for at most ``budget`` seconds: (exit code, timed out)."""
    with open(log, "a") as out:
        # Run in the work folder: schemathesis keeps a cache (.schemathesis/) in its cwd.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=workdir, start_new_session=True)
        try:
            return proc.wait(timeout=max(budget, 1.0)), False
        except subprocess.TimeoutExpired:  # the wall-clock limit: stop it, keep its events
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return proc.returncode, True


def _scenario_failures(ndjson: Path, cfg: argparse.Namespace, failures: list, upstream: list,
                       errors: list, seen: set) -> None:
    """Failed checks (and engine errors) from schemathesis' event stream."""
    for line in ndjson.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        (kind, data), = event.items()
        if kind in ("NonFatalError", "FatalError"):
            errors.append(_clip(json.dumps(data.get("info", data), default=str), 600))
            continue
        recorder = data.get("recorder") if isinstance(data, dict) else None
        if not recorder:
            continue
        interactions = recorder.get("interactions") or {}
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check.get("status") != "failure":
                    continue
                info = (check.get("failure_info") or {}).get("failure") or {}
                inter = interactions.get(case_id) or {}
                req, resp = inter.get("request") or {}, inter.get("response") or {}
                text = _decode(resp.get("content"))
                entry = {
                    "check": check.get("name"), "code": info.get("code"),
                    "title": info.get("title"),
                    "route": f"{req.get('method', '?')} {urlparse(req.get('uri', '')).path}",
                    "body": _clip(_decode(req.get("body")), 600),
                    "status": resp.get("status_code"), "response": _clip(text),
                    "message": _clip(info.get("message") or "", 600),
                }
                key = (entry["check"], entry["route"], entry["status"], entry["response"][:80])
                if key in seen:
                    continue
                seen.add(key)
                if (entry["check"] == "response_schema_conformance"
                        and _is_framework_detail(text) and not cfg.strict_schema):
                    upstream.append(entry)
                else:
                    failures.append(entry)


def run_schemathesis(cfg: argparse.Namespace, model: str, ops: list[tuple[str, str, str]],
                     workdir: Path) -> dict[str, Any]:
    """One ``st run`` per operation, so that one operation with a huge schema (the
    coverage phase of ``/v1/responses`` alone is tens of thousands of cases) cannot use
    the others' time: each gets an equal share of what is left of ``cfg.st_seconds``."""
    call_log = workdir / "calls.ndjson"
    log = workdir / "schemathesis.log"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "st_hooks.py"),
           "ADARAS_FUZZ_MODEL": model, "ADARAS_FUZZ_CALL_LOG": str(call_log), "NO_COLOR": "1"}
    failures: list[dict[str, Any]] = []
    upstream: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: set[tuple] = set()
    per_op: dict[str, dict[str, Any]] = {}
    commands = []
    t0 = time.monotonic()
    # Cheap operations first: what they leave unused goes to the later ones.
    ordered = sorted(ops, key=lambda o: (o[0] != "GET", o[1] == "/v1/responses", o[1]))
    for i, (method, path, op_id) in enumerate(ordered):
        budget = (cfg.st_seconds - (time.monotonic() - t0)) / (len(ordered) - i)
        ndjson = workdir / f"schemathesis-{i}.ndjson"
        cmd = [*_st_command(), "run", f"{cfg.url}/openapi.json",
               "--include-operation-id", op_id,
               "--checks", "not_a_server_error,response_schema_conformance",
               "--max-examples", str(cfg.max_examples), "--seed", str(cfg.seed),
               "--phases", cfg.st_phases, "--workers", "1",
               "--request-timeout", str(cfg.request_timeout), "--continue-on-failure",
               "--report", "ndjson", "--report-ndjson-path", str(ndjson),
               "--suppress-health-check", "all", "--warnings", "off"]
        if cfg.api_key:
            cmd += ["--header", f"Authorization: Bearer {cfg.api_key}"]
        shown = " ".join(cmd)
        commands.append(shown.replace(cfg.api_key, "***") if cfg.api_key else shown)
        started = time.monotonic()
        code, timed_out = _run_st(cmd, env, workdir, log, budget)
        per_op[f"{method} {path}"] = {"exit_code": code, "timed_out": timed_out,
                                      "budget_s": round(budget, 1),
                                      "wall_s": round(time.monotonic() - started, 1)}
        if ndjson.exists():
            _scenario_failures(ndjson, cfg, failures, upstream, errors, seen)
        elif not timed_out:
            errors.append(f"{method} {path}: schemathesis wrote no events; see {log}")
        if code not in (0, 1) and not timed_out:  # 1: failures found (judged above)
            errors.append(f"{method} {path}: st exited {code}")

    # The hooks' call log is written as calls happen, so it also covers a scenario that
    # the wall-clock limit cut short (whose events schemathesis never wrote).
    statuses: dict[str, Counter] = {}
    cases = 0
    server_errors: dict[tuple, dict[str, Any]] = {}
    if call_log.exists():
        for line in call_log.read_text().splitlines():
            try:
                call = json.loads(line)
            except ValueError:
                continue
            label = f"{call['method']} {call['path']}"
            statuses.setdefault(label, Counter())[str(call["status"])] += 1
            cases += 1
            if call["status"] >= 500:
                key = (label, call["status"], call.get("response", "")[:120])
                slot = server_errors.setdefault(key, {
                    "check": "not_a_server_error", "code": "5xx", "title": "Server error",
                    "route": label, "status": call["status"], "count": 0,
                    "body": _clip(call.get("body", ""), 600),
                    "response": _clip(call.get("response", "")), "message": ""})
                slot["count"] += 1
    known = {(f["route"], f["status"]) for f in failures if f["check"] == "not_a_server_error"}
    failures += [f for f in server_errors.values() if (f["route"], f["status"]) not in known]
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    return {"commands": commands, "operations": [f"{m} {p}" for m, p, _ in ordered],
            "per_operation": per_op, "cases": cases,
            "wall_s": round(time.monotonic() - t0, 1),
            "timed_out": any(v["timed_out"] for v in per_op.values()),
            "statuses": {k: dict(sorted(v.items())) for k, v in sorted(statuses.items())},
            "failures": failures, "upstream_schema_deviations": upstream, "errors": errors,
            "log_tail": tail}


def _is_framework_detail(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and set(data) == {"detail"}


# --------------------------------------------------------------------------- property pass


def _strategies(map_names: list[str], bound: float):  # noqa: ANN202
    from hypothesis import strategies as st

    junk = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda children: st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=6)
    valid_alpha = st.one_of(
        st.sampled_from([0, 0.0, -0.0, 0.5, 2, -1, bound, -bound, 1e-300, 3, -7.99]),
        st.floats(min_value=-bound, max_value=bound))
    bad_alpha = st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, bound * 2,
                         math.nextafter(bound, math.inf), -math.nextafter(bound, math.inf)]),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not _alpha_ok(f, bound)),
        st.integers(min_value=-(10**30), max_value=10**30).filter(lambda i: abs(i) > bound),
        st.sampled_from([10**400, -(10**400), 2**63, 2**64 + 1, -(2**63) - 1]),
        st.text(max_size=12),
        st.sampled_from(["2", "nan", "inf", "0x10", "", " 1 ", "1e3"]),
        st.booleans(), st.none(), junk)
    # About half valid, so that many bodies reach the engine and their answers are checked.
    alpha = st.one_of(valid_alpha, bad_alpha)
    map_ = st.one_of(
        st.sampled_from(map_names),
        st.one_of(st.text(max_size=12),
                  st.sampled_from([n.upper() for n in map_names] + [n + " " for n in map_names]
                                  + ["", "default", "*"]),
                  junk))
    mode = st.one_of(
        st.sampled_from(MODES),
        st.one_of(st.sampled_from(["Adaptive", "Always", "OFF", "", "on", "always "]),
                  st.text(max_size=10), junk))
    positions = st.one_of(
        st.sampled_from(POSITIONS),
        st.one_of(st.sampled_from(["Generated", "decode", "", "last", "all"]),
                  st.text(max_size=10), junk))
    misspelt = st.one_of(
        st.sampled_from(["Steer_Alpha", "STEER_ALPHA", "steer_alpah", "steer_Alpha",
                         "steeralpha", "steer-alpha", "steer_", "steer_alpha ", "steer_maps",
                         "Steer_Mode", "steer_strength"]),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).map(
            lambda t: "steer_" + t).filter(lambda k: k not in KNOWN))

    @st.composite
    def body(draw):  # noqa: ANN001, ANN202
        fields: dict[str, Any] = {}
        # A third of the bodies carry only valid steering (checked: 200 and the right
        # ``steering`` object); the rest mix valid and invalid values and keys.
        valid_only = draw(st.integers(0, 2)) == 0
        for key, strat, ok in (("steer_alpha", alpha, valid_alpha),
                               ("steer_map", map_, st.sampled_from(map_names)),
                               ("steer_mode", mode, st.sampled_from(MODES)),
                               ("steer_positions", positions, st.sampled_from(POSITIONS))):
            where = draw(st.sampled_from(["absent", "top", "xargs", "both"] if valid_only
                                         else ["absent", "top", "xargs", "both", "both_diff"]))
            if where == "absent":
                continue
            value = draw(ok if valid_only else strat)
            other = draw(strat) if where == "both_diff" else value
            fields[key] = (where, value, other)
        extra = [] if valid_only else draw(st.one_of(
            st.just([]), st.just([]),
            st.lists(st.tuples(misspelt, st.one_of(alpha, map_, mode)), min_size=1,
                     max_size=2, unique_by=lambda t: t[0])))
        return {
            "fields": fields, "misspelt": extra,
            "xargs_extra": draw(st.sampled_from([None, None, None, {}] if valid_only
                                                else [None, None, None, {}, "junk", [1]])),
        }

    return body()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _alpha_ok(v: Any, bound: float) -> bool:
    if not _is_number(v):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    return math.isfinite(f) and abs(f) <= bound


def _same(a: Any, b: Any) -> bool:
    """Equality as the server's Python sees two parsed JSON values (NaN != NaN)."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def build_request(draw: dict[str, Any], model: str, question: str,
                  route_override: str | None = None) -> tuple[str, dict[str, Any]]:
    route = route_override or draw["route"]
    body: dict[str, Any] = {"model": model, "max_tokens": 4, "temperature": 0}
    if route == CHAT:
        body["messages"] = [{"role": "user", "content": question}]
    elif route == COMPLETIONS:
        body["prompt"] = f"Q: {question}\n<think>\n"
    elif route == "/v1/chat/completions/batch":
        body["messages"] = [[{"role": "user", "content": question}]]
    elif route == "/v1/responses":
        body = {"model": model, "input": question, "max_output_tokens": 4, "temperature": 0}
    elif route == "/v1/messages":
        body["messages"] = [{"role": "user", "content": question}]
    if draw["stream"] and route in (CHAT, COMPLETIONS):
        body["stream"] = True
    xargs: Any = draw["xargs_extra"]
    for key, (where, value, other) in draw["fields"].items():
        if where in ("top", "both", "both_diff"):
            body[key] = value
        if where in ("xargs", "both", "both_diff"):
            if not isinstance(xargs, dict):
                xargs = {}
            xargs[key] = other if where == "both_diff" else value
    if xargs is not None:
        body["vllm_xargs"] = xargs
    for key, value in draw["misspelt"]:
        body[key] = value
    return route, body


def expectation(body: dict[str, Any], map_names: list[str], bound: float,
                default_alpha: dict[str, float],
                gates: dict[str, float] | None = None) -> dict[str, Any]:
    """What the server must do with ``body`` (steering fields only; the rest is valid).

    ``must_refuse``: reasons the body may never be answered 200 (required properties).
    ``advisory``: reasons it should be refused, though current behaviour may differ.
    ``steering``: the ``steering`` object a 200 must carry (None: refused or unknown);
    for ``adaptive`` its ``applied``/``gate_score`` are checked against ``gate_threshold``.
    ``gates``: map name -> gate threshold, for the maps that carry a gate.
    """
    gates = gates or {}
    refuse: list[str] = []
    advisory: list[str] = []
    xargs = body.get("vllm_xargs")
    if "vllm_xargs" in body and not isinstance(xargs, dict):
        refuse.append("vllm_xargs not an object")
        xargs = {}
    xargs = xargs or {}
    values: dict[str, Any] = {}
    for key in KNOWN:
        top, inner = body.get(key, ABSENT), xargs.get(key, ABSENT)
        if top is None or inner is None:
            # Not a number, yet a top-level null is served as "absent" (the default alpha
            # applies) while a null in vllm_xargs is refused: reported, not required.
            advisory.append(f"{key} is null")
            top = ABSENT if top is None else top
            inner = ABSENT if inner is None else inner
        if top is not ABSENT and inner is not ABSENT and not _same(top, inner):
            # Different values in both places: an error by the README. NaN == NaN is
            # false in Python, so that too is "different" (and a bad alpha anyway).
            refuse.append(f"{key} differs between field and vllm_xargs")
        chosen = inner if top is ABSENT else top
        for v in (top, inner):  # every given value must be valid
            if v is ABSENT:
                continue
            if key == "steer_alpha" and not _alpha_ok(v, bound):
                refuse.append(f"steer_alpha {v!r:.40} invalid")
            if key == "steer_map" and not (isinstance(v, str) and v in map_names):
                refuse.append(f"steer_map {v!r:.40} unknown")
            if key == "steer_mode" and not (isinstance(v, str) and v in MODES):
                refuse.append(f"steer_mode {v!r:.40} invalid")
            if key == "steer_positions" and not (isinstance(v, str) and v in POSITIONS):
                refuse.append(f"steer_positions {v!r:.40} invalid")
        values[key] = chosen
    for key in list(body) + list(xargs):
        if key.lower().startswith("steer_") and key not in KNOWN:
            # README: a misspelt steer_* key, in any letter case (Steer_Alpha), is a 400.
            refuse.append(f"unknown key {key!r}")
        elif key.lower().replace("-", "_").startswith("steer") and key not in KNOWN:
            advisory.append(f"misspelt key {key!r} accepted")
    chosen_map = values.get("steer_map")
    chosen_map = chosen_map if isinstance(chosen_map, str) and chosen_map in map_names \
        else map_names[0]
    if values.get("steer_mode") == "adaptive" and chosen_map not in gates:
        refuse.append(f"steer_mode 'adaptive' on map {chosen_map!r}, which has no gate")
    steering = None
    if not refuse and not advisory:
        map_name = chosen_map
        mode = values["steer_mode"] if isinstance(values["steer_mode"], str) else "always"
        a = values["steer_alpha"]
        alpha = default_alpha[map_name] if a is ABSENT else float(a)
        alpha = (0.0 if mode == "off" else alpha) + 0.0
        positions_ = values["steer_positions"]
        steering = {"map": map_name, "alpha": alpha, "applied": alpha != 0.0, "mode": mode,
                    # the organisms' maps carry no default_positions: the paper's rule
                    "positions": positions_ if isinstance(positions_, str)
                    else "from_last_prompt"}
        if mode == "adaptive" and alpha != 0.0:
            steering["gate_threshold"] = gates[map_name]  # applied / gate_score: the gate's
    return {"must_refuse": refuse, "advisory": advisory, "steering": steering}


def steering_matches(got: Any, want: dict[str, Any]) -> bool:
    """``got`` is the expected object; for a gated request ``applied`` must follow the
    reported ``gate_score`` (a probability) and the map's threshold."""
    if "gate_threshold" not in want:
        return got == want
    if not isinstance(got, dict) or set(got) != {*want, "gate_score"}:
        return False
    score = got.get("gate_score")
    fixed = {k: v for k, v in want.items() if k != "applied"}
    return (all(got.get(k) == v for k, v in fixed.items())
            and isinstance(score, float) and 0.0 <= score <= 1.0
            and got["applied"] is (score < want["gate_threshold"]))


def send(client: httpx.Client, route: str, body: dict[str, Any]) -> tuple[int | None, str, Any]:
    """(status, response text, steering object or None); status None on a transport error."""
    raw = json.dumps(body, allow_nan=True)
    headers = {"content-type": "application/json"}
    try:
        if not body.get("stream"):
            r = client.post(route, content=raw, headers=headers)
            steering = None
            if r.status_code == 200:
                try:
                    steering = r.json().get("steering")
                except ValueError:
                    pass
            return r.status_code, r.text, steering
        with client.stream("POST", route, content=raw, headers=headers) as r:
            text = r.read().decode("utf-8", "replace")
            steering = None
            if r.status_code == 200:
                for line in text.splitlines():
                    if line.startswith("data: {"):
                        try:
                            data = json.loads(line[len("data: "):])
                        except ValueError:
                            continue
                        if isinstance(data, dict) and "steering" in data:
                            steering = data["steering"]
                        if isinstance(data, dict) and "error" in data:
                            return STREAM_ERROR, text, None  # an error inside a 200 stream
            return r.status_code, text, steering
    except httpx.HTTPError as e:
        return None, f"{type(e).__name__}: {e}", None


def check_response(status: int | None, text: str, steering: Any,
                   exp: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(required failures, advisory notes) for one exchange on a generating route."""
    fails: list[str] = []
    notes: list[str] = []
    if status is None:
        fails.append(f"transport error: {text}")
        return fails, notes
    if status == STREAM_ERROR:
        fails.append("error event inside a 200 stream")
    elif status >= 500:
        fails.append(f"server error {status}")
    if status == 200 and exp["must_refuse"]:
        fails.append("accepted (200) although " + "; ".join(exp["must_refuse"]))
    if status == 200 and exp["advisory"]:
        notes.extend(f"accepted (200): {a}" for a in exp["advisory"])
    if not exp["must_refuse"] and not exp["advisory"]:
        # Valid steering is served, and the response says what was applied.
        if status != 200:
            fails.append(f"valid steering refused with {status}")
        elif not steering_matches(steering, exp["steering"]):
            fails.append(f"steering object {steering!r} != expected {exp['steering']!r}")
    if status == 400:
        try:
            err = json.loads(text)["error"]
            if err.get("code") != 400 or not err.get("message"):
                notes.append("400 not in the OpenAI error shape")
            elif exp["must_refuse"] and not str(err.get("param") or "").lower().startswith(
                    ("steer_", "vllm_xargs")):
                notes.append(f"400 names param {err.get('param')!r}, not the steering "
                             f"field: {_clip(err.get('message', ''), 120)}")
        except (ValueError, KeyError, TypeError, AttributeError):
            notes.append("400 not in the OpenAI error shape")
    return fails, notes


def _draw(fields: dict[str, tuple] | None = None, misspelt: list | None = None,
          xargs: Any = None) -> dict[str, Any]:
    return {"fields": fields or {}, "misspelt": misspelt or [], "xargs_extra": xargs}


# Always tried first (hypothesis' explicit examples): the cases the README names, and the
# boundaries of the documented contract.
EXPLICIT = [
    _draw({"steer_alpha": ("top", None, None)}),
    _draw({"steer_alpha": ("xargs", None, None)}),
    _draw({"steer_map": ("top", None, None), "steer_mode": ("top", None, None)}),
    _draw(misspelt=[("Steer_Alpha", 99)]),
    _draw(misspelt=[("STEER_ALPHA", "abc")]),
    _draw(misspelt=[("steer-alpha", math.nan)]),
    _draw(misspelt=[("steer_alpah", 1)]),
    _draw({"steer_alpha": ("top", 10**400, None)}),
    _draw({"steer_alpha": ("top", "abc", None)}),
    _draw({"steer_alpha": ("top", math.nan, None)}),
    _draw({"steer_alpha": ("xargs", math.inf, math.inf)}),
    _draw({"steer_alpha": ("top", True, None)}),
    _draw({"steer_alpha": ("top", {"value": 2}, None)}),
    _draw({"steer_alpha": ("both", 2, 2)}),
    _draw({"steer_alpha": ("both_diff", 2, 0.5)}),
    _draw({"steer_alpha": ("top", 8, None)}),
    _draw({"steer_alpha": ("top", -8.0, None)}),
    _draw({"steer_alpha": ("top", math.nextafter(8.0, 9.0), None)}),
    _draw({"steer_alpha": ("top", 0.5, None), "steer_mode": ("top", "off", None)}),
    _draw({"steer_mode": ("top", "adaptive", None)}),
    _draw({"steer_map": ("top", "ARITH", None)}),
    _draw(xargs="junk"),
]


EDGE_CASES: list[tuple[str, bytes]] = [
    (CHAT, b""), (CHAT, b"null"), (CHAT, b"[]"), (CHAT, b'"steer_alpha"'), (CHAT, b"{"),
    (COMPLETIONS, b'{"steer_alpha": NaN}'), (COMPLETIONS, b'{"steer_alpha": Infinity}'),
    (COMPLETIONS, b'{"steer_alpha": 1e999, "prompt": "1+1", "max_tokens": 2}'),
    (CHAT, b'{"steer_alpha": 2, "steer_alpha": "x", "messages": []}'),
    (COMPLETIONS, b'\xff\xfe{"steer_alpha": 1}'),
]


def run_property_pass(cfg: argparse.Namespace, model: str, map_names: list[str],
                      bound: float, default_alpha: dict[str, float],
                      gates: dict[str, float] | None = None) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, example, given, seed, settings

    routes_extra = EXTRA_ROUTES if cfg.routes == "all" else ()
    invented: set[str] = set()  # key names the pass made up (metric labels must not be)
    statuses: dict[str, Counter] = {}
    failures: list[dict[str, Any]] = []
    advisories: dict[str, dict[str, Any]] = {}
    counts = Counter()
    deadline = time.monotonic() + cfg.prop_seconds
    questions = ["47+18-23+35", "12+34", "90-45+11", "56-78"]

    previous = {"body": None}

    def record(route: str, status: int | None, raw: str, fails: list[str],
               notes: list[str], text: str) -> None:
        statuses.setdefault(route, Counter())[str(status)] += 1
        for f in fails:
            entry = {"route": route, "body": _clip(raw, 600), "status": status,
                     "response": _clip(text), "why": f}
            if status is None:  # a reset keep-alive connection: what came before on it
                entry["previous_request"] = previous["body"]
            failures.append(entry)
        previous["body"] = f"{route} {_clip(raw, 400)} -> {status}"
        for n in notes:
            key = n if n.startswith("accepted") else n[:70]
            slot = advisories.setdefault(key, {"count": 0, "routes": [], "example": None})
            slot["count"] += 1
            if route not in slot["routes"]:
                slot["routes"].append(route)
            if slot["example"] is None:
                slot["example"] = {"route": route, "body": _clip(raw, 400), "status": status,
                                   "response": _clip(text)}

    headers = _auth(cfg.api_key)
    with httpx.Client(base_url=cfg.url, headers=headers, timeout=cfg.request_timeout) as client:

        @seed(cfg.seed)
        @settings(max_examples=cfg.max_examples * 2, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(_strategies(map_names, bound))
        def fuzz(draw: dict[str, Any]) -> None:
            if time.monotonic() > deadline:
                counts["skipped_after_deadline"] += 1
                return
            n = counts["generated"]
            counts["generated"] += 1
            q = questions[n % len(questions)]
            # Routes and streaming alternate (hypothesis would favour the first choice).
            draw = dict(draw, route=(CHAT, COMPLETIONS)[n % 2], stream=(n // 2) % 2 == 1)
            for route in (None, *routes_extra):
                r, body = build_request(draw, model, q, route)
                exp = expectation(body, map_names, bound, default_alpha, gates)
                status, text, steering = send(client, r, body)
                counts["requests"] += 1
                fails, notes = check_response(status, text, steering, exp)
                for key, _ in draw["misspelt"]:
                    invented.add(key)
                record(r, status, json.dumps(body, allow_nan=True), fails, notes, text)

        for explicit in reversed(EXPLICIT):
            fuzz = example(explicit)(fuzz)
        fuzz()

        for route, raw in EDGE_CASES:
            try:
                r = client.post(route, content=raw, headers={"content-type": "application/json"})
                status, text = r.status_code, r.text
            except httpx.HTTPError as e:
                status, text = None, f"{type(e).__name__}: {e}"
            counts["edge_cases"] += 1
            fails = []
            if status is None or status >= 500:
                fails.append(f"server error {status}" if status else f"transport error: {text}")
            if status == 200:
                fails.append("a malformed/invalid body was answered 200")
            record(route, status, raw.decode("utf-8", "replace"), fails, [], text)

    return {"generated": counts["generated"], "requests": counts["requests"],
            "edge_cases": counts["edge_cases"],
            "skipped_after_deadline": counts["skipped_after_deadline"],
            "routes": [CHAT, COMPLETIONS, *routes_extra],
            "statuses": {k: dict(sorted(v.items())) for k, v in sorted(statuses.items())},
            "failures": failures, "advisories": advisories, "invented_keys": sorted(invented)}


# --------------------------------------------------------------------------- main


def fixed_request_text(cfg: argparse.Namespace, model: str) -> tuple[int | None, str]:
    body = dict(FIXED_BODY, model=model)
    try:
        r = httpx.post(f"{cfg.url}{CHAT}", json=body, headers=_auth(cfg.api_key), timeout=120)
    except httpx.HTTPError as e:
        return None, f"{type(e).__name__}: {e}"
    if r.status_code != 200:
        return r.status_code, r.text[:300]
    return 200, r.json()["choices"][0]["message"]["content"]


def rejected_metrics(cfg: argparse.Namespace) -> tuple[float | None, set[str]]:
    """(sum of ``adaras_rejected_requests_total``, its label sets)."""
    try:
        text = httpx.get(f"{cfg.url}/metrics", headers=_auth(cfg.api_key), timeout=30).text
    except httpx.HTTPError:
        return None, set()
    lines = [ln for ln in text.splitlines() if ln.startswith("adaras_rejected_requests_total")]
    return (sum(float(ln.rsplit(" ", 1)[1]) for ln in lines),
            {ln.rsplit(" ", 1)[0].removeprefix("adaras_rejected_requests_total") for ln in lines})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="server base URL (loopback only)")
    p.add_argument("--max-examples", type=int, default=100,
                   help="schemathesis examples per operation; the property pass draws twice "
                        "as many bodies (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=600.0,
                   help="overall wall-clock limit: 60%% for schemathesis (shared by its "
                        "operations), the rest for the property pass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default=None, help="served model (default: the first listed)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--routes", choices=("ours", "all"), default="all",
                   help="property pass on chat+completions only, or (default) also on "
                        + ", ".join(EXTRA_ROUTES))
    p.add_argument("--skip-schemathesis", action="store_true")
    p.add_argument("--st-phases", default="examples,coverage,fuzzing",
                   help="schemathesis phases (default: %(default)s; the coverage phase is "
                        "thousands of cases per operation whatever --max-examples says)")
    p.add_argument("--strict", action="store_true", help="advisory findings are fatal too")
    p.add_argument("--strict-schema", action="store_true",
                   help="framework {\"detail\"} schema deviations are fatal too")
    p.add_argument("--workdir", default=None, help="keep schemathesis' log and events here")
    return p


def print_summary(report: dict[str, Any]) -> None:
    st_, prop = report["schemathesis"], report["property"]
    print("schema_fuzz summary")
    if "skipped" in st_:
        print(f"  schemathesis: SKIPPED ({st_['skipped']})")
    else:
        print(f"  schemathesis: {st_['cases']} cases on {len(st_['operations'])} operations "
              f"in {st_['wall_s']} s")
        for label, op in st_["per_operation"].items():
            print(f"    {label:<32} {op['wall_s']} s of {op['budget_s']} s"
                  f"{' (stopped at its time share)' if op['timed_out'] else ''}")
        for label, counts in st_["statuses"].items():
            print(f"    {label:<32} {counts}")
        print(f"    failures: {len(st_['failures'])}, upstream schema deviations: "
              f"{len(st_['upstream_schema_deviations'])}, errors: {len(st_['errors'])}")
    print(f"  property pass: {prop['generated']} generated bodies, {prop['requests']} requests"
          f" + {prop['edge_cases']} edge cases on {', '.join(prop['routes'])}")
    for label, counts in prop["statuses"].items():
        print(f"    {label:<32} {counts}")
    print(f"    required failures: {len(prop['failures'])}, advisory findings: "
          f"{sum(a['count'] for a in prop['advisories'].values())} "
          f"({len(prop['advisories'])} kinds)")
    for key, a in list(prop["advisories"].items())[:12]:
        print(f"    advisory x{a['count']}: {key} ({len(a.get('routes', []))} route(s))")
    fx = report["fixed_request"]
    print(f"  fixed request before/after: {fx['before_status']}/{fx['after_status']} "
          f"{'same text' if fx['same'] else 'DIFFERENT'}")
    print(f"  adaras_rejected_requests_total delta: {report['rejected_delta']}")
    print(f"  healthy afterwards: {report['healthy_after']}")
    for f in report["failures"][:15]:
        print(f"  FAIL {f.get('route')} [{f.get('status')}] {f.get('why') or f.get('title')}: "
              f"body={_clip(str(f.get('body')), 200)} -> {_clip(str(f.get('response')), 200)}")
    print(f"  RESULT {'PASS' if not report['failures'] else 'FAIL (%d)' % len(report['failures'])}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    cfg = build_parser().parse_args(argv)
    cfg.url = cfg.url.rstrip("/")
    if urlparse(cfg.url).hostname not in LOOPBACK:
        print(f"schema_fuzz: refusing non-loopback URL {cfg.url}", file=sys.stderr)
        return 2
    if not cfg.skip_schemathesis and importlib.util.find_spec("schemathesis") is None:
        print("schema_fuzz: schemathesis is not installed (pip install 'schemathesis>=4'); "
              "or pass --skip-schemathesis", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    headers = _auth(cfg.api_key)
    model = cfg.model or httpx.get(f"{cfg.url}/v1/models", headers=headers,
                                   timeout=30).json()["data"][0]["id"]
    maps = httpx.get(f"{cfg.url}{MAPS}", headers=headers, timeout=30).json()
    map_names = [m["name"] for m in maps["data"]]
    default_alpha = {m["name"]: float(m["default_alpha"]) for m in maps["data"]}
    gates = {m["name"]: float(m["gate"]["threshold"]) for m in maps["data"] if m.get("gate")}
    bound = float(maps["max_steer_alpha"])
    schema = httpx.get(f"{cfg.url}/openapi.json", headers=headers, timeout=30).json()
    ops = steering_operations(schema)

    before_status, before_text = fixed_request_text(cfg, model)
    rejected_before, labels_before = rejected_metrics(cfg)
    # Schemathesis gets 60 % of the budget (its coverage phase alone sends thousands of
    # cases per operation); the property pass what is left, less a reserve for the checks.
    cfg.st_seconds = 0.6 * cfg.seconds
    with tempfile.TemporaryDirectory(prefix="schema-fuzz-") as tmp:
        workdir = Path(cfg.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        st_report = ({"skipped": "--skip-schemathesis"} if cfg.skip_schemathesis
                     else run_schemathesis(cfg, model, ops, workdir))
    cfg.prop_seconds = max(20.0, cfg.seconds - (time.monotonic() - t0) - 20.0)
    prop = run_property_pass(cfg, model, map_names, bound, default_alpha, gates)
    after_status, after_text = fixed_request_text(cfg, model)
    rejected_after, labels_after = rejected_metrics(cfg)
    try:
        healthy = httpx.get(f"{cfg.url}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        healthy = False

    failures: list[dict[str, Any]] = []
    if "skipped" not in st_report:
        failures += [dict(f, source="schemathesis") for f in st_report["failures"]]
        failures += [{"source": "schemathesis", "why": "schemathesis error", "route": "-",
                      "status": None, "body": "", "response": e} for e in st_report["errors"]]
    failures += [dict(f, source="property") for f in prop["failures"]]
    if cfg.strict:
        failures += [dict(a["example"], source="advisory", why=k)
                     for k, a in prop["advisories"].items()]
    new_labels = sorted(labels_after - labels_before)
    # One series per client-invented key name would be unbounded metric cardinality.
    unbounded = [lb for lb in new_labels
                 if any(lb == '{field="%s"}' % k for k in prop["invented_keys"] if k not in KNOWN)]
    if unbounded:
        prop["advisories"]["adaras_rejected_requests_total: client-chosen field labels"] = {
            "count": len(unbounded), "routes": ["/metrics"], "example": {
                "route": "/metrics", "status": 200, "body": "",
                "response": _clip(", ".join(sorted(unbounded)), 300)}}
    fixed_same = before_status == after_status == 200 and before_text == after_text
    if not fixed_same:
        failures.append({"source": "fixed request", "route": CHAT, "body": json.dumps(FIXED_BODY),
                         "status": after_status, "why": "text changed or not 200",
                         "response": f"before: {before_text!r} after: {after_text!r}"[:600]})
    if not healthy:
        failures.append({"source": "health", "route": "/health", "status": None, "body": "",
                         "why": "unhealthy afterwards", "response": ""})

    report = {
        "config": {k: v for k, v in vars(cfg).items() if k != "api_key"},
        "model": model, "maps": map_names, "max_steer_alpha": bound,
        "schemathesis": st_report, "property": prop,
        "fixed_request": {"before_status": before_status, "after_status": after_status,
                          "before": before_text, "after": after_text, "same": fixed_same},
        "rejected_delta": (None if rejected_before is None or rejected_after is None
                           else rejected_after - rejected_before),
        "rejected_label_sets_new": new_labels,
        "healthy_after": healthy, "wall_s": round(time.monotonic() - t0, 1),
        "failures": failures,
    }
    print_summary(report)
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    main.last_report = report  # type: ignore[attr-defined]
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
