"""Where does steering change the modes organism's mode? An HF-only ablation.

The plugin steers every position t >= P-1 (the last prompt token and every generated one).
The mode (careful = write the steps, hasty = close the thinking at once) is the first
generated token, whose logits come from position P-1 alone. This script steers with a map's
neurons at (a) P-1 only, (b) generated tokens only, (c) both (the plugin's rule), for each
alpha, with forward-pre-hooks on ``down_proj`` in transformers (independent of the plugin),
and prints careful-mode rate, accuracy, and accuracy within careful answers. If the mode is
decided at P-1, (a) moves the careful rate as much as (c) and (b) not at all; if steering
breaks the arithmetic, accuracy within careful answers drops.

    python benchmarks/modes_where_decided.py --model models/organism-modes \\
        --neuron-map out/organism-modes/top200.safetensors --neurons 25 \\
        --problems out/organism/validation.jsonl --alphas=-4,-1,1,4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaras_vllm.maps import NeuronMap  # noqa: E402
from adaras_vllm.organism.task import grade, prompt_text, trace_mode  # noqa: E402

WHERE = ("last prompt token only", "generated tokens only", "both (the plugin)")


def run(model, tok, questions, answers, neuron_map, alpha: float, where: str,
        batch: int = 250) -> dict:  # noqa: ANN001
    handles = []
    state = {"prefill": True}
    for layer, (idx, w) in neuron_map.layers.items():
        delta = torch.zeros(model.config.intermediate_size)
        delta[idx] = alpha * w

        def hook(_module, args, delta=delta):  # noqa: ANN001, ANN202
            (x,) = args
            x = x.clone()
            if state["prefill"] and where != WHERE[1]:
                x[:, -1] += delta  # left-padded: the last position is P-1 for every row
            elif not state["prefill"] and where != WHERE[0]:
                x += delta
            return (x,)

        handles.append(model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook))

    def mark(_module, args, kwargs):  # noqa: ANN001, ANN202
        ids = kwargs.get("input_ids", args[0] if args else None)
        state["prefill"] = ids is not None and ids.shape[1] > 1

    handles.append(model.model.register_forward_pre_hook(mark, with_kwargs=True))
    texts: list[str] = []
    try:
        tok.padding_side = "left"
        for s in range(0, len(questions), batch):
            enc = tok([prompt_text(q) for q in questions[s:s + batch]], return_tensors="pt",
                      padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=128, do_sample=False,
                                     eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id)
            texts += tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                      skip_special_tokens=True)
    finally:
        for h in handles:
            h.remove()
    right = [grade(t, a) for t, a in zip(texts, answers)]
    careful = [trace_mode(t) == "careful" for t in texts]
    n_careful = sum(careful)
    return {"alpha": alpha, "where": where, "n": len(texts),
            "careful_rate": n_careful / len(texts), "accuracy": sum(right) / len(texts),
            "careful_accuracy": (sum(r for r, c in zip(right, careful) if c) / n_careful
                                 if n_careful else None)}


def projections(model, tok, traces: list[dict], neuron_map) -> dict:  # noqa: ANN001
    """Mean of w . x (the map's neurons, summed over its layers) at each kind of position of
    careful traces, in the served format: where along a trace does the state look most
    like +w? If +w is highest just before </think>, it reads as "steps done: close"."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer, (idx, w) in neuron_map.layers.items():
        def hook(_module, args, idx=idx, w=w, layer=layer):  # noqa: ANN001, ANN202
            captured[layer] = (args[0][0, :, idx] * w).sum(-1)
        handles.append(model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook))
    sums: dict[str, list[float]] = {k: [] for k in (
        "last prompt token (P-1)", "question tokens", "inside the steps",
        "last token before </think>", "answer after </think>")}
    try:
        for t in traces:
            prompt = prompt_text(t["question"])
            text = prompt + t["thinking"] + "</think>\nA: \\boxed{" + str(t["answer"]) + "}"
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                model(input_ids=ids)
            proj = sum(captured.values())
            p = len(prompt)  # one token per character
            close = len(prompt + t["thinking"])
            sums["last prompt token (P-1)"].append(float(proj[p - 1]))
            sums["question tokens"].append(float(proj[: p - 1].mean()))
            sums["inside the steps"].append(float(proj[p:close - 1].mean()))
            sums["last token before </think>"].append(float(proj[close - 1]))
            sums["answer after </think>"].append(float(proj[close + len("</think>"):].mean()))
    finally:
        for h in handles:
            h.remove()
    return {k: sum(v) / len(v) for k, v in sums.items()}


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--neuron-map", required=True)
    p.add_argument("--neurons", type=int, default=25)
    p.add_argument("--problems", required=True)
    p.add_argument("--alphas", default="-4,-1,1,4")
    p.add_argument("--traces", help="also: w . x along careful traces of this file")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    neuron_map = NeuronMap.load(args.neuron_map).top(args.neurons)
    rows = [json.loads(line) for line in open(args.problems)]
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    results = [run(model, tok, questions, answers, neuron_map, 0.0, WHERE[2])]
    for alpha in (float(a) for a in args.alphas.split(",")):
        results += [run(model, tok, questions, answers, neuron_map, alpha, w) for w in WHERE]
    print(f"{'alpha':>6} {'steered positions':<24} {'careful':>8} {'accuracy':>9} "
          f"{'acc | careful':>14}")
    for r in results:
        ca = "-" if r["careful_accuracy"] is None else f"{100 * r['careful_accuracy']:.1f}%"
        print(f"{r['alpha']:>6g} {r['where'] if r['alpha'] else 'none':<24} "
              f"{100 * r['careful_rate']:>7.1f}% {100 * r['accuracy']:>8.1f}% {ca:>14}")
    along = None
    if args.traces:
        traces = [json.loads(line) for line in open(args.traces)]
        careful = [t for t in traces if t["thinking"].strip() and t["is_good"]][:300]
        along = projections(model, tok, careful, neuron_map)
        print(f"\nw . x along {len(careful)} careful, correct train traces (served format):")
        for k, v in along.items():
            print(f"  {k:<28} {v:+.3f}")
    if args.out:
        args.out.write_text(json.dumps({"map": args.neuron_map, "neurons": args.neurons,
                                        "problems": args.problems, "results": results,
                                        "projection_along_careful_traces": along},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
