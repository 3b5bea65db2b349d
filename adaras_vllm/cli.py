"""The `adaras` command line.

Each command group registers itself on the top-level subparsers through an
`add_<group>_commands(subparsers)` function and sets `func` (args -> exit code) on its leaf
parsers; `main` only parses and dispatches. This module must stay importable without vllm,
so map tooling works on machines without an inference engine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from adaras_vllm.maps import MapMismatchError, NeuronMap
from adaras_vllm.maps.map_metadata import REQUIRED_METADATA

_SHAPE_FLAGS = ("model_type", "num_hidden_layers", "intermediate_size", "hidden_size")


#: Command groups registered from their own modules (``module:function(subparsers)``);
#: each module imports vLLM only when its command runs.
COMMAND_GROUPS = (
    "adaras_vllm.pipeline.commands:add_traces_commands",  # adaras traces generate
    "adaras_vllm.evaluate.commands:add_eval_command",  # adaras eval
    "adaras_vllm.organism.commands:add_organism_commands",  # adaras organism ...
    "adaras_vllm.demo:add_demo_commands",  # adaras demo
    "adaras_vllm.gate_training.commands:add_gate_commands",  # adaras gate train|copy
    "adaras_vllm.coding.commands:add_code_commands",  # adaras code import|run
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (argparse usage errors exit with 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["organism", "train"]:  # the training script's own parser
        from adaras_vllm.organism.train import main as train_main

        train_main(argv[2:])
        return 0
    if argv[:1] == ["serve"]:  # vLLM's own parser takes over: every engine flag passes through
        from adaras_vllm.server.app import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as error:  # user-facing problems: bad files, wrong shapes
        print(f"adaras: error: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The top-level `adaras` parser with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="adaras", description="AdaRAS activation steering of reasoning-critical neurons."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_maps_commands(subparsers)
    for group in COMMAND_GROUPS:
        module, _, function = group.partition(":")
        getattr(importlib.import_module(module), function)(subparsers)
    subparsers.add_parser(
        "serve", add_help=False,
        help="OpenAI-compatible server with steering (all 'vllm serve' arguments apply)",
    )
    return parser


def add_maps_commands(subparsers: argparse._SubParsersAction) -> None:
    """`adaras maps ...`: build, inspect and check neuron map files."""
    from adaras_vllm.arg_types import positive_int
    from adaras_vllm.pipeline.commands import add_build_command

    maps = subparsers.add_parser("maps", help="build, inspect and check neuron map files")
    commands = maps.add_subparsers(dest="maps_command", metavar="MAPS_COMMAND", required=True)

    import_csv = commands.add_parser(
        "import-csv",
        help="convert the paper's top_*_neurons_by_rel_abs_diff.csv into a map file",
        description="Convert the AdaRAS paper's ranked-neuron CSV into a neuron map file. "
        "Give the model shape either with --config or with the shape flags.",
    )
    import_csv.add_argument("csv", type=Path, metavar="CSV", help="the paper's CSV file")
    import_csv.add_argument("--out", type=Path, required=True, help="map file to write")
    import_csv.add_argument("--name", required=True, help="name of the map")
    import_csv.add_argument(
        "--config", type=Path,
        help="HF config.json, or a model directory containing one, to read the shape from",
    )
    import_csv.add_argument(
        "--model", help="model id the map is for (default: the --config directory)"
    )
    import_csv.add_argument("--model-type", help="e.g. qwen3")
    import_csv.add_argument("--num-hidden-layers", type=positive_int, metavar="N")
    import_csv.add_argument("--intermediate-size", type=positive_int, metavar="I")
    import_csv.add_argument("--hidden-size", type=positive_int, metavar="H")
    import_csv.add_argument(
        "--top", type=positive_int, metavar="N", help="keep only the N best-ranked neurons"
    )
    import_csv.add_argument(
        "--default-alpha", type=float, default=0.3, metavar="A",
        help="steering strength stored as the map's default (default: %(default)s)",
    )
    import_csv.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE",
        help="extra provenance metadata (repeatable), e.g. --meta paper_arxiv=2601.19847",
    )
    import_csv.set_defaults(func=_import_csv)

    listing = commands.add_parser("list", help="list the shipped maps (serve one by bare name)")
    listing.set_defaults(func=_list_shipped)
    inspect = commands.add_parser("inspect", help="print a map's metadata and per-layer summary")
    inspect.add_argument("map", metavar="MAP", help="neuron map file, or a shipped map's name")
    inspect.set_defaults(func=_inspect)

    validate = commands.add_parser(
        "validate", help="check that a map fits a model (exit 0) or say why not (exit 1)"
    )
    validate.add_argument("map", type=Path, metavar="MAP", help="neuron map file")
    validate.add_argument(
        "--config", type=Path, required=True,
        help="HF config.json, or a model directory containing one",
    )
    validate.set_defaults(func=_validate)

    add_build_command(commands)
    from adaras_vllm.evaluate.calibrate_command import add_calibrate_command

    add_calibrate_command(commands)


def read_model_config(path: Path) -> SimpleNamespace:
    """Load a HF config.json (or a model directory's) as attributes, without transformers.

    Multimodal configs keep the language model under `text_config`; that is the part whose
    MLP neurons a map addresses, so it is used when the top level has no layer count.
    """
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise FileNotFoundError(
            f"no model config at {config_file}; give a config.json or a model directory "
            "containing one"
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{config_file} holds a JSON {type(data).__name__}, not an object")
    if "num_hidden_layers" not in data and isinstance(data.get("text_config"), dict):
        data = data["text_config"]
    return SimpleNamespace(**data)


def _import_csv(args: argparse.Namespace) -> int:
    if args.config is not None:
        given = [f"--{flag.replace('_', '-')}" for flag in _SHAPE_FLAGS
                 if getattr(args, flag) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot be combined with --config, which already gives the "
                "model shape; use one or the other"
            )
        config = read_model_config(args.config)
        model_dir = args.config if args.config.is_dir() else args.config.parent
        model = args.model if args.model is not None else str(model_dir.resolve())
    else:
        missing = [f"--{flag.replace('_', '-')}" for flag in _SHAPE_FLAGS[1:]
                   if getattr(args, flag) is None]
        if missing:
            raise ValueError(
                f"missing {', '.join(missing)}; give the model shape with --num-hidden-layers, "
                "--intermediate-size and --hidden-size, or with --config"
            )
        config = SimpleNamespace(
            num_hidden_layers=args.num_hidden_layers,
            intermediate_size=args.intermediate_size,
            hidden_size=args.hidden_size,
            model_type=args.model_type or "",
        )
        model = args.model or ""
    extra: dict[str, str] = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--meta must be KEY=VALUE, got {item!r}")
        extra[key.strip()] = value
    neuron_map = NeuronMap.from_paper_csv(
        args.csv, config, name=args.name, model=model,
        default_alpha=args.default_alpha, top=args.top, extra_metadata=extra,
    )
    neuron_map.save(args.out)
    print(f"wrote {args.out}: {_summary(neuron_map)}, fingerprint {neuron_map.fingerprint()}")
    return 0


def _list_shipped(args: argparse.Namespace) -> int:
    from adaras_vllm.maps.shipped import shipped_map, shipped_names

    print(f"{'name':<16} {'model':<28} {'neurons':>7} {'alpha':>6}  gate")
    for name in shipped_names():
        m = NeuronMap.load(shipped_map(name))
        print(f"{name:<16} {m.model:<28} {m.num_neurons:>7} {m.default_alpha:>6g}  "
              f"{'yes' if m.gate is not None else '-'}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from adaras_vllm.maps.shipped import resolve_map_path

    args.map = resolve_map_path(args.map)
    neuron_map = NeuronMap.load(args.map)
    print(f"{args.map}")
    print(f"  fingerprint        {neuron_map.fingerprint()}")
    metadata = neuron_map.metadata
    extra_keys = sorted(set(metadata) - set(REQUIRED_METADATA))
    for key in (*REQUIRED_METADATA, *extra_keys):  # file order is not preserved: fix one
        print(f"  {key:<18} {metadata[key] or '-'}")
    extras = [name for name in ("good_mean", "bad_mean") if getattr(neuron_map, name) is not None]
    if extras:
        print(f"  {'also stores':<18} {', '.join(extras)}")
    print()
    print(f"  {'layer':>5}  {'neurons':>7}  {'min w':>11}  {'max w':>11}  {'mean |w|':>11}")
    for layer, (_, weights) in neuron_map.layers.items():
        print(f"  {layer:>5}  {weights.numel():>7}  {_weight_columns(weights)}")
    all_weights = torch.cat([weights for _, weights in neuron_map.layers.values()])
    print(f"  {'total':>5}  {all_weights.numel():>7}  {_weight_columns(all_weights)}")
    gate = neuron_map.gate
    if gate is not None:
        gate_layers = sorted(set(gate.layers.tolist()))
        print(f"\n  gate               {gate.num_features} features in {len(gate_layers)} "
              f"layers ({_ranges(gate_layers)}), hidden {gate.hidden}, "
              f"threshold {gate.threshold:.6g} (steer iff p_good < threshold)")
        for key, value in sorted(gate.provenance.items()):
            print(f"  {key:<20} {value or '-'}")
    else:
        print("\n  gate               none (steer_mode 'adaptive' needs one: adaras gate train)")
    print(f"\n{_summary(neuron_map)}")
    return 0


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _validate(args: argparse.Namespace) -> int:
    neuron_map = NeuronMap.load(args.map)
    config = read_model_config(args.config)
    try:
        neuron_map.validate(config)
    except MapMismatchError as error:
        print(f"MISMATCH {args.map} vs {args.config}: {error}", file=sys.stderr)
        return 1
    print(
        f"OK {args.map} fits {args.config}: {_summary(neuron_map)}; model "
        f"{getattr(config, 'model_type', '') or '?'}, {config.num_hidden_layers} layers, "
        f"intermediate_size {config.intermediate_size}, hidden_size {config.hidden_size}"
    )
    return 0


def _summary(neuron_map: NeuronMap) -> str:
    return (
        f"neuron map {neuron_map.name!r} with {neuron_map.num_neurons} neurons in "
        f"{len(neuron_map.layers)} of {neuron_map.num_hidden_layers} layers"
    )


def _weight_columns(weights: torch.Tensor) -> str:
    return (
        f"{weights.min().item():>11.5g}  {weights.max().item():>11.5g}  "
        f"{weights.abs().mean().item():>11.5g}"
    )
