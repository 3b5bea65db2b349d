"""The model shape a map is checked against, so a map never steers another model's neurons.

Only the config attributes a map depends on are read, from any object that has them (a
transformers config or a stand-in), so this check needs no inference engine.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from .errors import MapMismatchError
from .map_metadata import MapMetadata

#: Config attributes whose presence (with a positive value) marks a mixture-of-experts MLP.
MOE_ATTRIBUTES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class ModelShape:
    """The parts of a model config a neuron map depends on."""

    num_hidden_layers: int
    intermediate_size: int
    hidden_size: int
    model_type: str = ""

    @classmethod
    def of(cls, model_config: Any, *, who: str) -> ModelShape:
        """Read the shape from a transformers config or any object with the same attributes.

        `who` prefixes error messages (e.g. "neuron map 'gsm8k'"), so the user learns which map
        was being checked against the unsuitable model.
        """
        get_text_config = getattr(model_config, "get_text_config", None)
        if callable(get_text_config):  # multimodal configs nest the language model's shape
            model_config = get_text_config()
        for attribute in MOE_ATTRIBUTES:
            value = getattr(model_config, attribute, None)
            if isinstance(value, numbers.Number) and value > 0:
                raise MapMismatchError(
                    f"{who}: the model has a mixture-of-experts MLP ({attribute}={value}); "
                    "neuron maps address dense MLP neurons, MoE MLPs are not supported"
                )
        if getattr(model_config, "intermediate_size", None) is None:
            raise MapMismatchError(
                f"{who}: the model config has no intermediate_size, so its MLP is not a dense "
                "gate/up/down MLP (MoE MLPs are not supported)"
            )
        values: dict[str, int] = {}
        for field in ("num_hidden_layers", "intermediate_size", "hidden_size"):
            value = getattr(model_config, field, None)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise MapMismatchError(
                    f"{who}: the model config's {field} is {value!r}; expected a positive integer"
                )
            values[field] = int(value)
        return cls(**values, model_type=str(getattr(model_config, "model_type", "") or ""))


def check_fits(info: MapMetadata, model_config: Any) -> None:
    """Raise MapMismatchError unless the map described by `info` fits `model_config`.

    Every differing field is reported, so one run shows everything that is wrong.
    """
    who = f"neuron map {info.name!r}"
    shape = ModelShape.of(model_config, who=who)
    problems = [
        f"{field} is {mine} but the model has {theirs}"
        for field, mine, theirs in (
            ("num_hidden_layers", info.num_hidden_layers, shape.num_hidden_layers),
            ("intermediate_size", info.intermediate_size, shape.intermediate_size),
            ("hidden_size", info.hidden_size, shape.hidden_size),
        )
        if mine != theirs
    ]
    if info.model_type and shape.model_type and info.model_type != shape.model_type:
        problems.append(
            f"model_type is {info.model_type!r} but the model has {shape.model_type!r}"
        )
    if problems:
        raise MapMismatchError(f"{who}: " + "; ".join(problems))


def model_name_mismatch(info: MapMetadata, served_model: str) -> str | None:
    """A warning when the map names another model than the one served (the shape is
    checked separately, as an error): compared by last path component, any case."""
    if not info.model or not served_model:
        return None
    mine = info.model.rstrip("/").rsplit("/", 1)[-1].lower()
    theirs = str(served_model).rstrip("/").rsplit("/", 1)[-1].lower()
    if mine == theirs:
        return None
    return (f"neuron map {info.name!r} was made for model {info.model!r} but the served "
            f"model is {served_model!r}; its shape fits, so it is served, but its neurons "
            "may mean nothing for this model")
