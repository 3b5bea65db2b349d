"""Prometheus counters of steering, exposed on vLLM's ``/metrics`` (default registry)."""

from __future__ import annotations

from prometheus_client import Counter

STEERED_REQUESTS = Counter(
    "adaras_steered_requests",
    "Requests answered with steering applied (alpha != 0), by map.",
    ["map"],
)
STEERED_TOKENS = Counter(
    "adaras_steered_tokens",
    "Generated tokens of steered requests, by map.",
    ["map"],
)
REJECTED_REQUESTS = Counter(
    "adaras_rejected_requests",
    "Requests refused for invalid steering fields, by field.",
    ["field"],
)
GATE_DECISIONS = Counter(
    "adaras_gate_decisions",
    "Adaptive requests by what the correctness gate decided (steered / not_steered), by map.",
    ["map", "decision"],
)
