"""``GET /v1/steering/maps``: what this server can steer with; ``GET /v1/steering/status``:
what each engine worker has installed and how many requests it tracks right now (0 when
idle: per-request steering state must not outlive its request)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from adaras_vllm.engine.worker_rpcs import STATUS_METHOD

from .engine_calls import every_worker
from .steering_fields import SteeringPolicy


def describe_maps(policy: SteeringPolicy) -> dict[str, Any]:
    data = []
    for i, m in enumerate(policy.maps):
        data.append({
            "name": m.name,
            "default": i == 0,
            "default_alpha": policy.default_alpha_for(m.name),
            "map_default_alpha": m.default_alpha,
            "default_positions": policy.default_positions_for(m.name),
            "map_default_positions": m.default_positions,
            "default_mode": policy.default_mode_for(m.name),
            "map_default_mode": m.default_mode,
            "num_neurons": m.num_neurons,
            "layers": [{"layer": layer, "neurons": int(idx.numel())}
                       for layer, (idx, _) in m.layers.items()],
            "fingerprint": m.fingerprint(),
            "gate": None if m.gate is None else {
                "features": m.gate.num_features, "hidden": m.gate.hidden,
                "threshold": m.gate.threshold, "input": "prompt[:-1]",
                "provenance": dict(m.gate.provenance)},
            "metadata": dict(m.metadata),
        })
    return {"object": "list", "max_steer_alpha": policy.max_alpha, "data": data}


def add_steering_routes(app: FastAPI, policy: SteeringPolicy) -> None:
    router = APIRouter()

    @router.get("/v1/steering/maps", tags=["steering"],
                summary="The loaded neuron maps, their layers, neuron counts and default alpha")
    async def list_maps() -> dict[str, Any]:
        return describe_maps(policy)

    @router.get("/v1/steering/status", tags=["steering"],
                summary="Per worker rank: steered layers and requests tracked right now")
    async def steering_status(request: Request) -> dict[str, Any]:
        ranks = await every_worker(request.app.state.engine_client, STATUS_METHOD)
        return {"object": "steering.status", "api_process": os.getpid(), "ranks": ranks,
                "tracked_requests": sum(int(r.get("tracked_requests", 0)) for r in ranks)}

    app.include_router(router)
