"""The shipped neuron maps, installed as package data (``adaras_vllm.neuron_maps``)."""
