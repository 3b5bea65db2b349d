"""Cost of the steer op inside one decoder layer of Qwen3-1.7B's shapes.

One HF ``Qwen3DecoderLayer`` (hidden 2048, intermediate 6144, 16 heads / 8 KV heads,
head_dim 128, SDPA with a causal mask, random weights) runs T tokens. *Steered*: the MLP
applies our op (``adaras_vllm.engine.steer.steer_``, the exact function vLLM's patched
``down_proj`` calls) to the ``down_proj`` input, reading a ``SteeringState`` delta buffer
filled for one request whose every position is steered; the layer is the map's layer
with the most neurons. *Plain*: the same code path without the op. Map: the paper's AIME
map for Qwen3-1.7B, first 50 rows (read from ../shared/reference, never copied).

Steered and plain forwards alternate (order flipped every pair) ``--reps`` times per
token count, in one process on one core with ``--threads`` torch threads (default 1, the
core vLLM's CPU worker binds). Reported per token count: median time per forward of
each, the median of the per-pair ratios (with its quartiles), the op alone on a
``[T, 6144]`` tensor, the per-step fill (``SteeringState.fill_requests``, all 50 neurons
of every mapped layer, for a decode batch of T one-token requests and for one T-token
prefill), and from ``torch.profiler`` the share of the op's aten calls (``index_select``,
``index_copy_``, ``index_add_``) in the steered layer's CPU time (inclusive: on the CPU a
reduced-precision ``index_add_`` runs through
``scatter_add_`` and copies). A second table times the op alone, eager and through
``torch.compile`` (vLLM's default mode), next to formulations that give bit-identical
results (the indices are unique), e.g. ``index_select`` + add + ``index_copy_``.
An estimate of the op's share of a whole 28-layer step is derived from
these (mapped layers x op + fill) / (28 x plain layer); the attention here sees only the
T tokens of the step (no KV history), so for decode it is a lower bound on a layer's cost.

    python benchmarks/steer_op.py [--tokens 1,32,256,2048] [--reps 40] [--dtype bfloat16]
                                  [--threads 1] [--core N] [--no-compiled-op]
                                  [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import benchlib

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = (REPO.parent / "shared" / "reference" / "adaras-paper" / "rcn_maps"
             / "AIME_Qwen3-1.7B" / "top_200_neurons_by_rel_abs_diff.csv")
QWEN3_1_7B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                  hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
                  max_position_embeddings=40960, vocab_size=151936)
ALPHA = 0.3


def load_map(csv: Path, top: int):
    from adaras_vllm.maps import NeuronMap

    cfg = SimpleNamespace(num_hidden_layers=28, intermediate_size=6144, hidden_size=2048,
                          model_type="qwen3", name_or_path="Qwen/Qwen3-1.7B")
    return NeuronMap.from_paper_csv(csv, cfg, name="aime", top=top)


class Layer:
    """One Qwen3 decoder layer whose MLP steers (or not) the ``down_proj`` input."""

    def __init__(self, dtype, max_tokens: int, seed: int = 0) -> None:  # noqa: ANN001
        import torch
        from transformers import Qwen3Config
        from transformers.models.qwen3.modeling_qwen3 import (
            Qwen3DecoderLayer,
            Qwen3RotaryEmbedding,
        )

        cfg = Qwen3Config(**QWEN3_1_7B, torch_dtype=dtype)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        self.layer = Qwen3DecoderLayer(cfg, layer_idx=0).to(dtype).eval()
        for p in self.layer.parameters():
            torch.nn.init.normal_(p, std=0.02)
        self.rope = Qwen3RotaryEmbedding(cfg)
        self.dtype = dtype
        self.inter = cfg.intermediate_size
        self.steer = False
        self.delta = None
        self.indices = None
        self.scratch = None  # the engine's CPU form of the op (see steer_)
        mlp = self.layer.mlp
        outer = self

        def mlp_forward(x):  # noqa: ANN001, ANN202
            h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
            if outer.steer:
                from adaras_vllm.engine.steer import steer_

                steer_(h.view(-1, outer.inter), outer.delta, outer.indices, outer.scratch)
            return mlp.down_proj(h)

        mlp.forward = mlp_forward
        self.max_tokens = max_tokens

    def inputs(self, tokens: int):  # noqa: ANN201
        import torch

        gen = torch.Generator().manual_seed(tokens)
        x = torch.randn(1, tokens, QWEN3_1_7B["hidden_size"], generator=gen).to(self.dtype)
        pos = torch.arange(tokens)[None]
        cos, sin = self.rope(x, pos)
        return x, pos, (cos.to(self.dtype), sin.to(self.dtype))

    def forward(self, inputs, steer: bool):  # noqa: ANN001, ANN201
        x, pos, pe = inputs
        self.steer = steer
        return self.layer(x, attention_mask=None, position_ids=pos, position_embeddings=pe)


def steering_state(neuron_map, dtype, max_tokens: int):  # noqa: ANN001, ANN201
    from adaras_vllm.engine.state import SteeringState
    from adaras_vllm.engine.steer import SteeringTables, build_layer_table

    layers = {}
    for layer in sorted(neuron_map.layers):
        t = build_layer_table([neuron_map], layer, 0, neuron_map.intermediate_size)
        if t is not None:
            layers[layer] = t
    tables = SteeringTables.concat(layers, 1)
    state = SteeringState(max_tokens, "cpu", tables.table, dtype, max_reqs=max_tokens)
    return state, tables


def fill_args(tokens: int, layout: str):  # noqa: ANN201
    """What the runner hands ``fill_requests`` for a batch of ``tokens`` tokens."""
    import numpy as np
    import torch

    if layout == "decode":  # tokens requests, one token each, prompt of 16 already done
        n = tokens
        sched = np.ones(n, np.int64)
        computed = np.full(n, 16, np.int64)
        prompt = np.full(n, 16, np.int64)
    else:  # one request's prefill of tokens tokens, all of it steered (prompt 1 -> P-1=0)
        n = 1
        sched = np.array([tokens], np.int64)
        computed = np.zeros(1, np.int64)
        prompt = np.ones(1, np.int64)
    qsl = torch.as_tensor(np.concatenate([[0], np.cumsum(sched)]))
    offset = np.arange(tokens) - np.repeat(qsl[:-1].numpy(), sched)
    positions = torch.as_tensor(np.repeat(computed, sched) + offset)
    alpha = np.full(n, ALPHA, np.float32)
    map_id = np.zeros(n, np.int64)
    return alpha, map_id, prompt, qsl, positions


def exactness(model: Layer, inputs, tokens: int) -> float:  # noqa: ANN001
    """The op changes the down_proj input by exactly the delta in the mapped columns and
    nothing else: max |steered - plain - expected| over the whole input."""
    seen = {}
    hook = model.layer.mlp.down_proj.register_forward_pre_hook(
        lambda mod, a: seen.__setitem__(model.steer, a[0].clone()))
    try:
        model.forward(inputs, True)
        model.forward(inputs, False)
    finally:
        hook.remove()
    expected = seen[False].view(-1, model.inter).clone()
    expected[:, model.indices] += model.delta[:tokens]
    err = float((seen[True].view(-1, model.inter).float() - expected.float()).abs().max())
    if err > 0:
        raise AssertionError(f"steer_ differs from x[:, idx] += delta by {err}")
    return err


def time_call(fn, reps: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def profile_share(layer: Layer, inputs, iters: int) -> dict:  # noqa: ANN001
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            layer.forward(inputs, steer=True)
    events = prof.key_averages()
    # Self CPU times add up to the profiled time without double counting; index_add_ is
    # counted inclusively (on CPU it calls scatter_add_/copy_ for reduced-precision dtypes).
    total = sum(e.self_cpu_time_total for e in events)
    index_add = sum(e.cpu_time_total for e in events
                    if e.key in ("aten::index_add_", "aten::index_copy_", "aten::index_select"))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    return {
        "index_add_share": index_add / total if total else float("nan"),
        "index_add_us_per_forward": index_add / iters,
        "total_self_cpu_us_per_forward": total / iters,
        "top_ops_by_self_cpu": [{"op": e.key, "share": e.self_cpu_time_total / total}
                                for e in top],
    }


_COMPILED: dict = {}


def _compiled_variants() -> dict:
    """The op and one alternative through torch.compile (vLLM's default mode compiles the
    forward, steer op included), compiled once with dynamic shapes."""
    import torch

    if not _COMPILED:
        def index_add(h, d, idx):  # noqa: ANN001, ANN202
            return h.index_add_(1, idx, d)

        def index_copy(h, d, idx):  # noqa: ANN001, ANN202
            return h.index_copy_(1, idx, h.index_select(1, idx) + d)

        for name, fn in (("index_add_ (GPU form)", index_add),
                         ("index_copy_(index_select+d)", index_copy)):
            _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=True)
    return _COMPILED


def op_variants(tokens: int, inter: int, dtype, delta, indices, reps: int,  # noqa: ANN001
                compiled: bool = False) -> dict:
    """The op alone on a ``[T, I]`` tensor, and equivalent formulations for comparison
    (each checked bit-equal to ``steer_``: the indices are unique)."""
    import torch

    from adaras_vllm.engine.steer import steer_

    d = delta[:tokens]
    scratch = torch.zeros(delta.shape[0], delta.shape[1], dtype=dtype)
    variants = {
        "steer_ (CPU form: gather-add-scatter)": lambda h: steer_(h, delta, indices, scratch),
        "index_add_ (GPU form)": lambda h: steer_(h, delta, indices),
        "index_copy_(index_select+d)": lambda h: h.index_copy_(
            1, indices, h.index_select(1, indices).add_(d)),
        "h[:, idx] += d": lambda h: h.__setitem__((slice(None), indices), h[:, indices] + d),
    }
    if compiled:
        variants.update({f"compiled {name}": fn for name, fn in _compiled_variants().items()})
        variants = {k: (lambda h, f=f: f(h, d, indices)) if k.startswith("compiled") else f
                    for k, f in variants.items()}
    h0 = torch.randn(tokens, inter, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, ref = {}, None
    for name, fn in variants.items():
        h = h0.clone()
        fn(h)
        if ref is None:
            ref = h
        equal = bool(torch.equal(h, ref))
        h = h0.clone()
        fn(h)  # warm-up
        out[name] = {"median_s": statistics.median(time_call(lambda fn=fn, h=h: fn(h), reps)),
                     "bit_equal_to_steer_": equal}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", default="1,32,256,2048", help="token counts per forward")
    ap.add_argument("--reps", type=int, default=40, help="steered/plain pairs per token count")
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="stop a token count's pairs early after this long (min 5 pairs)")
    ap.add_argument("--profile-iters", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--no-compiled-op", dest="compiled_op", action="store_false",
                    help="skip timing the op through torch.compile (vLLM's default mode)")
    ap.add_argument("--top", type=int, default=50, help="rows of the paper's CSV to use")
    ap.add_argument("--csv", type=Path, default=PAPER_CSV)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--core", type=int, default=None,
                    help="core to pin to (default: the one vLLM's CPU worker binds, the "
                         "first allowed core)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    token_counts = [int(t) for t in args.tokens.split(",")]
    dtype = getattr(torch, args.dtype)
    core = benchlib.default_worker_core() if args.core is None else args.core
    neuron_map = load_map(args.csv, args.top)
    per_layer = {layer: int(idx.numel()) for layer, (idx, _) in neuron_map.layers.items()}
    layer_id = max(per_layer, key=lambda k: (per_layer[k], -k))
    max_tokens = max(token_counts)

    state, tables = steering_state(neuron_map, dtype, max_tokens)
    start, stop = tables.columns[layer_id]
    model = Layer(dtype, max_tokens)
    model.delta = state.delta[:, start:stop]
    model.indices = tables.indices[layer_id]
    model.scratch = torch.zeros(max_tokens, stop - start, dtype=dtype)

    rows, results = [], []
    with benchlib.pinned(core, args.threads) as pin, torch.inference_mode():
        for tokens in token_counts:
            inputs = model.inputs(tokens)
            # Fill the buffer as a step of one T-token request, every position steered.
            state.fill_requests(*fill_args(tokens, "prefill"))
            assert float(model.delta[:tokens].abs().sum()) > 0
            for s in (True, False, True, False):  # warm-up
                model.forward(inputs, s)
            check = exactness(model, inputs, tokens)
            steered_s, plain_s = [], []
            t_end = time.perf_counter() + args.max_seconds
            for i in range(args.reps):
                order = (True, False) if i % 2 == 0 else (False, True)
                for s in order:
                    t = time.perf_counter()
                    model.forward(inputs, s)
                    (steered_s if s else plain_s).append(time.perf_counter() - t)
                if i + 1 >= 5 and time.perf_counter() > t_end:
                    break
            stats = benchlib.paired(steered_s, plain_s)

            op_reps = max(5, min(2000, 100_000 // tokens))
            variants = op_variants(tokens, model.inter, dtype, model.delta, model.indices,
                                   op_reps, compiled=args.compiled_op)
            op_s = variants["steer_ (CPU form: gather-add-scatter)"]["median_s"]

            fills = {}
            for layout in ("decode", "prefill"):
                fa = fill_args(tokens, layout)
                fills[layout] = statistics.median(time_call(
                    lambda fa=fa: state.fill_requests(*fa), max(20, min(500, 20_000 // tokens))))
            state.fill_requests(*fill_args(tokens, "prefill"))  # back to the measured fill

            prof = profile_share(model, inputs, args.profile_iters)
            mapped = len(per_layer)
            step_share = (mapped * op_s + fills["decode" if tokens <= 256 else "prefill"]) / (
                28 * stats["median_b"])
            res = {
                "tokens": tokens,
                "steered_s": stats["median_a"],
                "plain_s": stats["median_b"],
                "median_ratio": stats["median_ratio"],
                "ratio_q1": stats["ratio_q1"],
                "ratio_q3": stats["ratio_q3"],
                "pairs": stats["pairs"],
                "op_alone_s": op_s,
                "op_variants": variants,
                "fill_decode_layout_s": fills["decode"],
                "fill_prefill_layout_s": fills["prefill"],
                "profile": prof,
                "check_max_abs_error": check,
                "est_share_of_28_layer_step": step_share,
                "samples_steered_s": steered_s,
                "samples_plain_s": plain_s,
            }
            results.append(res)
            rows.append([tokens, res["pairs"], res["plain_s"] * 1e3, res["steered_s"] * 1e3,
                         res["median_ratio"], f"[{res['ratio_q1']:.3f},{res['ratio_q3']:.3f}]",
                         op_s * 1e6, fills["decode"] * 1e6, fills["prefill"] * 1e6,
                         prof["index_add_share"] * 100, step_share * 100])
            print(f"... {tokens} tokens done", flush=True)

    print(f"\nQwen3-1.7B-shaped decoder layer, {args.dtype}, layer {layer_id} of the AIME map "
          f"({per_layer[layer_id]} of its {neuron_map.num_neurons} neurons; "
          f"{len(per_layer)} mapped layers), alpha {ALPHA}; torch threads "
          f"{pin['torch_threads']}, pinned to core(s) {pin['affinity']}")
    print(benchlib.table(
        ["tokens", "pairs", "plain ms", "steered ms", "ratio", "ratio IQR", "op us",
         "fill(dec) us", "fill(pre) us", "op %", "est step %"], rows))
    print("ratio = median over alternated pairs of steered/plain; op = steer_ alone on "
          "[T, 6144]; fill = SteeringState.fill_requests (decode: T one-token requests, "
          "pre: one T-token request); op % = profiler CPU share (inclusive) in the steered "
          "layer; est step % = (mapped layers x op + fill) / (28 x plain layer).")
    names = list(results[0]["op_variants"]) if results else []
    print(f"\nThe op alone on [T, {model.inter}] {args.dtype} ({per_layer[layer_id]} columns), "
          "median us, and formulations that give bit-identical results (eager, and through "
          "torch.compile as vLLM runs it by default):")
    print(benchlib.table(["tokens", *names], [
        [r["tokens"], *(r["op_variants"][n]["median_s"] * 1e6 for n in names)]
        for r in results]))
    if not all(v["bit_equal_to_steer_"] for r in results for v in r["op_variants"].values()):
        print("WARNING: a formulation differed from steer_")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmark": "steer_op",
            "dtype": args.dtype,
            "map": {"csv": str(args.csv), "top": args.top, "per_layer": per_layer,
                    "layer_measured": layer_id, "alpha": ALPHA},
            "threads": pin["torch_threads"],
            "affinity": pin["affinity"],
            "environment": benchlib.environment(),
            "results": results,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
