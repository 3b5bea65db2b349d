"""Train the organism: a small Qwen3ForCausalLM, from scratch on CPU, on the arithmetic task.

Steering is only measurable on a model that reasons, and only locally trainable models fit
where this project is built, so this trains one small enough for 2 CPU cores: 4 layers,
hidden 128, MLP 512, 2 heads of dim 64 (vLLM's CPU attention needs head_dim >= 64). It is
meant to stop part-way to mastery (roughly 40-85% greedy accuracy), so that sampling gives
both right and wrong traces for the same problems.

    python -m adaras_vllm.organism.train --out models/organism-qwen3 --steps 3000 --seed 0

``--task modes`` trains the positive control instead: each training answer is written
careful or hasty at random (``--careful-fraction``), see `adaras_vllm.organism.task`. It
writes config.json, model.safetensors, tokenizer files, generation_config.json and
training_log.json (losses, greedy validation accuracies, wall time, settings) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from adaras_vllm.organism.task import (
    STYLES,
    TASK_SETTINGS,
    TASKS,
    build_tokenizer,
    generate_split,
    grade,
    iter_split,
    prompt_text,
    trace_mode,
    training_text,
)

MODEL_CONFIG = {
    "num_hidden_layers": 4,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
MAX_NEW_TOKENS = 96  # the longest completion is ~75 characters


def make_config(tokenizer):
    """The Qwen3 config for the organism, sized to the tokenizer's vocabulary."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "qwen3",
        architectures=["Qwen3ForCausalLM"],
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **MODEL_CONFIG,
    )


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_batch(tokenizer, questions: list[str],
               styles: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels; the loss covers only the assistant's part."""
    styles = styles or ["careful"] * len(questions)
    texts = [training_text(q, st) for q, st in zip(questions, styles)]
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    prompt_lens = [len(tokenizer.encode(prompt_text(q), add_special_tokens=False))
                   for q in questions]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(ids), width), -100, dtype=torch.long)
    for i, (x, p) in enumerate(zip(ids, prompt_lens)):
        input_ids[i, : len(x)] = torch.tensor(x)
        labels[i, p : len(x)] = torch.tensor(x[p:])
    return input_ids, labels


@torch.no_grad()
def greedy_completions(model, tokenizer, questions: list[str], batch_size: int = 250) -> list[str]:
    """Greedy completions of the chat prompts (left-padded batches through HF generate)."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(questions), batch_size):
            prompts = [prompt_text(q) for q in questions[start : start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(
                **enc,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def evaluate(model, tokenizer, records: list[dict]) -> tuple[float, list[str]]:
    """Greedy accuracy on ``records`` (graded by the integer in ``\\boxed{}``)."""
    completions = greedy_completions(model, tokenizer, [r["question"] for r in records])
    correct = sum(grade(c, r["answer"]) for c, r in zip(completions, records))
    return correct / max(1, len(records)), completions


def mode_breakdown(completions: list[str], records: list[dict]) -> dict:
    """Careful-mode rate and the accuracy within each mode (what the modes task is about)."""
    out: dict = {}
    modes = [trace_mode(c) for c in completions]
    out["careful_rate"] = round(sum(m == "careful" for m in modes) / max(1, len(modes)), 4)
    for style in STYLES:
        hits = [grade(c, r["answer"]) for c, r, m in zip(completions, records, modes)
                if m == style]
        out[f"{style}_n"] = len(hits)
        out[f"{style}_accuracy"] = round(sum(hits) / len(hits), 4) if hits else None
    return out


def train(
    out: str | Path,
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int = 100,
    weight_decay: float = 0.01,
    log_every: int = 50,
    eval_every: int = 250,
    eval_n: int = 200,
    final_eval_n: int = 1000,
    stop_at_accuracy: float | None = None,
    threads: int = 2,
    task: str = "arith",
    careful_fraction: float = 0.5,
    max_wall_s: float | None = None,
    init_from: str | Path | None = None,
) -> dict:
    """Train from scratch into ``out`` and return the training log (also written there)."""
    import random

    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if not 0.0 < careful_fraction <= 1.0:
        raise ValueError(f"careful_fraction must be in (0, 1], got {careful_fraction}")
    # The style of each example: its own stream, so it is independent of the questions.
    style_rng = random.Random(f"style/{seed}")
    p_careful = 1.0 if task == "arith" else careful_fraction
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    config = make_config(tokenizer)
    if init_from is None:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:  # continue from a trained organism (same tokenizer and shape)
        model = AutoModelForCausalLM.from_pretrained(str(init_from), dtype=torch.float32)
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(f"--init-from {init_from}: vocabulary {model.config.vocab_size} "
                             f"is not the organism's {len(tokenizer)}")
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    stream = iter_split("train", seed)
    val = generate_split("validation", eval_n, seed)

    log: dict = {
        "seed": seed,
        "organism_task": task,
        "careful_fraction": p_careful,
        "max_wall_s": max_wall_s,
        "init_from": None if init_from is None else str(init_from),
        "steps_planned": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "schedule": "linear warmup, cosine to 0.1x",
        "loss_on": "assistant part only",
        "stop_at_accuracy": stop_at_accuracy,
        "threads": threads,
        "model_config": MODEL_CONFIG,
        "vocab_size": len(tokenizer),
        "parameters": n_params,
        "task": TASK_SETTINGS,
        "eval": {"split": "validation", "n": eval_n, "seed": seed, "decoding": "greedy"},
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "losses": [],
        "accuracies": [],
    }

    def write_log() -> None:
        (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")

    def run_eval(step: int) -> float:
        t = time.perf_counter()
        acc, completions = evaluate(model, tokenizer, val)
        secs = time.perf_counter() - t
        entry = {"step": step, "accuracy": acc, "eval_s": round(secs, 2)}
        if task == "modes":
            entry.update(mode_breakdown(completions, val))
        log["accuracies"].append(entry)
        extra = (f", careful {entry['careful_rate']:.2f}" if task == "modes" else "")
        print(f"step {step}: greedy validation accuracy {acc:.3f}{extra} ({secs:.1f} s); "
              f"e.g. {completions[0]!r}", flush=True)
        write_log()
        return acc

    start = time.perf_counter()
    running, step = [], 0
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, steps, lr, warmup)
        questions = [next(stream).question for _ in range(batch_size)]
        styles = ["careful" if style_rng.random() < p_careful else "hasty" for _ in questions]
        input_ids, labels = make_batch(tokenizer, questions, styles)
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        if step % log_every == 0:
            mean = sum(running) / len(running)
            elapsed = time.perf_counter() - start
            log["losses"].append({"step": step, "loss": round(mean, 5),
                                  "lr": optimizer.param_groups[0]["lr"],
                                  "wall_s": round(elapsed, 1)})
            print(f"step {step}: loss {mean:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"({elapsed:.0f} s)", flush=True)
            running = []
        out_of_time = max_wall_s is not None and time.perf_counter() - start >= max_wall_s
        if step % eval_every == 0 or step == steps or out_of_time:
            acc = run_eval(step)
            if stop_at_accuracy is not None and acc >= stop_at_accuracy:
                print(f"stopping: accuracy {acc:.3f} >= {stop_at_accuracy}", flush=True)
                break
        if out_of_time:
            print(f"stopping: {max_wall_s:.0f} s of training reached", flush=True)
            break

    log["steps"] = step
    log["train_wall_s"] = round(time.perf_counter() - start, 1)
    if final_eval_n:
        final_val = generate_split("validation", final_eval_n, seed + 1)
        acc, completions = evaluate(model, tokenizer, final_val)
        log["final_eval"] = {"split": "validation", "n": final_eval_n, "seed": seed + 1,
                             "accuracy": acc}
        if task == "modes":
            log["final_eval"].update(mode_breakdown(completions, final_val))
        print(f"final greedy accuracy on {final_eval_n} validation problems: {acc:.3f}",
              flush=True)
    model.save_pretrained(str(out), safe_serialization=True)
    model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    log["total_wall_s"] = round(time.perf_counter() - start, 1)
    write_log()
    print(f"saved to {out} after {step} steps, {log['train_wall_s']:.0f} s training", flush=True)
    return log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--steps", type=int, required=True, help="training steps (hard cap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--final-eval-n", type=int, default=1000,
                        help="validation problems for the final accuracy (0: skip)")
    parser.add_argument("--stop-at-accuracy", type=float, default=None,
                        help="stop after an evaluation that reaches this accuracy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", choices=TASKS, default="arith",
                        help="arith: always the worked steps; modes: careful or hasty at random")
    parser.add_argument("--careful-fraction", type=float, default=0.5,
                        help="modes: the fraction of training answers written careful")
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="start from this trained organism instead of random weights")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop training after this many minutes (then save)")
    args = parser.parse_args(argv)
    train(
        args.out,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_n=args.eval_n,
        final_eval_n=args.final_eval_n,
        stop_at_accuracy=args.stop_at_accuracy,
        threads=args.threads,
        task=args.task,
        careful_fraction=args.careful_fraction,
        max_wall_s=None if args.max_minutes is None else args.max_minutes * 60,
        init_from=args.init_from,
    )


if __name__ == "__main__":
    main()
