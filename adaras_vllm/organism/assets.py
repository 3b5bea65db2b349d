"""Where the committed organisms live: their weights, tokenizers and neuron maps.

They are committed to the repository (a few MB each) and installed as package data so that serving and evaluating them
needs no training; ``adaras serve`` with no model argument serves the default one
(``--organism`` picks the other).

- ``arith``: always writes its steps; its good and bad traces differ in arithmetic slips,
  and steering it changed little (README "Does steering help?").
- ``modes``: answers careful (steps written) or hasty (no steps) by a hidden coin flip;
  steering toward the map's direction changes which mode it picks, so the example pair
  printed at start-up gives visibly different answers (README "A positive control"). Its
  map is calibrated to ``adaptive``, so its example is a question the gate predicts wrong
  unsteered (p_good 0.04): steered only where the gate says so, the pair must differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adaras_vllm.package_data import data_dir

MODELS = data_dir("models")
MAPS = data_dir("neuron_maps")


@dataclass(frozen=True)
class Organism:
    """One committed model organism with its map, and the question its examples use."""

    name: str
    model_dir: Path
    map_path: Path
    map_name: str
    served_name: str
    example_question: str
    summary: str

    def files(self) -> tuple[Path, Path]:
        """(model dir, map path); FileNotFoundError naming whatever is missing."""
        missing = [str(p) for p in (self.model_dir / "model.safetensors", self.map_path)
                   if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"the {self.name} organism's files are missing: "
                                    f"{', '.join(missing)}")
        return self.model_dir, self.map_path


ORGANISMS = {
    "arith": Organism(
        name="arith",
        model_dir=MODELS / "organism-qwen3",
        map_path=MAPS / "organism-arith.safetensors",
        map_name="arith",
        served_name="adaras-organism",
        example_question="47+18-23+35",
        summary="chained 2-digit additions, always with written steps",
    ),
    "modes": Organism(
        name="modes",
        model_dir=MODELS / "organism-modes",
        map_path=MAPS / "organism-modes.safetensors",
        map_name="modes",
        served_name="adaras-organism-modes",
        example_question="53+55-24-15",
        summary="the same questions, answered careful (steps) or hasty (none) by a hidden "
                "coin flip",
    ),
}
DEFAULT_ORGANISM = "modes"

# The arithmetic organism, by the names the pipeline's tests and tools have always used.
ORGANISM_DIR = ORGANISMS["arith"].model_dir
ORGANISM_MAP = ORGANISMS["arith"].map_path
