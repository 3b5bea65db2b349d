"""The map file: its safetensors layout, how it is read safely and written atomically.

Maps get shared, so a file is read without pickle, and everything its header alone can
refuse (wrong kind of file, bad metadata, impossible tensor sizes) is refused before any
tensor data is read: refusing a large file that is not a map costs no memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import safetensors
import safetensors.torch
import torch

from .errors import MapFormatError, clipped, quoted, some
from .gate_file import GATE_TENSORS, CorrectnessGate, GateFormatError
from .map_metadata import (
    FORMAT,
    GATE_METADATA_PREFIX,
    MAX_METADATA_INT,
    NOT_FINGERPRINTED,
    REQUIRED_METADATA,
    MapMetadata,
    map_who,
)
from .values import LayerTensors, no_such_layer

PathArg = str | PathLike[str]

#: A layer number is ASCII digits (`\d` would also take other scripts' digits, so that
#: "layers.٣.indices" and "layers.3.indices" would both be layer 3).
TENSOR_NAME = re.compile(r"layers\.([0-9]+)\.(indices|weights|rank|good_mean|bad_mean)")

#: safetensors refuses JSON headers larger than this (its MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000

#: A gate tensor larger than this is not a gate (N x H = 65 536 x 1 024 at most).
MAX_GATE_ENTRIES = 2**26


class MapFileContents(NamedTuple):
    """What a map file holds, grouped as NeuronMap's constructor takes it (not yet checked)."""

    metadata: dict[str, str]
    layers: LayerTensors
    ranks: dict[int, torch.Tensor] | None
    good_mean: dict[int, torch.Tensor] | None
    bad_mean: dict[int, torch.Tensor] | None
    gate: CorrectnessGate | None


def named_tensors(
    layers: LayerTensors,
    ranks: Mapping[int, torch.Tensor],
    good_mean: Mapping[int, torch.Tensor] | None,
    bad_mean: Mapping[int, torch.Tensor] | None,
    gate: CorrectnessGate | None,
) -> dict[str, torch.Tensor]:
    """A map's tensors under their file names (the safetensors layout)."""
    named: dict[str, torch.Tensor] = {}
    for layer, (indices, weights) in layers.items():
        named[f"layers.{layer}.indices"] = indices
        named[f"layers.{layer}.weights"] = weights
        named[f"layers.{layer}.rank"] = ranks[layer]
        if good_mean is not None:
            named[f"layers.{layer}.good_mean"] = good_mean[layer]
        if bad_mean is not None:
            named[f"layers.{layer}.bad_mean"] = bad_mean[layer]
    if gate is not None:
        named.update(gate.tensors())
    return named


def content_fingerprint(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """16 hex chars of a sha256 over a file's metadata (but NOT_FINGERPRINTED) and tensors."""
    digest = hashlib.sha256()
    fingerprinted = {k: v for k, v in metadata.items() if k not in NOT_FINGERPRINTED}
    digest.update(json.dumps(sorted(fingerprinted.items())).encode())
    for tensor_name, tensor in sorted(tensors.items()):
        digest.update(f"\0{tensor_name}:{tensor.dtype}:{tensor.numel()}\0".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def write_map_file(path: Path, tensors: dict[str, torch.Tensor],
                   metadata: dict[str, str]) -> None:
    """Written beside ``path`` and renamed over it, so a process loading the map at the
    same moment reads the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        safetensors.torch.save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def map_gate(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
             info: MapMetadata) -> CorrectnessGate:
    """The gate checked against the map's model shape; its errors are map format errors."""
    try:
        return CorrectnessGate.from_parts(
            tensors, metadata, num_hidden_layers=info.num_hidden_layers,
            intermediate_size=info.intermediate_size, who=f"{info.who}: gate")
    except GateFormatError as error:
        raise MapFormatError(str(error)) from None


def read_map_file(path: Path) -> MapFileContents:
    """Read a map file's parts; MapFormatError messages here do not name the file."""
    size = _regular_file_size(path)
    _check_safetensors_prefix(path, size)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            info, tensors = _read_map_tensors(handle, metadata)
    except safetensors.SafetensorError as error:
        raise MapFormatError(
            f"not a readable safetensors file ({clipped(str(error), 300)})"
        ) from None
    except OSError as error:
        raise MapFormatError(f"cannot be read ({_os_reason(error)})") from None

    gate_tensors = {n: tensors.pop(n) for n in list(tensors) if n.startswith("gate.")}
    gate = None
    if gate_tensors or any(k.startswith(GATE_METADATA_PREFIX) for k in metadata):
        gate = map_gate(gate_tensors, metadata, info)
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for tensor_name, tensor in tensors.items():
        layer, part = _parse_tensor_name(tensor_name)
        parts.setdefault(part, {})[layer] = tensor
    layer_ids = set(parts.get("indices", {})) | set(parts.get("weights", {}))
    for required in ("indices", "weights"):
        missing = sorted(layer_ids - set(parts.get(required, {})))
        if missing:
            raise MapFormatError(
                f"layers {some(missing)} have no {required} tensor; every mapped layer "
                "needs both layers.<l>.indices and layers.<l>.weights"
            )
    for optional in ("rank", "good_mean", "bad_mean"):
        present = set(parts.get(optional, {}))
        if present and present != layer_ids:
            raise MapFormatError(
                f"{optional} tensors exist for layers {some(sorted(present))} but the map "
                f"has layers {some(sorted(layer_ids))}; give {optional} for every layer "
                "or none"
            )
    layers = {layer: (parts["indices"][layer], parts["weights"][layer]) for layer in layer_ids}
    return MapFileContents(metadata, layers, parts.get("rank"), parts.get("good_mean"),
                           parts.get("bad_mean"), gate)


def _regular_file_size(path: Path) -> int:
    """The size of the regular file at `path` (following symlinks), without opening it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(
                f"no neuron map file at {path} (it is a symlink to "
                f"{quoted(os.readlink(path))}, which does not exist)"
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
    if header_length > MAX_HEADER_BYTES:
        raise MapFormatError(
            f"{what} (its JSON header is {header_length} bytes; safetensors allows at most "
            f"{MAX_HEADER_BYTES})"
        )


def _read_map_tensors(
    handle: Any, metadata: Mapping[str, str] | None
) -> tuple[MapMetadata, dict[str, torch.Tensor]]:
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
            f"metadata format is {quoted(metadata.get('format'))}; "
            f"expected {FORMAT!r} (is this a neuron map file?)"
        )
    info = MapMetadata.parse(metadata, map_who(metadata))
    names = list(handle.keys())
    for tensor_name in names:
        if tensor_name.startswith("gate."):
            if tensor_name not in GATE_TENSORS:
                raise MapFormatError(
                    f"unknown gate tensor {quoted(tensor_name)}; a gate has exactly "
                    f"{', '.join(GATE_TENSORS)}"
                )
            entries = math.prod(handle.get_slice(tensor_name).get_shape())
            if entries > MAX_GATE_ENTRIES:
                raise MapFormatError(
                    f"gate tensor {tensor_name} has {entries} entries; a gate holds at most "
                    f"{MAX_GATE_ENTRIES}"
                )
            continue
        layer, part = _parse_tensor_name(tensor_name)
        where = f"{info.who}: layer {layer}"
        if layer >= info.num_hidden_layers:
            raise no_such_layer(where, info.num_hidden_layers)
        entries = math.prod(handle.get_slice(tensor_name).get_shape())
        if entries > info.intermediate_size:
            raise MapFormatError(
                f"{where}: {part} has {entries} entries but a layer has only "
                f"{info.intermediate_size} neurons (intermediate_size={info.intermediate_size}); "
                "a map lists each neuron at most once"
            )
    return info, {tensor_name: handle.get_tensor(tensor_name) for tensor_name in names}


def _parse_tensor_name(tensor_name: str) -> tuple[int, str]:
    """(layer, part) of a map tensor name such as "layers.3.indices"."""
    match = TENSOR_NAME.fullmatch(tensor_name)
    if match is None:
        raise MapFormatError(
            f"unknown tensor {quoted(tensor_name)}; expected only layers.<l>.indices, "
            ".weights, .rank, .good_mean and .bad_mean"
        )
    digits, part = match.groups()
    if len(digits) > 1 and digits.startswith("0"):
        raise MapFormatError(
            f"tensor {quoted(tensor_name)} writes its layer number with a leading zero; "
            f"write it as layers.{clipped(digits.lstrip('0') or '0', 30)}.{part}, so that each "
            "layer has one name"
        )
    if len(digits) > len(str(MAX_METADATA_INT)):
        raise MapFormatError(
            f"tensor {quoted(tensor_name)} names layer {clipped(digits, 30)}, which does not "
            "exist in any model (layer numbers are below num_hidden_layers)"
        )
    return int(digits), part


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__
