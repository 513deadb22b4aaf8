"""Grid engine vs separate ``train.py`` processes on a sample of Mini-Beyond cells, side by side.

    python -m benchmarks.grid [--root data/mini_beyond] [--domain MiniPlants] [--shots 1 4 16] [--seeds 1]

Runs the sample twice: (a) through ``scripts.grid`` in this process (one model load, one feature
store), and (b) as the sweep's separate processes (``python train.py ...`` per cell; six
``lpclip.feat_extractor`` processes and one ``lpclip.linear_probe`` for the probe), each timed by its
wall clock. Prints per-cell seconds and ratios, then extrapolates the full Mini-Beyond grid
(8 methods × 5 shots × 3 seeds × 5 domains; zero-shot and the linear probe are one cell per domain /
ensemble) by this method, stated in the output too:

* per method, the mean measured cell cost over the sampled shot counts stands for every shot count;
* a cell's cost is scaled to another domain by its OOP class count (training and evaluation are
  linear in the number of few-shot images and test images, both proportional to C);
* the engine's fixed cost per domain (imports, model load, first encodings) is measured as the
  engine wall minus the sum of its cells, and added once per domain; the processes pay their own
  start-up inside every cell's time.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os
import resource
import subprocess
import tempfile
import time
from typing import Dict, List, Sequence

from dassl.cli import ArgumentParser
from scripts import grid
from scripts.domains import REPO_ROOT, count_classes
from scripts.sweep import SweepSpec, build_jobs
from tools.mini_beyond.demo import build_domains

MINI_DOMAINS = ("MiniAnimals", "MiniFood", "MiniPlants", "MiniAttire", "MiniTransport")
TRAINED = ("fsnl", "coop", "cocoop", "clip_adapter", "taskres")
ONCE_PER_DOMAIN = ("zeroshot", "zeroshot_ensemble", "linear_probe")


def _processes(cell: grid.Cell, root: str, out: str) -> List[List[str]]:
    """The separate commands of one cell (the sweep's), into ``out``."""
    if cell.run is not None:
        argv = list(cell.run.argv(root, sys.executable))
        argv[argv.index("--output-dir") + 1] = os.path.join(out, os.path.relpath(cell.output_dir, "/"))
        return [argv]
    spec = SweepSpec(method="linear_probe", root=root, out=out, domains=[cell.dataset], config_set="mini")
    return [[sys.executable, *job.argv[1:]] for job in build_jobs(spec)]


def main(argv: Sequence[str] = ()) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data/mini_beyond")
    p.add_argument("--domain", default="MiniPlants")
    p.add_argument("--methods", nargs="+", default=["zeroshot", "zeroshot_ensemble", *TRAINED, "linear_probe"])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--views", type=int, default=grid.DEFAULT_VIEWS)
    args = p.parse_args(list(argv) or None)
    root = os.path.abspath(args.root)
    present = os.listdir(root) if os.path.isdir(root) else []
    missing = [d for d in MINI_DOMAINS if not any(f.startswith(d) and f.endswith("_OOP") for f in present)]
    if missing:
        build_domains(root, missing)  # seconds; every domain's class count is read from disk
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        cells = grid.plan_grid(root, os.path.join(tmp, "engine"), [args.domain], args.methods, args.shots,
                               args.seeds, config_set="mini", views=args.views)
        summary = grid.run_grid(cells)
        engine_wall = time.time() - start
        if summary.failed:
            print(f"engine failures: {summary.failed}", file=sys.stderr)
            return 1
        proc: Dict[str, float] = {}
        for cell in cells:
            t0 = time.time()
            for cmd in _processes(cell, root, os.path.join(tmp, "proc")):
                subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            proc[cell.label] = time.time() - t0

    cell_sum = sum(summary.seconds.values())
    fixed = engine_wall - cell_sum
    print(f"\nSample: {args.domain}, methods {' '.join(args.methods)}, shots {args.shots}, seeds {args.seeds}, "
          f"views {args.views}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n")
    print("| cell | engine (s) | train.py process (s) | ratio |")
    print("|---|---|---|---|")
    for cell in cells:
        e, s = summary.seconds[cell.output_dir], proc[cell.label]
        print(f"| {cell.label} | {e:.2f} | {s:.2f} | {s / e:.1f}x |")
    total_proc = sum(proc.values())
    print(f"| **sample total** | **{engine_wall:.1f}** (cells {cell_sum:.1f} + fixed {fixed:.1f}) | "
          f"**{total_proc:.1f}** | **{total_proc / engine_wall:.1f}x** |")
    print(f"\nencoder: {summary.encoded} image-views encoded by the engine's feature stores; peak RSS of the "
          f"engine process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    # Extrapolation to the full grid (method in the module docstring).
    c_sample = count_classes(root, args.domain, "OOP")
    scale = sum(count_classes(root, d, "OOP") for d in MINI_DOMAINS) / c_sample
    per_method_e: Dict[str, float] = {}
    per_method_p: Dict[str, float] = {}
    for m in args.methods:
        mine = [c for c in cells if c.method.name == m]
        per_method_e[m] = sum(summary.seconds[c.output_dir] for c in mine) / len(mine)
        per_method_p[m] = sum(proc[c.label] for c in mine) / len(mine)
    cells_per_domain = {m: (1 if m in ONCE_PER_DOMAIN else 5 * 3) for m in args.methods}
    est_e = sum(per_method_e[m] * cells_per_domain[m] for m in args.methods) * scale + fixed * len(MINI_DOMAINS)
    est_p = sum(per_method_p[m] * cells_per_domain[m] for m in args.methods) * scale
    n_cells = sum(cells_per_domain.values()) * len(MINI_DOMAINS)
    print(f"\nFull Mini-Beyond grid ({len(args.methods)} methods, shots 1 2 4 8 16 × seeds 1 2 3 for the trained "
          f"ones, 5 domains: {n_cells} cells), extrapolated from this sample (per-method mean cell cost over the "
          f"sampled shots, scaled by OOP classes: Σ C_d / C_{args.domain} = {scale:.2f}; engine fixed cost once "
          f"per domain):")
    print(f"  engine  ≈ {est_e / 60:.1f} min")
    print(f"  separate train.py processes ≈ {est_p / 60:.1f} min")
    print(f"  ratio ≈ {est_p / est_e:.1f}x   (an estimate, not a measurement of the full grid)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
