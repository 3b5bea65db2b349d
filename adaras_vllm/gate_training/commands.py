"""`adaras gate train`: train a map's correctness gate from a problems file and a model.

1. Label each question by the model's own unsteered answer (greedy by default, graded
   with the pipeline's grader), or take labels from a traces file.
2. Capture in-engine the served prompt's activations (the question through the chat
   template: the token ids a chat request prefills), positions 0..P-2: each neuron's mean
   over those positions for the F-score, then the chosen N features per token.
3. Keep the top N features by ANOVA F on the training questions.
4. Train the paper's attention classifier (seeded), early-stopped on validation ROC-AUC.
5. Pick the threshold by Youden's J on validation.
6. Write the gate into the map file, with a report (JSON and ROC curve PNG).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaras_vllm.arg_types import positive_int


def add_gate_commands(subparsers: argparse._SubParsersAction) -> None:
    from adaras_vllm.pipeline.commands import add_engine_flags, add_task_flags

    gate = subparsers.add_parser("gate", help="train a map's correctness gate (adaptive mode)")
    commands = gate.add_subparsers(dest="gate_command", metavar="GATE_COMMAND", required=True)
    p = commands.add_parser(
        "train", help="label, capture, select features, train, and write the gate into a map",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_flags(p)
    p.add_argument("--neuron-map", type=Path, required=True, metavar="MAP",
                   help="the map the gate is for (its neurons are kept as they are)")
    p.add_argument("--problems", type=Path, required=True,
                   help="training problems (JSONL: math id, question, answer; or code: "
                        "id, question, tests)")
    p.add_argument("--validation", type=Path,
                   help="validation problems (default: --val-fraction of --problems)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of --problems held out for validation when --validation is "
                   "not given (default: %(default)s)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=Path, metavar="TRACES",
                        help="take labels from a traces file (a problem is 'good' when most "
                        "of its traces are) instead of answering each question greedily")
    labels.add_argument("--labels-field", metavar="FIELD",
                        help="take each problem's label from this field of its own line in "
                        "the problems files (the paper's AIME_train/validation carry its "
                        "baseline's is_good: how the paper trained its gate) instead of "
                        "answering each question greedily")
    p.add_argument("--features", type=positive_int, default=4096, metavar="N",
                   help="input features kept by F-score (paper: 4096; default %(default)s)")
    p.add_argument("--hidden", type=positive_int, default=256, metavar="H")
    p.add_argument("--epochs", type=positive_int, default=100)
    p.add_argument("--patience", type=positive_int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=positive_int, default=256,
                   help="answer length when labelling greedily (default %(default)s)")
    p.add_argument("--prompt-template", default="{question}",
                   help="the user message, as clients will send it (default: the question)")
    p.add_argument("--answer-pattern", metavar="REGEX")
    add_task_flags(p)
    p.add_argument("--out", type=Path,
                   help="where to write the map with its gate (default: --neuron-map itself)")
    p.set_defaults(func=run_gate_train)

    c = commands.add_parser(
        "copy", help="put one map's gate into another map of the same model",
        description="A gate predicts the unsteered model's correctness from the prompt: it "
        "depends on the model, not on the map's neurons, so maps of one model can share "
        "it. The target must have the source's shape (layers, intermediate size).")
    c.add_argument("source", type=Path, help="map with a gate")
    c.add_argument("target", type=Path, help="map to receive it (its neurons are kept)")
    c.add_argument("--out", type=Path, help="where to write (default: the target itself)")
    c.set_defaults(func=run_gate_copy)


def _split(problems: list, fraction: float, seed: int) -> tuple[list, list]:
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {fraction}")
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(problems) * fraction))
    val = sorted(order[:cut])
    train = sorted(order[cut:])
    return [problems[i] for i in train], [problems[i] for i in val]


def _labels_from_traces(path: Path) -> dict[str, bool]:
    from adaras_vllm.pipeline.traces import read_traces

    votes: dict[str, list[bool]] = {}
    for t in read_traces(path):
        votes.setdefault(t.id, []).append(t.is_good)
    return {pid: sum(v) * 2 > len(v) for pid, v in votes.items()}


def field_labels(path: Path, field: str) -> list[bool]:
    """``field`` of every line of a problems file, in file order (true/false, 1/0, "True")."""
    from adaras_vllm.jsonl import JsonLine, json_lines

    labels = []
    for lineno, obj in json_lines(path):
        line = JsonLine(path, lineno, obj)
        if field not in obj:
            raise line.error(f"has no {field!r} field (--labels-field {field})")
        labels.append(line.flag(field))
    return labels


def read_labelled(path: Path, task: str | None, field: str) -> tuple[str, list, dict[str, bool]]:
    """(task, problems, label by problem id) of a file whose lines carry their own label;
    repeated ids are numbered (``ID#2``), labels follow the lines."""
    from adaras_vllm.pipeline.tasks import read_task_problems

    task, problems = read_task_problems(path, task, number_repeats=True)
    return task, problems, dict(zip((p.id for p in problems), field_labels(path, field)))


def _label_source(args: argparse.Namespace) -> str:
    if args.labels is not None:
        return str(args.labels)
    if args.labels_field is not None:
        return f"field {args.labels_field!r} of the problems files"
    return "greedy unsteered answers"


def run_gate_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from adaras_vllm.maps import NeuronMap
    from adaras_vllm.pipeline.activations import ActivationCapture
    from adaras_vllm.pipeline.commands import engine_kwargs
    from adaras_vllm.pipeline.tasks import read_task_problems

    from .classifier import (
        TrainConfig,
        fold_into_gate,
        predict,
        roc_auc,
        train_classifier,
        youden_threshold,
    )
    from .features import FScore, top_features
    from .report import write_gate_report

    start = time.time()
    neuron_map = NeuronMap.load(args.neuron_map)
    from adaras_vllm.pipeline.tasks import check_grader

    given: dict[str, bool] | None = None
    val_given: dict[str, bool] = {}
    if args.labels_field is not None:
        args.task, problems, given = read_labelled(args.problems, args.task, args.labels_field)
    else:
        args.task, problems = read_task_problems(args.problems, args.task)
    if args.labels is None and args.labels_field is None:
        # before any engine: code labels need the sandbox
        check_grader(args.task, args.allow_unisolated, args.sandbox_python)
    if args.validation is not None and args.labels_field is not None:
        _, val, val_given = read_labelled(args.validation, args.task, args.labels_field)
        train = problems
    elif args.validation is not None:
        train, val = problems, read_task_problems(args.validation, args.task)[1]
    else:
        train, val = _split(problems, args.val_fraction, args.seed)
    every = train + val
    labels_given: list[bool] | None = None  # one per problem of `every`
    if args.labels is not None:
        given = _labels_from_traces(args.labels)
        missing = [p.id for p in every if p.id not in given]
        if missing:
            raise ValueError(f"--labels {args.labels} has no traces for problems "
                             f"{missing[:5]} ({len(missing)} in all)")
        labels_given = [given[p.id] for p in every]
    elif given is not None:  # --labels-field; the two files may reuse each other's ids
        labels_given = ([given[p.id] for p in train]
                        + [(val_given or given)[p.id] for p in val])
    engine = engine_kwargs(args)

    # 1 + 2a: label, render the served prompts, capture prompt means (one engine).
    with ActivationCapture(args.model, **engine) as cap:
        neuron_map.validate(cap.hf_text_config)
        prompt_ids, labels = _label_and_render(cap, every, labels_given, args)
        fscore = FScore(cap.shape)
        gate_inputs = [ids[:-1] for ids in prompt_ids]
        capturable = [i for i, ids in enumerate(gate_inputs) if len(ids) > 0]
        train_rows = set(range(len(train)))
        with tqdm(total=len(capturable), desc="capturing prompt means", unit="prompt") as bar:
            for j, mean in cap.means([gate_inputs[i] for i in capturable], bar.update):
                i = capturable[j]
                if i in train_rows:
                    fscore.add(mean, labels[i])
    f = fscore.scores()
    layers, neurons = top_features(f, args.features)
    print(f"selected {len(layers)} features by F-score (max F {f.max():.3g}) in layers "
          f"{sorted(set(layers.tolist()))}", flush=True)

    # 2b: per-token features of the chosen N (a second engine: the features are static).
    per_token: list[np.ndarray] = [np.zeros((0, len(layers)), np.float32)] * len(every)
    with ActivationCapture(args.model, token_features=(layers, neurons), **engine) as cap:
        with tqdm(total=len(capturable), desc="capturing gate features", unit="prompt") as bar:
            for j, _, feats in cap.features([gate_inputs[i] for i in capturable], bar.update):
                per_token[capturable[j]] = feats

    # 4: train; 5: threshold.
    n_train = len(train)
    train_y = [int(v) for v in labels[:n_train]]
    val_y = [int(v) for v in labels[n_train:]]
    config = TrainConfig(hidden=args.hidden, epochs=args.epochs, patience=args.patience,
                         lr=args.lr, seed=args.seed)
    with tqdm(total=config.epochs, desc="training the gate", unit="epoch") as bar:
        def progress(epoch: int, row: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_auc=f"{row['val_auc']:.3f}")

        result = train_classifier(per_token[:n_train], train_y, per_token[n_train:], val_y,
                                  config, progress)
    import torch

    def scores(rows: Sequence[np.ndarray]) -> list[float]:
        xs = [(torch.tensor(x) - result.mean) / result.std for x in rows]
        return predict(result.model, xs)

    p_train, p_val = scores(per_token[:n_train]), scores(per_token[n_train:])
    threshold = youden_threshold(val_y, p_val)
    auc_train, auc_val = roc_auc(train_y, p_train), roc_auc(val_y, p_val)
    provenance = {
        "gate_training_file": str(args.problems),
        "gate_validation": str(args.validation) if args.validation
        else f"{args.val_fraction:g} of the training file (seed {args.seed})",
        "gate_labels": _label_source(args),
        "gate_auc_train": f"{auc_train:.4f}", "gate_auc_validation": f"{auc_val:.4f}",
        "gate_n": str(len(layers)), "gate_h": str(args.hidden), "gate_seed": str(args.seed),
        "gate_model": str(args.model), "gate_prompt_template": args.prompt_template,
        "gate_best_epoch": str(result.best_epoch),
    }
    gate = fold_into_gate(result, layers.tolist(), neurons.tolist(), threshold, provenance)
    # The folded gate must give the same p_good as the trained one (up to float error).
    folded = [gate.score(torch.tensor(x)) for x in per_token[n_train:][:8]]
    assert np.allclose(folded, p_val[:8], atol=1e-4), (folded, p_val[:8])
    out = args.out or args.neuron_map
    _save_atomically(neuron_map.with_gate(gate), out)
    report = {
        "map": str(out), "model": str(args.model), "problems": str(args.problems),
        "train": {"n": n_train, "good": sum(train_y), "auc": auc_train},
        "validation": {"n": len(val_y), "good": sum(val_y), "auc": auc_val},
        "threshold": threshold, "features": len(layers), "hidden": args.hidden,
        "seed": args.seed, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "history": result.history,
        "confusion_validation": _confusion(val_y, p_val, threshold),
        "validation_p_good": {p.id: round(float(s), 6) for p, s in zip(val, p_val)},
        "seconds": round(time.time() - start, 1),
    }
    json_path, png_path = write_gate_report(out, report, val_y, p_val, train_y, p_train)
    print(f"gate: {len(layers)} features, hidden {args.hidden}, ROC-AUC train {auc_train:.3f}"
          f" validation {auc_val:.3f}, threshold {threshold:.4f} (steer iff p_good < it)")
    c = report["confusion_validation"]
    print(f"validation at the threshold: steered {c['steered_wrong']} of {c['wrong']} wrong "
          f"and {c['steered_right']} of {c['right']} right answers")
    print(f"wrote {out}, {json_path} and {png_path} in {report['seconds']:.0f} s")
    return 0


def _label_and_render(cap: Any, problems: Sequence[Any], given: list[bool] | None,
                      args: argparse.Namespace) -> tuple[list[list[int]], list[bool]]:
    """The served prompt's token ids for each problem, and whether the model (greedy,
    unsteered) answers it correctly (or its given label, one per problem)."""
    from vllm import SamplingParams

    from adaras_vllm.pipeline.tasks import grade_responses

    conversations = [[{"role": "user",
                       "content": args.prompt_template.format(question=p.question)}]
                     for p in problems]
    params = SamplingParams(max_tokens=1 if given is not None else args.max_tokens,
                            temperature=0.0)
    outputs = cap.llm.chat(conversations, params, use_tqdm=True)
    prompt_ids = [list(o.prompt_token_ids) for o in outputs]
    if given is not None:
        labels = list(given)
    else:
        graded = grade_responses(
            args.task, [(p, 0, o.outputs[0].text) for p, o in zip(problems, outputs)],
            answer_pattern=args.answer_pattern, workers=args.grader_workers,
            code_block=args.code_block, allow_unisolated=args.allow_unisolated,
            sandbox_python=args.sandbox_python)
        labels = [t.is_good for t in graded]
    good = sum(labels)
    print(f"labels: {good} right, {len(labels) - good} wrong of {len(labels)} "
          f"(from {_label_source(args)})",
          flush=True)
    return prompt_ids, labels


def _confusion(labels: Sequence[int], p_good: Sequence[float], threshold: float
               ) -> dict[str, int]:
    steer = [p < threshold for p in p_good]
    return {
        "right": sum(1 for y in labels if y), "wrong": sum(1 for y in labels if not y),
        "steered_right": sum(1 for y, s in zip(labels, steer) if y and s),
        "steered_wrong": sum(1 for y, s in zip(labels, steer) if not y and s),
    }


def _save_atomically(neuron_map: Any, path: Path) -> None:
    """Write next to ``path`` and rename: a crash never leaves half a map behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        neuron_map.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_gate_copy(args: argparse.Namespace) -> int:
    from adaras_vllm.maps import NeuronMap

    source, target = NeuronMap.load(args.source), NeuronMap.load(args.target)
    if source.gate is None:
        raise ValueError(f"{args.source} has no gate to copy (train one: adaras gate train)")
    shape = ("num_hidden_layers", "intermediate_size", "hidden_size")
    if any(source.metadata.get(k) != target.metadata.get(k) for k in shape):
        raise ValueError(
            f"{args.source} and {args.target} are for different model shapes "
            + ", ".join(f"{k} {source.metadata.get(k)} vs {target.metadata.get(k)}"
                        for k in shape))
    out = args.out or args.target
    _save_atomically(target.with_gate(source.gate), out)
    print(f"wrote {out}: map {target.name} with the gate of {args.source}")
    return 0
