"""``demo``: the README's main job, Mini-Beyond end to end on a CPU, in a few minutes.

    python -m tools.mini_beyond demo [--root data/mini_beyond] [--out output/mini_beyond_demo]

1. builds Mini-Beyond into ``--root`` (seconds; skipped when it is already there),
2. runs zero-shot CLIP and FSNL at 4 shots (seed 1) on the five domains, through the same sweep
   generator (``scripts.sweep``) users run on LAION-Beyond, skipping finished runs,
3. prints the OOP / IP / H-mean table per domain with the average and the zero-shot row, and saves
   the accuracy-vs-shots figure.

The runs execute in this process (``train.main``), which saves a few seconds of imports per run.

The Mini-Beyond recipe lives here and only here: the ``mini_cpu`` configs (:data:`MINI_CONFIG`) plus
FSNL's epochs and LR factor (:data:`FSNL_EPOCHS`, :data:`FSNL_LR_SCALE`), applied by
:func:`demo_jobs`, which the demo, the golden numbers and the full comparison all use.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import resource
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch

import train
from dassl import results
from dassl.utils import check_cpu_option, check_writable_dir, usable_cpus, write_json
from dassl.utils.identity import code_version
from datasets.laion_beyond import SUBSETS, subset_dir_regex
from scripts.domains import short_name
from scripts.grid import auto_workers, plan_grid, run_grid
from scripts.methods import get_method
from scripts.parse_test_res import (
    check_output_target,
    collect,
    json_recogniser,
    written_csv,
    written_json,
    written_md,
)
from scripts.parse_test_res import main as parse_main
from scripts.plot_curves import check_figure_targets, plot_curves
from scripts.plot_curves import main as plot_main
from scripts.sweep import SweepSpec, build_jobs, check_counts, split_done

from .build import build

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The comparison's tables and figures: committed in the repository, wherever the command runs from.
COMPARISON_RESULTS = os.fspath(REPO_ROOT / "docs" / "results" / "mini_beyond_comparison")
DOMAINS = ("MiniAnimals", "MiniFood", "MiniPlants", "MiniAttire", "MiniTransport")
#: The registry's config set (``mini_cpu`` configs) and rule of Mini-Beyond (scripts/methods.py).
MINI_CONFIG_SET = "mini"
#: Training images per class of the benchmark the demo, the comparison and the golden runs build: the
#: largest shot count they accept.
TRAIN_PER_CLASS = 16
#: The demo's figure, inside ``--out``.
DEMO_FIGURE = "accuracy_vs_shots"

logger = logging.getLogger(__name__)


def build_domains(root: str, domains: Sequence[str]) -> None:
    """Build the given registered Mini-Beyond datasets (``MiniAnimals`` → builder domain ``Animals``)."""
    build(Path(root), train=TRAIN_PER_CLASS, domains=list(domains))


def absolute(path: str) -> str:
    """A user's path as the shell means it: relative to the current directory. Before, ``--root``,
    ``--out`` and ``--results`` were taken relative to the repository while their checks looked at the
    current directory: ``demo --root mb`` run elsewhere built the benchmark inside the repository."""
    return os.path.abspath(os.fspath(path))


@contextlib.contextmanager
def in_repository() -> Iterator[None]:
    """Run a sweep job where its command line is meant to run: the repository root (its ``configs/...``
    paths are relative to it; its root and output folders are absolute). Run elsewhere, every job of the
    demo failed with a traceback for ``configs/datasets/<domain>.yaml``."""
    previous = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        yield
    finally:
        os.chdir(previous)


def check_common_args(root: str, out: str, domains: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
                      threads: int) -> None:
    """The mistakes the demo and the comparison share, refused in one line (``ValueError`` / ``OSError``)
    before the build: each was a traceback after building (a ``--root`` file, an unknown domain, ``--shots
    0``) or a failure of every run (``--out`` a file, shots above the built train images)."""
    check_cpu_option(threads)
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f'--root "{root}" is a file; give a folder for the benchmark')
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"--domains {' '.join(unknown)}: not a Mini-Beyond domain; choose from {', '.join(DOMAINS)}")
    check_counts(shots, seeds)
    too_many = sorted({int(k) for k in shots if int(k) > TRAIN_PER_CLASS})
    if too_many:
        raise ValueError(f"--shots {' '.join(map(str, too_many))}: Mini-Beyond is built with {TRAIN_PER_CLASS} "
                         f"training images per class; use shot counts <= {TRAIN_PER_CLASS}")
    check_writable_dir(out, what="output directory (--out)", create=False)
    inside = os.path.relpath(absolute(out), absolute(root)).split(os.sep)[0]
    # the folders the build will make, by the loader's own pattern (every job's traceback before)
    if any(subset_dir_regex(d, sub).fullmatch(inside) for d in domains for sub in SUBSETS):
        raise ValueError(f'--out "{out}" lies inside the dataset folder "{os.path.join(root, inside)}"; use a folder '
                         "outside it")


def run_jobs_in_process(jobs: Sequence, quiet: bool = True) -> List[str]:
    """Run pending sweep jobs with ``train.main`` (same argv as the shell commands); return failures.

    With ``quiet`` each run's log goes only to its ``log.txt`` and one summary line is printed.
    """
    pending, done = split_done(jobs, cwd=os.fspath(REPO_ROOT))
    print(f"{len(pending)} run(s) to do, {len(done)} already finished", flush=True)
    failed = []
    for i, job in enumerate(pending, 1):
        argv = list(job.argv)
        start = time.time()
        sink = io.StringIO()
        try:
            with in_repository(), contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
                if argv[1] == "-m":  # e.g. the linear probe's python -m lpclip.* steps
                    rc = importlib.import_module(argv[2]).main(argv[3:])
                    if rc:
                        raise RuntimeError(f"exit code {rc}")
                else:
                    train.main(train.parse_args(argv[2:]))
        except Exception as e:  # one failed run must not lose the others
            logger.error("run failed: %s\n%s", job.label, sink.getvalue()[-4000:], exc_info=True)
            failed.append(f"{job.label}: {e}")
            continue
        res = results.read_results(job.done).data if job.done.endswith(results.RESULTS_FILE) else {}
        parts = [f"{k.upper()} {res[k]:.2f}" for k in ("oop", "ip", "hmean") if isinstance(res.get(k), float)]
        print(f"[{i}/{len(pending)}] {job.label}: {', '.join(parts)} ({time.time() - start:.0f} s)", flush=True)
    return failed


def demo_jobs(root: str, out: str, domains: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
              methods: Sequence[str] = ("zeroshot", "fsnl"), extra_opts: Sequence[str] = ()) -> list:
    """Sweep jobs of the Mini-Beyond recipe: the registry's ``mini`` config set and rule
    (``mini_cpu`` configs; FSNL with BS = min(K,4)·C, 50 epochs, 8x the paper's LR rule), the same
    path as ``python -m scripts.sweep --config-set mini`` and ``python -m scripts.grid --config-set mini``."""
    jobs = []
    for method in methods:
        spec = SweepSpec(method=method, root=root, out=out, domains=list(domains), shots=list(shots),
                         seeds=list(seeds), config_set=MINI_CONFIG_SET, opts=list(extra_opts))
        jobs.extend(j for j in build_jobs(spec) if j not in jobs)
    return jobs


def format_table(groups: Sequence, shots: int) -> str:
    """Per-domain OOP / IP / H of each method at ``shots`` (zero-shot at 0), plus the average row."""
    rows: Dict[str, Dict[str, tuple]] = {}
    for g in groups:
        if g.shots not in (0, shots):
            continue
        rows.setdefault(g.label, {})[g.dataset] = (g.oop.mean, g.ip.mean, g.hmean.mean)
    datasets = sorted({d for r in rows.values() for d in r})
    lines = ["| Method | Domain | OOP | IP | H |", "|---|---|---|---|---|"]
    for label, cells in rows.items():
        for d in datasets:
            if d in cells:
                oop, ip, h = cells[d]
                lines.append(f"| {label} | {short_name(d)} | {oop:.2f} | {ip:.2f} | {h:.2f} |")
        vals = [cells[d] for d in datasets if d in cells]
        if vals:
            avg = [sum(v[i] for v in vals) / len(vals) for i in range(3)]
            lines.append(f"| **{label}** | **Average** | **{avg[0]:.2f}** | **{avg[1]:.2f}** | **{avg[2]:.2f}** |")
    return "\n".join(lines)


def run_demo(root: str = "data/mini_beyond", out: str = "output/mini_beyond_demo",
             domains: Sequence[str] = DOMAINS, shots: int = 4, seed: int = 1,
             figure: Optional[str] = None) -> Dict[str, object]:
    start = time.time()
    root_abs, out_abs = absolute(root), absolute(out)
    build_domains(root_abs, domains)
    failed = run_jobs_in_process(demo_jobs(root_abs, out_abs, domains, [shots], [seed]))
    groups = collect(out_abs)
    if not groups:  # every run failed: nothing to tabulate or plot (a traceback of plot_curves before)
        print("Failed runs:\n  " + "\n  ".join(failed))
        return {"table": "", "figure": None, "failed": failed, "minutes": (time.time() - start) / 60}
    table = format_table(groups, shots)
    figure = figure or os.path.join(out_abs, DEMO_FIGURE)
    png, _ = plot_curves(groups, figure, title=f"Mini-Beyond: OOP accuracy, FSNL at {shots} shots vs zero-shot")
    elapsed = time.time() - start
    print(f"\nMini-Beyond, {shots} shots, seed {seed} (OOP/IP accuracy %, H = harmonic mean)\n")
    print(table)
    print(f"\nFigure: {png}\nRuns: {out_abs}   ({elapsed / 60:.1f} min)")
    if failed:
        print("Failed runs:\n  " + "\n  ".join(failed))
    return {"table": table, "figure": png, "failed": failed, "minutes": elapsed / 60}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="data/mini_beyond", help="where Mini-Beyond is built")
    parser.add_argument("--out", default="output/mini_beyond_demo", help="where the runs go")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")


def check_demo_args(root: str, out: str, domains: Sequence[str], shots: int, seed: int, threads: int) -> None:
    """:func:`check_common_args`, and the demo's figure (``<out>/accuracy_vs_shots.png|pdf``) must be one
    it may replace (:func:`scripts.plot_curves.check_figure_targets`): a user's file of that name was
    overwritten after the runs."""
    check_common_args(root, out, domains, [shots], [seed], threads)
    check_figure_targets(os.path.join(absolute(out), DEMO_FIGURE), "--out")


def main_from_args(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads or usable_cpus())
    result = run_demo(args.root, args.out, args.domains, args.shots, args.seed)
    return 1 if result["failed"] else 0


COMPARE_METHODS = ("zeroshot", "zeroshot_ensemble", "fsnl", "coop", "cocoop", "clip_adapter", "taskres",
                   "linear_probe")


def comparison_outputs(results: str) -> Dict[str, str]:
    """The tables and the record the comparison writes for the ``--results`` prefix (figures apart:
    :func:`comparison_figures`)."""
    res = absolute(results)
    return {"table_md": f"{res}_table4.md", "table_csv": f"{res}_table4.csv", "curves_md": f"{res}_curves.md",
            "curves_json": f"{res}_curves.json", "run": f"{res}_run.json"}


def comparison_figures(results: str) -> Dict[str, str]:
    """The figure of each metric (``save_figure`` bases) for the ``--results`` prefix."""
    res = absolute(results)
    return {"oop": f"{res}_curves", "ip": f"{res}_curves_ip", "hmean": f"{res}_curves_hmean"}


#: A ``<results>_run.json`` of an earlier comparison (told by its keys), which a rerun may replace.
written_run_record = json_recogniser(("cells", "ran", "skipped", "failed", "wall_s", "code"), "failed")


def check_compare_args(root: str, out: str, domains: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
                       methods: Sequence[str], results: str, workers: int, threads: int) -> None:
    """:func:`check_common_args`, the methods, and every file of ``--results`` (``check_output_target``:
    not a directory, link, run folder or a file no comparison wrote), before the grid runs: a user's
    ``<results>_run.json`` was overwritten, and a refused table was reported only after the whole grid
    (exit 0)."""
    check_common_args(root, out, domains, shots, seeds, threads)
    if workers < 0:
        raise ValueError(f"--workers {workers}: must be >= 0 (0 picks it from the CPU cores)")
    for name in methods:
        get_method(name)
    outputs = comparison_outputs(results)
    label = f"(from --results {results})"
    for key, what, ours in (("table_md", "Markdown output", written_md), ("table_csv", "CSV output", written_csv),
                            ("curves_md", "Markdown output", written_md), ("curves_json", "JSON output", written_json),
                            ("run", "comparison record", written_run_record)):
        check_output_target(outputs[key], f"{outputs[key]} {label}", what, ours)
    for base in comparison_figures(results).values():
        check_figure_targets(base, "--results")


def run_comparison(root: str = "data/mini_beyond", out: str = "output/mini_beyond_compare",
                   domains: Sequence[str] = DOMAINS, shots: Sequence[int] = (1, 2, 4, 8, 16),
                   seeds: Sequence[int] = (1, 2, 3), methods: Sequence[str] = COMPARE_METHODS,
                   extra_opts: Sequence[str] = (), results: str = COMPARISON_RESULTS,
                   workers: int = 0, threads: int = 0) -> List[str]:
    """The full method comparison on Mini-Beyond through the grid engine (``scripts.grid``, config set
    ``mini``, 8 cached views, ``workers`` processes), then its tables and curves (committed under docs/)
    and ``<results>_run.json``: the cells, the wall time and the machine that produced them."""
    root_abs, out_abs = absolute(root), absolute(out)
    build_domains(root_abs, domains)
    start, code = time.time(), code_version()  # the code that runs the cells, before anything is edited
    cells = plan_grid(root_abs, out_abs, domains, methods, shots, seeds, config_set=MINI_CONFIG_SET, views=8,
                      opts=extra_opts)
    workers = auto_workers(cells) if workers <= 0 else workers
    summary = run_grid(cells, workers=workers, threads=threads)
    wall = time.time() - start
    failed = [f"{cell.label}: {why}" for cell, why in summary.failed]
    res, outputs, figures = absolute(results), comparison_outputs(results), comparison_figures(results)
    os.makedirs(os.path.dirname(res), exist_ok=True)
    # the paper's table is the 4-shot one: a comparison without 4-shot cells has none to write
    steps = [("table (parse_test_res --table)", parse_main, [out_abs, "--table", "--shots", "4", "--md",
                                                             outputs["table_md"], "--csv", outputs["table_csv"]])
             ] if 4 in shots else []
    steps += [("curves (parse_test_res --curves)", parse_main, [out_abs, "--curves", "--md", outputs["curves_md"],
                                                                "--json", outputs["curves_json"]])]
    # the Figure-5 analog: OOP accuracy vs shots per domain, then IP and H, each with ± one std over seeds
    steps += [(f"{metric} figure", plot_main, [outputs["curves_json"], "--out", base, "--band", "--metric", metric])
              for metric, base in figures.items()]
    for what, step, argv in steps:
        status = step(argv)
        if status:  # its error line is printed; the tables are then not this grid's (it exited 0 before)
            failed.append(f"{what}: exit code {status}, see its error line above")
    record = {"cells": len(cells), "ran": len(summary.ran), "skipped": len(summary.skipped), "failed": failed,
              "wall_s": round(wall, 1), "workers": workers, "cpu_count": os.cpu_count(),
              "image_views_encoded": summary.encoded,
              # ru_maxrss is in KiB on Linux: the largest worker process, and this one
              "peak_rss_mib": {"worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
                               "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}, "domains": list(domains), "methods": list(methods),
              "shots": list(shots), "seeds": list(seeds), "code": code}
    write_json(record, outputs["run"])
    print(f"comparison: {summary.line()} in {wall / 60:.1f} min ({workers} worker(s)); tables in {res}_*")
    return failed
