"""The paper's steering implementation against ours, on the same model, prompts and map,
in generated tokens/s, measured side by side in one run.

Sides (``--sides``, any subset, in this order):

* ``hf_paper_b1``: HF ``generate`` (greedy, KV cache, batch 1, as the paper's evaluation
  runs) with the paper's forward-pre-hook on each mapped layer's ``mlp.down_proj``,
  looping in Python over batch rows and neurons: ``x[b, -1, idx] += alpha * w``;
* ``hf_plain_b1``: the same without hooks (what HF costs by itself);
* ``hf_vec_bB``: HF ``generate`` at batch ``--batch`` (left padding) with a vectorised
  hook, one ``x[:, -1, idx] += alpha * w`` per layer;
* ``vllm_b1`` / ``vllm_bB``: vLLM with the plugin (offline ``LLM``, ``ADARAS_NEURON_MAPS``
  set before the engine starts, ``steer_alpha`` in ``SamplingParams.extra_args``), one
  request at a time and ``--batch`` requests at once.

Model: a random Qwen3 (hidden 512, 8 layers, intermediate 1536, 8 heads x 64, 4 KV
heads) in fp32, written once as safetensors and loaded by both HF and vLLM from that
directory. Map: 50 random neurons over the top 4 layers (``NeuronMap.from_layers``).
Every side runs ``--new-tokens`` tokens per prompt with EOS ignored; batch-1 sides run
the first ``--b1-prompts`` prompts one after another, batched sides ``--batch`` prompts
at once. Sides alternate for ``--rounds`` rounds (the order rotates each round); each
figure is the median over rounds and each ratio the median of per-round ratios.

Threads: vLLM's CPU worker binds its compute threads to one core (the first allowed one,
``VLLM_CPU_OMP_THREADS_BIND=auto``; read back from the running worker and recorded); the
HF sides run with ``torch.set_num_threads(1)`` pinned to that same core. The engine is
idle while HF runs (its worker stops spinning 1 s after its last step; we wait
``--settle-s``). Before timing, greedy tokens of the paper's hook (batch 1) are compared
with vLLM's for the first ``--check-prompts`` prompts.

    python benchmarks/paper_vs_ours.py [--batch 8] [--new-tokens 64] [--rounds 3]
        [--b1-prompts 4] [--alpha 2] [--eager] [--sides ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import benchlib

SIDES = ("hf_paper_b1", "hf_plain_b1", "hf_vec_bB", "vllm_b1", "vllm_bB")


def build_model(init_range: float) -> Path:
    from adaras_vllm.tiny_model import DEFAULT_CACHE, build_tiny_model

    return build_tiny_model(
        DEFAULT_CACHE / f"bench-qwen3-512x8-init{init_range:g}", "qwen3", hidden_size=512,
        intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, initializer_range=init_range,
    )


def build_map(path: Path, neurons: int, layers: list[int], seed: int):  # noqa: ANN201
    import torch

    from adaras_vllm.maps import NeuronMap

    gen = torch.Generator().manual_seed(seed)
    per = [neurons // len(layers) + (1 if i < neurons % len(layers) else 0)
           for i in range(len(layers))]
    table = {}
    for layer, k in zip(layers, per):
        idx = torch.randperm(1536, generator=gen)[:k].sort().values
        table[layer] = (idx, torch.randn(k, generator=gen) * 2.0)
    m = NeuronMap.from_layers(
        "bench", table, num_hidden_layers=8, intermediate_size=1536, hidden_size=512,
        model="bench-qwen3-512x8", model_type="qwen3", criterion="random",
        source="benchmarks/paper_vs_ours.py",
    )
    m.save(path)
    return m


def make_prompts(n: int, vocab: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(rng.integers(lo, hi + 1))).tolist()
            for _ in range(n)]


# ---- HF side -----------------------------------------------------------------------


def paper_hook(neurons: list[tuple[int, float]], alpha: float):  # noqa: ANN201
    """The paper's hook: Python loops over batch rows and neurons, last position only."""

    def hook(module, args):  # noqa: ANN001, ANN202
        x = args[0]
        for b in range(x.shape[0]):
            for idx, w in neurons:
                x[b, -1, idx] += alpha * w
        return (x,)

    return hook


def vectorised_hook(indices, weights, alpha: float):  # noqa: ANN001, ANN201
    delta = alpha * weights

    def hook(module, args):  # noqa: ANN001, ANN202
        x = args[0]
        x[:, -1, indices] += delta.to(x.dtype)
        return (x,)

    return hook


class HF:
    def __init__(self, model_dir: Path, neuron_map, alpha: float) -> None:  # noqa: ANN001
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir),
                                                          dtype=torch.float32).eval()
        self.model.generation_config.eos_token_id = None  # like vLLM's ignore_eos
        self.map = neuron_map
        self.alpha = alpha

    def _hooks(self, kind: str) -> list:
        handles = []
        if kind == "plain":
            return handles
        for layer, (idx, w) in self.map.layers.items():
            down = self.model.model.layers[layer].mlp.down_proj
            if kind == "paper":
                hook = paper_hook([(int(i), float(v)) for i, v in zip(idx, w)], self.alpha)
            else:
                hook = vectorised_hook(idx, w.float(), self.alpha)
            handles.append(down.register_forward_pre_hook(hook))
        return handles

    def generate(self, prompts: list[list[int]], new_tokens: int, kind: str) -> list[list[int]]:
        """One ``generate`` call over ``prompts`` (left-padded when several)."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        handles = self._hooks(kind)
        try:
            with torch.inference_mode():
                out = self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                          min_new_tokens=new_tokens, do_sample=False,
                                          use_cache=True, pad_token_id=0)
        finally:
            for h in handles:
                h.remove()
        return out[:, width:].tolist()


# ---- vLLM side ---------------------------------------------------------------------


def start_vllm(model_dir: Path, map_path: Path, batch: int, eager: bool):  # noqa: ANN201
    os.environ["ADARAS_NEURON_MAPS"] = f"bench={map_path}"
    from vllm import LLM

    return LLM(str(model_dir), dtype="float32", enforce_eager=eager, seed=0,
               max_model_len=512, max_num_seqs=max(batch, 1), enable_prefix_caching=False,
               kv_cache_memory_bytes=256 << 20)


def vllm_generate(llm, prompts: list[list[int]], new_tokens: int,  # noqa: ANN001, ANN201
                  alpha: float):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                            extra_args={"steer_alpha": alpha, "steer_map": "bench"})
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="batch of the batched sides")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--b1-prompts", type=int, default=4,
                    help="prompts the batch-1 sides run one after another per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=2.0,
                    help="steering strength (2 changes about half the greedy tokens of this "
                         "random model; 0.5 changes none, so the token check would be vacuous)")
    ap.add_argument("--neurons", type=int, default=50)
    ap.add_argument("--prompt-len", default="24,48", help="min,max prompt tokens")
    ap.add_argument("--check-prompts", type=int, default=4)
    ap.add_argument("--init-range", type=float, default=0.15,
                    help="std of the random weights (decisive logits for the token check)")
    ap.add_argument("--eager", action="store_true", help="vLLM enforce_eager (default: "
                    "compiled, as vLLM serves by default)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--settle-s", type=float, default=2.0,
                    help="pause before an HF side so vLLM's worker has stopped spinning")
    ap.add_argument("--core", type=int, default=None,
                    help="core for the HF sides (default: the vLLM worker's)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    sides = [s for s in args.sides.split(",") if s]
    bad = sorted(set(sides) - set(SIDES))
    if bad:
        ap.error(f"unknown side(s) {bad}; choose from {SIDES}")
    lo, hi = (int(v) for v in args.prompt_len.split(","))
    model_dir = build_model(args.init_range)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(model_dir)).vocab_size
    n_prompts = max(args.batch, args.b1_prompts, args.check_prompts)
    prompts = make_prompts(n_prompts, vocab, lo, hi, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        map_path = Path(tmp) / "bench.safetensors"
        neuron_map = build_map(map_path, args.neurons, [4, 5, 6, 7], seed=1)
        llm = start_vllm(model_dir, map_path, args.batch, args.eager)
        affinity = benchlib.vllm_worker_affinity()
        wcores = benchlib.worker_cores(affinity)
        core = args.core if args.core is not None else (
            wcores[0] if wcores else benchlib.default_worker_core())
        hf = HF(model_dir, neuron_map, args.alpha)

        # -- correctness: the paper's hook vs vLLM, greedy, batch 1 ------------------
        vllm_generate(llm, prompts[:2], 4, args.alpha)  # warm-up
        check = []
        for i, p in enumerate(prompts[: args.check_prompts]):
            ours = vllm_generate(llm, [p], args.new_tokens, args.alpha)[0]
            time.sleep(args.settle_s)
            with benchlib.pinned(core, 1):
                paper = hf.generate([p], args.new_tokens, "paper")[0]
                plain = hf.generate([p], args.new_tokens, "plain")[0]
            first_diff = next((j for j, (a, b) in enumerate(zip(ours, paper)) if a != b), None)
            check.append({"prompt": i, "identical": ours == paper, "first_difference": first_diff,
                          "steering_changed_tokens": paper != plain})
        matched = sum(c["identical"] for c in check)
        print(f"greedy tokens, paper's hook (HF, batch 1) vs vLLM plugin: {matched}/{len(check)} "
              f"prompts identical over {args.new_tokens} tokens; steering changed the HF "
              f"tokens in {sum(c['steering_changed_tokens'] for c in check)}/{len(check)}",
              flush=True)
        batched_ours = vllm_generate(llm, prompts[: args.batch], args.new_tokens, args.alpha)
        solo_ours = [vllm_generate(llm, [p], args.new_tokens, args.alpha)[0]
                     for p in prompts[: args.check_prompts]]
        batch_vs_solo = sum(a == b for a, b in zip(batched_ours, solo_ours))
        print(f"vLLM batched vs solo: {batch_vs_solo}/{len(solo_ours)} identical", flush=True)

        # -- throughput, alternated -------------------------------------------------
        b1 = prompts[: args.b1_prompts]
        bb = prompts[: args.batch]

        def run(side: str, b1: list[list[int]], bb: list[list[int]], new: int) -> float:
            if side.startswith("hf"):
                time.sleep(args.settle_s)
                kind = {"hf_paper_b1": "paper", "hf_plain_b1": "plain",
                        "hf_vec_bB": "vec"}[side]
                with benchlib.pinned(core, 1):
                    t = time.perf_counter()
                    if side == "hf_vec_bB":
                        hf.generate(bb, new, kind)
                        n = len(bb)
                    else:
                        for p in b1:
                            hf.generate([p], new, kind)
                        n = len(b1)
                    return n * new / (time.perf_counter() - t)
            t = time.perf_counter()
            if side == "vllm_bB":
                vllm_generate(llm, bb, new, args.alpha)
                n = len(bb)
            else:
                for p in b1:
                    vllm_generate(llm, [p], new, args.alpha)
                n = len(b1)
            return n * new / (time.perf_counter() - t)

        for side in sides:  # warm-up, untimed
            run(side, prompts[:1], prompts[: args.batch], 4)
        samples: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(args.rounds):
            order = sides[r % len(sides):] + sides[: r % len(sides)]
            for side in order:
                samples[side].append(run(side, b1, bb, args.new_tokens))
                print(f"[round {r}] {side:12s} {samples[side][-1]:9.1f} tok/s", flush=True)
        affinity_end = benchlib.vllm_worker_affinity()
        llm.llm_engine.engine_core.shutdown()

    med = {s: statistics.median(v) for s, v in samples.items()}

    def ratio(a: str, b: str) -> dict | None:
        if a not in samples or b not in samples:
            return None
        rs = [x / y for x, y in zip(samples[a], samples[b])]
        return {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}

    ratios = {
        "vllm_b1 / hf_paper_b1": ratio("vllm_b1", "hf_paper_b1"),
        "vllm_bB / hf_paper_b1": ratio("vllm_bB", "hf_paper_b1"),
        "vllm_bB / hf_vec_bB": ratio("vllm_bB", "hf_vec_bB"),
        "hf_vec_bB / hf_paper_b1": ratio("hf_vec_bB", "hf_paper_b1"),
        "hf_paper_b1 / hf_plain_b1": ratio("hf_paper_b1", "hf_plain_b1"),
    }
    label = {s: s.replace("bB", f"b{args.batch}") for s in SIDES}
    print(f"\nrandom Qwen3 512x8 (I 1536), fp32, {args.neurons}-neuron map in layers 4-7, "
          f"alpha {args.alpha}, {args.new_tokens} new tokens, vLLM "
          f"{'eager' if args.eager else 'compiled'}; HF: 1 torch thread on core {core}; "
          f"vLLM worker threads on {wcores}; median of {args.rounds} alternated rounds "
          "(noisy if the machine is shared)")
    print(benchlib.table(["side", "tok/s", "min", "max"],
                         [[label[s], med[s], min(samples[s]), max(samples[s])]
                          for s in sides]))
    print(benchlib.table(["ratio", "median", "min", "max"],
                         [[k.replace("bB", f"b{args.batch}"), v["median"], v["min"], v["max"]]
                          for k, v in ratios.items() if v is not None]))
    print(f"greedy check: {matched}/{len(check)} prompts identical (paper hook vs vLLM)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmark": "paper_vs_ours",
            "model": str(model_dir),
            "batch": args.batch, "new_tokens": args.new_tokens, "rounds": args.rounds,
            "b1_prompts": args.b1_prompts, "alpha": args.alpha, "neurons": args.neurons,
            "vllm_mode": "eager" if args.eager else "compiled",
            "hf": {"torch_threads": 1, "affinity": [core]},
            "vllm_worker_affinity": affinity, "vllm_worker_affinity_end": affinity_end,
            "vllm_worker_cores": wcores,
            "tokens_per_s_median": {label[s]: v for s, v in med.items()},
            "samples": {label[s]: v for s, v in samples.items()},
            "ratios": ratios,
            "greedy_check": check, "greedy_identical": matched,
            "vllm_batched_vs_solo_identical": batch_vs_solo,
            "environment": benchlib.environment(),
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
