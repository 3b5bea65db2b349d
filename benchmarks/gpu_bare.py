"""The GPU evidence that needs no vLLM: steering's per-step fill, the steer op, the gate and
capture on a Qwen3-1.7B-shaped MLP stack, under CUDA graphs (``make gpu-check-bare``).

On a bare CUDA machine (torch, numpy, safetensors; no vLLM, no network):

    PYTHONPATH=. python3 benchmarks/gpu_bare.py --out $OUT/gpu-bare.json

It prints one line per check and exits 1 if a correctness check fails. ``--device cpu``
runs the same code path without graphs (``tests/test_gpu_bare.py`` runs it, ``--small``,
in ``make test``, with vLLM blocked). The stack is the paper's 12 mapped layers of
Qwen3-1.7B as MLP blocks (RMSNorm, gate_up, SiLU·up, down_proj, residual) with random
weights: attention is left out because steering does not touch it, so a ratio measured
here is an upper bound on the whole model's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adaras_vllm.engine.capture import CAPTURE_KEY, install_capture  # noqa: E402
from adaras_vllm.engine.gate_runtime import install_gate  # noqa: E402
from adaras_vllm.engine.model_patch import install_steering  # noqa: E402
from adaras_vllm.engine.registry import MapRegistry  # noqa: E402
from adaras_vllm.engine.resolved import GATE_KEY  # noqa: E402
from adaras_vllm.engine.runner_steering import RunnerSteering  # noqa: E402
from adaras_vllm.engine.steer import steer_  # noqa: E402
from adaras_vllm.engine.step_layout import StepLayout  # noqa: E402
from adaras_vllm.maps import CorrectnessGate, NeuronMap  # noqa: E402
from adaras_vllm.maps.gate_file import random_gate  # noqa: E402
from adaras_vllm.maps.shipped import shipped_map  # noqa: E402

PAPER_GATE = REPO.parent / "shared/reference/adaras-paper/gate/aime_gate_features.json"
EASYSTEER = ("EasySteer (end-to-end through vLLM, all layers steered): -24 % throughput at "
             "batch 256; 256 distinct configurations -82 %")


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int  # the model's layer count (maps are checked against it)
    name: str


QWEN3_1_7B = Shape(2048, 6144, 28, "Qwen3-1.7B")
SMALL = Shape(64, 512, 28, "small (CPU smoke shape)")


class MLPBlock(nn.Module):
    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(shape.hidden, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.gate_up_proj = nn.Linear(shape.hidden, 2 * shape.intermediate, bias=False)
        self.mlp.down_proj = nn.Linear(shape.intermediate, shape.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.mlp.gate_up_proj(self.norm(x)).chunk(2, dim=-1)
        return x + self.mlp.down_proj(torch.nn.functional.silu(gate) * up)


class Stack(nn.Module):
    """``layers.{l}.mlp.down_proj`` for each of ``layer_ids`` (the names vLLM models use)."""

    def __init__(self, shape: Shape, layer_ids: list[int], seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleDict({str(i): MLPBlock(shape) for i in layer_ids})
        for block in self.layers.values():  # keep activations O(1) through the stack
            nn.init.normal_(block.mlp.gate_up_proj.weight, std=shape.hidden ** -0.5)
            nn.init.normal_(block.mlp.down_proj.weight, std=shape.intermediate ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers.values():
            x = block(x)
        return x


def config_of(shape: Shape) -> SimpleNamespace:
    return SimpleNamespace(model_type="qwen3", num_hidden_layers=shape.layers,
                           intermediate_size=shape.intermediate, hidden_size=shape.hidden)


def steering_maps(shape: Shape) -> list[NeuronMap]:
    """Three maps over the paper's AIME layers (12 of 28): its first 50 rows, their best 25,
    and the 50 with the opposite sign. At the small shape the same layout at random
    neurons."""
    aime = NeuronMap.load(shipped_map("aime"))
    g = torch.Generator().manual_seed(1)
    layers = {}
    for layer, (idx, w) in aime.layers.items():
        if shape != QWEN3_1_7B:
            idx = torch.randperm(shape.intermediate, generator=g)[: idx.numel()]
        layers[layer] = (idx.tolist(), w.tolist())
    dims = dict(num_hidden_layers=shape.layers, intermediate_size=shape.intermediate,
                hidden_size=shape.hidden)
    base = aime if shape == QWEN3_1_7B else NeuronMap.from_layers("aime", layers, **dims)
    flipped = NeuronMap.from_layers(
        "aime-flipped", {k: (i, [-v for v in w]) for k, (i, w) in layers.items()}, **dims)
    return [base, base.top(25).renamed("aime-top25"), flipped]


# ---- the HF forward-pre-hook rule (the reference) -----------------------------------


def hooked_forward(model: Stack, x: torch.Tensor, maps: list[NeuronMap], layout: StepLayout,
                   alphas: list[float], map_ids: list[int]) -> torch.Tensor:
    """The paper's rule, request by request: ``x[t, i] += alpha * w`` on the down_proj
    input at positions ``t >= P - 1``. Runs the patched model with its buffers cleared."""
    qsl = layout.query_start_loc.tolist()
    pos = layout.positions.tolist()

    def pre_hook(layer: int):  # noqa: ANN202
        def hook(_module, args):  # noqa: ANN001, ANN202
            (h,) = args
            h = h.clone()
            for r, (a, m) in enumerate(zip(alphas, map_ids)):
                if a == 0.0 or layer not in maps[m].layers:
                    continue
                idx, w = maps[m].layers[layer]
                idx = idx.to(h.device)
                add = a * w.to(h.device, torch.float32)
                for t in range(qsl[r], qsl[r + 1]):
                    if pos[t] >= int(layout.prompt_len[r]) - 1:
                        h[t, idx] += add
            return (h,)
        return hook

    handles = [block.mlp.down_proj.register_forward_pre_hook(pre_hook(int(name)))
               for name, block in model.layers.items()]
    try:
        return model(x)
    finally:
        for h in handles:
            h.remove()


# ---- timing ----------------------------------------------------------------------------


def timed(fns: dict[str, Any], repeats: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Median and IQR in µs of each callable, the callables alternated (CUDA events on a GPU)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end) * 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e6)
    out = {}
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        out[name] = {"median_us": statistics.median(xs), "iqr_us": q[2] - q[0], "n": len(xs)}
    return out


class Runner:
    """Graph capture on CUDA; the eager call elsewhere (same code path)."""

    def __init__(self, fn: Any, device: torch.device) -> None:
        self.fn = fn
        self.graph = None
        if device.type == "cuda":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = fn()
        else:
            self.out = fn()

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.out
        self.out = self.fn()
        return self.out


# ---- checks ----------------------------------------------------------------------------

CASES = {  # (num_scheduled, num_computed, prompt_len) per request
    "prefill, 3 prompt lengths": [(5, 0, 5), (9, 0, 9), (14, 0, 14)],
    "prefill chunks around P-1": [(8, 0, 20), (8, 12, 20), (3, 4, 6)],
    "decode steps": [(1, 7, 5), (1, 30, 9), (1, 15, 14), (1, 5, 6)],
    "decode beside a prefill chunk": [(1, 9, 5), (12, 0, 12), (1, 3, 3)],
}


@torch.no_grad()
def check_steering(shape: Shape, device: torch.device, dtype: torch.dtype,
                   graph_tokens: int) -> dict[str, Any]:
    """Replays of one captured forward, new per-request values each time, against eager and
    the hook rule."""
    maps = steering_maps(shape)
    layer_ids = sorted({layer for m in maps for layer in m.layers})
    model = Stack(shape, layer_ids).to(device, dtype)
    state = install_steering(model, maps, config_of(shape), max_tokens=graph_tokens,
                             dtype=dtype)
    x = torch.randn(graph_tokens, shape.hidden, device=device, dtype=dtype)
    replay = Runner(lambda: model(x), device)
    model32 = None
    if dtype != torch.float32:  # the fp32 truth the bf16 results are measured against
        model32 = Stack(shape, layer_ids).to(device, torch.float32)
        model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    rows = []
    for k, (case, reqs) in enumerate(CASES.items()):
        sched, comp, plen = (np.array(v) for v in zip(*reqs))
        layout = StepLayout.from_counts([f"r{i}" for i in range(len(reqs))], sched, comp,
                                        plen, device=device)
        alphas = [round(0.1 + 0.37 * (i + k), 3) * (-1) ** i for i in range(len(reqs))]
        map_ids = [(i + k) % len(maps) for i in range(len(reqs))]
        n = layout.num_tokens
        x.normal_()
        x[n:].zero_()
        state.fill_requests(np.array(alphas, np.float32), np.array(map_ids), layout.prompt_len,
                            layout.query_start_loc, layout.positions)
        replayed = replay().clone()
        eager = model(x)
        state.clear()
        hooked = hooked_forward(model, x, maps, layout, alphas, map_ids)
        row = {"case": case, "tokens": n, "replay_equals_eager":
               bool(torch.equal(replayed[:n], eager[:n]))}
        if model32 is None:  # fp32: bit-identical to eager and to the hook rule
            row["equals_hook_rule"] = bool(torch.equal(eager[:n], hooked[:n]))
            row["ok"] = row["replay_equals_eager"] and row["equals_hook_rule"]
        else:  # bf16: the replay no further from the fp32 rule than the bf16 hook rule is
            truth = hooked_forward(model32, x.float(), maps, layout, alphas, map_ids)[:n]
            ours = (replayed[:n].float() - truth).abs().max().item()
            theirs = (hooked[:n].float() - truth).abs().max().item()
            row.update(err_vs_fp32=ours, hook_rule_bf16_err_vs_fp32=theirs,
                       equals_hook_rule=ours <= 2 * theirs + 1e-6)
            row["ok"] = row["equals_hook_rule"]
        rows.append(row)
    ok = all(r["ok"] for r in rows)
    return {"ok": ok, "dtype": str(dtype).removeprefix("torch."), "cases": rows,
            "graphs": device.type == "cuda", "maps": [m.name for m in maps],
            "mapped_layers": layer_ids}


def direct_gate_score(inputs: dict[int, torch.Tensor], gate: CorrectnessGate, upto: int
                      ) -> float:
    """p_good from the down_proj inputs of prompt positions 0..upto-1, as the paper's
    AttentionClassifier computes it."""
    feats = torch.stack([inputs[int(layer)][:upto, int(n)].float()
                         for layer, n in zip(gate.layers, gate.neurons)], dim=1)
    s = torch.tanh(feats @ gate.scorer_weight[0].to(feats) + gate.scorer_bias.to(feats))
    w = torch.exp(s)
    z = (w[:, None] * feats).sum(0) / w.sum()
    h = torch.relu(gate.mlp0_weight.to(z) @ z + gate.mlp0_bias.to(z))
    return float(torch.sigmoid(gate.mlp2_weight[0].to(h) @ h + gate.mlp2_bias.to(h)[0]))


@torch.no_grad()
def check_gate_and_capture(shape: Shape, device: torch.device, graph_tokens: int
                           ) -> dict[str, Any]:
    """The gate's pooled score and capture's per-request sums under replay, against direct
    computations from the same forward's down_proj inputs (fp32)."""
    layer_ids = [0, 1, 2, 3]  # capture needs layers 0..L-1
    steer_map = NeuronMap.from_layers("gated", {0: ([1, 2], [0.5, -0.5]), 2: ([3], [1.0])},
                                      num_hidden_layers=4, intermediate_size=shape.intermediate,
                                      hidden_size=shape.hidden)
    gate = random_gate(64, 32, num_hidden_layers=4, intermediate_size=shape.intermediate,
                       layers=layer_ids, threshold=0.5, seed=3, scale=0.3)
    gated = steer_map.with_gate(gate)
    cfg = SimpleNamespace(**{**vars(config_of(shape)), "num_hidden_layers": 4})
    model = Stack(shape, layer_ids, seed=5).to(device, torch.float32)
    state = install_steering(model, [gated], cfg, max_tokens=graph_tokens,
                             dtype=torch.float32)
    gate_state = install_gate(model, [gated], shape.intermediate, max_tokens=graph_tokens,
                              max_slots=8, dtype=torch.float32)
    capture = install_capture(model, 4, max_slots=4, max_tokens=graph_tokens)
    steering = RunnerSteering(MapRegistry([gated]), state, gate_state)
    x = torch.randn(graph_tokens, shape.hidden, device=device)
    replay = Runner(lambda: model(x), device)
    inputs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_ids}
    hooks = [model.layers[str(layer)].mlp.down_proj.register_forward_pre_hook(
        lambda _m, a, layer=layer: inputs[layer].append(a[0].detach().clone()))
        for layer in layer_ids]
    prompts = {"a": 11, "b": 6}
    params = {r: SimpleNamespace(extra_args={"steer_alpha": 1.0, "steer_map": "gated",
                                             "steer_mode": "adaptive", GATE_KEY: f"tag-{r}",
                                             CAPTURE_KEY: f"cap-{r}"})
              for r in prompts}
    steps = [[("a", 4, 0), ("b", 5, 0)], [("a", 6, 4), ("b", 1, 5)], [("a", 1, 10)]]
    seen = {r: [] for r in prompts}  # this request's rows of each step's inputs
    for step in steps:
        ids = [r for r, _, _ in step]
        layout = StepLayout.from_counts(ids, [s for _, s, _ in step], [c for _, _, c in step],
                                        [prompts[r] for r in ids], device=device)
        steering.on_step(layout, lambda r: params[r])
        capture.on_step(layout, [capture.key_of(r, params[r]) for r in ids])
        n = layout.num_tokens
        x.normal_()
        x[n:].zero_()
        for layer in layer_ids:
            inputs[layer].clear()
        # An eager forward for the hooks to record its down_proj inputs; what it pooled
        # and captured is put back, so the sums hold the replays' work alone.
        before = (gate_state.z_sum.clone(), gate_state.w_sum.clone(), capture.sums.clone())
        model(x)
        for buffer, saved in zip((gate_state.z_sum, gate_state.w_sum, capture.sums), before):
            buffer.copy_(saved)
        replay()
        qsl = layout.query_start_loc.tolist()
        for row, r in enumerate(ids):
            seen[r].append({layer: inputs[layer][0][qsl[row]:qsl[row + 1]]
                            for layer in layer_ids})
    for h in hooks:
        h.remove()
    gate_state.forget("a")
    gate_state.forget("b")
    results = gate_state.fetch()
    captured = capture.fetch()
    rows = []
    for r, plen in prompts.items():
        per_layer = {layer: torch.cat([s[layer] for s in seen[r]])[:plen] for layer in
                     layer_ids}
        direct = direct_gate_score(per_layer, gate, plen - 1)
        got = results[f"tag-{r}"]["p_good"]
        sums = np.frombuffer(captured[f"cap-{r}"]["sums"], np.float32).reshape(4, -1)
        direct_means = torch.stack([per_layer[layer].sum(0) for layer in layer_ids]) / plen
        capture_err = float(np.abs(sums / plen - direct_means.cpu().numpy()).max())
        rows.append({"request": r, "prompt_len": plen, "gate_p_good": got,
                     "direct_p_good": direct, "gate_err": abs(got - direct),
                     "capture_mean_err": capture_err})
    ok = all(row["gate_err"] <= 1e-4 and row["capture_mean_err"] <= 1e-4 for row in rows)
    return {"ok": ok, "requests": rows, "graphs": device.type == "cuda"}


@torch.no_grad()
def cost(shape: Shape, device: torch.device, dtype: torch.dtype, repeats: int,
         token_counts: list[int]) -> dict[str, Any]:
    """Steered (fill + captured forward) vs plain forward of the mapped stack, every
    request's alpha distinct (one token per request: decode)."""
    maps = steering_maps(shape)
    layer_ids = sorted({layer for m in maps for layer in m.layers})
    max_t = max(token_counts)
    plain = Stack(shape, layer_ids).to(device, dtype)
    steered = Stack(shape, layer_ids).to(device, dtype)
    steered.load_state_dict(plain.state_dict())
    state = install_steering(steered, maps, config_of(shape), max_tokens=max_t, dtype=dtype)
    rows = []
    for t in token_counts:
        x = torch.randn(t, shape.hidden, device=device, dtype=dtype)
        run_plain, run_steered = Runner(lambda: plain(x), device), Runner(lambda: steered(x),
                                                                           device)
        layout = StepLayout.from_counts([str(i) for i in range(t)], [1] * t,
                                        [100 + i for i in range(t)], [50] * t, device=device)
        alphas = np.linspace(-1, 1, t, dtype=np.float32) + 1e-3  # all distinct, none 0
        map_ids = np.arange(t) % len(maps)

        def fill() -> None:
            state.fill_requests(alphas, map_ids, layout.prompt_len, layout.query_start_loc,
                                layout.positions)

        downs = [steered.layers[str(i)].mlp.down_proj for i in layer_ids]
        h = torch.randn(t, shape.intermediate, device=device, dtype=dtype)
        ops = Runner(lambda: [steer_(h, d.adaras_delta, d.adaras_indices, d.adaras_scratch)
                              for d in downs][-1], device)
        fill()
        timing = timed({"plain": run_plain, "steered": lambda: (fill(), run_steered()),
                        "fill": fill, "op_all_layers": ops}, repeats, device)
        ratio = timing["steered"]["median_us"] / timing["plain"]["median_us"]
        overhead = timing["steered"]["median_us"] - timing["plain"]["median_us"]
        per_layer = timing["plain"]["median_us"] / len(layer_ids)
        projected = (per_layer * shape.layers + overhead) / (per_layer * shape.layers)
        rows.append({"tokens": t, **{f"{k}_{m}": v[m] for k, v in timing.items()
                                     for m in ("median_us", "iqr_us")},
                     "op_per_layer_us": timing["op_all_layers"]["median_us"] / len(layer_ids),
                     "steered_over_plain": ratio, "projected_28_layers": projected})
    graphs = "CUDA graphs on" if device.type == "cuda" else "eager, no graphs"
    return {"dtype": str(dtype).removeprefix("torch."), "mapped_layers": len(layer_ids),
            "rows": rows, "compare": EASYSTEER + "; ours: the fill plus the forward of the "
            f"mapped MLP layers alone (no attention, no sampling), {graphs}"}


@torch.no_grad()
def capture_contention(device: torch.device, intermediate: int, tokens: int,
                       repeats: int) -> dict[str, Any]:
    """Capture's ``index_add_`` with every token into one row (one long prefill) against a
    one-hot matmul that sums the same rows."""
    x = torch.randn(tokens, intermediate, device=device)
    sums = torch.zeros(2, intermediate, device=device)
    slot = torch.zeros(tokens, dtype=torch.int64, device=device)
    onehot = torch.zeros(tokens, 2, device=device)
    onehot[:, 0] = 1.0
    out = torch.zeros(2, intermediate, device=device)
    index_add = Runner(lambda: sums.index_add_(0, slot, x), device)
    matmul = Runner(lambda: torch.mm(onehot.t(), x, out=out), device)
    t = timed({"index_add": index_add, "onehot_matmul": matmul}, repeats, device)
    faster = min(t, key=lambda k: t[k]["median_us"])
    return {"tokens": tokens, "intermediate": intermediate, **t, "use": faster}


@torch.no_grad()
def paper_gate_cost(shape: Shape, device: torch.device, repeats: int, tokens: int
                    ) -> dict[str, Any]:
    """The paper's AIME gate features (N = 8192 over 28 layers, published indices), H = 256:
    feature copy and pooling per prefill token, against the same layers without the gate."""
    if shape == QWEN3_1_7B and PAPER_GATE.is_file():
        flat = json.loads(PAPER_GATE.read_text())["8192"]["indices"]
        source = str(PAPER_GATE.relative_to(REPO.parent))
    else:
        g = torch.Generator().manual_seed(7)
        flat = torch.randperm(shape.layers * shape.intermediate, generator=g)[:512].tolist()
        source = "random (the published file is for Qwen3-1.7B)"
    layers = torch.tensor([i // shape.intermediate for i in flat])
    neurons = torch.tensor([i % shape.intermediate for i in flat])
    n, hidden = len(flat), 256 if shape == QWEN3_1_7B else 32
    g = torch.Generator().manual_seed(0)
    gate = CorrectnessGate(layers=layers, neurons=neurons,
                           scorer_weight=torch.randn(1, n, generator=g),
                           scorer_bias=torch.zeros(1),
                           mlp0_weight=torch.randn(hidden, n, generator=g) / math.sqrt(n),
                           mlp0_bias=torch.zeros(hidden),
                           mlp2_weight=torch.randn(1, hidden, generator=g),
                           mlp2_bias=torch.zeros(1), threshold=0.5)
    m = NeuronMap.from_layers("paper", {0: ([0], [1.0])}, num_hidden_layers=shape.layers,
                              intermediate_size=shape.intermediate,
                              hidden_size=shape.hidden).with_gate(gate)

    class Probe(nn.Module):  # a down_proj that costs nothing: the gate's work alone shows
        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h

    model = nn.Module()
    model.layers = nn.ModuleList()
    for _ in range(shape.layers):
        block = nn.Module()
        block.mlp = nn.Module()
        block.mlp.down_proj = Probe()
        model.layers.append(block)
    model.to(device)
    state = install_gate(model, [m], shape.intermediate, max_tokens=tokens, max_slots=4,
                         dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    h = torch.randn(tokens, shape.intermediate, device=device,
                    dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    layout = StepLayout.from_counts(["p"], [tokens], [0], [tokens + 1], device=device)
    state.on_step(layout, lambda r: r, np.array([True]), np.array([0]))
    downs = [block.mlp.down_proj for block in model.layers]
    gated = Runner(lambda: [d(h) for d in downs][-1], device)
    t = timed({"gate_layers": gated}, repeats, device)
    return {"features": n, "hidden": hidden, "layers": int(layers.max()) + 1,
            "feature_source": source, "prefill_tokens": tokens, **t,
            "per_prefill_token_us": t["gate_layers"]["median_us"] / tokens}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true",
                   help="tiny shapes (the CPU smoke run in make test)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape = SMALL if args.small else QWEN3_1_7B
    repeats = args.repeats or (50 if device.type == "cuda" else 3)
    tokens = [1, 8, 32, 256] if not args.small else [1, 8]
    started = time.monotonic()
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "cuda": torch.version.cuda, "shape": shape.name,
           "vllm_imported": "vllm" in sys.modules and sys.modules["vllm"] is not None}
    print(f"gpu-bare: {env}", flush=True)
    results: dict[str, Any] = {"environment": env}
    failed = []
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    for dtype in dtypes:
        r = check_steering(shape, device, dtype, graph_tokens=64)
        results[f"steering_{r['dtype']}"] = r
        print(f"{'PASS' if r['ok'] else 'FAIL'} steering under "
              f"{'CUDA graph replay' if r['graphs'] else 'eager (no graphs)'} ({r['dtype']}): "
              + "; ".join(f"{c['case']}: replay==eager {c['replay_equals_eager']}, "
                          f"hook rule {c['equals_hook_rule']}" for c in r["cases"]), flush=True)
        if not r["ok"]:
            failed.append(f"steering_{r['dtype']}")
    r = check_gate_and_capture(shape, device, graph_tokens=32)
    results["gate_and_capture"] = r
    print(f"{'PASS' if r['ok'] else 'FAIL'} gate score and capture means under "
          f"{'replay' if r['graphs'] else 'eager'}: " + "; ".join(
              f"{x['request']}: |p_good - direct| {x['gate_err']:.2e}, capture "
              f"{x['capture_mean_err']:.2e}" for x in r["requests"]), flush=True)
    if not r["ok"]:
        failed.append("gate_and_capture")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    c = cost(shape, device, dtype, repeats, tokens)
    results["cost"] = c
    for row in c["rows"]:
        print(f"COST {row['tokens']:>4} tokens ({c['dtype']}): fill "
              f"{row['fill_median_us']:.1f} µs, op {row['op_per_layer_us']:.1f} µs/layer, "
              f"stack {row['steered_over_plain']:.3f}x plain (IQR plain "
              f"{row['plain_iqr_us']:.1f} µs), projected to 28 layers "
              f"{row['projected_28_layers']:.3f}x", flush=True)
    print(f"     {c['compare']}", flush=True)
    cc = capture_contention(device, shape.intermediate, 4096 if not args.small else 256,
                            repeats)
    results["capture_contention"] = cc
    print(f"CAPTURE one row, {cc['tokens']} tokens: index_add_ "
          f"{cc['index_add']['median_us']:.1f} µs, one-hot matmul "
          f"{cc['onehot_matmul']['median_us']:.1f} µs -> use {cc['use']}", flush=True)
    g = paper_gate_cost(shape, device, repeats, 2048 if not args.small else 64)
    results["paper_gate"] = g
    print(f"GATE N={g['features']} over {g['layers']} layers, H={g['hidden']}: "
          f"{g['per_prefill_token_us']:.3f} µs per prefill token "
          f"({g['gate_layers']['median_us']:.1f} µs for {g['prefill_tokens']})", flush=True)
    results["failed"] = failed
    results["seconds"] = round(time.monotonic() - started, 1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"gpu-bare: {'FAILED ' + ', '.join(failed) if failed else 'all checks passed'} "
          f"in {results['seconds']} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
