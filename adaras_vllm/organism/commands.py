"""`adaras organism problems` and `adaras organism train`: reproduce the organism."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_organism_commands(subparsers: argparse._SubParsersAction) -> None:
    org = subparsers.add_parser("organism", help="the self-trained arithmetic model organism")
    commands = org.add_subparsers(dest="organism_command", metavar="ORGANISM_COMMAND",
                                  required=True)
    probs = commands.add_parser(
        "problems", help="write a split of the task in the paper's problems format",
        description="Chains of 2-4 additions/subtractions of 2-digit numbers; splits are "
        "disjoint by construction (a question's split is a hash of its text).",
    )
    probs.add_argument("--split", choices=("train", "validation", "test"), required=True)
    probs.add_argument("--n", type=int, required=True, help="number of distinct problems")
    probs.add_argument("--seed", type=int, default=0)
    probs.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    probs.set_defaults(func=_problems)

    train = commands.add_parser(
        "train", add_help=False,
        help="train the organism from scratch (see `adaras organism train --help`)",
    )
    train.set_defaults(func=None)


def _problems(args: argparse.Namespace) -> int:
    from .task import generate_split, write_problems

    if args.n <= 0:
        raise ValueError(f"--n must be a positive integer, got {args.n}")
    path = write_problems(args.out, generate_split(args.split, args.n, args.seed))
    print(f"wrote {path}: {args.n} {args.split} problems (seed {args.seed})")
    return 0
