"""``python -m tools.mini_beyond <job>``: the command line of the Mini-Beyond jobs (one module each)."""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python tools/mini_beyond/__main__.py): the repo root first, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import logging
import os
import re
from typing import Optional, Sequence

import torch

from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import usable_cpus
from tools.mini_beyond import __doc__ as package_doc
from tools.mini_beyond import build, demo, evaluate, golden, pretrain, render
from tools.mini_beyond.common import ASSETS_DIR, DOMAINS, LOG_FILE, WEIGHTS_FILE, domain_names, load_assets


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(prog="python -m tools.mini_beyond", description=package_doc.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render emoji and write arrays, metadata, licence and split")
    r.add_argument("--assets", type=Path, default=ASSETS_DIR)
    r.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("split", help="recompute split.json from emoji_meta.json")
    s.add_argument("--assets", type=Path, default=ASSETS_DIR)
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("pretrain", help="pre-train mini-clip on the pre-training corpus")
    t.add_argument("--out", type=Path, default=ASSETS_DIR / WEIGHTS_FILE)
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--minutes", type=float, default=None, help="derive the step count from a time budget")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=pretrain.default_threads(),
                   help="torch threads (default: 2, as the shipped weights were trained, or the usable cores if fewer)")
    e = sub.add_parser("eval", help="zero-shot / k-means accuracy of a mini-clip weights file")
    e.add_argument("--weights", type=Path, default=ASSETS_DIR / WEIGHTS_FILE)
    d = sub.add_parser("demo", help="the README's main job: build, zero-shot + FSNL at 4 shots, table, plot")
    demo.add_arguments(d)
    c = sub.add_parser("compare", help="the full comparison: every method x shots x seeds x domain (scripts.grid), "
                                       "tables and curves into docs/results/")
    c.add_argument("--root", default="data/mini_beyond")
    c.add_argument("--out", default="output/mini_beyond_compare")
    c.add_argument("--domains", nargs="+", default=list(demo.DOMAINS))
    c.add_argument("--methods", nargs="+", default=list(demo.COMPARE_METHODS))
    c.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    c.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    c.add_argument("--results", default=demo.COMPARISON_RESULTS,
                   help="tables' path prefix (default: docs/results/mini_beyond_comparison in the repository)")
    c.add_argument("--workers", type=int, default=0, help="grid worker processes (0: one per core)")
    c.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
    g = sub.add_parser("golden", help="re-measure the golden numbers of tests/test_golden_mini_beyond.py")
    g.add_argument("--domain", default="MiniAttire")
    b = sub.add_parser("build", help="write the Mini-Beyond benchmark in the LAION-Beyond layout")
    b.add_argument("--root", type=Path, required=True, help="folder to write the benchmark into (LAION-Beyond layout)")
    b.add_argument("--train", type=int, default=16, help="training images per class")
    b.add_argument("--val", type=int, default=4, help="validation images per class")
    b.add_argument("--test", type=int, default=10, help="test images per class")
    b.add_argument("--seed", type=int, default=0, help="seed of the rendered views and the split")
    b.add_argument("--size", type=int, default=64, help="image side in pixels")
    b.add_argument("--domains", nargs="*", default=None,
                   help="domains to build (Animals or MiniAnimals, ...; default: all five)")
    b.add_argument("--force", action="store_true",
                   help="replace folders of a requested domain that no earlier build recorded")
    args = p.parse_args(argv)
    try:
        check(args)
    except (ValueError, OSError) as err:  # bad counts or names, a missing input, an output target refused
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # after the checks: their INFO lines (open_clip building a model to compare shapes) came before the error
    if args.cmd not in ("demo", "golden", "compare"):  # those runs log through dassl's own handlers
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(args)


#: A LAION-Beyond subset folder's name (``<Prefix><classes>_<OOP|IP>``), of any domain.
_SUBSET_FOLDER = re.compile(r"[A-Za-z]\w*?\d+_(?:OOP|IP)")


def check_build_root(root: str) -> None:
    """``build --root`` neither inside the shipped assets (domain folders and a build stamp were written
    among the renderer's inputs) nor inside another domain's subset folder (Food was built inside
    MiniPlants9_OOP, and a later build of that root offered to delete it as foreign)."""
    real = os.path.realpath(root)
    assets = os.path.realpath(ASSETS_DIR)
    if real == assets or real.startswith(assets + os.sep):
        raise ValueError(f'--root "{root}" lies inside the shipped assets "{ASSETS_DIR}"; build into another folder')
    head = real
    while head != os.path.dirname(head):
        if _SUBSET_FOLDER.fullmatch(os.path.basename(head)):
            raise ValueError(f'--root "{root}" lies inside the dataset folder "{head}"; build into a folder outside it')
        head = os.path.dirname(head)


def check(args) -> None:
    """The user mistakes of one job, raised (``ValueError`` / ``OSError``, one line) before it reads,
    writes or computes anything; :func:`main` prints them as the ``error:`` line. What fails later is
    a bug and keeps its traceback (``build`` interleaves its checks with the work and says them itself)."""
    if args.cmd == "render":
        render.check_render_inputs(args.assets)
    elif args.cmd == "split":
        render.read_meta(args.assets)
    elif args.cmd == "pretrain":
        pretrain.check_pretrain_args(args.out, args.out.with_name(LOG_FILE), args.steps, args.minutes,
                                     args.batch_size, args.lr, args.threads, corpus=pretrain.corpus_size())
    elif args.cmd == "eval":
        evaluate.check_weights(args.weights)
    elif args.cmd == "demo":
        demo.check_demo_args(args.root, args.out, args.domains, args.shots, args.seed, args.threads)
    elif args.cmd == "compare":
        demo.check_compare_args(args.root, args.out, args.domains, args.shots, args.seeds, args.methods,
                                args.results, args.workers, args.threads)
    elif args.cmd == "golden":  # a typo was a traceback from inside the build, naming --domains
        name = domain_names([args.domain], option="--domain")[0]
        args.domain = next(d.prefix for d in DOMAINS if d.name == name)
    elif args.cmd == "build":
        if os.path.exists(args.root) and not os.path.isdir(args.root):
            raise NotADirectoryError(f'--root "{args.root}" is a file; give a folder for the benchmark')
        check_build_root(str(args.root))
        if args.domains is not None:
            domain_names(args.domains)


def run(args) -> None:
    """One job, after :func:`check`."""
    if args.cmd == "render":
        render.write_assets(args.assets, args.seed)
    elif args.cmd == "split":
        render.write_split(args.assets, args.seed)
    elif args.cmd == "pretrain":
        rec = pretrain.pretrain(args.out, steps=args.steps, minutes=args.minutes, seed=args.seed,
                       batch_size=args.batch_size, lr=args.lr, threads=args.threads)
        print(evaluate.format_eval(rec["eval"]))
        print(f"{rec['steps']} steps, {rec['train_wall_s'] / 60:.1f} min")
    elif args.cmd == "eval":
        torch.set_num_threads(2)
        model, tok = evaluate.create_mini_clip(args.weights)
        print(evaluate.format_eval(evaluate.evaluate(model, tok, load_assets())))
    elif args.cmd == "demo":
        raise SystemExit(demo.main_from_args(args))
    elif args.cmd == "compare":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        failed = demo.run_comparison(args.root, args.out, args.domains, args.shots, args.seeds, args.methods,
                                     results=args.results, workers=args.workers, threads=args.threads)
        if failed:
            print("Failed cells:\n  " + "\n  ".join(failed))
            sys.exit(1)
    elif args.cmd == "golden":
        torch.set_num_threads(usable_cpus())
        golden.write_golden(args.domain)
    elif args.cmd == "build":
        try:
            dirs = build.build(args.root, args.train, args.val, args.test, args.seed, args.size, args.domains,
                               force=args.force)
        except (ValueError, OSError) as err:  # bad counts, an unknown domain, a file or a foreign folder in the way
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        for d in dirs:
            print(d)

if __name__ == "__main__":
    exit_with(main)
