"""FSNL batch-size / learning-rate rule (spec §8.3) with the class count read from disk.

``BS = min(K, 4) · C`` (one full-set batch per epoch up to 4 shots) and ``LR = BS / 128 · 2e-4``
(linear scaling from the config's 128 / 2e-4). Two deliberate departures from the reference scripts
(B33): ``C`` is counted from the OOP split under ``--root`` instead of a hard-coded 400M table, so the
2B/5B variants and toy data get their own batch size; and the LR is a float, not ``bc``'s value
truncated to 8 decimals (``.00013906`` for Pokemon 1-shot, where the rule gives 1.390625e-4).

    python -m scripts.fsnl_rule --root DATA --dataset Animals --shots 4     # prints "368 0.000575"
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import argparse
from typing import List, Optional, Tuple

from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from scripts.domains import DomainError, count_classes, resolve_domain

__all__ = ["BASE_BATCH_SIZE", "BASE_LR", "MAX_SHOTS_PER_BATCH", "fsnl_bs_lr", "format_lr", "fsnl_rule_for", "main"]

BASE_BATCH_SIZE = 128
BASE_LR = 2e-4
MAX_SHOTS_PER_BATCH = 4


def fsnl_bs_lr(num_classes: int, shots: int) -> Tuple[int, float]:
    """Batch size and learning rate of an FSNL run on ``num_classes`` OOP classes with ``shots`` shots."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    bs = min(shots, MAX_SHOTS_PER_BATCH) * num_classes
    return bs, bs / BASE_BATCH_SIZE * BASE_LR


def format_lr(lr: float) -> str:
    """Shortest decimal text of the LR: used in commands and output-directory names (``0.000575``)."""
    # 12 significant digits hide the last-bit noise of the division and keep every exact value.
    return f"{lr:.12g}"


def fsnl_rule_for(root: str, dataset: str, shots: int) -> Tuple[int, float]:
    """The rule applied to the OOP classes of ``dataset`` found under ``root``."""
    return fsnl_bs_lr(count_classes(root, resolve_domain(dataset), "OOP"), shots)


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="dataset root holding <Prefix><n>_OOP/ folders")
    parser.add_argument("--dataset", required=True, help="registered name (Animals92_42) or short name (Animals)")
    parser.add_argument("--shots", type=int, required=True, help="shots per class K")
    args = parser.parse_args(argv)
    try:
        bs, lr = fsnl_rule_for(args.root, args.dataset, args.shots)
    except (DomainError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{bs} {format_lr(lr)}")
    return 0


if __name__ == "__main__":
    exit_with(main)
