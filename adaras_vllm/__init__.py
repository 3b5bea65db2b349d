"""adaras-vllm: AdaRAS steering of reasoning-critical MLP neurons inside vLLM.

``adaras_vllm.maps`` is the neuron-map file format (no vLLM import); ``adaras_vllm.engine``
is the vLLM plugin, registered under ``vllm.general_plugins`` and configured by the
``ADARAS_NEURON_MAPS`` environment variable.
"""

__version__ = "0.1.0"
