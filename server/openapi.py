"""Document the steering fields in ``/openapi.json``.

vLLM's request models are its own pydantic classes; rather than fork them, the generated
schema is extended: every request schema that has ``vllm_xargs`` (chat, completions,
responses, messages, ...) gains the first-class steering fields, and the routes taking
such a body gain the ``steering`` object (schema ``SteeringApplied``) in their response.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from adaras_vllm.engine.params import MODES, POSITIONS

from .steering_fields import SteeringPolicy

REF_PREFIX = "#/components/schemas/"


def steering_request_properties(policy: SteeringPolicy) -> dict[str, Any]:
    """The four fields, each also ``null`` (= absent), as pydantic writes ``Optional``."""
    bound = policy.max_alpha
    fields = {
        "steer_alpha": {
            "type": "number", "minimum": -bound, "maximum": bound,
            "description": "Steering strength added as alpha * w to the map's neurons at the "
                           "last prompt token and every generated token. 0 disables; absent: "
                           "the server default. Same as vllm_xargs.steer_alpha.",
        },
        "steer_map": {
            "type": "string", "enum": policy.map_names,
            "description": f"Which loaded neuron map; absent: {policy.map_names[0]!r}.",
        },
        "steer_mode": {
            "type": "string", "enum": list(MODES),
            "description": "'always' steers with steer_alpha, 'off' never steers, "
                           "'adaptive' steers only if the map's correctness gate predicts a "
                           "wrong answer from the prompt (maps with a gate: "
                           + (", ".join(n for n in policy.map_names if policy.gate_of(n))
                              or "none") + "). Absent: the server default, else the map's "
                           "default_mode, else 'always'.",
        },
        "steer_positions": {
            "type": "string", "enum": list(POSITIONS),
            "description": "Which positions are steered (prompt length P): "
                           "'from_last_prompt' t >= P-1 (the paper's rule), 'last_prompt' "
                           "t = P-1 only (the decision point), 'generated' t >= P (decode "
                           "only; the prompt's KV stays shared with unsteered requests). "
                           "Absent: the server default, else the map's default_positions.",
        },
    }
    return {
        name: {"anyOf": [schema, {"type": "null"}],
               "title": name.replace("_", " ").title(),
               "description": schema.pop("description")}
        for name, schema in fields.items()
    }


STEERING_RESPONSE = {
    "type": "object",
    "title": "SteeringApplied",
    "description": "What was applied to this request (on the last chunk of a stream).",
    "properties": {
        "map": {"type": "string"},
        "alpha": {"type": "number"},
        "applied": {"type": "boolean"},
        "mode": {"type": "string"},
        "positions": {"type": "string", "enum": list(POSITIONS)},
        "gate_score": {"type": ["number", "null"],
                       "description": "adaptive: the gate's p_good (null if it never decided)"},
        "gate_threshold": {"type": ["number", "null"],
                           "description": "adaptive: steering applies iff gate_score < this"},
    },
}


def document_steering(app: FastAPI, policy: SteeringPolicy) -> None:
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None and app.openapi_schema.get("x-adaras"):
            return app.openapi_schema
        schema = base_openapi()
        components = schema.get("components", {}).get("schemas", {})
        steered = {name for name, c in components.items()
                   if "vllm_xargs" in (c.get("properties") or {})}
        for name in steered:
            components[name]["properties"].update(steering_request_properties(policy))
        components["SteeringApplied"] = STEERING_RESPONSE
        for operations in schema.get("paths", {}).values():
            post = operations.get("post") or {}
            if not steered & _body_schemas(post):
                continue
            ok = post.setdefault("responses", {}).setdefault("200", {})
            content = ok.setdefault("content", {})
            body = content.setdefault("application/json", {}).setdefault("schema", {})
            if "$ref" in body or "anyOf" in body:  # keep vLLM's schema; add ours beside it
                body = content["application/json"]["schema"] = {"allOf": [body]}
                body["allOf"].append({"type": "object", "properties": {}})
                body = body["allOf"][-1]
            body.setdefault("type", "object")
            body.setdefault("properties", {})["steering"] = {
                "$ref": f"{REF_PREFIX}SteeringApplied"
            }
        schema["x-adaras"] = True
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _body_schemas(operation: dict[str, Any]) -> set[str]:
    """Names of the component schemas an operation's JSON request body refers to."""
    schema = (operation.get("requestBody", {}).get("content", {})
              .get("application/json", {}).get("schema", {}))
    refs = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
    return {r["$ref"][len(REF_PREFIX):] for r in refs
            if isinstance(r, dict) and str(r.get("$ref", "")).startswith(REF_PREFIX)}
