"""Load with faults against a running ``adaras serve``: concurrency, disconnects, cancels.

A bounded asyncio + httpx load generator. ``--users`` virtual users each send requests
back to back for ``--seconds`` (then finish what is in flight), mixing

- ``/v1/chat/completions`` and ``/v1/completions``, streamed and not,
- ``steer_alpha`` in {0, 0.5, 2, -1} (top-level field) and ``steer_mode`` in {always, off},
- greedy decoding (temperature 0), ``max_tokens`` in {16, 32, 48, 64},
- organism questions (2-4 terms of 2-digit numbers, e.g. ``47+18-23+35``) from a seeded
  pool (so identical requests recur and the solo phase below stays bounded),

and faults: ``--disconnect-frac`` of the requests are streams that the client closes after
1-3 data chunks, ``--cancel-frac`` are cancelled ~10 ms after being sent (before the first
token, normally).

Afterwards, checks:

(a) determinism: every distinct request that completed in full during the load is re-run
    alone, non-streamed, one at a time, and its text must equal the text seen under load
    (greedy, fp32: batch-invariant). Capped by ``--solo-max`` / ``--solo-seconds``.
(b) metrics: ``adaras_rejected_requests_total`` must not move (every request is valid,
    cancelled or not), and the increase of ``adaras_steered_requests_total`` must lie
    between the number of fully received responses that had steering applied
    (alpha != 0, mode always) and that number plus the disconnected/cancelled requests
    that would have been steered (the server may or may not count those). The same for
    ``adaras_steered_tokens_total`` (lower bound: the completion tokens received).
    Every received ``steering`` object must say what the request asked for.
(c) server RSS (``VmRSS`` of ``--server-pids``, or of the process listening on the port
    and its descendants) before and after.
(d) requests/s, p50/p99 latency, errors by status.

Prints one summary table, writes ``--out`` JSON. Exit status 1 on any solo mismatch, any
5xx, an unexpected transport error, a wrong ``steering`` object, a metric outside its
bounds (or any rejection counted), or a server that is unhealthy afterwards; 0 otherwise.
Only loopback URLs are accepted.

    python benchmarks/reliability/load_faults.py --url http://127.0.0.1:8000 \\
        [--users 32] [--seconds 60] [--seed 0] [--out load.json] [--server-pids 123,456]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx

ALPHAS = (0.0, 0.5, 2.0, -1.0)
MODES = ("always", "off")
MAX_TOKENS = (16, 32, 48, 64)
ROUTES = ("/v1/chat/completions", "/v1/completions")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
METRIC_RE = re.compile(r"^(adaras_[A-Za-z0-9_]+?)(?:\{([^}]*)\})?\s+(\S+)\s*$")


# --------------------------------------------------------------------------- requests


def organism_question(rng: random.Random) -> str:
    terms = rng.randint(2, 4)
    q = str(rng.randint(10, 99))
    for _ in range(terms - 1):
        q += rng.choice("+-") + str(rng.randint(10, 99))
    return q


@dataclass(frozen=True)
class Spec:
    """One request as the load sends it (``stream`` aside, what the solo run repeats)."""

    route: str
    question: str
    alpha: float
    mode: str
    max_tokens: int
    stream: bool
    include_usage: bool = False

    def body(self, model: str, *, stream: bool | None = None) -> dict[str, Any]:
        stream = self.stream if stream is None else stream
        b: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "temperature": 0,
                             "steer_alpha": self.alpha, "steer_mode": self.mode}
        if self.route == ROUTES[0]:
            b["messages"] = [{"role": "user", "content": self.question}]
        else:  # the organism's rendered chat prompt, so completions are meaningful too
            b["prompt"] = f"Q: {self.question}\n<think>\n"
        if stream:
            b["stream"] = True
            if self.include_usage:
                b["stream_options"] = {"include_usage": True}
        return b

    def solo_key(self) -> tuple:
        return (self.route, self.question, self.alpha, self.mode, self.max_tokens)

    @property
    def expect_applied(self) -> bool:
        return self.alpha != 0.0 and self.mode == "always"

    def expected_steering(self, map_name: str) -> dict[str, Any]:
        return {"map": map_name, "alpha": self.alpha if self.mode == "always" else 0.0,
                "applied": self.expect_applied, "mode": self.mode,
                "positions": "from_last_prompt"}


@dataclass
class Result:
    spec: Spec
    kind: str  # normal | disconnect | cancel
    outcome: str = ""  # ok | http_error | disconnected | cancelled | transport_error
    status: int | None = None
    start: float = 0.0
    latency: float | None = None
    ttft: float | None = None
    text: str = ""
    chunks: int = 0
    finish_reason: str | None = None
    completion_tokens: int | None = None
    steering: dict[str, Any] | None = None
    error: str = ""


def _choice_text(route: str, choice: dict[str, Any], streamed: bool) -> str:
    if route == ROUTES[1]:
        return choice.get("text") or ""
    part = choice.get("delta") if streamed else choice.get("message")
    return (part or {}).get("content") or ""


async def _send(client: httpx.AsyncClient, res: Result, model: str, timeout: float,
                stop_after_chunks: int | None) -> None:
    spec = res.spec
    body = spec.body(model)
    res.start = time.monotonic()
    try:
        if not spec.stream:
            r = await client.post(spec.route, json=body, timeout=timeout)
            res.status = r.status_code
            res.latency = time.monotonic() - res.start
            if r.status_code != 200:
                res.outcome, res.error = "http_error", r.text[:300]
                return
            data = r.json()
            choice = (data.get("choices") or [{}])[0]
            res.text = _choice_text(spec.route, choice, streamed=False)
            res.finish_reason = choice.get("finish_reason")
            res.completion_tokens = (data.get("usage") or {}).get("completion_tokens")
            res.steering = data.get("steering")
            res.outcome = "ok"
            return
        async with client.stream("POST", spec.route, json=body, timeout=timeout) as r:
            res.status = r.status_code
            if r.status_code != 200:
                await r.aread()
                res.latency = time.monotonic() - res.start
                res.outcome, res.error = "http_error", r.text[:300]
                return
            token_chunks, done = 0, False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: "):]
                if payload == "[DONE]":
                    done = True
                    break
                data = json.loads(payload)
                res.chunks += 1
                if res.ttft is None:
                    res.ttft = time.monotonic() - res.start
                for choice in data.get("choices") or []:
                    res.text += _choice_text(spec.route, choice, streamed=True)
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
                    if "role" not in (choice.get("delta") or {}):
                        token_chunks += 1
                usage = data.get("usage")
                if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                    res.completion_tokens = usage["completion_tokens"]
                if "steering" in data:
                    res.steering = data["steering"]
                if stop_after_chunks is not None and res.chunks >= stop_after_chunks:
                    res.latency = time.monotonic() - res.start
                    res.outcome = "disconnected"
                    return  # leaving the context closes the connection mid-stream
            res.latency = time.monotonic() - res.start
            if not done:
                res.outcome, res.error = "transport_error", "stream ended without [DONE]"
                return
            if res.completion_tokens is None:
                res.completion_tokens = token_chunks
            res.outcome = "ok"
    except httpx.HTTPError as e:
        res.latency = time.monotonic() - res.start
        res.outcome, res.error = "transport_error", f"{type(e).__name__}: {e}"[:300]


async def _user(uid: int, client: httpx.AsyncClient, cfg: argparse.Namespace, model: str,
                pool: list[str], deadline: float, results: list[Result]) -> None:
    rng = random.Random(cfg.seed * 100_003 + uid)
    while time.monotonic() < deadline:
        u = rng.random()
        kind = ("disconnect" if u < cfg.disconnect_frac
                else "cancel" if u < cfg.disconnect_frac + cfg.cancel_frac else "normal")
        stream = True if kind == "disconnect" else rng.random() < 0.5
        spec = Spec(route=rng.choice(ROUTES), question=rng.choice(pool),
                    alpha=rng.choice(ALPHAS), mode=rng.choice(MODES),
                    max_tokens=rng.choice(MAX_TOKENS), stream=stream,
                    include_usage=stream and rng.random() < 0.5)
        res = Result(spec=spec, kind=kind)
        results.append(res)
        stop = rng.randint(1, 3) if kind == "disconnect" else None
        if kind != "cancel":
            await _send(client, res, model, cfg.request_timeout, stop)
            continue
        task = asyncio.create_task(_send(client, res, model, cfg.request_timeout, None))
        await asyncio.sleep(cfg.cancel_after)
        if task.done():  # answered before the cancel: an ordinary completed request
            res.kind = "cancel_late"
            continue
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        res.outcome = "cancelled"
        res.latency = time.monotonic() - res.start


# --------------------------------------------------------------------------- server side


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def read_metrics(base: str, api_key: str | None) -> dict[str, float]:
    """``adaras_*`` samples of ``/metrics`` (``name{labels}`` -> value) plus vLLM's
    running/waiting gauges."""
    r = httpx.get(f"{base}/metrics", headers=_auth(api_key), timeout=30)
    r.raise_for_status()
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("vllm:num_requests_running") or line.startswith(
                "vllm:num_requests_waiting{"):
            name = line.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            continue
        if line.startswith("vllm:request_success_total{"):
            reason = re.search(r'finished_reason="([^"]*)"', line)
            name = f"vllm:request_success_total[{reason.group(1) if reason else ''}]"
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            continue
        m = METRIC_RE.match(line)
        if m and not m.group(1).endswith("_created"):
            key = m.group(1) + (f"{{{m.group(2)}}}" if m.group(2) else "")
            out[key] = float(m.group(3))
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def wait_idle(base: str, api_key: str | None, limit_s: float = 30.0) -> dict[str, float]:
    """Metrics once the engine has no running or waiting request (or after ``limit_s``)."""
    end = time.monotonic() + limit_s
    while True:
        m = read_metrics(base, api_key)
        busy = m.get("vllm:num_requests_running", 0) + m.get("vllm:num_requests_waiting", 0)
        if busy == 0 or time.monotonic() > end:
            time.sleep(0.5)  # let the middleware finish counting aborted streams
            return read_metrics(base, api_key)
        time.sleep(0.5)


def listening_pids(port: int) -> list[int]:
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})


def with_descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    seen, todo = [], list(pids)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(children.get(p, []))
    return sorted(seen)


def rss_kib(pids: list[int]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                line = next((ln for ln in f if ln.startswith("VmRSS:")), "")
            out[str(pid)] = int(line.split()[1]) if line else None
        except (OSError, ValueError):
            out[str(pid)] = None
    return out


def healthy(base: str, api_key: str | None, model: str) -> tuple[bool, str]:
    try:
        h = httpx.get(f"{base}/health", timeout=10)
        if h.status_code != 200:
            return False, f"/health {h.status_code}"
        r = httpx.post(f"{base}/v1/chat/completions", headers=_auth(api_key), timeout=60,
                       json={"model": model, "max_tokens": 8, "temperature": 0,
                             "messages": [{"role": "user", "content": "12+34"}]})
        if r.status_code != 200:
            return False, f"probe chat {r.status_code}: {r.text[:300]}"
    except httpx.HTTPError as e:
        return False, f"{type(e).__name__}: {e}"
    return True, "ok"


# --------------------------------------------------------------------------- phases


async def run_load(cfg: argparse.Namespace, model: str, pool: list[str]) -> tuple[
        list[Result], float]:
    limits = httpx.Limits(max_connections=cfg.users + 4, max_keepalive_connections=cfg.users)
    results: list[Result] = []
    async with httpx.AsyncClient(base_url=cfg.url, headers=_auth(cfg.api_key),
                                 limits=limits, timeout=cfg.request_timeout) as client:
        t0 = time.monotonic()
        deadline = t0 + cfg.seconds
        users = [asyncio.create_task(_user(i, client, cfg, model, pool, deadline, results))
                 for i in range(cfg.users)]
        done, pending = await asyncio.wait(users, timeout=cfg.seconds + cfg.request_timeout + 30)
        for t in pending:  # a hung request: stop it; the run is bounded whatever happens
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            if t.exception() is not None:
                raise t.exception()
        wall = time.monotonic() - t0
    for res in results:
        if not res.outcome:  # a user cancelled by the global bound mid-request
            res.outcome, res.error = "transport_error", "stopped by the run's time bound"
    return results, wall


def run_solo(cfg: argparse.Namespace, model: str, results: list[Result]) -> dict[str, Any]:
    """Re-run each distinct fully received request alone (non-streamed) and compare."""
    by_key: dict[tuple, list[Result]] = {}
    for res in results:
        if res.outcome == "ok":
            by_key.setdefault(res.spec.solo_key(), []).append(res)
    keys = list(by_key)
    random.Random(cfg.seed).shuffle(keys)
    keys = keys[: cfg.solo_max]
    mismatches: list[dict[str, Any]] = []
    compared_requests = compared_keys = 0
    errors: list[dict[str, Any]] = []
    end = time.monotonic() + cfg.solo_seconds
    with httpx.Client(base_url=cfg.url, headers=_auth(cfg.api_key),
                      timeout=cfg.request_timeout) as client:
        for key in keys:
            if time.monotonic() > end:
                break
            group = by_key[key]
            body = group[0].spec.body(model, stream=False)
            try:
                r = client.post(group[0].spec.route, json=body)
            except httpx.HTTPError as e:
                errors.append({"body": body, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            if r.status_code != 200:
                errors.append({"body": body, "status": r.status_code, "text": r.text[:300]})
                continue
            choice = r.json()["choices"][0]
            solo = _choice_text(group[0].spec.route, choice, streamed=False)
            compared_keys += 1
            for res in group:
                compared_requests += 1
                if res.text != solo:
                    mismatches.append({"body": body, "streamed_under_load": res.spec.stream,
                                       "under_load": res.text, "solo": solo})
    return {"distinct_completed": len(by_key), "distinct_compared": compared_keys,
            "requests_compared": compared_requests, "mismatches": len(mismatches),
            "mismatch_examples": mismatches[:20], "errors": errors[:20],
            "error_count": len(errors)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def check_metrics(before: dict[str, float], after: dict[str, float], results: list[Result],
                  map_name: str) -> dict[str, Any]:
    full_applied = [r for r in results if r.outcome == "ok" and r.spec.expect_applied]
    # Requests whose end the server may or may not have counted: the client left before
    # the full response arrived, but the server had accepted (or may have accepted) them.
    maybe = [r for r in results if r.spec.expect_applied
             and r.outcome in ("disconnected", "cancelled", "transport_error")]
    req_delta = (metric_sum(after, "adaras_steered_requests_total")
                 - metric_sum(before, "adaras_steered_requests_total"))
    tok_delta = (metric_sum(after, "adaras_steered_tokens_total")
                 - metric_sum(before, "adaras_steered_tokens_total"))
    tok_lo = sum(r.completion_tokens or 0 for r in full_applied)
    tok_hi = tok_lo + sum(r.spec.max_tokens for r in maybe)
    req_lo, req_hi = len(full_applied), len(full_applied) + len(maybe)
    labels_ok = all(('map="%s"' % map_name) in k for k in after
                    if k.startswith("adaras_steered_") and after[k] != before.get(k, 0.0))
    deltas = {k: after[k] - before.get(k, 0.0) for k in sorted(after)
              if k.startswith("adaras_") and after[k] != before.get(k, 0.0)}
    return {
        "steered_requests_delta": req_delta,
        "steered_requests_bounds": [req_lo, req_hi],
        "steered_requests_ok": req_lo <= req_delta <= req_hi,
        "steered_tokens_delta": tok_delta,
        "steered_tokens_bounds": [tok_lo, tok_hi],
        "steered_tokens_ok": tok_lo <= tok_delta <= tok_hi,
        "only_expected_map_label": labels_ok,
        "rejected_requests_delta": (metric_sum(after, "adaras_rejected_requests_total")
                                    - metric_sum(before, "adaras_rejected_requests_total")),
        "adaras_deltas": deltas,
        # vLLM's own count of finished requests by reason over the load (abort: the
        # engine saw the client go away), next to what the client did.
        "vllm_finished_deltas": {
            k.split("[", 1)[1].rstrip("]"): after[k] - before.get(k, 0.0)
            for k in sorted(after) if k.startswith("vllm:request_success_total[")},
        "client_left_early": sum(r.outcome in ("disconnected", "cancelled") for r in results),
        "adaras_after": {k: v for k, v in after.items() if k.startswith("adaras_")},
    }


def summarize(results: list[Result], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.outcome == "ok"]
    lat = [r.latency for r in ok if r.latency is not None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    by_outcome: dict[str, int] = {}
    by_status: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for r in results:
        by_outcome[r.outcome] = by_outcome.get(r.outcome, 0) + 1
        by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        if r.status is not None:
            by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
    return {
        "sent": len(results), "completed": len(ok), "wall_s": round(wall, 2),
        "completed_per_s": round(len(ok) / wall, 2) if wall else None,
        "sent_per_s": round(len(results) / wall, 2) if wall else None,
        "generated_tokens": sum(r.completion_tokens or 0 for r in ok),
        "latency_p50_s": percentile(lat, 0.5), "latency_p99_s": percentile(lat, 0.99),
        "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99),
        "by_outcome": by_outcome, "by_status": by_status, "by_kind": by_kind,
        "streamed_completed": sum(r.spec.stream for r in ok),
        "finish_reasons": {fr: sum(1 for r in ok if r.finish_reason == fr)
                           for fr in sorted({str(r.finish_reason) for r in ok})},
    }


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="server base URL (loopback only)")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default=None, help="served model (default: the first listed)")
    p.add_argument("--server-pids", default=None,
                   help="comma-separated PIDs for RSS (default: the listener and its children)")
    p.add_argument("--prompt-pool", type=int, default=16,
                   help="distinct questions to draw from (default: %(default)s)")
    p.add_argument("--disconnect-frac", type=float, default=0.15)
    p.add_argument("--cancel-frac", type=float, default=0.10)
    p.add_argument("--cancel-after", type=float, default=0.010, help="seconds (default 10 ms)")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--solo-max", type=int, default=1000,
                   help="most distinct requests re-run alone (default: %(default)s)")
    p.add_argument("--solo-seconds", type=float, default=300.0,
                   help="time bound of the solo phase (default: %(default)s)")
    return p


def _row(name: str, value: Any) -> str:
    return f"  {name:<38} {value}"


def print_table(report: dict[str, Any]) -> None:
    s, m, solo, rss = report["load"], report["metrics"], report["solo"], report["rss_kib"]

    def f(x: float | None, unit: str = "s") -> str:
        return "-" if x is None else f"{x:.3f} {unit}"

    lines = [
        "load_faults summary",
        _row("users / seconds / seed", f"{report['config']['users']} / "
             f"{report['config']['seconds']:g} / {report['config']['seed']}"),
        _row("sent / completed in full", f"{s['sent']} / {s['completed']}"),
        _row("kinds", s["by_kind"]),
        _row("outcomes", s["by_outcome"]),
        _row("HTTP statuses", s["by_status"]),
        _row("completed requests/s (sent/s)", f"{s['completed_per_s']} ({s['sent_per_s']})"),
        _row("latency p50 / p99", f"{f(s['latency_p50_s'])} / {f(s['latency_p99_s'])}"),
        _row("stream TTFT p50 / p99", f"{f(s['ttft_p50_s'])} / {f(s['ttft_p99_s'])}"),
        _row("generated tokens (completed)", s["generated_tokens"]),
        _row("solo: distinct compared / completed",
             f"{solo['distinct_compared']} / {solo['distinct_completed']} "
             f"({solo['requests_compared']} load responses)"),
        _row("solo mismatches", solo["mismatches"]),
        _row("steered_requests delta [bounds]",
             f"{m['steered_requests_delta']:g} {m['steered_requests_bounds']} "
             f"{'ok' if m['steered_requests_ok'] else 'OUT OF BOUNDS'}"),
        _row("steered_tokens delta [bounds]",
             f"{m['steered_tokens_delta']:g} {m['steered_tokens_bounds']} "
             f"{'ok' if m['steered_tokens_ok'] else 'OUT OF BOUNDS'}"),
        _row("rejected_requests delta", f"{m['rejected_requests_delta']:g}"),
        _row("vLLM finished by reason (delta)", m["vllm_finished_deltas"]),
        _row("server RSS before -> after (KiB)",
             f"{rss['total_before']} -> {rss['total_after']} (pids {rss['pids']})"),
        _row("wrong steering objects", report["steering_mismatches"]),
        _row("healthy afterwards", report["healthy_after"]),
        _row("RESULT", "PASS" if not report["failures"] else "FAIL: "
             + "; ".join(report["failures"])),
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    cfg = build_parser().parse_args(argv)
    cfg.url = cfg.url.rstrip("/")
    host = urlparse(cfg.url).hostname
    if host not in LOOPBACK:
        print(f"load_faults: refusing non-loopback URL {cfg.url}", file=sys.stderr)
        return 2
    port = urlparse(cfg.url).port or 80

    models = httpx.get(f"{cfg.url}/v1/models", headers=_auth(cfg.api_key), timeout=30)
    models.raise_for_status()
    model = cfg.model or models.json()["data"][0]["id"]
    maps = httpx.get(f"{cfg.url}/v1/steering/maps", headers=_auth(cfg.api_key), timeout=30)
    maps.raise_for_status()
    map_name = next(m["name"] for m in maps.json()["data"] if m.get("default"))
    ok, why = healthy(cfg.url, cfg.api_key, model)
    if not ok:
        print(f"load_faults: server unhealthy before the load: {why}", file=sys.stderr)
        return 1

    pool_rng = random.Random(cfg.seed)
    pool = list(dict.fromkeys(organism_question(pool_rng) for _ in range(cfg.prompt_pool)))
    pids = ([int(p) for p in cfg.server_pids.split(",") if p] if cfg.server_pids
            else with_descendants(listening_pids(port)))
    rss_before = rss_kib(pids)
    before = wait_idle(cfg.url, cfg.api_key)

    results, wall = asyncio.run(run_load(cfg, model, pool))

    after = wait_idle(cfg.url, cfg.api_key)
    rss_after = rss_kib(pids)
    load = summarize(results, wall)
    metrics = check_metrics(before, after, results, map_name)
    steering_bad = [
        {"body": r.spec.body(model), "got": r.steering,
         "expected": r.spec.expected_steering(map_name)}
        for r in results if r.outcome == "ok"
        and r.steering != r.spec.expected_steering(map_name)]
    solo = run_solo(cfg, model, results)
    ok_after, why_after = healthy(cfg.url, cfg.api_key, model)

    five_xx = {k: v for k, v in load["by_status"].items() if k.startswith("5")}
    unexpected = [r for r in results if r.outcome in ("transport_error", "http_error")]
    failures = []
    if solo["mismatches"]:
        failures.append(f"{solo['mismatches']} solo mismatches")
    if solo["error_count"]:
        failures.append(f"{solo['error_count']} solo requests failed")
    if five_xx:
        failures.append(f"5xx responses {five_xx}")
    if unexpected:
        failures.append(f"{len(unexpected)} unexpected errors")
    if steering_bad:
        failures.append(f"{len(steering_bad)} wrong steering objects")
    if not metrics["steered_requests_ok"]:
        failures.append("adaras_steered_requests_total outside bounds")
    if not metrics["steered_tokens_ok"]:
        failures.append("adaras_steered_tokens_total outside bounds")
    if metrics["rejected_requests_delta"]:  # every request of the load is valid
        failures.append(f"adaras_rejected_requests_total rose by "
                        f"{metrics['rejected_requests_delta']:g} over a load of valid requests")
    if not ok_after:
        failures.append(f"unhealthy afterwards: {why_after}")

    report = {
        "config": {k: v for k, v in vars(cfg).items() if k != "api_key"},
        "model": model, "map": map_name, "prompt_pool": pool,
        "load": load, "solo": solo, "metrics": metrics,
        "rss_kib": {"pids": pids, "before": rss_before, "after": rss_after,
                    "total_before": sum(v or 0 for v in rss_before.values()),
                    "total_after": sum(v or 0 for v in rss_after.values())},
        "steering_mismatches": len(steering_bad),
        "steering_mismatch_examples": steering_bad[:10],
        "unexpected_errors": [
            {"body": r.spec.body(model), "kind": r.kind, "outcome": r.outcome,
             "status": r.status, "error": r.error} for r in unexpected[:20]],
        "healthy_after": ok_after, "healthy_after_detail": why_after,
        "failures": failures,
    }
    print_table(report)
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    main.last_report = report  # type: ignore[attr-defined]  # for callers that import us
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
