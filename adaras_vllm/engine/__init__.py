"""The vLLM side of adaras: per-request steering of MLP neurons inside the forward."""

from .params import SteeringParamError, SteeringParams, parse_steering
from .registry import ENV_VAR, MapRegistry, active_registry
from .state import SteeringState, steered_token_alpha
from .steer import LayerTable, SteeringTables, build_layer_table, steer_

__all__ = [
    "ENV_VAR",
    "LayerTable",
    "MapRegistry",
    "SteeringParamError",
    "SteeringParams",
    "SteeringState",
    "SteeringTables",
    "active_registry",
    "build_layer_table",
    "parse_steering",
    "steer_",
    "steered_token_alpha",
]
