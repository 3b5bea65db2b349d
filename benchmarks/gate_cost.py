"""What the correctness gate costs: ``steer_mode: "adaptive"`` against ``"always"`` on the
same prompts, in one engine, alternated.

Model: Qwen3-0.6B's shapes with dummy bf16 weights (no network), a 50-neuron map in layers
24-27 carrying a random gate of --features features spread over all 28 layers (the paper
keeps 4096), hidden 256. The gate's threshold is 1, so every adaptive request is steered
exactly like ``always``: the difference is the gate itself (feature copies in every gate
layer, pooling, the per-step decision) and the chunk trim (the last prompt token runs one
step after the rest).

Figures per batch size (1 and 32 by default), medians over --repeats alternated rounds:
time to first token (``generate`` with max_tokens=1 on --prompt-len prompts: the whole
prefill, chunked at 2048 tokens per step) and decode tokens/s (from the difference between
max_tokens=N+1 and 1, on --decode-prompt-len prompts, short enough that the batch's
prefill is one step, so the difference is pure decode). Steps: the trim adds one step per
adaptive prompt before its first token.

    python benchmarks/gate_cost.py [--batches 1,32] [--prompt-len 256] [--new-tokens 16]
                                   [--features 4096] [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from overhead import QWEN3_0_6B, kv_cache_bytes, random_map  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--decode-prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--features", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    from adaras_vllm.maps.gate_file import random_gate

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "qwen3-0.6b-shapes"
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps(QWEN3_0_6B))
        gate = random_gate(args.features, 256, num_hidden_layers=28, intermediate_size=3072,
                           threshold=1.0, seed=0, scale=0.01)
        map_path = Path(tmp) / "gated.safetensors"
        random_map("gated", 0).with_gate(gate).save(map_path)
        os.environ["ADARAS_NEURON_MAPS"] = f"gated={map_path}"
        results = run(model_dir, batches, args)
    print(benchlib.table(
        ["batch", "TTFT always (s)", "TTFT adaptive (s)", "ratio", "decode always (tok/s)",
         "decode adaptive (tok/s)", "ratio"],
        [[r["batch"], f"{r['ttft_always']:.3f}", f"{r['ttft_adaptive']:.3f}",
          f"{r['ttft_adaptive'] / r['ttft_always']:.3f}", f"{r['decode_always']:.1f}",
          f"{r['decode_adaptive']:.1f}", f"{r['decode_adaptive'] / r['decode_always']:.3f}"]
         for r in results]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "gate_cost", "features": args.features, "prompt_len": args.prompt_len,
            "decode_prompt_len": args.decode_prompt_len,
            "new_tokens": args.new_tokens, "results": results,
            "environment": benchlib.environment()}, indent=1))


def run(model_dir: Path, batches: list[int], args: argparse.Namespace) -> list[dict]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from adaras_vllm.engine.gate_runtime import RESULTS_METHOD
    from adaras_vllm.engine.plugin import register

    register()
    top = max(batches)
    llm = LLM(str(model_dir), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=max(args.prompt_len, args.decode_prompt_len) + args.new_tokens + 8,
              max_num_seqs=top, seed=0,
              max_num_batched_tokens=2048, enable_prefix_caching=False,
              kv_cache_memory_bytes=kv_cache_bytes(top, args.prompt_len, args.new_tokens + 1))
    affinity = benchlib.vllm_worker_affinity()

    def timed(batch: int, mode: str, new_tokens: int, prompt_len: int) -> float:
        prompts = [TokensPrompt(prompt_token_ids=[(i * 7919 + j * 31) % 150000 + 100
                                                  for j in range(prompt_len)])
                   for i in range(batch)]
        params = [SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                                 extra_args={"steer_alpha": 0.3, "steer_mode": mode})
                  for _ in range(batch)]
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t
        llm.collective_rpc(RESULTS_METHOD, args=(None,))  # drop the results
        return elapsed

    results = []
    for batch in batches:
        timed(batch, "always", 2, args.decode_prompt_len)
        timed(batch, "adaptive", 2, args.decode_prompt_len)
        ttft: dict[str, list[float]] = {"always": [], "adaptive": []}
        decode: dict[str, list[float]] = {"always": [], "adaptive": []}
        for _ in range(args.repeats):
            for mode in ("always", "adaptive"):
                ttft[mode].append(timed(batch, mode, 1, args.prompt_len))
                short = timed(batch, mode, 1, args.decode_prompt_len)
                long = timed(batch, mode, args.new_tokens + 1, args.decode_prompt_len)
                decode[mode].append(batch * args.new_tokens / max(long - short, 1e-9))
        row = {"batch": batch, "worker_affinity": affinity,
               "ttft_samples": ttft, "decode_samples": decode}
        for mode in ("always", "adaptive"):
            row[f"ttft_{mode}"] = statistics.median(ttft[mode])
            row[f"decode_{mode}"] = statistics.median(decode[mode])
        print(f"batch {batch}: TTFT {row['ttft_always']:.3f} s vs {row['ttft_adaptive']:.3f} s,"
              f" decode {row['decode_always']:.1f} vs {row['decode_adaptive']:.1f} tok/s",
              file=sys.stderr, flush=True)
        results.append(row)
    llm.llm_engine.engine_core.shutdown()
    return results


if __name__ == "__main__":
    main()
