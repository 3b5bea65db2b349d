"""`adaras maps calibrate`: run the calibration grid on validation problems in one engine and
write the chosen defaults into the map, with the grid's every cell beside it.

The rule and the grid are written to ``MAP.calibration.json`` before the engine starts, so
the record shows what was decided before any answer existed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adaras_vllm.maps.map_metadata import POSITIONS

from .calibration import (DEFAULT_MAGNITUDES, DEFAULT_NEURONS, GRID_MODES, Calibration,
                          CalibrationRule, Grid, summary_row)


def _numbers(kind: type, flag: str) -> Any:
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be comma-separated {kind.__name__}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one value, got {text!r}")
        return tuple(sorted(set(values)))
    return parse


def _names(flag: str, allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(
                f"{flag} must be comma-separated from {', '.join(allowed)}, got {text!r}")
        return values
    return parse


def _rule(text: str) -> CalibrationRule:
    try:
        return CalibrationRule.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    from adaras_vllm.pipeline.commands import add_engine_flags, add_task_flags

    p = commands.add_parser(
        "calibrate", help="choose a map's sign, strength, neuron count, positions and mode on "
        "validation problems, by a pre-registered rule",
        description="Answer the validation problems under every setting of the grid (both "
        "signs of every --alphas magnitude x --neurons x --positions x --modes, plus off) "
        "in one engine, pick a setting by the rule (written down before the run), and write "
        "the map with default_alpha, default_positions, default_mode and calibration_* "
        "provenance, MAP.calibration.json (every cell) and MAP.calibration.png (heatmaps).",
    )
    add_engine_flags(p)
    p.set_defaults(max_num_seqs=256)
    p.add_argument("--neuron-map", required=True, metavar="MAP",
                   help="the map to calibrate (a file, or a shipped map's name); top-N keeps "
                   "its N best-ranked neurons")
    p.add_argument("--problems", type=Path, required=True,
                   help="validation problems (JSONL, as adaras eval reads them); never the "
                   "test split")
    add_task_flags(p)
    p.add_argument("--alphas", type=_numbers(float, "--alphas"), default=DEFAULT_MAGNITUDES,
                   metavar="A,A", help="magnitudes; each is tried at +A and -A (default: "
                   + ",".join(f"{a:g}" for a in DEFAULT_MAGNITUDES) + ")")
    p.add_argument("--neurons", type=_numbers(int, "--neurons"), default=None, metavar="N,N",
                   help="top-N counts to try (default: those of "
                   + ",".join(map(str, DEFAULT_NEURONS)) + " below the map's size, and its size)")
    p.add_argument("--positions", type=_names("--positions", POSITIONS), default=POSITIONS,
                   metavar="P,P", help=f"steer_positions values (default: {','.join(POSITIONS)})")
    p.add_argument("--modes", type=_names("--modes", GRID_MODES), default=None, metavar="M,M",
                   help="steer_mode values (default: always,adaptive when the map has a gate, "
                   "else always)")
    p.add_argument("--rule", type=_rule, default=CalibrationRule(), metavar="p=P,broken=S",
                   help="the rule's thresholds: McNemar p below P against off, right->wrong "
                   "at most S of the answers off gets right (default: p=0.05,broken=0.05)")
    p.add_argument("--out", type=Path, metavar="MAP",
                   help="where the calibrated map goes (default: over --neuron-map; a shipped "
                   "map named by bare name needs --out)")
    p.add_argument("--limit", type=int, help="only the first N problems (a quick look)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-template", default="{question}")
    p.add_argument("--answer-pattern", metavar="REGEX")
    p.set_defaults(func=run_calibrate)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_calibrate(args: argparse.Namespace) -> int:
    from adaras_vllm.maps import NeuronMap
    from adaras_vllm.maps.shipped import resolve_map_path
    from adaras_vllm.pipeline.commands import engine_kwargs
    from adaras_vllm.pipeline.tasks import check_grader, read_task_problems

    from .calibration import decide
    from .calibration_plot import plot_calibration
    from .runner import AskSettings, ask_offline
    from .summary import format_table, summarize

    from adaras_vllm.engine.params import MAX_ALPHA_ENV, max_steer_alpha

    map_path = resolve_map_path(args.neuron_map)
    if args.out is None and map_path != Path(args.neuron_map).expanduser():
        raise ValueError(f"--neuron-map {args.neuron_map} is a shipped map ({map_path}); give "
                         "--out for the calibrated copy rather than overwrite the shipped one")
    bound = max_steer_alpha()
    over = [a for a in args.alphas if a > bound]
    if over:
        raise ValueError(f"--alphas {','.join(f'{a:g}' for a in over)} exceed the engine's "
                         f"bound {bound:g} on |steer_alpha| ({MAX_ALPHA_ENV}); give magnitudes "
                         f"up to {bound:g} or raise {MAX_ALPHA_ENV}")
    base = NeuronMap.load(map_path)
    total = base.num_neurons
    neurons = args.neurons or tuple(sorted({n for n in DEFAULT_NEURONS if n < total} | {total}))
    too_many = [n for n in neurons if n > total]
    if too_many:
        raise ValueError(f"--neurons {','.join(map(str, too_many))} exceed the map's {total} "
                         f"neurons ({map_path}); give counts up to {total}")
    modes = args.modes or (GRID_MODES if base.gate is not None else ("always",))
    if "adaptive" in modes and base.gate is None:
        raise ValueError(f"--modes adaptive needs a map with a correctness gate; {map_path} has "
                         "none (train one: adaras gate train, or copy one: adaras gate copy)")
    grid = Grid(args.alphas, neurons, args.positions, modes)
    task, problems = read_task_problems(args.problems, args.task)
    problems = problems[: args.limit]
    if not problems:
        raise ValueError(f"--problems {args.problems} has no problems"
                         + (f" (after --limit {args.limit})" if args.limit is not None else ""))
    sandbox = check_grader(task, args.allow_unisolated, args.sandbox_python)
    out = args.out or map_path
    record_path = out.with_suffix(".calibration.json")
    record: dict[str, Any] = {
        "status": "registered: rule and grid written before the run",
        "rule": args.rule.describe(), "rule_thresholds": {
            "p": args.rule.max_p, "broken": args.rule.max_broken_share},
        "grid": grid.to_dict(),
        "map": {"path": str(map_path), "sha256": _sha256(map_path), "name": base.name,
                "neurons": total, "gate": base.gate is not None},
        "problems": {"path": str(args.problems), "sha256": _sha256(args.problems),
                     "n": len(problems), "task": task},
        "model": args.model, "max_tokens": args.max_tokens, "temperature": 0.0,
        "seed": args.seed, "sandbox": sandbox,
        "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(record_path, record)
    settings = grid.settings()
    print(f"calibrating {base.name} ({total} neurons) on {len(problems)} {task} problems: "
          f"{len(settings) - 1} cells + off = {len(settings) * len(problems)} answers in one "
          f"engine; rule: {args.rule.describe()}", flush=True)
    ask = AskSettings(max_tokens=args.max_tokens, temperature=0.0, seed=args.seed,
                      prompt_template=args.prompt_template, answer_pattern=args.answer_pattern,
                      task=task, grader_workers=args.grader_workers, code_block=args.code_block,
                      allow_unisolated=args.allow_unisolated, sandbox_python=args.sandbox_python)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="adaras-calibrate-") as tmp:
        maps = {}
        for n in neurons:
            maps[f"top{n}"] = str(Path(tmp) / f"top{n}.safetensors")
            base.top(n).renamed(f"top{n}").save(maps[f"top{n}"])
        graded = ask_offline(args.model, maps, problems, settings, ask,
                             engine_kwargs=engine_kwargs(args))
    seconds = time.monotonic() - start
    summaries = summarize(graded)
    calibration = decide(summaries, args.rule)
    print(format_table(sorted(summaries, key=lambda s: -s.correct)[:12]))
    record.update(status="done", seconds=round(seconds, 1), off=summary_row(calibration.off),
                  chosen=None if calibration.chosen is None else summary_row(calibration.chosen),
                  recommendation=calibration.recommendation, cells=calibration.cell_rows())
    _write_json(record_path, record)
    calibrated = calibrated_map(base, calibration, record)
    calibrated.save(out)
    png = out.with_suffix(".calibration.png")
    plot_calibration(png, calibration, grid, f"{base.name} on {args.problems.name}")
    print(_verdict(calibration) + f"\n{len(settings) * len(problems)} answers in {seconds:.0f} s;"
          f" wrote {out}, {record_path} and {png}")
    return 0


def calibrated_map(base: Any, calibration: Calibration, record: dict[str, Any]) -> Any:
    """``base`` (its chosen top-N when steering is recommended) with the recommendation as
    its defaults and the calibration's provenance in ``calibration_*`` metadata."""
    rec = calibration.recommendation
    chosen = base.top(rec["neurons"]) if rec["neurons"] not in (None, base.num_neurons) else base
    off, c = calibration.off, calibration.chosen
    validation = {"n": off.n, "off_accuracy": off.accuracy, "off_ci95": list(off.ci95)}
    if c is not None:
        validation.update(accuracy=c.accuracy, ci95=list(c.ci95), right_to_wrong=c.right_to_wrong,
                          wrong_to_right=c.wrong_to_right, mcnemar_p=c.mcnemar_p)
    compact = lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True)  # noqa: E731
    return chosen.with_metadata({
        "default_alpha": repr(float(rec["default_alpha"])),
        "default_positions": rec["default_positions"],
        "default_mode": rec["default_mode"],
        "calibration_recommendation": "steer" if rec["steer"] else "off",
        "calibration_rule": record["rule"],
        "calibration_grid": compact(record["grid"]),
        "calibration_chosen": compact(None if c is None else {
            "alpha": c.alpha, "neurons": rec["neurons"], "positions": rec["default_positions"],
            "mode": c.mode}),
        "calibration_validation": compact(validation),
        "calibration_map_sha256": record["map"]["sha256"],
        "calibration_problems": Path(record["problems"]["path"]).name,
        "calibration_problems_sha256": record["problems"]["sha256"],
        "calibration_model": str(record["model"]),
        "calibration_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def _verdict(calibration: Calibration) -> str:
    off = calibration.off
    c = calibration.chosen
    if c is None:
        return (f"no setting qualified (off: {100 * off.accuracy:.1f} %): recommend off, "
                "default_alpha 0")
    return (f"chosen: top{calibration.recommendation['neurons']}, alpha {c.alpha:g}, "
            f"positions {c.positions}, mode {c.mode}: {100 * c.accuracy:.1f} % "
            f"[{100 * c.ci95[0]:.1f}, {100 * c.ci95[1]:.1f}] vs off {100 * off.accuracy:.1f} %, "
            f"right->wrong {c.right_to_wrong}, wrong->right {c.wrong_to_right}, "
            f"McNemar p {c.mcnemar_p:.3g}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
