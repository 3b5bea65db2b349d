"""``adaras demo``: one real vLLM engine with the plugin, the same prompts unsteered and
steered, side by side. Works offline on CPU: without ``--model`` it builds a tiny local
Qwen3 (random weights, so the text is noise, but the steering is real) and a map for it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_PROMPTS = ["Question: what is 12 + 7? Thinking:", "the answer is"]


def add_demo_commands(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="print unsteered vs steered completions from a real vLLM engine"
    )
    demo.add_argument("--model", type=Path, help="local model directory (default: a tiny Qwen3)")
    demo.add_argument("--map", type=Path, help="neuron map file (default: one built for --model)")
    demo.add_argument("--alphas", default="0,0.3,-1,4", help="comma-separated steer_alpha values")
    demo.add_argument("--prompt", action="append", help="prompt text (repeatable)")
    demo.add_argument("--max-tokens", type=int, default=24)
    demo.add_argument("--eager", action="store_true", help="skip torch.compile (faster start)")
    demo.add_argument("--cache-dir", type=Path, default=None,
                      help="where the built-in model and maps go (default: $ADARAS_CACHE or "
                      "~/.cache/adaras-vllm)")
    demo.set_defaults(func=run_demo)


def _parse_alphas(text: str) -> list[float]:
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers, got {text!r}") from None


def run_demo(args: argparse.Namespace) -> int:
    from adaras_vllm.tiny_model import DEFAULT_CACHE, demo_map_for, demo_model_and_map

    alphas = _parse_alphas(args.alphas)
    cache = args.cache_dir or DEFAULT_CACHE
    if args.model is None:
        model_dir, map_path = demo_model_and_map(cache)
    else:
        model_dir, map_path = args.model, None
    map_path = args.map or map_path or demo_map_for(model_dir, cache)
    os.environ["ADARAS_NEURON_MAPS"] = str(map_path)  # before vLLM loads its plugins

    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(str(model_dir), enforce_eager=args.eager, max_model_len=1024, max_num_seqs=16,
              kv_cache_memory_bytes=256 << 20, seed=0)
    took = time.perf_counter() - start
    print(f"\nengine up in {took:.0f} s: model {model_dir}, map {map_path}\n")
    prompts = args.prompt or DEFAULT_PROMPTS
    requests = [(p, a) for p in prompts for a in alphas]
    outs = llm.generate(
        [p for p, _ in requests],
        [SamplingParams(max_tokens=args.max_tokens, temperature=0.0,
                        extra_args={"steer_alpha": a}) for _, a in requests],
        use_tqdm=False,
    )
    for (prompt, alpha), out in zip(requests, outs):
        label = "unsteered" if alpha == 0 else f"steer_alpha={alpha:g}"
        print(f"{label:>18} | {prompt!r} -> {out.outputs[0].text!r}")
    return 0
