"""`adaras eval`: accuracy per steer_alpha on a problems file, against a server or offline."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path


def _alphas(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--alphas must be comma-separated numbers like 0,0.1,0.3, got {text!r}"
        ) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"--alphas must be finite numbers, got {text!r}")
    return sorted(set(values))


def _counts(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--neurons must be comma-separated positive integers, got {text!r}") from None
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError(
            f"--neurons must be comma-separated positive integers, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in ("off", "always", "adaptive")]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"--modes must be comma-separated from off, always, adaptive, got {text!r}")
    return list(dict.fromkeys(values))


def add_eval_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy per steer_alpha with 95%% intervals and a paired test vs alpha 0",
        description="Answer every problem at every alpha (greedy by default), grade with the "
        "pipeline's grader, print accuracy with 95%% Wilson intervals, the answers that "
        "flipped right->wrong / wrong->right against alpha 0 and McNemar's exact p, and "
        "write JSON plus a PNG of accuracy vs alpha.",
    )
    p.add_argument("--problems", type=Path, required=True,
                   help="JSONL problems: math (id, question, answer) or code (id, question, "
                        "tests; HumanEval's and MBPP's files as they are)")
    from adaras_vllm.pipeline.commands import add_task_flags

    add_task_flags(p)
    p.add_argument("--alphas", type=_alphas, default=[0.0, 0.1, 0.2, 0.3, 0.5],
                   help="comma-separated, must include 0 (default: 0,0.1,0.2,0.3,0.5)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="URL",
                       help="a running adaras (or vLLM+plugin) server, e.g. "
                            "http://127.0.0.1:8000")
    where.add_argument("--model", metavar="DIR", help="run offline: a model vLLM can load")
    p.add_argument("--modes", type=_modes, default=["always"], metavar="M,M",
                   help="steering modes to compare, from off, always, adaptive (adaptive "
                   "needs a map with a gate; off is the alpha-0 baseline; default: always)")
    p.add_argument("--neuron-map", type=Path, metavar="MAP",
                   help="offline: the map to steer with")
    p.add_argument("--neurons", type=_counts, metavar="N,N",
                   help="offline: also try the map's top-N neurons for each N "
                        "(maps named topN)")
    p.add_argument("--steer-map", help="server: which loaded map (default: the server's)")
    p.add_argument("--served-model", help="server: model name (default: the first listed)")
    p.add_argument("--api-key", default="EMPTY")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-template", default="{question}")
    p.add_argument("--answer-pattern", metavar="REGEX")
    p.add_argument("--dtype", default="auto", help="offline engine dtype")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="offline KV cache size")
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true",
                   help="offline: skip torch.compile and CUDA graphs (faster start)")
    p.add_argument("--out", type=Path, default=Path("eval-results.json"),
                   help="results JSON; the plot goes next to it as .png")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from adaras_vllm.maps import NeuronMap
    from adaras_vllm.pipeline.tasks import check_grader, isolation_mode, read_task_problems

    from .runner import AskSettings, ask_offline, ask_server, settings_grid
    from .summary import format_table, plot_accuracy, summarize, write_results

    task, problems = read_task_problems(args.problems, args.task)
    problems = problems[: args.limit]
    # before any engine or request: code needs the sandbox
    sandbox = check_grader(task, args.allow_unisolated, args.sandbox_python)
    ask = AskSettings(max_tokens=args.max_tokens, temperature=args.temperature,
                      seed=args.seed, prompt_template=args.prompt_template,
                      answer_pattern=args.answer_pattern, task=task,
                      grader_workers=args.grader_workers, code_block=args.code_block,
                      allow_unisolated=args.allow_unisolated,
                      sandbox_python=args.sandbox_python)
    start = time.time()
    if args.server:
        grid = settings_grid(args.alphas, [args.steer_map], args.modes)
        graded = ask_server(args.server, problems, grid, ask, model=args.served_model,
                            api_key=args.api_key, concurrency=args.concurrency)
        where = args.server
    else:
        if args.neuron_map is None:
            raise ValueError("--model needs --neuron-map (the map to steer with)")
        base = NeuronMap.load(args.neuron_map)
        tmp = tempfile.TemporaryDirectory(prefix="adaras-eval-")
        maps: dict[str, str] = {}
        if args.neurons:
            for n in args.neurons:
                path = Path(tmp.name) / f"top{n}.safetensors"
                base.top(n).renamed(f"top{n}").save(path)
                maps[f"top{n}"] = str(path)
        else:
            maps[base.name] = str(args.neuron_map)
        engine = {"dtype": args.dtype}
        if args.kv_cache_gib:
            engine["kv_cache_memory_bytes"] = int(args.kv_cache_gib * (1 << 30))
        if args.max_num_seqs:
            engine["max_num_seqs"] = args.max_num_seqs
        if args.enforce_eager:
            engine["enforce_eager"] = True
        from adaras_vllm.engine.engine_memory import fit_engine_memory

        engine = fit_engine_memory(args.model, engine)
        if "adaptive" in args.modes and base.gate is None:
            raise ValueError(f"--modes adaptive needs a map with a correctness gate; "
                             f"{args.neuron_map} has none (train one: adaras gate train)")
        grid = settings_grid(args.alphas, list(maps), args.modes)
        with tmp:
            graded = ask_offline(args.model, maps, problems, grid, ask, engine_kwargs=engine)
        where = f"{args.model} (offline)"
    summaries = summarize(graded)
    print(f"{len(problems)} {task} problems from {args.problems}, {where}, "
          f"{time.time() - start:.0f} s")
    print(format_table(summaries, metric="pass@1" if task == "code" else "accuracy"))
    meta = {"problems": str(args.problems), "task": task, "sandbox": sandbox,
            "isolation_mode": isolation_mode(sandbox), "where": where, "alphas": args.alphas,
            "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed,
            "modes": args.modes}
    write_results(args.out, summaries, graded, meta)
    png = args.out.with_suffix(".png")
    plot_accuracy(png, summaries, f"{args.problems.name}: accuracy vs steer_alpha")
    print(f"wrote {args.out} and {png}")
    return 0
