"""The committed model organisms, installed as package data (``adaras_vllm.models``)."""
