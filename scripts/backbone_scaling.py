"""Finding 3 of the paper (Figure 6): bigger backbones barely help OOP zero-shot; FSNL helps them all.

    python -m scripts.backbone_scaling --root DATA --out OUT [--domain Pokemon] [--shots 4] [--seeds 1 2 3]
        [--backbones ViT-B-16:laion400m_e32 EVA01-g-14:laion400m_s11b_b41k ...] [--dry-run | --plot-only]
        [--figure figures/backbone_scaling] [--metric oop] [--opts KEY VALUE ...]

For each ``NAME:WEIGHTS`` backbone, on one domain:

* zero-shot: ``FSNL_openclip --eval-only TEST.ALLOW_UNTRAINED True`` without a model directory, i.e. CLIP with the FSNL prompt
  and the names' own token embeddings (the reference's ``..._D_Backbone_ZS`` scripts, spec §8.4);
* FSNL at ``--shots`` shots with the paper's settings (batch size and LR from ``scripts.fsnl_rule``).

Runs go to ``OUT/<backbone tag>/<Dataset>/...`` in the layout ``scripts.parse_test_res`` reads, and a
finished run with the same fingerprint is skipped (``scripts.sweep.split_done``). The figure plots the accuracy (mean over seeds) against
the parameter count of each backbone, counted on an open_clip model instantiated on the ``meta``
device (no weights, no memory, no download). Writes ``<figure>.png``, ``<figure>.pdf`` and
``<figure>.json`` (the plotted numbers), each atomically.

The three files are checked before any job is planned or run (also under ``--dry-run`` and
``--plot-only``): ``plot_curves.check_figure_targets`` for the figures and the same
``parse_test_res.check_output_target`` for the JSON refuse a directory, a symbolic link, a run's file
name, a path in a run folder, or an existing file that is not an earlier output of this script (a
Matplotlib figure; a JSON object with this script's keys), and a ``--figure`` inside a run folder the
sweep is about to create is refused too. A refusal is one ``error:`` line, exit code 2, with nothing
run or written; a rerun replaces its own figure and JSON.
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
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import open_clip
import torch

from clip import normalize_model_name, register_repo_configs
from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import WriteError, atomic_write_text
from scripts.domains import DomainError, check_shots, count_classes, has_subset, repo_path, resolve_domain
from scripts.fsnl_rule import fsnl_bs_lr
from scripts.parse_test_res import (
    ZEROSHOT_SHOTS,
    OutputError,
    check_output_target,
    collect,
    json_recogniser,
    target_label,
)
from scripts.plot_curves import check_figure_targets, figure_paths, save_figure
from scripts.run_identity import exit_status
from scripts.sweep import Job, RunConflict, fsnl_opts, merge_opts, run_jobs, split_done, trainer_config

__all__ = [
    "DEFAULT_BACKBONES",
    "Backbone",
    "parse_backbone",
    "backbone_tag",
    "count_parameters",
    "image_size_of",
    "build_jobs",
    "collect_points",
    "output_paths",
    "written_points",
    "check_targets",
    "check_outside_runs",
    "plot_scaling",
    "main",
]

logger = logging.getLogger(__name__)

TRAINER = "FSNL_openclip"
DEFAULT_CONFIG = "vit_b16_ep200_standard"
DEFAULT_DOMAIN = "Pokemon89_39"
#: The backbones of the paper's Figure 6 (open_clip names and tags).
DEFAULT_BACKBONES = (
    "ViT-B-16:laion400m_e32",
    "ViT-L-14:laion400m_e32",
    "ViT-g-14:laion2b_s12b_b42k",
    "ViT-B-16:openai",
    "EVA01-g-14:laion400m_s11b_b41k",
    "EVA02-E-14-plus:laion2b_s9b_b144k",
)
METRICS = ("oop", "ip", "hmean")
#: The keys of the plotted-numbers JSON (a results.json or a parse_test_res payload has not all of them).
POINTS_KEYS = ("metric", "shots", "points")


@dataclass(frozen=True)
class Backbone:
    name: str
    weights: str

    @property
    def tag(self) -> str:
        return backbone_tag(self.name, self.weights)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.weights})"


def parse_backbone(text: str) -> Backbone:
    """``NAME:WEIGHTS`` (split at the last colon, so ``hf-hub:org/repo:none``-style names survive)."""
    name, sep, weights = str(text).rpartition(":")
    if not sep or not name or not weights:
        raise ValueError(f"backbone {text!r} must be NAME:WEIGHTS, e.g. ViT-B-16:laion400m_e32")
    return Backbone(name, weights)


def backbone_tag(name: str, weights: str) -> str:
    """A folder name for a backbone; weight files are named by their stem."""
    w = Path(weights).stem if ("/" in weights or os.sep in weights) else weights
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{name}__{w}")


def count_parameters(name: str) -> int:
    """Parameters of open_clip model ``name``, built on the meta device (shapes only, no weights)."""
    register_repo_configs()
    with torch.device("meta"):
        model = open_clip.create_model(normalize_model_name(name), pretrained=None, device="meta")
    return int(sum(p.numel() for p in model.parameters()))


def image_size_of(name: str) -> Optional[int]:
    """Input resolution from the model config (None when the config does not say)."""
    register_repo_configs()
    cfg = open_clip.get_model_config(normalize_model_name(name)) or {}
    size = (cfg.get("vision_cfg") or {}).get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else None


def build_jobs(
    root: str, out: str, dataset: str, backbones: Sequence[Backbone], shots: int = 4,
    seeds: Sequence[int] = (1, 2, 3), zeroshot_seed: int = 1, num_classes: Optional[int] = None,
    config: str = DEFAULT_CONFIG, opts: Sequence[str] = (), python: str = "python",
) -> List[Job]:
    """Zero-shot and FSNL jobs per backbone. The class count (the paper's batch-size and LR rule) is read
    from ``root``; ``num_classes`` stands in for it only where the data is not there (planning elsewhere):
    one that contradicts the data gave every run the batch size and LR of another class count, silently.
    Shot counts above the data's are refused, and a seed named twice is one job (it was planned twice,
    into one folder)."""
    config_path, _ = trainer_config(TRAINER, config)
    data_root = repo_path(root)
    if has_subset(data_root, dataset, "OOP") or not num_classes:
        c = count_classes(data_root, dataset, "OOP")
        if num_classes and num_classes != c:
            raise ValueError(f"--num-classes {num_classes}: {dataset} under --root has {c} OOP classes; drop "
                             "--num-classes (it is read from the data)")
        check_shots(data_root, dataset, [shots])
    else:
        c = num_classes
    seeds = list(dict.fromkeys(seeds))
    bs, lr = fsnl_bs_lr(c, shots)
    jobs: List[Job] = []
    for bb in backbones:
        base = [("DATASET.NUM_SHOTS", str(shots)), ("DATASET.SUB_CLASSES", "OOP"),
                ("MODEL.BACKBONE.WEIGHTS", bb.weights)]
        size = image_size_of(bb.name)
        if size:
            base.append(("INPUT.SIZE", f"({size}, {size})"))
        head = [python, "train.py", "--root", root, "--trainer", TRAINER,
                "--dataset-config-file", f"configs/datasets/{dataset}.yaml", "--config-file", config_path,
                "--backbone", bb.name]
        zs_dir = os.path.join(out, bb.tag, dataset, TRAINER, "ZS_OOP", f"seed{zeroshot_seed}")
        # the untrained FSNL model *is* zero-shot CLIP with FSNL's prompt: asked for explicitly
        zs_opts = merge_opts(base + [("TEST.ALLOW_UNTRAINED", "True")], opts)
        argv = head + ["--seed", str(zeroshot_seed), "--output-dir", zs_dir, "--eval-only"]
        argv += [x for pair in zs_opts for x in pair]
        jobs.append(Job(tuple(argv), os.path.join(zs_dir, "results.json"), f"zero-shot {bb.label}"))
        run_opts = merge_opts(base + fsnl_opts(shots, bs, lr), opts)
        o = dict(run_opts)
        method_dirs = (f"{TRAINER}_USE_CAPTION_{o['TRAINER.FSNL.USE_CAPTION']}",
                       f"MEPOCH_{o['OPTIM.MAX_EPOCH']}_BS_{o['DATALOADER.TRAIN_X.BATCH_SIZE']}_LR_{o['OPTIM.LR']}")
        for seed in seeds:
            run_dir = os.path.join(out, bb.tag, dataset, f"shots_{shots}", "train", *method_dirs, f"seed{seed}")
            argv = head + ["--seed", str(seed), "--output-dir", run_dir] + [x for pair in run_opts for x in pair]
            jobs.append(Job(tuple(argv), os.path.join(run_dir, "results.json"), f"FSNL {bb.label} K={shots} seed={seed}"))
    return jobs


def collect_points(
    out: str, dataset: str, backbones: Sequence[Backbone], shots: int = 4, metric: str = "oop",
    param_counts: Optional[Dict[str, int]] = None,
) -> List[Dict[str, Any]]:
    """Per backbone: parameter count and the zero-shot / FSNL ``metric`` (mean and std over seeds)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    points = []
    for bb in backbones:
        run_root = os.path.join(out, bb.tag)
        groups = collect(run_root) if os.path.isdir(run_root) else []
        groups = [g for g in groups if g.dataset == dataset]
        values: Dict[str, Any] = {}
        for kind, k in (("zeroshot", ZEROSHOT_SHOTS), ("fsnl", shots)):
            g = next((g for g in groups if g.shots == k), None)
            stat = getattr(g, metric) if g is not None else None
            values[kind] = None if stat is None or math.isnan(stat.mean) else stat.mean
            values[f"{kind}_std"] = None if stat is None or math.isnan(stat.std) else stat.std
            values[f"{kind}_n"] = 0 if stat is None else stat.n
        params = (param_counts or {}).get(bb.name)
        points.append({"backbone": bb.name, "weights": bb.weights, "label": bb.label,
                       "params": params if params is not None else count_parameters(bb.name), **values})
    return points


def output_paths(figure: str) -> Tuple[str, str, str]:
    """The ``.png``, ``.pdf`` and ``.json`` that :func:`plot_scaling` writes for ``figure``."""
    png, pdf = figure_paths(figure)
    return png, pdf, f"{png[:-len('.png')]}.json"


#: A JSON of the plotted numbers that :func:`plot_scaling` wrote (an object with all of
#: :data:`POINTS_KEYS`, ``points`` a list): the only JSON a rerun may replace.
written_points = json_recogniser(POINTS_KEYS, "points")


def check_targets(figure: str) -> None:
    """Refuse (:class:`OutputError` / :class:`WriteError`, one line naming ``--figure``) a ``figure`` whose
    files could destroy something this script did not write, before anything is planned or run: the
    figures by :func:`check_figure_targets`, the JSON by :func:`check_output_target` with
    :func:`written_points`."""
    check_figure_targets(figure, "--figure")
    js = output_paths(figure)[2]
    check_output_target(js, target_label(js, "--figure", figure), "JSON of the plotted numbers", written_points)


def check_outside_runs(figure: str, jobs: Sequence[Job]) -> None:
    """Refuse (:class:`OutputError`) a ``figure`` whose files lie in, or are on the path of, the folder
    of one of ``jobs`` (``--figure`` naming ``--out``, say): a run that does not exist yet is no run
    folder to :func:`check_targets`, but is one (or a folder is in the way) when the figure is written
    after the sweep, which may be hours later."""
    targets = [Path(os.path.realpath(path)) for path in output_paths(figure)]
    for job in jobs:
        # train.py runs in the repository root (scripts.sweep.run_jobs): a relative run folder is from there
        run_dir = Path(os.path.realpath(repo_path(os.path.dirname(job.done))))
        for target in targets:
            if run_dir in target.parents:
                raise OutputError(f"{target} (from --figure {figure}) lies in the run folder {run_dir} of this "
                                  "sweep; write the figure outside the run folders (a run's own files are never "
                                  "replaced)")
            if target == run_dir or target in run_dir.parents:
                raise OutputError(f"{target} (from --figure {figure}) is a folder of this sweep's run {run_dir}; "
                                  "give the figure a path outside --out")


def plot_scaling(points: Sequence[Dict[str, Any]], out: str, metric: str = "oop", shots: int = 4,
                 title: Optional[str] = None) -> Tuple[str, str, str]:
    """Accuracy vs parameter count (log x); zero-shot light circles, FSNL dark ones."""
    # Local: matplotlib is slow to import, and the Agg backend must be chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    drawn = [p for p in points if p["zeroshot"] is not None or p["fsnl"] is not None]
    if not drawn:
        raise ValueError("no results to plot: run the jobs first (or check --out / --domain)")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    palette = plt.get_cmap("tab10")
    for i, p in enumerate(drawn):
        x = p["params"] / 1e9
        color = palette(i % 10)
        if p["zeroshot"] is not None:
            ax.scatter([x], [p["zeroshot"]], s=70, color=color, alpha=0.35, edgecolors="none")
        if p["fsnl"] is not None:
            ax.errorbar([x], [p["fsnl"]], yerr=[p["fsnl_std"] or 0.0], fmt="o", markersize=8, color=color,
                        capsize=3, label=p["label"])
        if p["zeroshot"] is not None and p["fsnl"] is not None:
            ax.annotate("", xy=(x, p["fsnl"]), xytext=(x, p["zeroshot"]),
                        arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.5})
        elif p["fsnl"] is None:
            ax.scatter([], [], color=color, label=p["label"])
    ax.set_xscale("log")
    ticks = sorted({p["params"] / 1e9 for p in drawn})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.2g}B" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 100)
    ax.set_xlabel("Parameters (log scale)")
    ax.set_ylabel({"oop": "OOP", "ip": "IP", "hmean": "H-mean"}[metric] + " accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.set_title(title if title is not None else f"Zero-shot (light) vs FSNL {shots}-shot (dark)")
    fig.tight_layout()
    png, pdf = save_figure(fig, out)
    js = output_paths(out)[2]
    atomic_write_text(js, json.dumps({"metric": metric, "shots": shots, "points": list(points)}, indent=1))
    return png, pdf, js


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m scripts.backbone_scaling", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--out", required=True, help="output root of the runs")
    p.add_argument("--domain", default=DEFAULT_DOMAIN, help="registered or short name (default Pokemon89_39)")
    p.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), help="NAME:WEIGHTS ...")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="FSNL seeds")
    p.add_argument("--zeroshot-seed", type=int, default=1)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="FSNL_openclip config name or yaml path")
    p.add_argument("--num-classes", type=int, default=0, help="OOP class count (default: read from --root)")
    p.add_argument("--metric", default="oop", choices=METRICS)
    p.add_argument("--figure", default="figures/backbone_scaling", help="figure path without extension")
    p.add_argument("--python", default="python", help="interpreter named in the commands")
    p.add_argument("--dry-run", action="store_true", help="print the pending commands and exit")
    p.add_argument("--plot-only", action="store_true", help="only plot what has been run")
    p.add_argument("--force", action="store_true", help="rerun every job, overwriting finished runs")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... for every run (last)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        dataset = resolve_domain(args.domain)
        backbones = [parse_backbone(b) for b in args.backbones]
    except (DomainError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_targets(args.figure)
    except (OutputError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    jobs_status = 0
    if not args.plot_only:
        try:
            jobs = build_jobs(args.root, args.out, dataset, backbones, args.shots, args.seeds, args.zeroshot_seed,
                              args.num_classes or None, args.config, args.opts, args.python)
            check_outside_runs(args.figure, jobs)
        except (DomainError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            if args.dry_run:
                pending, done = split_done(jobs, args.force)
                for job in pending:
                    print(job.command)
                print(f"# backbone scaling: {len(pending)} pending, {len(done)} skipped (finished, same fingerprint)",
                      file=sys.stderr)
                return 0
            summary = run_jobs(jobs, force=args.force)
        except RunConflict as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"backbone scaling: {summary.line()}", file=sys.stderr)
        for job, why in summary.failed:
            print(f"  FAILED ({why}): {job.command}", file=sys.stderr)
        jobs_status = exit_status(summary.exit_codes)
    # the jobs ran from the repository root, so a relative --out is read there (not in the current folder)
    points = collect_points(repo_path(args.out), dataset, backbones, args.shots, args.metric)
    try:
        paths = plot_scaling(points, args.figure, args.metric, args.shots)
    except (WriteError, ValueError) as err:  # nothing to plot is a user's mistake (exit 2) unless jobs failed
        print(f"error: {err}", file=sys.stderr)
        return jobs_status or 2
    print("wrote " + ", ".join(paths))
    return jobs_status  # a figure of the runs that finished does not hide the ones that failed


if __name__ == "__main__":
    exit_with(main)
