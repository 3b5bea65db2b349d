"""Neuron maps: which MLP neurons to steer, stored as safetensors with the model shape."""

from adaras_vllm.maps.gate import CorrectnessGate, GateFormatError
from adaras_vllm.maps.neuron_map import FORMAT, MapFormatError, MapMismatchError, NeuronMap

__all__ = ["FORMAT", "CorrectnessGate", "GateFormatError", "MapFormatError",
           "MapMismatchError", "NeuronMap"]
