"""A neuron map: which MLP neurons of which layers get steered, and by how much.

The map is the hand-off between offline RCN identification and the serving engine, so it is
stored as safetensors (no pickle: maps get shared and must be safe to load) and carries the
model shape it was built for, so that applying it to the wrong model fails loudly instead of
silently steering unrelated neurons.

This package deliberately imports neither vllm nor transformers: tools that only build or
inspect maps must not pay for (or depend on) an inference engine.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import MapFormatError
from .gate_file import CorrectnessGate
from .map_file import (PathArg, content_fingerprint, map_gate, named_tensors, read_map_file,
                       write_map_file)
from .map_metadata import (
    DEFAULT_MODE,
    DEFAULT_POSITIONS,
    GATE_METADATA_PREFIX,
    MapMetadata,
    check_map_name,
    map_who,
    new_metadata,
)
from .model_shape import ModelShape, check_fits, model_name_mismatch
from .paper_csv import ranked_layers, read_paper_csv, source_label
from .values import (LayerTensors, as_tensor, as_tensors, canonical_layers, check_ranks,
                     rank_by_magnitude)


class NeuronMap:
    """Steering values for a set of MLP neurons, grouped by decoder layer.

    Attributes (treat as read-only; build new maps with the factories or `top`):
      name: the map's name (same as metadata["name"]).
      layers: layer index -> (indices int64 [k], weights float32 [k]), layers ascending,
        indices ascending within a layer. weights are the steering values w = good - bad.
      ranks: layer index -> int64 [k], each neuron's rank across the whole map (0 = best);
        all ranks together are exactly 0..num_neurons-1.
      good_mean, bad_mean: optional layer index -> float32 [k] mean activations.
      metadata: str -> str, see REQUIRED_METADATA, exactly as given or read.
      info: the same metadata parsed into typed values (MapMetadata).

    The constructor validates and canonicalises (sorts each layer by neuron index, drops
    layers without neurons, ranks by |w| when no ranks are given), so every instance is a
    valid map; prefer `from_layers`, `load` or `from_paper_csv` over calling it directly.
    """

    def __init__(
        self,
        *,
        metadata: Mapping[str, str],
        layers: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
        ranks: Mapping[int, torch.Tensor] | None = None,
        good_mean: Mapping[int, torch.Tensor] | None = None,
        bad_mean: Mapping[int, torch.Tensor] | None = None,
        gate: CorrectnessGate | None = None,
    ) -> None:
        who = map_who(metadata)
        self.info: MapMetadata = MapMetadata.parse(metadata, who)
        # gate_* metadata belongs to the gate; the map keeps the rest.
        self.metadata: dict[str, str] = {k: v for k, v in metadata.items()
                                         if not k.startswith(GATE_METADATA_PREFIX)}
        if gate is None and len(self.metadata) != len(metadata):
            stray = sorted(set(metadata) - set(self.metadata))
            raise MapFormatError(
                f"{who}: metadata {', '.join(stray[:4])} describe a gate but the map has no "
                "gate.* tensors; remove them or add the gate"
            )
        canonical = canonical_layers(
            who, layers, ranks, good_mean, bad_mean,
            num_hidden_layers=self.info.num_hidden_layers,
            intermediate_size=self.info.intermediate_size,
        )
        self.layers: LayerTensors = canonical.layers
        self.ranks: dict[int, torch.Tensor] = canonical.ranks
        self.good_mean: dict[int, torch.Tensor] | None = canonical.good_mean
        self.bad_mean: dict[int, torch.Tensor] | None = canonical.bad_mean
        total = self.num_neurons
        if total == 0:
            raise MapFormatError(f"{who} has no neurons; a map must steer at least one neuron")
        if ranks is None:
            self.ranks = rank_by_magnitude(self.layers)
        if self.info.top_k != total:
            raise MapFormatError(
                f"{who}: metadata top_k is {self.metadata['top_k']} but the map holds "
                f"{total} neurons; top_k must equal the number of neurons"
            )
        check_ranks(self.ranks, total, who)
        self.gate: CorrectnessGate | None = None
        if gate is not None:
            self.gate = map_gate(gate.tensors(), gate.metadata(), self.info)
        elif self.default_mode == "adaptive":
            raise MapFormatError(
                f"{who}: metadata default_mode is 'adaptive' but the map has no correctness "
                "gate; add one (adaras gate train / copy) or recalibrate without it "
                "(adaras maps calibrate --modes always)"
            )

    # ----------------------------------------------------------------------------- factories

    @classmethod
    def from_layers(
        cls,
        name: str,
        layers: Mapping[int, tuple[Any, Any]],
        *,
        num_hidden_layers: int,
        intermediate_size: int,
        hidden_size: int,
        model: str = "",
        model_type: str = "",
        criterion: str = "",
        default_alpha: float = 0.0,
        source: str = "",
        ranks: Mapping[int, Any] | None = None,
        good_mean: Mapping[int, Any] | None = None,
        bad_mean: Mapping[int, Any] | None = None,
        extra_metadata: Mapping[str, str] | None = None,
    ) -> NeuronMap:
        """Build a validated map from per-layer (indices, weights).

        `extra_metadata` records provenance beyond the required keys (e.g. how many good
        and bad traces went in); it may not override a required key.

        Accepts tensors, arrays or lists; integer indices become int64 and floating values
        float32. Without `ranks`, neurons are ranked by |w| descending across the whole map
        (ties: lower layer first, then lower index), which is what `top(n)` then keeps.
        """
        check_map_name(name)
        who = f"neuron map {name!r}"
        tensors: LayerTensors = {
            layer: (
                as_tensor(pair[0], torch.int64, f"{who}: layer {layer}: indices"),
                as_tensor(pair[1], torch.float32, f"{who}: layer {layer}: weights"),
            )
            for layer, pair in layers.items()
        }
        metadata = new_metadata(
            name, num_hidden_layers=num_hidden_layers, intermediate_size=intermediate_size,
            hidden_size=hidden_size, top_k=sum(w.numel() for _, w in tensors.values()),
            model=model, model_type=model_type, criterion=criterion,
            default_alpha=default_alpha, source=source, extra_metadata=extra_metadata,
        )
        return cls(
            metadata=metadata,
            layers=tensors,
            ranks=as_tensors(ranks, torch.int64, f"{who}: rank"),
            good_mean=as_tensors(good_mean, torch.float32, f"{who}: good_mean"),
            bad_mean=as_tensors(bad_mean, torch.float32, f"{who}: bad_mean"),
        )

    @classmethod
    def from_paper_csv(
        cls,
        csv_path: PathArg,
        model_config: Any,
        name: str | None = None,
        model: str = "",
        default_alpha: float = 0.3,
        top: int | None = None,
        extra_metadata: Mapping[str, str] | None = None,
    ) -> NeuronMap:
        """Import the AdaRAS paper's `top_*_neurons_by_rel_abs_diff.csv` (row order = rank).

        The CSV does not say which model it is for; each row's overall_neuron_index
        (layer * intermediate_size + neuron) is checked against `model_config` instead, which
        catches a CSV made for a model of a different shape. `name` defaults to the CSV's
        directory name, `model` to the config's name_or_path.
        """
        path = Path(csv_path)
        name = name if name is not None else path.resolve().parent.name
        shape = ModelShape.of(model_config, who=f"neuron map {name!r} from {path}")
        rows = read_paper_csv(path, num_hidden_layers=shape.num_hidden_layers,
                              intermediate_size=shape.intermediate_size)
        layers, ranks = ranked_layers(rows)
        neuron_map = cls.from_layers(
            name, layers, num_hidden_layers=shape.num_hidden_layers,
            intermediate_size=shape.intermediate_size, hidden_size=shape.hidden_size,
            model=model or str(getattr(model_config, "name_or_path", "") or ""),
            model_type=shape.model_type, criterion="rel_abs_diff", default_alpha=default_alpha,
            source=source_label(path), ranks=ranks, extra_metadata=extra_metadata,
        )
        return neuron_map if top is None else neuron_map.top(top)

    @classmethod
    def load(cls, path: PathArg) -> NeuronMap:
        """Read a map file written by `save`, refusing anything that is not a valid map.

        Raises FileNotFoundError (naming the path) when nothing is at `path`, or it is a
        symlink to nothing. Everything else that is not a valid map raises MapFormatError, one
        line naming the file and what is wrong with it: a directory or other non-regular file
        (a FIFO is never opened, so it cannot block), a file that cannot be read (permissions,
        a symlink loop), one that is not safetensors (empty, truncated, a header length past
        the end of the file, corrupt JSON, overlapping or out-of-file tensor data), and a
        safetensors file that breaks the neuron-map format. The header and metadata are
        checked before any tensor is read, so refusing a large file that is not a map (a
        model checkpoint, say) costs no memory.
        """
        path = Path(path)
        try:
            contents = read_map_file(path)
            return cls(metadata=contents.metadata, layers=contents.layers,
                       ranks=contents.ranks, good_mean=contents.good_mean,
                       bad_mean=contents.bad_mean, gate=contents.gate)
        except MapFormatError as error:
            raise MapFormatError(f"{path}: {error}") from None

    # --------------------------------------------------------------------------- operations

    def save(self, path: PathArg) -> None:
        """Write the map as safetensors, atomically; `load` gives back an equal map, bit for
        bit."""
        write_map_file(Path(path), self._named_tensors(), self.file_metadata())

    def file_metadata(self) -> dict[str, str]:
        """The metadata as written to the file: the map's, plus the gate's ``gate_*``."""
        return {**self.metadata, **(self.gate.metadata() if self.gate is not None else {})}

    def with_gate(self, gate: CorrectnessGate | None) -> NeuronMap:
        """The same neurons with ``gate`` (validated against this map's model shape)."""
        return self._with(metadata=self.metadata, gate=gate)

    def validate(self, model_config: Any) -> None:
        """Raise MapMismatchError unless this map fits the model described by `model_config`.

        Every differing field is reported, so one run shows everything that is wrong.
        """
        check_fits(self.info, model_config)

    def model_mismatch(self, served_model: str) -> str | None:
        """A warning when the map names another model than the one served (the shape is
        checked separately, as an error): compared by last path component, any case."""
        return model_name_mismatch(self.info, served_model)

    def with_metadata(self, entries: Mapping[str, str]) -> NeuronMap:
        """The same neurons and gate with ``entries`` added to (or replacing) the metadata,
        checked again (how calibration writes its defaults and provenance)."""
        return self._with(metadata={**self.metadata, **{str(k): str(v)
                                                        for k, v in entries.items()}},
                          gate=self.gate)

    def renamed(self, name: str) -> NeuronMap:
        """The same neurons under another name (how a server operator names a map)."""
        check_map_name(name)
        return self._with(metadata={**self.metadata, "name": name}, gate=self.gate)

    def top(self, n: int) -> NeuronMap:
        """The n best-ranked neurons of this map, as a new map (ranks stay 0..n-1)."""
        total = self.num_neurons
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or not 1 <= n <= total:
            raise ValueError(
                f"neuron map {self.name!r}: top(n) needs an integer n in [1, {total}] "
                f"(the map has {total} neurons), got {n!r}"
            )
        keep = {layer: ranks < n for layer, ranks in self.ranks.items()}

        def kept(tensors: Mapping[int, torch.Tensor] | None) -> dict[int, torch.Tensor] | None:
            if tensors is None:
                return None
            return {layer: t[keep[layer]] for layer, t in tensors.items()}

        return NeuronMap(
            metadata={**self.metadata, "top_k": str(int(n))},
            layers={
                layer: (indices[keep[layer]], weights[keep[layer]])
                for layer, (indices, weights) in self.layers.items()
            },
            ranks=kept(self.ranks),
            good_mean=kept(self.good_mean),
            bad_mean=kept(self.bad_mean),
            gate=self.gate,  # the gate reads its own features, not the steered neurons
        )

    def fingerprint(self) -> str:
        """A short, stable id of the map's content (16 hex chars of a sha256).

        Covers all tensors and all metadata except `created`, so the same map built twice
        gets the same fingerprint.
        """
        return content_fingerprint(self.file_metadata(), self._named_tensors())

    # --------------------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def model_type(self) -> str:
        return self.info.model_type

    @property
    def num_hidden_layers(self) -> int:
        return self.info.num_hidden_layers

    @property
    def intermediate_size(self) -> int:
        return self.info.intermediate_size

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    @property
    def criterion(self) -> str:
        return self.info.criterion

    @property
    def default_alpha(self) -> float:
        return self.info.default_alpha

    @property
    def default_positions(self) -> str:
        """Positions steered when a request names none (metadata ``default_positions``)."""
        return self.info.extra.get("default_positions", DEFAULT_POSITIONS)

    @property
    def default_mode(self) -> str:
        """steer_mode for requests that give none (metadata ``default_mode``)."""
        return self.info.extra.get("default_mode", DEFAULT_MODE)

    @property
    def source(self) -> str:
        return self.info.source

    @property
    def created(self) -> str:
        return self.info.created

    @property
    def num_neurons(self) -> int:
        return sum(indices.numel() for indices, _ in self.layers.values())

    # ------------------------------------------------------------------------------ dunders

    def __eq__(self, other: object) -> bool:
        """Equal when metadata and every tensor match exactly (dtype and bits)."""
        if not isinstance(other, NeuronMap):
            return NotImplemented
        mine, theirs = self._named_tensors(), other._named_tensors()
        return (
            self.file_metadata() == other.file_metadata()
            and mine.keys() == theirs.keys()
            and all(
                mine[k].dtype == theirs[k].dtype
                and mine[k].numpy().tobytes() == theirs[k].numpy().tobytes()
                for k in mine
            )
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside: not hashable

    def __repr__(self) -> str:
        model = f", model={self.model!r}" if self.model else ""
        return (
            f"NeuronMap({self.name!r}, {self.num_neurons} neurons in {len(self.layers)} of "
            f"{self.num_hidden_layers} layers, intermediate_size={self.intermediate_size}"
            f"{model}, default_alpha={self.default_alpha})"
        )

    def _named_tensors(self) -> dict[str, torch.Tensor]:
        """The map's tensors under their file names (the safetensors layout)."""
        return named_tensors(self.layers, self.ranks, self.good_mean, self.bad_mean, self.gate)

    def _with(self, *, metadata: Mapping[str, str], gate: CorrectnessGate | None) -> NeuronMap:
        """These neurons with other metadata or another gate, checked again."""
        return NeuronMap(metadata=metadata, layers=self.layers, ranks=self.ranks,
                         good_mean=self.good_mean, bad_mean=self.bad_mean, gate=gate)
