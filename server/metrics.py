"""Prometheus counters of steering, exposed on vLLM's ``/metrics`` (default registry)."""

from __future__ import annotations

from prometheus_client import Counter

from adaras_vllm.engine.params import KNOWN_KEYS, is_steering_key

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


def metric_field(field: str | None) -> str:
    """A bounded label for the rejected-requests counter: clients choose key names."""
    if field in KNOWN_KEYS or field in ("vllm_xargs", "body"):
        return str(field)
    return "unknown_steer_field" if is_steering_key(field) else "other"
