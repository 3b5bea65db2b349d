"""A neuron map: which MLP neurons of which layers get steered, and by how much.

The map is the hand-off between offline RCN identification and the serving engine, so it is
stored as safetensors (no pickle: maps get shared and must be safe to load) and carries the
model shape it was built for, so that applying it to the wrong model fails loudly instead of
silently steering unrelated neurons.

This module deliberately imports neither vllm nor transformers: tools that only build or
inspect maps must not pay for (or depend on) an inference engine.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from .gate import GATE_TENSORS, CorrectnessGate, GateFormatError

FORMAT = "adaras-neuron-map/1"

#: Metadata keys every map file carries (all values are strings, as safetensors requires).
REQUIRED_METADATA = (
    "format",
    "name",
    "model",
    "model_type",
    "num_hidden_layers",
    "intermediate_size",
    "hidden_size",
    "criterion",
    "top_k",
    "default_alpha",
    "source",
    "created",
)

#: Metadata that records *when*, not *what*: left out of the fingerprint so that rebuilding the
#: same map yields the same fingerprint.
_NOT_FINGERPRINTED = frozenset({"created"})

#: A layer number is ASCII digits (`\d` would also take other scripts' digits, so that
#: "layers.٣.indices" and "layers.3.indices" would both be layer 3).
_TENSOR_NAME = re.compile(r"layers\.([0-9]+)\.(indices|weights|rank|good_mean|bad_mean)")

#: The largest value an integer metadata field may have: indices are int64, and a bound keeps
#: int() away from Python's limit on converting very long digit strings (ValueError).
_MAX_METADATA_INT = 2**63 - 1

#: safetensors refuses JSON headers larger than this (its MAX_HEADER_SIZE).
_MAX_HEADER_BYTES = 100_000_000

#: A gate tensor larger than this is not a gate (N x H = 65 536 x 1 024 at most).
_MAX_GATE_ENTRIES = 2**26

#: Error messages quote at most this many characters of a value taken from a file.
_QUOTE_LIMIT = 80

#: Config attributes whose presence (with a positive value) marks a mixture-of-experts MLP.
_MOE_ATTRIBUTES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

LayerTensors = dict[int, tuple[torch.Tensor, torch.Tensor]]
PathArg = str | PathLike[str]


class MapFormatError(ValueError):
    """A map (file or in-memory) breaks the neuron-map format rules."""


class MapMismatchError(ValueError):
    """A map, or a source it is built from, does not fit a model's shape."""


@dataclass(frozen=True)
class ModelShape:
    """The parts of a model config a neuron map depends on."""

    num_hidden_layers: int
    intermediate_size: int
    hidden_size: int
    model_type: str = ""

    @classmethod
    def of(cls, model_config: Any, *, who: str) -> ModelShape:
        """Read the shape from a transformers config or any object with the same attributes.

        `who` prefixes error messages (e.g. "neuron map 'gsm8k'"), so the user learns which map
        was being checked against the unsuitable model.
        """
        get_text_config = getattr(model_config, "get_text_config", None)
        if callable(get_text_config):  # multimodal configs nest the language model's shape
            model_config = get_text_config()
        for attribute in _MOE_ATTRIBUTES:
            value = getattr(model_config, attribute, None)
            if isinstance(value, numbers.Number) and value > 0:
                raise MapMismatchError(
                    f"{who}: the model has a mixture-of-experts MLP ({attribute}={value}); "
                    "neuron maps address dense MLP neurons, MoE MLPs are not supported"
                )
        if getattr(model_config, "intermediate_size", None) is None:
            raise MapMismatchError(
                f"{who}: the model config has no intermediate_size, so its MLP is not a dense "
                "gate/up/down MLP (MoE MLPs are not supported)"
            )
        values: dict[str, int] = {}
        for field in ("num_hidden_layers", "intermediate_size", "hidden_size"):
            value = getattr(model_config, field, None)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise MapMismatchError(
                    f"{who}: the model config's {field} is {value!r}; expected a positive integer"
                )
            values[field] = int(value)
        return cls(**values, model_type=str(getattr(model_config, "model_type", "") or ""))


class NeuronMap:
    """Steering values for a set of MLP neurons, grouped by decoder layer.

    Attributes (treat as read-only; build new maps with the factories or `top`):
      name: the map's name (same as metadata["name"]).
      layers: layer index -> (indices int64 [k], weights float32 [k]), layers ascending,
        indices ascending within a layer. weights are the steering values w = good - bad.
      ranks: layer index -> int64 [k], each neuron's rank across the whole map (0 = best);
        all ranks together are exactly 0..num_neurons-1.
      good_mean, bad_mean: optional layer index -> float32 [k] mean activations.
      metadata: str -> str, see REQUIRED_METADATA.

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
        who = _who(metadata)
        checked = _checked_metadata(metadata, who)
        # gate_* metadata belongs to the gate; the map keeps the rest.
        self.metadata: dict[str, str] = {k: v for k, v in checked.items()
                                         if not k.startswith("gate_")}
        if gate is None and len(self.metadata) != len(checked):
            stray = sorted(set(checked) - set(self.metadata))
            raise MapFormatError(
                f"{who}: metadata {', '.join(stray[:4])} describe a gate but the map has no "
                "gate.* tensors; remove them or add the gate"
            )
        num_layers = int(self.metadata["num_hidden_layers"])
        intermediate = int(self.metadata["intermediate_size"])

        for extra_name, extra in (("ranks", ranks), ("good_mean", good_mean),
                                  ("bad_mean", bad_mean)):
            if extra is not None and set(extra) != set(layers):
                raise MapFormatError(
                    f"{who}: {extra_name} covers layers {_some(sorted(extra))} but the map has "
                    f"neurons in layers {_some(sorted(layers))}; they must be the same layers"
                )

        self.layers: LayerTensors = {}
        self.ranks: dict[int, torch.Tensor] = {}
        self.good_mean: dict[int, torch.Tensor] | None = {} if good_mean is not None else None
        self.bad_mean: dict[int, torch.Tensor] | None = {} if bad_mean is not None else None
        for key in sorted(layers, key=_layer_sort_key(who)):
            layer = int(key)  # keys may be numpy integers; the map stores plain ints
            where = f"{who}: layer {layer}"
            if not 0 <= layer < num_layers:
                raise MapFormatError(
                    f"{where} does not exist in a model with {num_layers} layers "
                    f"(num_hidden_layers={num_layers}); layers must be in [0, {num_layers})"
                )
            indices, weights = layers[key]
            parts = {
                "indices": _checked_vector(indices, torch.int64, f"{where}: indices"),
                "weights": _checked_vector(weights, torch.float32, f"{where}: weights"),
            }
            if ranks is not None:
                parts["rank"] = _checked_vector(ranks[key], torch.int64, f"{where}: rank")
            for mean_name, means in (("good_mean", good_mean), ("bad_mean", bad_mean)):
                if means is not None:
                    parts[mean_name] = _checked_vector(
                        means[key], torch.float32, f"{where}: {mean_name}"
                    )
            k = parts["indices"].numel()
            for part_name, tensor in parts.items():
                if tensor.numel() != k:
                    raise MapFormatError(
                        f"{where}: {part_name} has {tensor.numel()} entries but indices has "
                        f"{k}; every per-neuron tensor must have one entry per index"
                    )
            if k == 0:
                continue
            order = torch.argsort(parts["indices"], stable=True)
            parts = {part_name: tensor[order].contiguous() for part_name, tensor in parts.items()}
            _check_indices(parts["indices"], intermediate, where)
            for part_name in ("weights", "good_mean", "bad_mean"):
                if part_name in parts:
                    _check_finite(parts[part_name], parts["indices"], f"{where}: {part_name}")
            self.layers[layer] = (parts["indices"], parts["weights"])
            if ranks is not None:
                self.ranks[layer] = parts["rank"]
            if self.good_mean is not None:
                self.good_mean[layer] = parts["good_mean"]
            if self.bad_mean is not None:
                self.bad_mean[layer] = parts["bad_mean"]

        total = self.num_neurons
        if total == 0:
            raise MapFormatError(f"{who} has no neurons; a map must steer at least one neuron")
        if ranks is None:
            self.ranks = _rank_by_magnitude(self.layers)
        if int(self.metadata["top_k"]) != total:
            raise MapFormatError(
                f"{who}: metadata top_k is {self.metadata['top_k']} but the map holds "
                f"{total} neurons; top_k must equal the number of neurons"
            )
        all_ranks = torch.sort(torch.cat(list(self.ranks.values()))).values
        if not torch.equal(all_ranks, torch.arange(total, dtype=torch.int64)):
            raise MapFormatError(
                f"{who}: ranks must be exactly 0..{total - 1}, one per neuron, but they are "
                f"{_describe_ranks(all_ranks)}"
            )
        self.gate: CorrectnessGate | None = None
        if gate is not None:
            try:
                self.gate = CorrectnessGate.from_parts(
                    gate.tensors(), gate.metadata(), num_hidden_layers=num_layers,
                    intermediate_size=intermediate, who=f"{who}: gate")
            except GateFormatError as error:
                raise MapFormatError(str(error)) from None

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
        if not isinstance(name, str) or not name:
            raise MapFormatError(f"a neuron map needs a non-empty string name, got {name!r}")
        who = f"neuron map {name!r}"
        tensors: LayerTensors = {
            layer: (
                _as_tensor(pair[0], torch.int64, f"{who}: layer {layer}: indices"),
                _as_tensor(pair[1], torch.float32, f"{who}: layer {layer}: weights"),
            )
            for layer, pair in layers.items()
        }
        total = sum(weights.numel() for _, weights in tensors.values())
        metadata = {
            "format": FORMAT,
            "name": name,
            "model": model,
            "model_type": model_type,
            "num_hidden_layers": str(num_hidden_layers),
            "intermediate_size": str(intermediate_size),
            "hidden_size": str(hidden_size),
            "criterion": criterion,
            "top_k": str(total),
            "default_alpha": repr(float(default_alpha)),
            "source": source,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        clash = sorted(set(extra_metadata or {}) & set(metadata))
        if clash:
            raise MapFormatError(
                f"{who}: extra metadata may not override {', '.join(map(repr, clash))}"
            )
        metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
        return cls(
            metadata=metadata,
            layers=tensors,
            ranks=_as_tensors(ranks, torch.int64, f"{who}: rank"),
            good_mean=_as_tensors(good_mean, torch.float32, f"{who}: good_mean"),
            bad_mean=_as_tensors(bad_mean, torch.float32, f"{who}: bad_mean"),
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
        from adaras_vllm.maps.paper_csv import read_paper_csv, source_label

        path = Path(csv_path)
        name = name if name is not None else path.resolve().parent.name
        shape = ModelShape.of(model_config, who=f"neuron map {name!r} from {path}")
        rows = read_paper_csv(
            path,
            num_hidden_layers=shape.num_hidden_layers,
            intermediate_size=shape.intermediate_size,
        )
        layers: dict[int, tuple[list[int], list[float]]] = {}
        ranks: dict[int, list[int]] = {}
        for rank, row in enumerate(rows):
            indices, weights = layers.setdefault(row.layer, ([], []))
            indices.append(row.neuron)
            weights.append(row.weight)
            ranks.setdefault(row.layer, []).append(rank)
        neuron_map = cls.from_layers(
            name,
            layers,
            num_hidden_layers=shape.num_hidden_layers,
            intermediate_size=shape.intermediate_size,
            hidden_size=shape.hidden_size,
            model=model or str(getattr(model_config, "name_or_path", "") or ""),
            model_type=shape.model_type,
            criterion="rel_abs_diff",
            default_alpha=default_alpha,
            source=source_label(path),
            ranks=ranks,
            extra_metadata=extra_metadata,
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
            return cls._load(path)
        except MapFormatError as error:
            raise MapFormatError(f"{path}: {error}") from None

    @classmethod
    def _load(cls, path: Path) -> NeuronMap:
        """`load` without the file path in its MapFormatError messages."""
        size = _regular_file_size(path)
        _check_safetensors_prefix(path, size)
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
                tensors = _read_map_tensors(handle, metadata)
        except safetensors.SafetensorError as error:
            raise MapFormatError(
                f"not a readable safetensors file ({_clipped(str(error), 300)})"
            ) from None
        except OSError as error:
            raise MapFormatError(f"cannot be read ({_os_reason(error)})") from None

        gate_tensors = {n: tensors.pop(n) for n in list(tensors) if n.startswith("gate.")}
        gate = None
        if gate_tensors or any(k.startswith("gate_") for k in metadata):
            try:
                gate = CorrectnessGate.from_parts(
                    gate_tensors, metadata, num_hidden_layers=int(metadata["num_hidden_layers"]),
                    intermediate_size=int(metadata["intermediate_size"]),
                    who=f"{_who(metadata)}: gate")
            except GateFormatError as error:
                raise MapFormatError(str(error)) from None
        parts: dict[str, dict[int, torch.Tensor]] = {}
        for tensor_name, tensor in tensors.items():
            layer, part = _parse_tensor_name(tensor_name)
            parts.setdefault(part, {})[layer] = tensor
        layer_ids = set(parts.get("indices", {})) | set(parts.get("weights", {}))
        for required in ("indices", "weights"):
            missing = sorted(layer_ids - set(parts.get(required, {})))
            if missing:
                raise MapFormatError(
                    f"layers {_some(missing)} have no {required} tensor; every mapped layer "
                    "needs both layers.<l>.indices and layers.<l>.weights"
                )
        for optional in ("rank", "good_mean", "bad_mean"):
            present = set(parts.get(optional, {}))
            if present and present != layer_ids:
                raise MapFormatError(
                    f"{optional} tensors exist for layers {_some(sorted(present))} but the map "
                    f"has layers {_some(sorted(layer_ids))}; give {optional} for every layer "
                    "or none"
                )

        layers = {layer: (parts["indices"][layer], parts["weights"][layer]) for layer in layer_ids}
        return cls(
            metadata=metadata,
            layers=layers,
            ranks=parts.get("rank"),
            good_mean=parts.get("good_mean"),
            bad_mean=parts.get("bad_mean"),
            gate=gate,
        )

    # --------------------------------------------------------------------------- operations

    def save(self, path: PathArg) -> None:
        """Write the map as safetensors; `load` gives back an equal map, bit for bit.

        Written beside ``path`` and renamed over it, so a process loading the map at the
        same moment reads the old file or the new one, never half of one."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            safetensors.torch.save_file(self._named_tensors(), str(partial),
                                        metadata=self.file_metadata())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def file_metadata(self) -> dict[str, str]:
        """The metadata as written to the file: the map's, plus the gate's ``gate_*``."""
        return {**self.metadata, **(self.gate.metadata() if self.gate is not None else {})}

    def with_gate(self, gate: CorrectnessGate | None) -> NeuronMap:
        """The same neurons with ``gate`` (validated against this map's model shape)."""
        return NeuronMap(metadata=self.metadata, layers=self.layers, ranks=self.ranks,
                         good_mean=self.good_mean, bad_mean=self.bad_mean, gate=gate)

    def validate(self, model_config: Any) -> None:
        """Raise MapMismatchError unless this map fits the model described by `model_config`.

        Every differing field is reported, so one run shows everything that is wrong.
        """
        who = f"neuron map {self.name!r}"
        shape = ModelShape.of(model_config, who=who)
        problems = [
            f"{field} is {mine} but the model has {theirs}"
            for field, mine, theirs in (
                ("num_hidden_layers", self.num_hidden_layers, shape.num_hidden_layers),
                ("intermediate_size", self.intermediate_size, shape.intermediate_size),
                ("hidden_size", self.hidden_size, shape.hidden_size),
            )
            if mine != theirs
        ]
        if self.model_type and shape.model_type and self.model_type != shape.model_type:
            problems.append(
                f"model_type is {self.model_type!r} but the model has {shape.model_type!r}"
            )
        if problems:
            raise MapMismatchError(f"{who}: " + "; ".join(problems))

    def model_mismatch(self, served_model: str) -> str | None:
        """A warning when the map names another model than the one served (the shape is
        checked separately, as an error): compared by last path component, any case."""
        if not self.model or not served_model:
            return None
        mine = self.model.rstrip("/").rsplit("/", 1)[-1].lower()
        theirs = str(served_model).rstrip("/").rsplit("/", 1)[-1].lower()
        if mine == theirs:
            return None
        return (f"neuron map {self.name!r} was made for model {self.model!r} but the served "
                f"model is {served_model!r}; its shape fits, so it is served, but its neurons "
                "may mean nothing for this model")

    def renamed(self, name: str) -> NeuronMap:
        """The same neurons under another name (how a server operator names a map)."""
        if not isinstance(name, str) or not name:
            raise MapFormatError(f"a neuron map needs a non-empty string name, got {name!r}")
        return NeuronMap(
            metadata={**self.metadata, "name": name},
            layers=self.layers,
            ranks=self.ranks,
            good_mean=self.good_mean,
            bad_mean=self.bad_mean,
            gate=self.gate,
        )

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
        digest = hashlib.sha256()
        fingerprinted = {k: v for k, v in self.file_metadata().items()
                         if k not in _NOT_FINGERPRINTED}
        digest.update(json.dumps(sorted(fingerprinted.items())).encode())
        for tensor_name, tensor in sorted(self._named_tensors().items()):
            digest.update(f"\0{tensor_name}:{tensor.dtype}:{tensor.numel()}\0".encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:16]

    # --------------------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def model(self) -> str:
        return self.metadata["model"]

    @property
    def model_type(self) -> str:
        return self.metadata["model_type"]

    @property
    def num_hidden_layers(self) -> int:
        return int(self.metadata["num_hidden_layers"])

    @property
    def intermediate_size(self) -> int:
        return int(self.metadata["intermediate_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.metadata["hidden_size"])

    @property
    def criterion(self) -> str:
        return self.metadata["criterion"]

    @property
    def default_alpha(self) -> float:
        return float(self.metadata["default_alpha"])

    @property
    def source(self) -> str:
        return self.metadata["source"]

    @property
    def created(self) -> str:
        return self.metadata["created"]

    @property
    def num_neurons(self) -> int:
        return sum(indices.numel() for indices, _ in self.layers.values())

    @property
    def top_k(self) -> int:
        return self.num_neurons

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
        named: dict[str, torch.Tensor] = {}
        for layer, (indices, weights) in self.layers.items():
            named[f"layers.{layer}.indices"] = indices
            named[f"layers.{layer}.weights"] = weights
            named[f"layers.{layer}.rank"] = self.ranks[layer]
            if self.good_mean is not None:
                named[f"layers.{layer}.good_mean"] = self.good_mean[layer]
            if self.bad_mean is not None:
                named[f"layers.{layer}.bad_mean"] = self.bad_mean[layer]
        if self.gate is not None:
            named.update(self.gate.tensors())
        return named


# ------------------------------------------------------------------------------- helpers


def _regular_file_size(path: Path) -> int:
    """The size of the regular file at `path` (following symlinks), without opening it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(
                f"no neuron map file at {path} (it is a symlink to "
                f"{_quoted(os.readlink(path))}, which does not exist)"
            ) from None
        raise FileNotFoundError(f"no neuron map file at {path}") from None
    except OSError as error:  # a symlink loop, a parent that is a file, no search permission
        raise MapFormatError(f"cannot be read ({_os_reason(error)})") from None
    except ValueError as error:  # e.g. "embedded null byte": no file can have this path
        raise MapFormatError(f"is not a usable file path ({error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise MapFormatError(
            "is a directory, not a neuron map file; give the path of a map's .safetensors file"
        )
    if not stat.S_ISREG(info.st_mode):
        kind = next(
            (name for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                                     (stat.S_ISCHR, "a character device"),
                                     (stat.S_ISBLK, "a block device"))
             if test(info.st_mode)),
            "not a regular file",
        )
        raise MapFormatError(
            f"is {kind}, not a neuron map file; a map must be a regular .safetensors file"
        )
    return info.st_size


def _check_safetensors_prefix(path: Path, size: int) -> None:
    """Refuse a file whose 8-byte header length cannot be right, before safetensors reads it.

    A safetensors file is: header length n (u64, little endian), n bytes of JSON, tensor data.
    """
    what = "not a readable safetensors file"
    layout = "a safetensors file starts with an 8-byte header length, then a JSON header"
    if size == 0:
        raise MapFormatError(f"{what} (the file is empty; {layout})")
    if size < 8:
        raise MapFormatError(f"{what} (the file is only {size} bytes; {layout})")
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
    except OSError as error:
        raise MapFormatError(f"cannot be read ({_os_reason(error)})") from None
    if len(prefix) < 8:  # the file shrank since it was measured
        raise MapFormatError(f"{what} (the file is only {len(prefix)} bytes; {layout})")
    (header_length,) = struct.unpack("<Q", prefix)
    if header_length > size - 8:
        raise MapFormatError(
            f"{what} (its first 8 bytes give a JSON header length of {header_length} bytes, "
            f"but only {size - 8} bytes follow: the file is truncated or is not safetensors)"
        )
    if header_length > _MAX_HEADER_BYTES:
        raise MapFormatError(
            f"{what} (its JSON header is {header_length} bytes; safetensors allows at most "
            f"{_MAX_HEADER_BYTES})"
        )


def _read_map_tensors(handle: Any, metadata: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """Check a safetensors file's metadata and tensor names and sizes, then read its tensors.

    Everything that the header alone can refuse is refused before any tensor data is read.
    """
    if not metadata:
        raise MapFormatError(
            f"the safetensors file has no metadata; a neuron map needs "
            f"format={FORMAT!r} and the keys {', '.join(REQUIRED_METADATA)}"
        )
    if metadata.get("format") != FORMAT:
        raise MapFormatError(
            f"metadata format is {_quoted(metadata.get('format'))}; "
            f"expected {FORMAT!r} (is this a neuron map file?)"
        )
    metadata = _checked_metadata(metadata, _who(metadata))
    num_layers = int(metadata["num_hidden_layers"])
    intermediate = int(metadata["intermediate_size"])
    names = list(handle.keys())
    for tensor_name in names:
        if tensor_name.startswith("gate."):
            if tensor_name not in GATE_TENSORS:
                raise MapFormatError(
                    f"unknown gate tensor {_quoted(tensor_name)}; a gate has exactly "
                    f"{', '.join(GATE_TENSORS)}"
                )
            entries = math.prod(handle.get_slice(tensor_name).get_shape())
            if entries > _MAX_GATE_ENTRIES:
                raise MapFormatError(
                    f"gate tensor {tensor_name} has {entries} entries; a gate holds at most "
                    f"{_MAX_GATE_ENTRIES}"
                )
            continue
        layer, part = _parse_tensor_name(tensor_name)
        where = f"{_who(metadata)}: layer {layer}"
        if layer >= num_layers:
            raise MapFormatError(
                f"{where} does not exist in a model with {num_layers} layers "
                f"(num_hidden_layers={num_layers}); layers must be in [0, {num_layers})"
            )
        entries = math.prod(handle.get_slice(tensor_name).get_shape())
        if entries > intermediate:
            raise MapFormatError(
                f"{where}: {part} has {entries} entries but a layer has only {intermediate} "
                f"neurons (intermediate_size={intermediate}); a map lists each neuron at most "
                "once"
            )
    return {tensor_name: handle.get_tensor(tensor_name) for tensor_name in names}


def _parse_tensor_name(tensor_name: str) -> tuple[int, str]:
    """(layer, part) of a map tensor name such as "layers.3.indices"."""
    match = _TENSOR_NAME.fullmatch(tensor_name)
    if match is None:
        raise MapFormatError(
            f"unknown tensor {_quoted(tensor_name)}; expected only layers.<l>.indices, "
            ".weights, .rank, .good_mean and .bad_mean"
        )
    digits, part = match.groups()
    if len(digits) > 1 and digits.startswith("0"):
        raise MapFormatError(
            f"tensor {_quoted(tensor_name)} writes its layer number with a leading zero; "
            f"write it as layers.{_clipped(digits.lstrip('0') or '0', 30)}.{part}, so that each "
            "layer has one name"
        )
    if len(digits) > len(str(_MAX_METADATA_INT)):
        raise MapFormatError(
            f"tensor {_quoted(tensor_name)} names layer {_clipped(digits, 30)}, which does not "
            "exist in any model (layer numbers are below num_hidden_layers)"
        )
    return int(digits), part


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _who(metadata: Mapping[str, Any]) -> str:
    return f"neuron map {_quoted(metadata.get('name', '?'))}"


def _quoted(value: Any) -> str:
    """repr(value), cut short: values read from a file may be megabytes long."""
    text = repr(value)
    if len(text) <= _QUOTE_LIMIT:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:_QUOTE_LIMIT]}...{size}"


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _some(values: list[Any], limit: int = 8) -> str:
    """A list for a message: the first few values, and how many there are in all."""
    if len(values) <= limit:
        return str(values)
    return f"[{', '.join(map(str, values[:limit]))}, ...] ({len(values)} in all)"


def _checked_metadata(metadata: Mapping[str, str], who: str) -> dict[str, str]:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise MapFormatError(
            f"{who}: metadata is missing {', '.join(map(repr, missing))}; a neuron map needs "
            f"all of {', '.join(REQUIRED_METADATA)}"
        )
    not_str = [key for key, value in metadata.items() if not isinstance(value, str)]
    if not_str:
        raise MapFormatError(f"{who}: metadata values must be strings; {_some(not_str)} are not")
    if metadata["format"] != FORMAT:
        raise MapFormatError(
            f"{who}: metadata format is {_quoted(metadata['format'])}; expected {FORMAT!r}"
        )
    if not metadata["name"]:
        raise MapFormatError(f"{who}: metadata name is empty; a map needs a name")
    for key in ("num_hidden_layers", "intermediate_size", "hidden_size", "top_k"):
        value = metadata[key]
        # top_k may read 0 here; an empty map is then refused with its own, clearer message.
        # At most 19 digits, checked before int(): int() raises ValueError on very long
        # strings (leading zeros included), and the properties below call int() again.
        if (
            not re.fullmatch(r"[0-9]{1,19}", value)
            or int(value) > _MAX_METADATA_INT
            or (int(value) <= 0 and key != "top_k")
        ):
            raise MapFormatError(
                f"{who}: metadata {key} is {_quoted(value)}; expected a positive integer "
                "below 2**63"
            )
    try:
        alpha = float(metadata["default_alpha"])
    except ValueError:
        alpha = math.nan
    if not math.isfinite(alpha):
        raise MapFormatError(
            f"{who}: metadata default_alpha is {_quoted(metadata['default_alpha'])}; "
            "expected a finite number"
        )
    return dict(metadata)


def _layer_sort_key(who: str):
    def key(layer: Any) -> int:
        if not isinstance(layer, numbers.Integral) or isinstance(layer, bool):
            raise MapFormatError(f"{who}: layer keys must be integers, got {layer!r}")
        return int(layer)

    return key


def _checked_vector(tensor: Any, dtype: torch.dtype, where: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise MapFormatError(f"{where} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != dtype:
        raise MapFormatError(f"{where} has dtype {_dtype_name(tensor.dtype)}; "
                             f"expected {_dtype_name(dtype)}")
    if tensor.dim() != 1:
        raise MapFormatError(
            f"{where} has shape {tuple(tensor.shape)}; expected a 1-D tensor (one entry per neuron)"
        )
    return tensor.detach().cpu()


def _check_indices(indices: torch.Tensor, intermediate_size: int, where: str) -> None:
    """`indices` is sorted here, so duplicates are neighbours and the range is its ends."""
    duplicated = indices[1:][indices[1:] == indices[:-1]]
    if duplicated.numel():
        raise MapFormatError(
            f"{where}: duplicate neuron indices {_some(sorted(set(duplicated.tolist())))}; "
            "each neuron may appear once per layer"
        )
    low, high = int(indices[0]), int(indices[-1])
    if low < 0 or high >= intermediate_size:
        bad = low if low < 0 else high
        raise MapFormatError(
            f"{where}: neuron index {bad} is out of range [0, {intermediate_size}) "
            f"(intermediate_size={intermediate_size})"
        )


def _check_finite(values: torch.Tensor, indices: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(values)
    if bad.any():
        first = int(torch.nonzero(bad)[0])
        raise MapFormatError(
            f"{where}: non-finite value {values[first].item()} for neuron {int(indices[first])} "
            f"({int(bad.sum())} non-finite in this layer); values must be finite"
        )


def _as_tensor(values: Any, dtype: torch.dtype, where: str) -> torch.Tensor:
    """Convert user input, but only between compatible kinds (ints stay ints, floats floats)."""
    tensor = torch.as_tensor(values)
    wants_float = dtype.is_floating_point
    if tensor.numel() and tensor.dtype.is_floating_point != wants_float:
        raise MapFormatError(
            f"{where} has dtype {_dtype_name(tensor.dtype)}; expected "
            f"{'floating point' if wants_float else 'integer'} values"
        )
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise MapFormatError(f"{where} has dtype {_dtype_name(tensor.dtype)}; expected {dtype}")
    return tensor.detach().cpu().to(dtype)


def _as_tensors(
    values: Mapping[int, Any] | None, dtype: torch.dtype, where: str
) -> dict[int, torch.Tensor] | None:
    if values is None:
        return None
    return {layer: _as_tensor(v, dtype, f"{where}: layer {layer}") for layer, v in values.items()}


def _rank_by_magnitude(layers: LayerTensors) -> dict[int, torch.Tensor]:
    """Rank all neurons by |w| descending; ties go to the lower layer, then the lower index.

    Expects validated, non-empty layers (sorted by layer, as NeuronMap keeps them).
    """
    ordered = sorted(layers.items())
    layer_of = np.concatenate(
        [np.full(w.numel(), layer, dtype=np.int64) for layer, (_, w) in ordered]
    )
    index_of = np.concatenate([i.numpy() for _, (i, _) in ordered])
    magnitude = np.concatenate([np.abs(w.numpy()) for _, (_, w) in ordered])
    order = np.lexsort((index_of, layer_of, -magnitude))  # last key is the primary key
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order), dtype=np.int64)
    ranks: dict[int, torch.Tensor] = {}
    start = 0
    for layer, (_, weights) in ordered:
        ranks[layer] = torch.from_numpy(rank_of[start : start + weights.numel()].copy())
        start += weights.numel()
    return ranks


def _describe_ranks(sorted_ranks: torch.Tensor) -> str:
    values = sorted_ranks.tolist()
    duplicates = sorted({v for a, v in zip(values, values[1:]) if a == v})
    if duplicates:
        return f"repeating {duplicates[:5]}"
    outside = [v for v in values if not 0 <= v < len(values)]
    return f"including {outside[:5]}, outside that range"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
