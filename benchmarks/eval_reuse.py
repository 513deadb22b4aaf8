"""Evaluation-feature reuse across runs: the evaluation of a run whose test features are cached.

    python -m tools.mini_beyond build --root data/mini_beyond
    python -m benchmarks.eval_reuse --root data/mini_beyond [--dataset MiniAnimals] [--trainer ZeroshotCLIP_openclip]

Two runs of the same trainer in one process, each with a fresh trainer and an empty ``shared``
dict, against one empty temporary ``TEST.FEATURE_CACHE_DIR``: the first encodes the OOP and IP test
images (the OOP->IP cross-evaluation included), the second reads them from the on-disk cache. The
script prints the time of ``finalize()`` (evaluation + cross-evaluation + results.json) of each run,
their ratio, and checks that both give the same numbers.
"""
from __future__ import annotations

import logging
import os.path as osp
import sys
import tempfile
import time
from pathlib import Path

from dassl.cli import ArgumentParser

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import build_cfg  # noqa: E402
from dassl.engine import build_trainer  # noqa: E402
from dassl.utils import set_random_seed  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="Mini-Beyond (or LAION-Beyond) root")
    parser.add_argument("--dataset", default="MiniAnimals")
    parser.add_argument("--trainer", default="ZeroshotCLIP_openclip")
    parser.add_argument("--config", default="mini_cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    times, results = [], []
    with tempfile.TemporaryDirectory(prefix="eval_reuse_") as tmp:
        for run in (1, 2):
            cfg = build_cfg(trainer=args.trainer, dataset=args.dataset, config=args.config, root=args.root,
                            output_dir=osp.join(tmp, f"run{run}"), seed=1,
                            opts=["TEST.FEATURE_CACHE_DIR", osp.join(tmp, "cache"), "TEST.ALLOW_UNTRAINED", "True"])
            set_random_seed(1)
            trainer = build_trainer(cfg, eval_only=True)
            t0 = time.perf_counter()
            results.append(trainer.finalize())
            times.append(time.perf_counter() - t0)
    same = all(results[0].get(k) == results[1].get(k) for k in ("oop", "ip", "hmean", "accuracy"))
    print(f"{args.trainer} on {args.dataset}: evaluation (OOP + IP cross-evaluation) "
          f"first run {times[0]:.2f} s (encodes), second run {times[1]:.2f} s (cached): "
          f"{times[0] / times[1]:.0f}x; identical results: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
