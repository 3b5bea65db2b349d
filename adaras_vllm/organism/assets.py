"""Where the committed organism lives: its weights, tokenizer and neuron map.

They are committed to the repository (a few MB) so that serving and evaluating the
organism needs no training; ``adaras serve`` with no model argument serves them.
"""

from __future__ import annotations

import os
from pathlib import Path


def _root() -> Path:
    """The checkout (editable install) or ``$ADARAS_HOME`` (e.g. the Docker image's copy)."""
    home = os.environ.get("ADARAS_HOME")
    if home:
        return Path(home)
    return Path(__file__).resolve().parents[2]


REPO_ROOT = _root()
ORGANISM_DIR = REPO_ROOT / "models" / "organism-qwen3"
ORGANISM_MAP = REPO_ROOT / "neuron_maps" / "organism-arith.safetensors"
ORGANISM_SERVED_NAME = "adaras-organism"
ORGANISM_MAP_NAME = "arith"
EXAMPLE_QUESTION = "47+18-23+35"


def organism_model_and_map() -> tuple[Path, Path]:
    """The committed organism and its map; FileNotFoundError naming what is missing."""
    missing = [str(p) for p in (ORGANISM_DIR / "model.safetensors", ORGANISM_MAP)
               if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the organism's files are missing: {', '.join(missing)}")
    return ORGANISM_DIR, ORGANISM_MAP
