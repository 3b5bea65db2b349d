"""Neuron maps: which MLP neurons to steer, stored as safetensors with the model shape."""

from adaras_vllm.maps.errors import MapFormatError, MapMismatchError
from adaras_vllm.maps.gate_file import CorrectnessGate, GateFormatError
from adaras_vllm.maps.map_metadata import FORMAT
from adaras_vllm.maps.neuron_map import NeuronMap

__all__ = ["FORMAT", "CorrectnessGate", "GateFormatError", "MapFormatError",
           "MapMismatchError", "NeuronMap"]
