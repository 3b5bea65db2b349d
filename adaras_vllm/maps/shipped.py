"""Maps shipped with the package, by bare name (``--neuron-map aime``)."""

from __future__ import annotations

import os
from pathlib import Path

from adaras_vllm.package_data import data_dir


def shipped_map(name: str) -> Path | None:
    """The shipped map called ``name`` (``neuron_maps/NAME.safetensors``), if any."""
    if not name or "/" in name or name.endswith(".safetensors"):
        return None
    candidate = data_dir("neuron_maps") / f"{name}.safetensors"
    return candidate if candidate.is_file() else None


def shipped_names() -> list[str]:
    """The bare names of every shipped map, sorted."""
    return sorted(p.name.removesuffix(".safetensors")
                  for p in data_dir("neuron_maps").glob("*.safetensors"))


def resolve_map_path(spec: str | Path) -> Path:
    """A map file's path, or a shipped map's by bare name (``aime``); FileNotFoundError
    naming both and the shipped names when it is neither."""
    path = Path(spec).expanduser()
    if os.path.lexists(path):
        return path
    shipped = shipped_map(str(spec))
    if shipped is not None:
        return shipped
    raise FileNotFoundError(
        f"no neuron map file at {path} (it does not exist), and no shipped map has that "
        f"name (shipped: {', '.join(shipped_names()) or 'none'})"
    )
