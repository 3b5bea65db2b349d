"""Build a neuron map from labelled traces: capture, group means, criterion, map + report."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaras_vllm.maps import NeuronMap

from .activations import ActivationCapture
from .criterion import CRITERION, GroupStats, Selection, select_neurons
from .report import build_report, report_paths, write_report
from .traces import Trace, capture_text

logger = logging.getLogger("adaras.pipeline")


@dataclass
class BuiltMap:
    neuron_map: NeuronMap
    selection: Selection
    good: GroupStats
    bad: GroupStats
    report: dict[str, Any]
    truncated: int  # traces cut to the engine's max_model_len


def check_labels(traces: Sequence[Trace]) -> tuple[int, int]:
    """Both labels are needed: the criterion compares good with bad."""
    num_good = sum(t.is_good for t in traces)
    num_bad = len(traces) - num_good
    if num_good == 0 or num_bad == 0:
        raise ValueError(
            f"building a map needs both good and bad traces; got {num_good} good and "
            f"{num_bad} bad (of {len(traces)})"
        )
    return num_good, num_bad


def capture_group_stats(
    capture: ActivationCapture, traces: Sequence[Trace], progress: bool = True
) -> tuple[GroupStats, GroupStats, int]:
    """Per-trace means from the engine, folded into good and bad running statistics."""
    from tqdm import tqdm

    prompts, truncated = [], 0
    for t in tqdm(traces, desc="tokenizing traces", disable=not progress, unit="trace"):
        full = capture.tokenizer.encode(capture_text(t.question, t.thinking))
        truncated += len(full) > capture.max_model_len - 1
        prompts.append(full[: capture.max_model_len - 1])
    if truncated:
        logger.warning("%d trace(s) longer than max_model_len-1=%d tokens were truncated",
                       truncated, capture.max_model_len - 1)
    good, bad = GroupStats(capture.shape), GroupStats(capture.shape)
    bar = tqdm(total=len(prompts), desc="capturing activations", disable=not progress,
               unit="trace")
    with bar:
        for i, mean in capture.means(prompts, progress=bar.update):
            (good if traces[i].is_good else bad).add(mean)
    return good, bad, truncated


def build_neuron_map(
    capture: ActivationCapture,
    traces: Sequence[Trace],
    *,
    name: str,
    top_k: int,
    model_id: str,
    traces_source: str,
    default_alpha: float = 0.3,
    progress: bool = True,
) -> BuiltMap:
    num_good, num_bad = check_labels(traces)
    good, bad, truncated = capture_group_stats(capture, traces, progress)
    selection = select_neurons(good.mean, bad.mean, top_k)
    cfg = capture.hf_text_config
    per_layer = selection.per_layer()
    neuron_map = NeuronMap.from_layers(
        name,
        {layer: (c["indices"], c["weights"]) for layer, c in per_layer.items()},
        ranks={layer: c["rank"] for layer, c in per_layer.items()},
        good_mean={layer: c["good"] for layer, c in per_layer.items()},
        bad_mean={layer: c["bad"] for layer, c in per_layer.items()},
        num_hidden_layers=int(cfg.num_hidden_layers),
        intermediate_size=int(cfg.intermediate_size),
        hidden_size=int(cfg.hidden_size),
        model=model_id,
        model_type=str(getattr(cfg, "model_type", "") or ""),
        criterion=CRITERION,
        default_alpha=default_alpha,
        source=f"adaras maps build from {traces_source}",
        extra_metadata={
            "num_good_traces": str(num_good),
            "num_bad_traces": str(num_bad),
            "traces_file": traces_source,
            "truncated_traces": str(truncated),
        },
    )
    report = build_report(
        selection, good, bad, map_name=name, model=model_id,
        num_layers=int(cfg.num_hidden_layers), traces_source=traces_source,
    )
    return BuiltMap(neuron_map, selection, good, bad, report, truncated)


def save_built_map(built: BuiltMap, out: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Write the map and its report next to it; returns the three paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    built.neuron_map.save(out)
    json_path, png_path = report_paths(out)
    write_report(built.report, json_path, png_path)
    return out, json_path, png_path
