"""Decode throughput with the plugin off, on with alpha 0, and on with every request a
distinct alpha, at several batch sizes; printed as ratios to "off".

Model: Qwen3-0.6B's shapes with dummy weights (vLLM ``load_format="dummy"``), no network
needed. Map: 50 random neurons in the top 4 layers. Each engine runs in its own process
(the plugin is configured per process), with identical engine settings. With --rounds R
the plugin-off and plugin-on engines alternate R times (off, on, off, on, ...) and each
figure is the median over rounds, so drift of a shared machine hits both sides alike.

    python benchmarks/overhead.py [--batches 1,32,128] [--new-tokens 16] [--rounds 2]
                                  [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
PROMPT_LEN = 32


def write_model_and_map(root: Path) -> tuple[Path, Path]:
    import torch

    from adaras_vllm.maps import NeuronMap

    model_dir = root / "qwen3-0.6b-shapes"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(QWEN3_0_6B))
    gen = torch.Generator().manual_seed(0)
    layers = {}
    for layer, k in zip(range(24, 28), (12, 12, 13, 13)):
        idx = torch.randperm(QWEN3_0_6B["intermediate_size"], generator=gen)[:k]
        layers[layer] = (idx, torch.randn(k, generator=gen))
    m = NeuronMap.from_layers(
        "bench50", layers, num_hidden_layers=28, intermediate_size=3072, hidden_size=1024,
        model="Qwen3-0.6B (dummy weights)", model_type="qwen3", criterion="random",
        source="benchmarks/overhead.py",
    )
    map_path = root / "bench50.safetensors"
    m.save(map_path)
    return model_dir, map_path


def measure(args: argparse.Namespace) -> None:
    """Child process: one engine, every (batch, alpha mode) it is asked for."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        args.model, load_format="dummy", skip_tokenizer_init=True, dtype=args.dtype,
        max_model_len=512, max_num_seqs=max(args.batches), seed=0,
        max_num_batched_tokens=max(2048, max(args.batches) * PROMPT_LEN),
        kv_cache_memory_bytes=2 << 30, enable_prefix_caching=False,
    )

    def run(batch: int, modes: str, new_tokens: int) -> float:
        prompts = [TokensPrompt(prompt_token_ids=[(i * 7919 + j * 31) % 150000 + 100
                                                  for j in range(PROMPT_LEN)])
                   for i in range(batch)]
        params = []
        for i in range(batch):
            extra = None
            if modes == "alpha0":
                extra = {"steer_alpha": 0.0}
            elif modes == "distinct":
                extra = {"steer_alpha": round(0.05 + 0.01 * i, 4)}
            params.append(SamplingParams(max_tokens=new_tokens, temperature=0.0,
                                         ignore_eos=True, extra_args=extra))
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t

    results = []
    for batch in args.batches:
        for mode in args.modes:
            run(batch, mode, 2)  # warm-up
            decode = []
            for _ in range(args.repeats):
                t_long = run(batch, mode, args.new_tokens + 1)
                t_short = run(batch, mode, 1)
                decode.append(batch * args.new_tokens / max(t_long - t_short, 1e-9))
            results.append({"batch": batch, "mode": mode,
                            "decode_tok_s": statistics.median(decode), "samples": decode})
            print(f"[{args.label}] batch {batch:4d} {mode:9s} "
                  f"{results[-1]['decode_tok_s']:9.1f} tok/s", file=sys.stderr, flush=True)
    print("ADARAS_RESULT " + json.dumps(results), flush=True)


def child(label: str, env_maps: str | None, modes: list[str], args, model_dir: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "ADARAS_NEURON_MAPS"}
    if env_maps:
        env["ADARAS_NEURON_MAPS"] = env_maps
    cmd = [sys.executable, __file__, "--child", "--label", label, "--model", str(model_dir),
           "--modes", ",".join(modes), "--batches", ",".join(map(str, args.batches)),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
           "--dtype", args.dtype]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label} engine failed with exit code {proc.returncode}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ADARAS_RESULT ")][-1]
    return json.loads(line.removeprefix("ADARAS_RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default="")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--modes", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    if args.child:
        measure(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, map_path = write_model_and_map(Path(tmp))
        off, on = [], []
        for r in range(args.rounds):
            off += child(f"off#{r}", None, ["none"], args, model_dir)
            on += child(f"on#{r}", f"bench50={map_path}", ["alpha0", "distinct"], args, model_dir)

    def median(results: list[dict], batch: int, mode: str) -> float:
        return statistics.median(r["decode_tok_s"] for r in results
                                 if r["batch"] == batch and r["mode"] == mode)

    base = {b: median(off, b, "none") for b in args.batches}
    rows = []
    print(f"\nQwen3-0.6B shapes, dummy weights, {args.dtype}, 50-neuron map in layers 24-27, "
          f"{args.new_tokens} decode tokens, median of {args.repeats} x {args.rounds} "
          "alternating rounds")
    header = ("batch", "off tok/s", "alpha=0", "ratio", "distinct", "ratio")
    print("{:>5} {:>10} {:>10} {:>6} {:>10} {:>6}".format(*header))
    for batch in args.batches:
        a0, dist = median(on, batch, "alpha0"), median(on, batch, "distinct")
        rows.append({"batch": batch, "off": base[batch], "alpha0": a0, "distinct": dist,
                     "alpha0_ratio": a0 / base[batch], "distinct_ratio": dist / base[batch]})
        print(f"{batch:5d} {base[batch]:10.1f} {a0:10.1f} {a0 / base[batch]:6.3f} "
              f"{dist:10.1f} {dist / base[batch]:6.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "off": off, "on": on}, indent=2))


if __name__ == "__main__":
    main()
