"""Decode throughput with the plugin off, on with alpha 0, and on with every request a
distinct alpha, at several batch sizes; printed as ratios to "off".

Model: Qwen3-0.6B's shapes with dummy weights (vLLM ``load_format="dummy"``), no network
needed. Map: 50 random neurons in the top 4 layers. Each engine runs in its own process
(the plugin is configured per process), with identical engine settings. With --rounds R
the plugin-off and plugin-on engines alternate R times (off, on, off, on, ...) and each
figure is the median over rounds, so drift of a shared machine hits both sides alike.

With --distinct-alphas-two-maps the plugin-on engine loads a second 50-neuron map (other
random neurons of the same layers, so each layer's merged table holds the union) and runs
one mode only: every request a distinct alpha and every other request on the second map
(batch 256 unless --batches is given), against the same plugin-off engine, alternated as
above.

    python benchmarks/overhead.py [--batches 1,32,128] [--new-tokens 16] [--rounds 2]
                                  [--prompt-len 32] [--distinct-alphas-two-maps]
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
from typing import Any

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
#: Qwen3-1.7B's shapes (benchmarks/gate_cost.py: the paper's gate at its real size). Its
#: attention matches 0.6B's (28 layers, 8 KV heads of 128), so is KV_BYTES_PER_TOKEN.
QWEN3_1_7B = {**QWEN3_0_6B, "hidden_size": 2048, "intermediate_size": 6144}
PROMPT_LEN = 32  # default of --prompt-len
KV_BYTES_PER_TOKEN = 28 * 2 * 8 * 128 * 2  # layers x (K, V) x KV heads x head_dim x bf16


def random_map(name: str, seed: int, shape: dict[str, Any] = QWEN3_0_6B,
               model: str = "Qwen3-0.6B (dummy weights)"):  # noqa: ANN201
    """50 random neurons in the top 4 layers of ``shape`` (a config dict as above)."""
    import torch

    from adaras_vllm.maps import NeuronMap

    gen = torch.Generator().manual_seed(seed)
    top = int(shape["num_hidden_layers"])
    layers = {}
    for layer, k in zip(range(top - 4, top), (12, 12, 13, 13)):
        idx = torch.randperm(shape["intermediate_size"], generator=gen)[:k]
        layers[layer] = (idx, torch.randn(k, generator=gen))
    return NeuronMap.from_layers(
        name, layers, num_hidden_layers=top, intermediate_size=shape["intermediate_size"],
        hidden_size=shape["hidden_size"], model=model, model_type="qwen3", criterion="random",
        source="benchmarks/overhead.py",
    )


def write_model_and_map(root: Path) -> tuple[Path, Path]:
    model_dir = root / "qwen3-0.6b-shapes"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(QWEN3_0_6B))
    map_path = root / "bench50.safetensors"
    random_map("bench50", 0).save(map_path)
    return model_dir, map_path


def write_second_map(root: Path) -> Path:
    """Another 50 random neurons in the same layers: half the requests of the two-map mode
    use it, and each steered layer's merged table holds both maps' neurons."""
    path = root / "bench50b.safetensors"
    random_map("bench50b", 1).save(path)
    return path


def kv_cache_bytes(batch: int, prompt_len: int, new_tokens: int) -> int:
    """2 GiB, or what ``batch`` requests need if more (blocks of up to 128 tokens on CPU,
    plus a quarter): vLLM CPU refuses a KV cache larger than the NUMA node's free memory."""
    per_req = -(-(prompt_len + new_tokens + 2) // 128) * 128
    return max(2 << 30, int(batch * per_req * KV_BYTES_PER_TOKEN * 1.25))


def measure(args: argparse.Namespace) -> None:
    """Child process: one engine, every (batch, alpha mode) it is asked for."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompt_len = args.prompt_len
    llm = LLM(
        args.model, load_format="dummy", skip_tokenizer_init=True, dtype=args.dtype,
        max_model_len=512, max_num_seqs=max(args.batches), seed=0,
        max_num_batched_tokens=max(2048, max(args.batches) * prompt_len),
        kv_cache_memory_bytes=kv_cache_bytes(max(args.batches), prompt_len,
                                             args.new_tokens + 1),
        enable_prefix_caching=False,
    )

    import benchlib

    affinity = benchlib.vllm_worker_affinity()  # cores the worker's threads are bound to

    def run(batch: int, modes: str, new_tokens: int) -> float:
        prompts = [TokensPrompt(prompt_token_ids=[(i * 7919 + j * 31) % 150000 + 100
                                                  for j in range(prompt_len)])
                   for i in range(batch)]
        params = []
        for i in range(batch):
            extra = None
            if modes == "alpha0":
                extra = {"steer_alpha": 0.0}
            elif modes == "distinct":
                extra = {"steer_alpha": round(0.05 + 0.01 * i, 4)}
            elif modes == "two_maps":  # distinct alphas, every other request on map 2
                extra = {"steer_alpha": round(0.05 + 0.01 * i, 4),
                         "steer_map": "bench50b" if i % 2 else "bench50"}
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
            results[-1]["worker_affinity"] = affinity
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
           "--dtype", args.dtype, "--prompt-len", str(args.prompt_len)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label} engine failed with exit code {proc.returncode}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ADARAS_RESULT ")][-1]
    return json.loads(line.removeprefix("ADARAS_RESULT "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default=None, help="default 1,32,128 (256 with "
                   "--distinct-alphas-two-maps)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    p.add_argument("--distinct-alphas-two-maps", action="store_true",
                   help="plugin on with two maps: every request a distinct alpha, half on "
                        "the second map, against plugin off")
    p.add_argument("--out", default="")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--modes", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batches is None:
        args.batches = "256" if args.distinct_alphas_two_maps else "1,32,128"
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    if args.child:
        measure(args)
        return

    two_maps = args.distinct_alphas_two_maps
    on_modes = ["two_maps"] if two_maps else ["alpha0", "distinct"]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, map_path = write_model_and_map(Path(tmp))
        on_maps = f"bench50={map_path}"
        if two_maps:
            on_maps += f",bench50b={write_second_map(Path(tmp))}"
        off, on = [], []
        for r in range(args.rounds):
            off += child(f"off#{r}", None, ["none"], args, model_dir)
            on += child(f"on#{r}", on_maps, on_modes, args, model_dir)

    def median(results: list[dict], batch: int, mode: str) -> float:
        return statistics.median(r["decode_tok_s"] for r in results
                                 if r["batch"] == batch and r["mode"] == mode)

    def round_ratios(batch: int, mode: str) -> list[float]:
        """Per round: the on-engine's median over repeats / the off-engine's of that round."""
        out = []
        for r in range(args.rounds):
            o = [x for x in off if x["batch"] == batch][r]["decode_tok_s"]
            n = [x for x in on if x["batch"] == batch and x["mode"] == mode][r]["decode_tok_s"]
            out.append(n / o)
        return out

    base = {b: median(off, b, "none") for b in args.batches}
    rows = []
    maps_desc = ("two 50-neuron maps in layers 24-27 (union per layer)" if two_maps
                 else "50-neuron map in layers 24-27")
    print(f"\nQwen3-0.6B shapes, dummy weights, {args.dtype}, {maps_desc}, prompt "
          f"{args.prompt_len} tokens, {args.new_tokens} decode tokens, median of "
          f"{args.repeats} x {args.rounds} alternating rounds (engine worker: 1 core)")
    if two_maps:
        header = ("batch", "off tok/s", "2 maps, distinct alphas", "ratio", "per-round ratios")
        print("{:>5} {:>10} {:>24} {:>6}  {}".format(*header))
        for batch in args.batches:
            tm = median(on, batch, "two_maps")
            rr = round_ratios(batch, "two_maps")
            rows.append({"batch": batch, "off": base[batch], "two_maps": tm,
                         "two_maps_ratio": tm / base[batch], "per_round_ratios": rr})
            print(f"{batch:5d} {base[batch]:10.1f} {tm:24.1f} {tm / base[batch]:6.3f}  "
                  + ", ".join(f"{x:.3f}" for x in rr))
    else:
        header = ("batch", "off tok/s", "alpha=0", "ratio", "distinct", "ratio")
        print("{:>5} {:>10} {:>10} {:>6} {:>10} {:>6}".format(*header))
        for batch in args.batches:
            a0, dist = median(on, batch, "alpha0"), median(on, batch, "distinct")
            rows.append({"batch": batch, "off": base[batch], "alpha0": a0, "distinct": dist,
                         "alpha0_ratio": a0 / base[batch], "distinct_ratio": dist / base[batch]})
            print(f"{batch:5d} {base[batch]:10.1f} {a0:10.1f} {a0 / base[batch]:6.3f} "
                  f"{dist:10.1f} {dist / base[batch]:6.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "rows": rows, "off": off, "on": on, "mode": "two_maps" if two_maps else "default",
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "repeats": args.repeats, "rounds": args.rounds, "dtype": args.dtype,
        }, indent=2))


if __name__ == "__main__":
    main()
