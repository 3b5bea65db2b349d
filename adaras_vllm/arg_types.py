"""argparse types shared by every command group (a leaf module: it imports nothing of ours)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: an integer above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value
