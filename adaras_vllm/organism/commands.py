"""`adaras organism problems|train|mode-report`: reproduce the organisms and check a map."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_organism_commands(subparsers: argparse._SubParsersAction) -> None:
    org = subparsers.add_parser("organism", help="the self-trained model organisms (arith, modes)")
    commands = org.add_subparsers(dest="organism_command", metavar="ORGANISM_COMMAND",
                                  required=True)
    probs = commands.add_parser(
        "problems", help="write a split of the task in the paper's problems format",
        description="Chains of 2-4 additions/subtractions of 2-digit numbers; splits are "
        "disjoint by construction (a question's split is a hash of its text).",
    )
    probs.add_argument("--split", choices=("train", "validation", "test"), required=True)
    probs.add_argument("--n", type=int, required=True, help="number of distinct problems")
    probs.add_argument("--seed", type=int, default=0)
    probs.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    probs.set_defaults(func=_problems)

    train = commands.add_parser(
        "train", add_help=False,
        help="train an organism: arith, or --task modes (see `adaras organism train --help`)",
    )
    train.set_defaults(func=None)

    from adaras_vllm.pipeline.commands import add_engine_flags

    report = commands.add_parser(
        "mode-report", help="do a map's neurons separate careful from hasty traces?",
        description="For the modes organism: capture every trace as `adaras maps build` "
        "does, then compare the map's neurons with the traces' modes (careful = non-empty "
        "thinking, hasty = empty): Cohen's d per neuron, overlap with the top-K ranked on "
        "the mode labels, and a cross-validated linear readout of the mode.",
    )
    add_engine_flags(report)
    report.add_argument("--neuron-map", type=Path, required=True, help="the map to check")
    report.add_argument("--traces", type=Path, required=True,
                        help="traces JSONL (e.g. the ones the map was built from)")
    report.add_argument("--out", type=Path, required=True, help="report JSON to write")
    report.set_defaults(func=_mode_report)


def _problems(args: argparse.Namespace) -> int:
    from .task import generate_split, write_problems

    if args.n <= 0:
        raise ValueError(f"--n must be a positive integer, got {args.n}")
    path = write_problems(args.out, generate_split(args.split, args.n, args.seed))
    print(f"wrote {path}: {args.n} {args.split} problems (seed {args.seed})")
    return 0


def _mode_report(args: argparse.Namespace) -> int:
    import json

    from adaras_vllm.maps import NeuronMap
    from adaras_vllm.pipeline.activations import ActivationCapture
    from adaras_vllm.pipeline.commands import engine_kwargs
    from adaras_vllm.pipeline.traces import read_traces

    from .mode_report import mode_report

    neuron_map = NeuronMap.load(args.neuron_map)
    traces = read_traces(args.traces)
    kw = engine_kwargs(args)
    with ActivationCapture(args.model, **kw) as capture:
        report = mode_report(capture, traces, neuron_map)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    summary = {k: v for k, v in report.items() if k != "neurons"}
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0
