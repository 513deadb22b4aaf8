"""t-SNE of frozen image features, like the paper's Figure 3: OOP alone, and OOP mixed with IP.

    python -m scripts.plot_tsne --root DATA --domain Animals [--split test] [--max-per-class 50]
        [--perplexity 30] [--config FILE | --backbone NAME --weights W] [--seed 0] --out figures/tsne_animals

Left panel: the OOP images coloured by class. Right panel: OOP and IP images embedded together,
coloured by class, OOP as crosses and IP as dots, which shows whether the OOP concepts form clusters
as tight as the IP ones. Writes ``<out>.png`` and ``<out>.pdf`` (matplotlib, Agg backend), atomically.

Both figures are checked before the backbone is loaded or a feature computed
(``plot_curves.check_figure_targets``): a directory, a symbolic link, a path in a run folder, or an
existing file that is not a figure Matplotlib wrote is refused in one ``error:`` line with exit code 2
and nothing written; a rerun replaces its own figures.
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
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

import train
from dassl.cli import ArgumentParser, non_negative_int
from dassl.ctrl_c import exit_with
from dassl.utils import WriteError, check_outside, set_random_seed
from datasets.laion_beyond import subset_dirs_under
from scripts.domains import DomainError, count_classes, resolve_domain, short_name
from scripts.features import add_backbone_args, cfg_from_args, image_features, load_backbone
from scripts.parse_test_res import OutputError
from scripts.plot_curves import check_figure_targets, save_figure

__all__ = ["tsne_2d", "plot_tsne_panels", "plot_tsne", "main"]

logger = logging.getLogger(__name__)


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (cosine metric, PCA init) of ``features``; the perplexity is capped for small sets."""
    # Local: sklearn.manifold is slow to import and only this analysis step needs it.
    from sklearn.manifold import TSNE

    n = int(features.shape[0])
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perp, init="pca", metric="cosine", random_state=seed)
    return tsne.fit_transform(np.asarray(features, dtype=np.float32)).astype(np.float32)


def _colors(n: int) -> List[Tuple[float, ...]]:
    # Local: matplotlib is slow to import; plot_tsne_panels selects the Agg backend before this runs.
    import matplotlib.pyplot as plt

    if n <= 20:
        listed = plt.get_cmap("tab20")
        return [listed(i) for i in range(n)]
    cyclic = plt.get_cmap("hsv")
    return [cyclic(i / n) for i in range(n)]


def plot_tsne_panels(
    oop_xy: np.ndarray,
    oop_labels: Sequence[int],
    mixed_xy: np.ndarray,
    mixed_labels: Sequence[int],
    mixed_is_oop: Sequence[bool],
    out: str,
    title: Optional[str] = None,
) -> Tuple[str, str]:
    """Draw the two panels from 2-D points; ``mixed_labels`` index one joint class list (OOP then IP)."""
    # Local: matplotlib is slow to import, and the Agg backend must be chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    oop_labels = np.asarray(oop_labels)
    mixed_labels = np.asarray(mixed_labels)
    is_oop = np.asarray(mixed_is_oop, dtype=bool)
    colors = _colors(int(mixed_labels.max()) + 1 if mixed_labels.size else 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.8))
    ax1.scatter(oop_xy[:, 0], oop_xy[:, 1], c=[colors[int(y)] for y in oop_labels], s=10, marker="x", linewidths=0.8)
    ax1.set_title("(a) OOP concepts")
    for mask, marker in ((is_oop, "x"), (~is_oop, "o")):
        if mask.any():
            ax2.scatter(mixed_xy[mask, 0], mixed_xy[mask, 1], c=[colors[int(y)] for y in mixed_labels[mask]],
                        s=10, marker=marker, linewidths=0.8)
    ax2.set_title("(b) OOP and IP concepts")
    ax2.legend(handles=[Line2D([], [], color="0.3", marker="x", linestyle="none", label="OOP"),
                        Line2D([], [], color="0.3", marker="o", linestyle="none", label="IP")],
               loc="best", frameon=False)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_tsne(
    oop_features: np.ndarray,
    oop_labels: Sequence[int],
    ip_features: np.ndarray,
    ip_labels: Sequence[int],
    out: str,
    seed: int = 0,
    perplexity: float = 30.0,
    title: Optional[str] = None,
) -> Tuple[str, str]:
    """Embed OOP alone and OOP + IP together, then draw both panels."""
    oop_labels = np.asarray(oop_labels, dtype=np.int64)
    ip_labels = np.asarray(ip_labels, dtype=np.int64)
    oop_xy = tsne_2d(oop_features, seed, perplexity)
    mixed = np.concatenate([oop_features, ip_features], axis=0)
    offset = int(oop_labels.max()) + 1 if oop_labels.size else 0
    mixed_labels = np.concatenate([oop_labels, ip_labels + offset])
    is_oop = np.concatenate([np.ones(len(oop_labels), bool), np.zeros(len(ip_labels), bool)])
    mixed_xy = tsne_2d(mixed, seed, perplexity)
    return plot_tsne_panels(oop_xy, oop_labels, mixed_xy, mixed_labels, is_oop, out, title)


def main(argv: Optional[List[str]] = None) -> int:
    p = ArgumentParser(prog="python -m scripts.plot_tsne", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--domain", required=True, help="registered or short name")
    p.add_argument("--splits", nargs="+", default=["test"], choices=["train", "val", "test"])
    p.add_argument("--max-per-class", type=non_negative_int, default=50, help="seeded sample per class (0 = all)")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--title", default=None)
    p.add_argument("--out", default="", help="output path without extension (default figures/tsne_<domain>)")
    add_backbone_args(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, as for train.py")
    args = p.parse_args(argv)
    if not args.perplexity > 0:  # t-SNE refused it with a traceback, after the features were computed
        p.error(f"argument --perplexity: must be > 0, got {args.perplexity}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset = resolve_domain(args.domain)
        out = args.out or f"figures/tsne_{short_name(dataset).lower()}"
        check_figure_targets(out)
        check_outside(out, subset_dirs_under(args.root), "--out")  # never among any domain's images
        for sub in ("OOP", "IP"):  # the data before the backbone: a wrong --root is not worth a model load
            count_classes(args.root, dataset, sub)
    except (DomainError, OutputError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        set_random_seed(args.seed)
        cfg = cfg_from_args(args, dataset)
        loaded = load_backbone(cfg, torch.device(args.device) if args.device else None, args.precision)
        sets = {sub: image_features(cfg, loaded, sub, args.splits, batch_size=args.batch_size,
                                    max_per_class=args.max_per_class, seed=args.seed) for sub in ("OOP", "IP")}
        title = args.title if args.title is not None else f"{short_name(dataset)} ({loaded.name}, {loaded.weights})"
        png, pdf = plot_tsne(sets["OOP"].features, sets["OOP"].labels, sets["IP"].features, sets["IP"].labels,
                             out, args.seed, args.perplexity, title)
    except train.user_errors() as err:  # data, weights, output folder: one line, as train.py says it
        print(f"error: {train.error_message(err)}", file=sys.stderr)
        return 2
    print(f"wrote {png} and {pdf}")
    return 0


if __name__ == "__main__":
    exit_with(main)
