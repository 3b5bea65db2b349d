"""Activation-capture throughput at equal compute: in-engine capture (vLLM, batched,
chunked prefill) versus the paper's HF forward-pre-hook capture (one trace at a time), on
the same traces and weights, alternated in one run; printed as tokens/s and a ratio.

Equal compute: vLLM's CPU worker binds its compute threads to one core (the first allowed
one, ``VLLM_CPU_OMP_THREADS_BIND=auto``; read back from the running worker and recorded);
the HF side runs with ``torch.set_num_threads(1)`` pinned to that same core, while the
engine is idle (its worker stops spinning 1 s after its last step; every pass first
waits ``--settle-s``). The engine's scheduler and front end run on the other core, as vLLM
always arranges it; HF's Python runs on its one core.

Model: a random Qwen3 (hidden 512, 8 layers, intermediate 1536, 8 heads x 64) written
locally, or --model DIR. Traces: the paper's gsm8k traces (120 real reasoning traces) when
present, cut to --max-model-len tokens; else synthetic ones. Engine and HF passes
alternate ``--rounds`` times (order flipped each round); figures are medians, the ratio
the median of per-round ratios. Also prints the largest difference between the two
captures' means (they compute the same means).

``--profile`` adds one more in-engine pass, instrumented inside the worker (wall time of
the runner's step functions and of capture's bookkeeping, and ``torch.profiler`` op
totals: matmuls, attention, the capture ``index_add_``), and one profiled HF pass, and
prints where the time goes. It needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (set here,
for this local engine only) to send the instrumentation to the worker.

``--engine-variants`` times other capture settings against the default engine in the
same alternation, e.g. ``compiled`` (torch.compile instead of eager), ``seqs64``
(max_num_seqs 64), ``tokens8192`` (max_num_batched_tokens 8192); each is checked against
HF's means too.

    python benchmarks/capture_throughput.py [--model DIR] [--traces FILE] [--limit N]
        [--rounds 3] [--dtype float32] [--profile] [--engine-variants compiled,...]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import benchlib

REPO = Path(__file__).resolve().parents[1]
PAPER_TRACES = (REPO.parent / "shared" / "reference" / "adaras-paper" / "data" / "gsm8k"
                / "gsm8k_results_Qwen3-32B_filtered.jsonl")

VARIANTS = {
    "default": {},
    "compiled": {"compiled": True},
    "seqs64": {"max_num_seqs": 64},
    "seqs8": {"max_num_seqs": 8},
    "tokens8192": {"max_num_batched_tokens": 8192},
    "tokens2048": {"max_num_batched_tokens": 2048},
}
POST_START: dict[str, str] = {}


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


# ---- instrumentation sent to the worker (self-contained: pickled by value) -----------


def _worker_instrument(worker, profile_ops: bool) -> bool:  # noqa: ANN001
    """Wrap the runner's step functions and capture's bookkeeping with wall-clock
    accumulators (instance attributes shadow the class methods); start a torch profiler."""
    import functools
    import time as _time

    runner = worker.model_runner
    acc = getattr(worker, "_bench_acc", None)
    if acc is None:
        acc = {}
        capture = getattr(runner, "_adaras_capture", None)
        targets = [(runner, name) for name in ("execute_model", "sample_tokens",
                                               "_prepare_inputs", "_model_forward",
                                               "_update_states", "_sample",
                                               "_bookkeeping_sync")
                   if hasattr(runner, name)]
        if capture is not None:
            targets += [(capture, "on_step"), (capture, "harvest"), (capture, "fetch")]
        for obj, name in targets:
            key = ("capture." if obj is capture else "runner.") + name
            orig = getattr(obj, name)

            def wrapped(*a, _orig=orig, _key=key, **k):  # noqa: ANN002, ANN003, ANN202
                t = _time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    e = acc.setdefault(_key, [0.0, 0])
                    e[0] += _time.perf_counter() - t
                    e[1] += 1

            setattr(obj, name, functools.wraps(orig)(wrapped))

        # The capture accumulation alone (eager: a compiled graph does not call it again).
        from adaras_vllm.engine.capture import CapturedDownProj

        if (runner.model_config.enforce_eager and hasattr(CapturedDownProj, "adaras_accumulate")
                and not hasattr(CapturedDownProj, "_bench_orig")):
            CapturedDownProj._bench_orig = CapturedDownProj.adaras_accumulate

            def accumulate(self, x):  # noqa: ANN001, ANN202
                t = _time.perf_counter()
                CapturedDownProj._bench_orig(self, x)
                e = acc.setdefault("capture.adaras_accumulate", [0.0, 0])
                e[0] += _time.perf_counter() - t
                e[1] += 1

            CapturedDownProj.adaras_accumulate = accumulate
        worker._bench_acc = acc
    acc.clear()
    worker._bench_t0 = _time.perf_counter()
    worker._bench_prof = None
    if profile_ops:
        from torch.profiler import ProfilerActivity, profile

        worker._bench_prof = profile(activities=[ProfilerActivity.CPU])
        worker._bench_prof.__enter__()
    return True


def _worker_report(worker) -> dict:  # noqa: ANN001
    import os as _os
    import time as _time

    import torch

    wall = _time.perf_counter() - worker._bench_t0
    ops = []
    prof = worker._bench_prof
    if prof is not None:
        prof.__exit__(None, None, None)
        ops = [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6,
                "cpu_total_s": e.cpu_time_total / 1e6, "count": e.count}
               for e in prof.key_averages()]
        worker._bench_prof = None
    return {"wall_s": wall, "timers": {k: {"s": v[0], "calls": v[1]}
                                       for k, v in worker._bench_acc.items()},
            "ops": ops, "torch_threads": torch.get_num_threads(),
            "affinity": sorted(_os.sched_getaffinity(0))}


def engine_pids(affinity: list[dict]) -> dict[str, int]:
    """The worker's and the engine core's pids, from ``benchlib.vllm_worker_affinity``."""
    out = {}
    for a in affinity:
        if "Worker" in a["name"]:
            out["worker"] = a["pid"]
        elif "EngineCore" in a["name"]:
            out["engine_core"] = a["pid"]
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of the given processes and of this one."""
    import psutil

    out = {}
    for name, pid in {**pids, "client": os.getpid()}.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    return out


def summarise_ops(ops: list[dict], pass_s: float) -> dict:
    """Group op self times: matmuls, attention, the capture index_add_, the rest."""
    groups = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                         "aten::linear", "onednn", "mkldnn"),
              "attention": ("attn", "attention", "sdpa", "flash"),
              "capture index_add_": ("aten::index_add_", "aten::scatter_add_"),
              "float() copies": ("aten::_to_copy", "aten::copy_")}
    total = sum(o["self_cpu_s"] for o in ops)
    out = {k: 0.0 for k in groups} | {"other ops": 0.0}
    for o in ops:
        name = o["op"].lower()
        for g, keys in groups.items():
            if any(k.lower() in name for k in keys):
                out[g] += o["self_cpu_s"]
                break
        else:
            out["other ops"] += o["self_cpu_s"]
    return {"total_op_self_s": total, "pass_s": pass_s,
            "groups_s": out,
            "top": sorted(ops, key=lambda o: o["self_cpu_s"], reverse=True)[:12]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--traces", type=Path, default=PAPER_TRACES)
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle-s", type=float, default=2.0)
    ap.add_argument("--core", type=int, default=None,
                    help="core for the HF side (default: the vLLM worker's)")
    ap.add_argument("--hf-threads", type=int, default=1)
    ap.add_argument("--engine-variants", default="",
                    help=f"extra engines to time, comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    variants = ["default"] + [v for v in args.engine_variants.split(",") if v and v != "default"]
    bad = sorted(set(variants) - set(VARIANTS))
    if bad:
        ap.error(f"unknown engine variant(s) {bad}")
    if args.profile or any(v in POST_START for v in variants):
        # Lets this local engine run the instrumentation functions sent to its worker.
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"

    import numpy as np
    import torch

    from adaras_vllm.pipeline.activations import ActivationCapture
    from adaras_vllm.pipeline.hf_capture import hf_trace_means, load_hf_model

    model = args.model or default_model()
    texts = load_texts(args.traces, args.limit)

    engines: dict[str, ActivationCapture] = {}
    affinity: dict[str, list] = {}
    pids: dict[str, dict[str, int]] = {}
    try:
        for name in variants:
            kw = dict(dtype=args.dtype, max_model_len=args.max_model_len,
                      max_num_seqs=args.max_num_seqs,
                      max_num_batched_tokens=args.max_num_batched_tokens,
                      kv_cache_memory_bytes=1 << 30)
            kw.update(VARIANTS[name])
            engines[name] = ActivationCapture(str(model), **kw)
            before = {a["pid"] for v in affinity.values() for a in v}
            affinity[name] = [a for a in benchlib.vllm_worker_affinity()
                              if a["pid"] not in before]
            pids[name] = engine_pids(affinity[name])
            if name in POST_START:
                engines[name].llm.collective_rpc(globals()[POST_START[name]])
        first = engines["default"]
        prompts = [first.encode(t) for t in texts]
        n_tokens = sum(len(p) for p in prompts)
        wcores = benchlib.worker_cores(affinity["default"])
        core = args.core if args.core is not None else (
            wcores[0] if wcores else benchlib.default_worker_core())
        for cap in engines.values():
            list(cap.means(prompts[:4]))  # warm-up

        hf = load_hf_model(model, getattr(torch, args.dtype))
        with benchlib.pinned(core, args.hf_threads) as hf_pin:
            list(hf_trace_means(hf, prompts[:4]))  # warm-up

        cpu: dict[str, list[dict[str, float]]] = {}

        def engine_pass(name: str) -> tuple[float, dict]:
            time.sleep(args.settle_s)  # another engine's worker may still spin on the core
            c0 = cpu_seconds(pids[name])
            t0 = time.perf_counter()
            means = dict(engines[name].means(prompts))
            wall = time.perf_counter() - t0
            c1 = cpu_seconds(pids[name])
            cpu.setdefault(name, []).append({k: c1[k] - c0[k] for k in c0})
            return n_tokens / wall, means

        def hf_pass() -> tuple[float, list]:
            time.sleep(args.settle_s)
            with benchlib.pinned(core, args.hf_threads):
                c0 = time.process_time()
                t0 = time.perf_counter()
                means = list(hf_trace_means(hf, prompts))
                wall = time.perf_counter() - t0
                cpu.setdefault("hf", []).append({"client": time.process_time() - c0})
                return n_tokens / wall, means

        sides = [*variants, "hf"]
        samples: dict[str, list[float]] = {s: [] for s in sides}
        last_means: dict[str, object] = {}
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else list(reversed(sides))
            for side in order:
                rate, means = hf_pass() if side == "hf" else engine_pass(side)
                samples[side].append(rate)
                last_means[side] = means
                print(f"[round {r}] {side:10s} {rate:9.0f} tokens/s", flush=True)

        hf_means = last_means["hf"]
        diffs = {name: max(float(np.abs(last_means[name][i] - m).max())
                           for i, m in enumerate(hf_means)) for name in variants}

        profile = None
        if args.profile:
            profile = {}
            cap = engines["default"]
            cap.llm.collective_rpc(_worker_instrument, args=(False,))
            t0 = time.perf_counter()
            dict(cap.means(prompts))
            timed_s = time.perf_counter() - t0
            (timers,) = cap.llm.collective_rpc(_worker_report)
            cap.llm.collective_rpc(_worker_instrument, args=(True,))
            t0 = time.perf_counter()
            dict(cap.means(prompts))
            prof_s = time.perf_counter() - t0
            (prof,) = cap.llm.collective_rpc(_worker_report)
            profile["engine"] = {"timers_pass_s": timed_s, "timers": timers["timers"],
                                 "worker_wall_s": timers["wall_s"],
                                 "worker_torch_threads": timers["torch_threads"],
                                 "worker_affinity": timers["affinity"],
                                 "ops": summarise_ops(prof["ops"], prof_s)}
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            time.sleep(args.settle_s)
            with benchlib.pinned(core, args.hf_threads):
                t0 = time.perf_counter()
                with torch_profile(activities=[ProfilerActivity.CPU]) as p:
                    list(hf_trace_means(hf, prompts))
                hf_prof_s = time.perf_counter() - t0
            profile["hf"] = {"ops": summarise_ops(
                [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6,
                  "cpu_total_s": e.cpu_time_total / 1e6, "count": e.count}
                 for e in p.key_averages()], hf_prof_s)}
    finally:
        for cap in engines.values():
            cap.close()

    med = {s: statistics.median(v) for s, v in samples.items()}
    # Tokens per CPU-second: less sensitive to other load than wall time. Engine: the
    # worker's CPU time (the side that does the model's compute); HF: this process's.
    cpu_rate = {s: statistics.median(n_tokens / c["worker" if s != "hf" else "client"]
                                     for c in cpu[s]) for s in samples}
    cpu_ratio = {s: cpu_rate[s] / cpu_rate["hf"] for s in variants}
    ratios = {s: [a / b for a, b in zip(samples[s], samples["hf"])] for s in variants}
    result = {
        "benchmark": "capture_throughput",
        "model": str(model),
        "traces": len(prompts),
        "tokens": n_tokens,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "engine": {"max_num_seqs": args.max_num_seqs,
                   "max_num_batched_tokens": args.max_num_batched_tokens,
                   "max_model_len": args.max_model_len, "variants": {
                       v: VARIANTS[v] for v in variants}},
        "engine_tokens_per_s": med["default"],
        "hf_hook_tokens_per_s": med["hf"],
        "ratio_engine_over_hf": statistics.median(ratios["default"]),
        "variants_tokens_per_s": {v: med[v] for v in variants},
        "variants_ratio_over_hf": {v: statistics.median(ratios[v]) for v in variants},
        "per_round_ratios": ratios,
        "tokens_per_cpu_s": cpu_rate,
        "ratio_over_hf_by_cpu_time": cpu_ratio,
        "cpu_seconds_per_pass": cpu,
        "samples_tokens_per_s": samples,
        "max_abs_difference": diffs["default"],
        "variants_max_abs_difference": diffs,
        "hf": {"torch_threads": hf_pin["torch_threads"], "affinity": hf_pin["affinity"]},
        "vllm_worker_affinity": affinity,
        "vllm_worker_cores": wcores,
        "profile": profile,
        "environment": benchlib.environment(),
    }
    print(f"\n{len(prompts)} traces, {n_tokens} tokens, {args.dtype}, median of {args.rounds} "
          f"alternated rounds; HF: {hf_pin['torch_threads']} torch thread(s) on core(s) "
          f"{hf_pin['affinity']}; vLLM worker threads on core(s) {wcores}")
    rows = [[f"in-engine capture ({v})", med[v], statistics.median(ratios[v]),
             min(ratios[v]), max(ratios[v]), cpu_rate[v], cpu_ratio[v], diffs[v]]
            for v in variants]
    rows.append(["HF forward-pre-hook", med["hf"], 1.0, 1.0, 1.0, cpu_rate["hf"], 1.0, 0.0])
    print(benchlib.table(["side", "tokens/s", "ratio/HF", "min", "max", "tok/CPU-s",
                          "CPU ratio", "max|diff|"], rows))
    print("tok/CPU-s: tokens per CPU-second of the side's compute process (engine: the "
          "worker; HF: this process); less affected by other load than wall time.")
    if profile:
        e = profile["engine"]
        print(f"\nin-engine pass, instrumented ({e['timers_pass_s']:.1f} s wall; worker "
              f"{e['worker_torch_threads']} thread(s) on {e['worker_affinity']}):")
        print(benchlib.table(["worker function", "s", "% of pass", "calls"], [
            [k, v["s"], 100 * v["s"] / e["timers_pass_s"], v["calls"]]
            for k, v in sorted(e["timers"].items(), key=lambda kv: -kv[1]["s"])]))
        for side in ("engine", "hf"):
            ops = profile[side]["ops"]
            print(f"\n{side}: torch.profiler op self-time, pass {ops['pass_s']:.1f} s "
                  f"(profiled), ops total {ops['total_op_self_s']:.1f} s")
            print(benchlib.table(["group", "s", "% of ops"], [
                [g, s, 100 * s / max(ops["total_op_self_s"], 1e-9)]
                for g, s in ops["groups_s"].items()]))
            print(benchlib.table(["top op", "self s", "calls"], [
                [o["op"][:60], o["self_cpu_s"], o["count"]] for o in ops["top"][:8]]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
