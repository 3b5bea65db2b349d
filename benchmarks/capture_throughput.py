"""Activation-capture throughput: in-engine capture (vLLM, batched, chunked prefill)
versus the paper's HF forward-pre-hook capture (one trace at a time), on the same traces
and the same weights, in one run; printed as tokens/s and a ratio.

Model: a random Qwen3 (hidden 512, 8 layers, intermediate 1536, 8 heads x 64) written
locally, or --model DIR. Traces: the paper's gsm8k traces (120 real reasoning traces) when
present, cut to --max-model-len tokens; else synthetic ones. Also prints the largest
difference between the two captures (they compute the same means).

    python benchmarks/capture_throughput.py [--model DIR] [--traces FILE] [--limit N]
                                            [--dtype float32] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_TRACES = (REPO.parent / "shared" / "reference" / "adaras-paper" / "data" / "gsm8k"
                / "gsm8k_results_Qwen3-32B_filtered.jsonl")


def default_model() -> Path:
    from adaras_vllm.tiny_model import DEFAULT_CACHE, build_tiny_model

    return build_tiny_model(
        DEFAULT_CACHE / "bench-qwen3-512x8", "qwen3", hidden_size=512, intermediate_size=1536,
        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
        initializer_range=0.02,
    )


def load_texts(path: Path | None, limit: int) -> list[str]:
    from adaras_vllm.pipeline.traces import capture_text, read_traces

    if path is not None and path.is_file():
        return [capture_text(t.question, t.thinking) for t in read_traces(path)][:limit]
    words = "first add the tens then the ones so the total is therefore we check".split()
    return [f"Question: what is {i} + {2 * i}?\nThinking process:"
            + " ".join(words[(i + j) % len(words)] for j in range(50 + 37 * (i % 20)))
            for i in range(limit)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--traces", type=Path, default=PAPER_TRACES)
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import numpy as np
    import torch

    from adaras_vllm.pipeline.activations import ActivationCapture
    from adaras_vllm.pipeline.hf_capture import hf_trace_means, load_hf_model

    model = args.model or default_model()
    texts = load_texts(args.traces, args.limit)
    with ActivationCapture(str(model), dtype=args.dtype, max_model_len=args.max_model_len,
                           max_num_seqs=32, max_num_batched_tokens=args.max_num_batched_tokens,
                           kv_cache_memory_bytes=1 << 30) as cap:
        prompts = [cap.encode(t) for t in texts]
        n_tokens = sum(len(p) for p in prompts)
        list(cap.means(prompts[:4]))  # warm-up
        t0 = time.perf_counter()
        engine_means = dict(cap.means(prompts))
        engine_s = time.perf_counter() - t0

    hf = load_hf_model(model, getattr(torch, args.dtype))
    list(hf_trace_means(hf, prompts[:4]))  # warm-up
    t0 = time.perf_counter()
    hf_means = list(hf_trace_means(hf, prompts))
    hf_s = time.perf_counter() - t0

    diff = max(float(np.abs(engine_means[i] - m).max()) for i, m in enumerate(hf_means))
    result = {
        "model": str(model),
        "traces": len(prompts),
        "tokens": n_tokens,
        "dtype": args.dtype,
        "engine_tokens_per_s": n_tokens / engine_s,
        "hf_hook_tokens_per_s": n_tokens / hf_s,
        "ratio_engine_over_hf": hf_s / engine_s,
        "max_abs_difference": diff,
        "torch_threads": torch.get_num_threads(),
    }
    print(f"{len(prompts)} traces, {n_tokens} tokens, {args.dtype}")
    print(f"  in-engine capture (vLLM):     {result['engine_tokens_per_s']:10.0f} tokens/s")
    print(f"  HF forward-pre-hook capture:  {result['hf_hook_tokens_per_s']:10.0f} tokens/s")
    print(f"  ratio engine / HF:            {result['ratio_engine_over_hf']:10.2f}x")
    print(f"  max |difference| of means:    {diff:10.2e}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
