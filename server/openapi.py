"""Document the steering fields in ``/openapi.json``.

vLLM's request models are its own pydantic classes; rather than fork them, the generated
schema is extended: the same fields the middleware accepts are added to both request
schemas, and the ``steering`` object (schema ``SteeringApplied``) to both routes' responses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .steering_fields import SERVER_MODES, SteeringPolicy

REQUEST_SCHEMAS = ("ChatCompletionRequest", "CompletionRequest")
STEERED_PATHS = ("/v1/chat/completions", "/v1/completions")


def steering_request_properties(policy: SteeringPolicy) -> dict[str, Any]:
    bound = policy.max_alpha
    return {
        "steer_alpha": {
            "type": "number", "minimum": -bound, "maximum": bound,
            "title": "Steer Alpha",
            "description": "Steering strength added as alpha * w to the map's neurons at the "
                           "last prompt token and every generated token. 0 disables; absent: "
                           "the server default. Same as vllm_xargs.steer_alpha.",
        },
        "steer_map": {
            "type": "string", "enum": policy.map_names, "title": "Steer Map",
            "description": f"Which loaded neuron map; absent: {policy.map_names[0]!r}.",
        },
        "steer_mode": {
            "type": "string", "enum": list(SERVER_MODES), "default": "always",
            "title": "Steer Mode",
            "description": "'always' steers with steer_alpha, 'off' never steers; "
                           "'adaptive' needs a correctness gate (none loaded yet).",
        },
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
    },
}


def document_steering(app: FastAPI, policy: SteeringPolicy) -> None:
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None and app.openapi_schema.get("x-adaras"):
            return app.openapi_schema
        schema = base_openapi()
        components = schema.get("components", {}).get("schemas", {})
        for name in REQUEST_SCHEMAS:
            if name in components:
                components[name].setdefault("properties", {}).update(
                    steering_request_properties(policy)
                )
        components["SteeringApplied"] = STEERING_RESPONSE
        for path in STEERED_PATHS:
            ok = schema.get("paths", {}).get(path, {}).get("post", {}).get("responses", {})
            content = ok.get("200", {}).setdefault("content", {})
            body = content.setdefault("application/json", {}).setdefault("schema", {})
            body.setdefault("type", "object")
            body.setdefault("properties", {})["steering"] = {
                "$ref": "#/components/schemas/SteeringApplied"
            }
        schema["x-adaras"] = True
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
