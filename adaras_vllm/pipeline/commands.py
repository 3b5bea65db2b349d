"""`adaras traces generate` and `adaras maps build`: the map-building pipeline's CLI.

vLLM is imported only when a command runs, so `adaras --help` stays fast and the map
tooling stays usable where no engine is installed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaras_vllm.arg_types import positive_int

if TYPE_CHECKING:  # math-verify (via .generate) is imported only when a command runs
    from .generate import SamplingSettings


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (vLLM)")
    g.add_argument("--model", required=True, help="model directory or id vLLM can load")
    g.add_argument("--dtype", default="auto", help="weights/activations dtype (default: auto)")
    g.add_argument("--max-model-len", type=positive_int, metavar="N",
                   help="longest sequence; longer capture texts are truncated")
    g.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="N")
    g.add_argument("--gpu-memory-utilization", type=float, metavar="F",
                   help="fraction of accelerator memory (of RAM on CPU) vLLM may use")
    g.add_argument("--kv-cache-gib", type=float, metavar="G",
                   help="KV cache size in GiB (overrides --gpu-memory-utilization's sizing)")
    g.add_argument("--max-num-seqs", type=positive_int, default=32, metavar="N",
                   help="requests per step (capture: slots of running sums; default 32)")
    g.add_argument("--max-num-batched-tokens", type=positive_int, metavar="N",
                   help="tokens per step; smaller values force chunked prefill")
    g.add_argument("--enforce-eager", action="store_true",
                   help="skip torch.compile and CUDA graphs (faster start, slower steps)")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": args.dtype, "tensor_parallel_size": args.tensor_parallel_size,
                          "max_num_seqs": args.max_num_seqs}
    if args.max_model_len is not None:
        kw["max_model_len"] = args.max_model_len
    if args.gpu_memory_utilization is not None:
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    if args.kv_cache_gib is not None:
        kw["kv_cache_memory_bytes"] = int(args.kv_cache_gib * (1 << 30))
    if args.max_num_batched_tokens is not None:
        kw["max_num_batched_tokens"] = args.max_num_batched_tokens
    if getattr(args, "enforce_eager", False):
        kw["enforce_eager"] = True
    from adaras_vllm.engine.engine_memory import fit_engine_memory

    return fit_engine_memory(args.model, kw)


def add_sampling_flags(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("trace sampling")
    g.add_argument("--problems", type=Path, required=required,
                   help="JSONL of problems: math (id, question, answer: the paper's format) "
                        "or code (id, question, tests; HumanEval's and MBPP's files as "
                        "they are)")
    add_task_flags(g)
    g.add_argument("--samples", type=positive_int, default=8, metavar="N",
                   help="responses sampled per problem (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--sample-top-k", type=int, default=-1, metavar="K",
                   help="sampling top-k (-1: off); not to be confused with the map's --top-k")
    g.add_argument("--max-tokens", type=positive_int, default=4096,
                   help="longest response (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prompt-template", default="{question}",
                   help="user message; must contain {question} (default: %(default)s)")
    g.add_argument("--answer-pattern", metavar="REGEX",
                   help="regex whose last match's group 1 is the final answer "
                        "(default: the last \\boxed{})")


def add_task_flags(g: Any) -> None:
    """--task, --grader-workers, --code-block and the sandbox's flags: how responses are
    graded (shared by every grading command)."""
    from adaras_vllm.coding.commands import add_sandbox_flags

    g.add_argument("--task", choices=("math", "code"),
                   help="how answers are graded: math (final answer vs gold, math-verify) or "
                        "code (the answer's code block run against the tests in a sandbox); "
                        "default: detected from the problems file")
    g.add_argument("--grader-workers", type=positive_int, metavar="N",
                   help="code: candidates run at once (default: the CPU count)")
    g.add_argument("--code-block", choices=("first", "last"), default="first",
                   help="code: which fenced block of the answer is the program: the first "
                        "(any language tag; the paper's extract_code) or the last ```python "
                        "block (default: %(default)s)")
    add_sandbox_flags(g)


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    from .generate import SamplingSettings

    return SamplingSettings(
        samples=args.samples, temperature=args.temperature, top_p=args.top_p,
        top_k=args.sample_top_k, max_tokens=args.max_tokens, seed=args.seed,
        prompt_template=args.prompt_template, answer_pattern=args.answer_pattern,
    )


def add_traces_commands(subparsers: argparse._SubParsersAction) -> None:
    traces = subparsers.add_parser("traces", help="sample and grade reasoning traces")
    commands = traces.add_subparsers(dest="traces_command", metavar="TRACES_COMMAND",
                                     required=True)
    gen = commands.add_parser(
        "generate", help="sample N responses per problem with vLLM and grade them",
        description="Sample responses through the model's chat template, take the final "
        "answer (last \\boxed{} or --answer-pattern), grade it with math-verify and write "
        "labelled traces (id, attempt, question, thinking, answer, gold, is_good). For "
        "coding problems the answer's code runs against the problem's tests in a sandbox "
        "and each trace also records its verdict.",
    )
    add_engine_flags(gen)
    add_sampling_flags(gen, required=True)
    gen.add_argument("--out", type=Path, required=True, help="traces JSONL to write")
    gen.set_defaults(func=_generate)


def add_build_command(maps_commands: argparse._SubParsersAction) -> None:
    build = maps_commands.add_parser(
        "build", help="build a neuron map for a model from labelled traces (or problems)",
        description="Capture every MLP neuron's mean activation per trace inside vLLM, "
        "compare good and bad traces with the paper's criterion and write the top-K map "
        "plus a report (NAME.report.json, NAME.report.png) next to it. With --problems "
        "instead of --traces the traces are sampled and graded first.",
    )
    add_engine_flags(build)
    src = build.add_argument_group("traces")
    src.add_argument("--traces", type=Path,
                     help="labelled traces JSONL (ours or the paper's id,_id,question,"
                          "thinking,is_good)")
    src.add_argument("--traces-out", type=Path,
                     help="with --problems: where to keep the generated traces "
                          "(default: next to --out)")
    add_sampling_flags(build, required=False)
    out = build.add_argument_group("map")
    out.add_argument("--out", type=Path, required=True, help="map file (.safetensors)")
    out.add_argument("--name", help="map name (default: the --out file name)")
    out.add_argument("--top-k", type=positive_int, default=200, metavar="K",
                     help="neurons kept, best first (default: %(default)s)")
    out.add_argument("--default-alpha", type=float, default=0.3, metavar="A",
                     help="steering strength stored as the map's default (default: "
                          "%(default)s)")
    build.set_defaults(func=_build)


def _generate(args: argparse.Namespace) -> int:
    from .tasks import read_task_problems, verdict_counts
    from .traces import write_traces

    task, problems = read_task_problems(args.problems, args.task)
    settings = sampling_settings(args)
    traces = _sample(args, problems, settings, task)
    write_traces(args.out, traces)
    good = sum(t.is_good for t in traces)
    counts = verdict_counts(traces)
    detail = (" (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
              if counts else "")
    print(f"wrote {args.out}: {len(traces)} {task} traces of {len(problems)} problems, "
          f"{good} good / {len(traces) - good} bad{detail}")
    return 0


def _sample(args: argparse.Namespace, problems: list, settings: "SamplingSettings",
            task: str = "math") -> list:
    from vllm import LLM

    from .generate import sample_responses
    from .tasks import check_grader, grade_responses

    # before the engine: a grader that cannot run fails now
    isolation = check_grader(task, args.allow_unisolated, args.sandbox_python)
    os.environ.pop("ADARAS_NEURON_MAPS", None)  # sample the unsteered model
    start = time.time()
    llm = LLM(args.model, seed=settings.seed, **engine_kwargs(args))
    try:
        responses = sample_responses(llm, problems, settings)
    finally:
        llm.llm_engine.engine_core.shutdown()  # graded after: the engine's memory is back
    print(f"sampled {len(responses)} responses in {time.time() - start:.0f} s")
    if isolation:
        print(f"grading code in the sandbox ({isolation})")
    return grade_responses(task, responses, answer_pattern=settings.answer_pattern,
                           workers=args.grader_workers, code_block=args.code_block,
                           allow_unisolated=args.allow_unisolated,
                           sandbox_python=args.sandbox_python)


def _build(args: argparse.Namespace) -> int:
    from .activations import ActivationCapture
    from .build import build_neuron_map, save_built_map
    from .tasks import read_task_problems
    from .traces import read_traces, write_traces

    if (args.traces is None) == (args.problems is None):
        raise ValueError("give exactly one of --traces (labelled traces) or --problems "
                         "(sample and grade traces first)")
    if not str(args.out).endswith(".safetensors"):
        raise ValueError(f"--out must name a .safetensors file, got {str(args.out)!r}")
    name = args.name or args.out.name.removesuffix(".safetensors")
    if args.traces is not None:
        traces = read_traces(args.traces)
        source = str(args.traces)
    else:
        task, problems = read_task_problems(args.problems, args.task)
        traces = _sample(args, problems, sampling_settings(args), task)
        traces_out = args.traces_out or args.out.with_name(f"{name}.traces.jsonl")
        write_traces(traces_out, traces)
        source = str(traces_out)
        print(f"wrote {traces_out}: {len(traces)} traces")
    from .build import check_labels

    check_labels(traces)  # before starting an engine
    kwargs = engine_kwargs(args)
    with ActivationCapture(args.model, **kwargs) as capture:
        built = build_neuron_map(
            capture, traces, name=name, top_k=args.top_k, model_id=args.model,
            traces_source=source, default_alpha=args.default_alpha,
        )
    paths = save_built_map(built, args.out)
    sep = built.report["separation"]
    print(f"wrote {paths[0]}: neuron map {name!r}, {built.neuron_map.num_neurons} neurons in "
          f"{len(built.neuron_map.layers)} layers from {built.good.count} good / "
          f"{built.bad.count} bad traces; median |d| of selected neurons "
          f"{sep['median_abs_d']}; report {paths[1]}, {paths[2]}")
    return 0
