"""What the correctness gate costs: ``steer_mode: "adaptive"`` against ``"always"``, and
both against an engine with no gate.

The gate has two parts with different costs. Inside the forward, once any loaded map has
a gate, every gate layer copies its features and the last one scores and pools every
token, for every request in the batch, whatever its mode (the buffers are static, for
CUDA graphs). Per adaptive request, the chunk trim (its last prompt token runs one step
after the rest) and the decision. So one engine with a gate, ``adaptive`` against
``always`` alternated, shows the per-request part only; the forward part shows against an
engine that loads the same map without a gate. Each engine runs in its own process (the
plugin is configured per process) with identical settings: first the gate-free one
(``always`` only), then one per gate (``always`` and ``adaptive`` alternated); with
--rounds R that sequence runs R times and each figure is the median over all of them.

Every gate's threshold is 1, so every adaptive request is steered exactly like ``always``
(steering fires iff p_good < threshold; weights of scale 0.01 keep p_good well below 1).
The child counts the decisions and the table says if any adaptive request did not fire.

Shapes (dummy bf16 weights, no network) and gates, hidden 256, random seeded weights:

- ``--shape qwen3-0.6b`` (default): a random gate of --features features over all 28
  layers; batches 1,32, 16 new tokens by default.
- ``--shape qwen3-1.7b --paper-features 4096,8192``: the paper's AIME gate at its real
  size, its published features (``aime_gate_features.json``, flat index layer * 6144 +
  neuron, spread over all 28 layers), one engine per gate size (a second gate in the same
  engine would add its features to every forward); batches 1,4, 8 new tokens, 2 repeats
  by default. Expected time on an idle 2-core machine (the worker on one core; 1.7B
  prefill ~15 ms a token, decode ~0.25 s a step): timing ~1 min for the gate-free engine
  and ~2 min per gate engine, plus 3 engine starts of ~1.5 min: about 10 minutes. Batches 1,8
  or --repeats 3 add ~3.5 and ~2.5 minutes; another engine on the same core, much more.

The steering map is 50 random neurons in the top 4 layers (``overhead.random_map``).
Figures per batch size, medians over --repeats rounds: time to first token
(``max_tokens=1`` on --prompt-len prompts: the whole prefill, chunked at 2048 tokens per
step) and decode tokens/s (the difference between max_tokens=N+1 and 1 on
--decode-prompt-len prompts, short enough that the batch's prefill is one step).

    python benchmarks/gate_cost.py [--shape qwen3-0.6b|qwen3-1.7b] [--features 4096]
        [--paper-features 4096,8192] [--batches 1,32] [--prompt-len 256] [--new-tokens 16]
        [--repeats 3] [--rounds 1] [--paper-file FILE.json] [--out FILE.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from overhead import QWEN3_0_6B, QWEN3_1_7B, kv_cache_bytes, random_map  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_FILE = REPO.parent / "shared/reference/adaras-paper/gate/aime_gate_features.json"
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3-0.6b": ("Qwen3-0.6B", QWEN3_0_6B),
    "qwen3-1.7b": ("Qwen3-1.7B", QWEN3_1_7B),
}
#: Per shape: default batches, new tokens and repeats (1.7B: ~3x the work per token and
#: three engines, so smaller, to stay near 10 minutes on 2 cores).
DEFAULTS = {"qwen3-0.6b": ("1,32", 16, 3), "qwen3-1.7b": ("1,4", 8, 2)}
HIDDEN = 256
MAP_NAME = "bench50"
NO_GATE = "none"


def paper_gate(flat: list[int], config: dict[str, Any], seed: int,
               scale: float = 0.01):  # noqa: ANN201
    """A gate at the published features (the file's order is the classifier's input
    order) with random weights; the trained weights are not published."""
    import torch

    from adaras_vllm.maps.gate_file import CorrectnessGate

    inter, layers = int(config["intermediate_size"]), int(config["num_hidden_layers"])
    if max(flat) >= layers * inter or min(flat) < 0:
        raise SystemExit(f"a published index lies outside {layers} layers x {inter}")
    n = len(flat)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: scale * torch.randn(*s, generator=g)  # noqa: E731
    return CorrectnessGate(
        layers=torch.tensor([i // inter for i in flat], dtype=torch.int64),
        neurons=torch.tensor([i % inter for i in flat], dtype=torch.int64),
        scorer_weight=rnd(1, n), scorer_bias=rnd(1), mlp0_weight=rnd(HIDDEN, n),
        mlp0_bias=rnd(HIDDEN), mlp2_weight=rnd(1, HIDDEN), mlp2_bias=rnd(1),
        threshold=1.0,
        provenance={"gate_source": f"published AIME gate features (N={n}), random "
                                   f"weights (seed {seed})"})


def write_maps(root: Path, args: argparse.Namespace, model: str, config: dict[str, Any]
               ) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """The map without a gate and one copy per gate (same neurons, same name): engine
    label -> map file, and what each gate is."""
    from adaras_vllm.maps.gate_file import random_gate

    base = random_map(MAP_NAME, 0, config, f"{model} (dummy weights)")
    paths = {NO_GATE: root / "none.safetensors"}
    base.save(paths[NO_GATE])
    gates: list[dict[str, Any]] = []
    if args.paper_features:
        published = json.loads(args.paper_file.read_text())
        for size in args.paper_features:
            entry = published[str(size)]
            gate = paper_gate(list(entry["indices"]), config, seed=size)
            gates.append({"label": str(size), "gate": gate,
                          "source": display_path(args.paper_file),
                          "flat_index": entry.get("flat_index"),
                          "published_threshold": entry.get("optimal_threshold")})
    else:
        gate = random_gate(args.features, HIDDEN, num_hidden_layers=28,
                           intermediate_size=int(config["intermediate_size"]), threshold=1.0,
                           seed=0, scale=0.01)
        gates.append({"label": str(args.features), "gate": gate, "source": "random (seed 0)"})
    for g in gates:
        paths[g["label"]] = root / f"gate{g['label']}.safetensors"
        base.with_gate(g["gate"]).save(paths[g["label"]])
        gate = g.pop("gate")
        g.update(features=gate.num_features, hidden=gate.hidden, threshold=gate.threshold,
                 layers_used=len(set(gate.layers.tolist())))
    return paths, gates


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO.parent))
    except ValueError:
        return str(path)


def measure(args: argparse.Namespace) -> None:
    """Child process: one engine (the map in ADARAS_NEURON_MAPS), the given modes
    alternated at every batch size; prints one ADARAS_RESULT line."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from adaras_vllm.engine.gate_runtime import RESULTS_METHOD
    from adaras_vllm.engine.plugin import register

    register()
    top = max(args.batches)
    started = time.perf_counter()
    llm = LLM(args.model, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=max(args.prompt_len, args.decode_prompt_len) + args.new_tokens + 8,
              max_num_seqs=top, seed=0,
              max_num_batched_tokens=2048, enable_prefix_caching=False,
              kv_cache_memory_bytes=kv_cache_bytes(top, args.prompt_len, args.new_tokens + 1))
    engine_start_s = round(time.perf_counter() - started, 1)
    affinity = benchlib.vllm_worker_affinity()
    decisions = {"requests": 0, "decided": 0, "fired": 0}

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
        got = llm.collective_rpc(RESULTS_METHOD, args=(None,))[0]  # and drop them there
        if mode == "adaptive":
            decisions["requests"] += batch
            decisions["decided"] += len(got)
            decisions["fired"] += sum(bool(r["fired"]) for r in got.values())
        return elapsed

    results = []
    for batch in args.batches:
        for mode in args.modes:
            timed(batch, mode, 2, args.decode_prompt_len)
        ttft: dict[str, list[float]] = {m: [] for m in args.modes}
        decode: dict[str, list[float]] = {m: [] for m in args.modes}
        for _ in range(args.repeats):
            for mode in args.modes:
                ttft[mode].append(timed(batch, mode, 1, args.prompt_len))
                short = timed(batch, mode, 1, args.decode_prompt_len)
                long = timed(batch, mode, args.new_tokens + 1, args.decode_prompt_len)
                decode[mode].append(batch * args.new_tokens / max(long - short, 1e-9))
        results.append({"batch": batch, "ttft_samples": ttft, "decode_samples": decode})
        print(f"[{args.label}] batch {batch}: " + "; ".join(
            f"{m} TTFT {statistics.median(ttft[m]):.3f} s, decode "
            f"{statistics.median(decode[m]):.1f} tok/s" for m in args.modes),
            file=sys.stderr, flush=True)
    llm.llm_engine.engine_core.shutdown()
    print("ADARAS_RESULT " + json.dumps({"results": results, "worker_affinity": affinity,
                                         "decisions": decisions,
                                         "engine_start_s": engine_start_s}), flush=True)


def child(label: str, map_path: Path, modes: list[str], model_dir: Path,
          args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "ADARAS_NEURON_MAPS": f"{MAP_NAME}={map_path}"}
    cmd = [sys.executable, __file__, "--child", "--label", label, "--model", str(model_dir),
           "--modes", ",".join(modes), "--batches", ",".join(map(str, args.batches)),
           "--prompt-len", str(args.prompt_len), "--decode-prompt-len",
           str(args.decode_prompt_len), "--new-tokens", str(args.new_tokens),
           "--repeats", str(args.repeats)]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {label} engine failed with exit code {proc.returncode}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ADARAS_RESULT ")][-1]
    out = json.loads(line.removeprefix("ADARAS_RESULT "))
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


def summarize(runs: dict[str, list[dict[str, Any]]], batches: list[int]
              ) -> list[dict[str, Any]]:
    """Per batch, engine and mode: medians over every round's repeats, and ratios to the
    gate-free engine and to ``always`` in the same engine."""
    def samples(label: str, batch: int, kind: str, mode: str) -> list[float]:
        return [x for run in runs[label] for r in run["results"] if r["batch"] == batch
                for x in r[f"{kind}_samples"][mode]]

    rows = []
    for batch in batches:
        base = {k: statistics.median(samples(NO_GATE, batch, k, "always"))
                for k in ("ttft", "decode")}
        rows.append({"batch": batch, "gate": NO_GATE, "mode": "always",
                     "ttft_s": base["ttft"], "decode_tok_s": base["decode"]})
        for label in runs:
            if label == NO_GATE:
                continue
            same = {}
            for mode in ("always", "adaptive"):
                row: dict[str, Any] = {"batch": batch, "gate": label, "mode": mode}
                for kind, key in (("ttft", "ttft_s"), ("decode", "decode_tok_s")):
                    row[key] = statistics.median(samples(label, batch, kind, mode))
                    row[f"{kind}_vs_no_gate"] = row[key] / base[kind]
                    if mode == "always":
                        same[kind] = row[key]
                    row[f"{kind}_vs_always_same_engine"] = row[key] / same[kind]
                rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="default qwen3-1.7b with --paper-features, else qwen3-0.6b")
    p.add_argument("--features", type=int, default=4096, help="the random gate's size")
    p.add_argument("--paper-features", default="",
                   help="published gate sizes, e.g. 4096,8192 (Qwen3-1.7B only)")
    p.add_argument("--paper-file", type=Path, default=PAPER_FILE)
    p.add_argument("--batches", default=None, help="default 1,32 (0.6B) or 1,4 (1.7B)")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--decode-prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=None, help="default 16 (0.6B), 8 (1.7B)")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (0.6B), 2 (1.7B)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--modes", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.paper_features = [int(x) for x in args.paper_features.split(",") if x]
    if args.shape is None:
        args.shape = "qwen3-1.7b" if args.paper_features else "qwen3-0.6b"
    if args.paper_features and args.shape != "qwen3-1.7b":
        p.error("--paper-features are Qwen3-1.7B's features: use --shape qwen3-1.7b")
    if args.paper_features and not args.paper_file.is_file():
        p.error(f"{args.paper_file} not found (the paper's published gate features)")
    batches, new_tokens, repeats = DEFAULTS[args.shape]
    args.batches = [int(b) for b in (args.batches or batches).split(",")]
    args.new_tokens = args.new_tokens if args.new_tokens is not None else new_tokens
    args.repeats = args.repeats if args.repeats is not None else repeats
    args.modes = [m for m in args.modes.split(",") if m]
    if args.child:
        measure(args)
        return

    model, config = SHAPES[args.shape]
    environment = benchlib.environment()  # before the engines: its load average is idle's
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / f"{args.shape}-shapes"
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps(config))
        paths, gates = write_maps(Path(tmp), args, model, config)
        for _ in range(args.rounds):
            for label, path in paths.items():
                modes = ["always"] if label == NO_GATE else ["always", "adaptive"]
                runs.setdefault(label, []).append(child(label, path, modes, model_dir, args))
    rows = summarize(runs, args.batches)
    unfired = {label: [r["decisions"] for r in rs] for label, rs in runs.items()
               if label != NO_GATE and any(r["decisions"]["fired"] != r["decisions"]["requests"]
                                          for r in rs)}
    report(args, model, gates, rows, unfired)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "gate_cost", "shape": args.shape, "model": f"{model} (dummy bf16)",
            "gates": gates, "steering_map": f"{MAP_NAME}: 50 random neurons, top 4 layers",
            "prompt_len": args.prompt_len, "decode_prompt_len": args.decode_prompt_len,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "rounds": args.rounds,
            "rows": rows, "every_adaptive_request_fired": not unfired, "runs": runs,
            "environment": environment}, indent=1))


def report(args: argparse.Namespace, model: str, gates: list[dict[str, Any]],
           rows: list[dict[str, Any]], unfired: dict[str, Any]) -> None:
    print(f"\n{model} shapes, dummy bf16 weights; gates (hidden {HIDDEN}, threshold 1): "
          + ", ".join(f"{g['features']} features over {g['layers_used']} layers "
                      f"({g['source']})" for g in gates)
          + f"; prompts {args.prompt_len} tokens (TTFT), decode {args.new_tokens} tokens "
          f"after {args.decode_prompt_len}; median of {args.repeats} x {args.rounds}")
    ratio = lambda r, k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
    print(benchlib.table(
        ["batch", "gate", "mode", "TTFT (s)", "/ no gate", "/ always", "decode (tok/s)",
         "/ no gate", "/ always"],
        [[r["batch"], r["gate"], r["mode"], f"{r['ttft_s']:.3f}",
          ratio(r, "ttft_vs_no_gate"), ratio(r, "ttft_vs_always_same_engine"),
          f"{r['decode_tok_s']:.1f}", ratio(r, "decode_vs_no_gate"),
          ratio(r, "decode_vs_always_same_engine")] for r in rows]))
    print("/ always: against always in the same engine (the per-request part: trim and "
          "decision); / no gate: against the engine without a gate (adds the forward part)")
    if unfired:
        print(f"WARNING: not every adaptive request fired, so adaptive is not steered like "
              f"always: {unfired}")


if __name__ == "__main__":
    main()
