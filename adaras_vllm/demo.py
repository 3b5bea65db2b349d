"""``adaras demo``: one real vLLM engine with the plugin, the same prompts unsteered and
steered, side by side. Works offline on CPU: without ``--model`` it builds a tiny local
Qwen3 (random weights, so the text is noise, but the steering is real) and a map for it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("ADARAS_CACHE", Path.home() / ".cache" / "adaras-vllm"))
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
    demo.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    demo.set_defaults(func=run_demo)


def _parse_alphas(text: str) -> list[float]:
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers, got {text!r}") from None


def run_demo(args: argparse.Namespace) -> int:
    from adaras_vllm.tiny_model import build_tiny_model, random_neuron_map

    alphas = _parse_alphas(args.alphas)
    model_dir = args.model or build_tiny_model(args.cache_dir / "tiny-qwen3", "qwen3")
    map_path = args.map
    if map_path is None:
        map_path = args.cache_dir / f"{Path(model_dir).name}-demo-map.safetensors"
        if not map_path.is_file():
            random_neuron_map(model_dir, "demo", layers=[1, 2], per_layer=16).save(map_path)
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
