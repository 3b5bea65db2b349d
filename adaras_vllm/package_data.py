"""Where the shipped neuron maps and model organisms are, installed or not.

They are package data (``adaras_vllm.neuron_maps``, ``adaras_vllm.models``; the repository
keeps them at its top and setuptools maps them in), so a wheel finds them from any
directory. ``$ADARAS_HOME`` overrides the lookup (a copy laid out like the repository);
a checkout on ``PYTHONPATH`` without any install finds its own folders.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Literal

DataKind = Literal["neuron_maps", "models"]
HOME_ENV = "ADARAS_HOME"


def data_dir(kind: DataKind) -> Path:
    """The folder of shipped ``kind`` (it may not exist: callers name what is missing)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home) / kind
    try:
        return Path(str(importlib.resources.files(f"adaras_vllm.{kind}")))
    except ModuleNotFoundError:  # a bare checkout on PYTHONPATH
        return Path(__file__).resolve().parents[1] / kind
