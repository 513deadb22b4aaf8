"""Finding 2 of the paper (Figure 4a): zero-shot accuracy is far lower on OOP than on IP concepts.

    python -m scripts.plot_zeroshot OUT [--method ZeroshotCLIP_openclip] [--domains ...] --out figures/zeroshot
    python -m scripts.plot_zeroshot table.json --out figures/zeroshot     # parse_test_res --json output

Reads the zero-shot runs (0 shots) through ``scripts.parse_test_res`` — e.g. the output of
``scripts/zeroshot/eval.sh``, whose OOP runs carry the IP accuracy of their cross-evaluation — and
draws one pair of bars (OOP, IP; mean over seeds) per domain plus their average. Writes
``<out>.png`` and ``<out>.pdf``, atomically.

Both figures are checked before the source is read (``plot_curves.check_figure_targets``, as for
``plot_curves``): a directory, a symbolic link, a path in a run folder, or an existing file that is
not a figure Matplotlib wrote is refused in one ``error:`` line with exit code 2 and nothing written;
a rerun replaces its own figures.
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
import math
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import WriteError
from scripts.domains import names_dataset, short_name, unmatched_names
from scripts.parse_test_res import ZEROSHOT_SHOTS, GroupSummary, OutputError
from scripts.plot_curves import check_figure_targets, load_groups, save_figure

__all__ = ["zeroshot_bars", "plot_zeroshot", "main"]

logger = logging.getLogger(__name__)


def zeroshot_bars(
    groups: Sequence[GroupSummary], method: Optional[str] = None, domains: Optional[Sequence[str]] = None
) -> Dict[str, Any]:
    """``{"method", "datasets", "oop", "ip"}`` of the zero-shot groups (0 shots) of one method.

    Without ``method`` the zero-shot method present on the most domains is used (ties: the first
    in name order), so a directory holding several zero-shot variants still gives one figure.
    """
    zs = [g for g in groups if g.shots == ZEROSHOT_SHOTS]
    valued = sorted({g.dataset for g in zs if not math.isnan(g.oop.mean) or not math.isnan(g.ip.mean)})
    # a named domain without any zero-shot result: say so, with every domain that has one (the list was
    # cut to the other named domains, and with only the typo named it blamed the results themselves)
    missing = unmatched_names(domains or (), valued)
    if missing:
        raise ValueError(f"no zero-shot results for --domains {' '.join(missing)}; the domains with zero-shot "
                         f"results: {' '.join(valued) or 'none'}")
    if domains:
        zs = [g for g in zs if any(names_dataset(n, g.dataset) for n in domains)]
    if method is None:
        counts: Dict[str, int] = {}
        for g in zs:
            if not math.isnan(g.oop.mean) or not math.isnan(g.ip.mean):
                counts[g.method] = counts.get(g.method, 0) + 1
        if not counts:
            raise ValueError("no zero-shot results (0 shots) with an OOP or IP accuracy")
        method = sorted(counts, key=lambda m: (-counts[m], m))[0]
    chosen = sorted((g for g in zs if g.method == method), key=lambda g: g.dataset)
    if not chosen:
        raise ValueError(f"no zero-shot results of method {method!r}")
    # a named domain without a bar is a mistake (a typo was dropped silently before)
    missing = unmatched_names(domains or (), (g.dataset for g in chosen))
    if missing:
        every = sorted({g.dataset for g in groups if g.shots == ZEROSHOT_SHOTS and g.method == method})
        raise ValueError(f"no zero-shot results of {method} for --domains {' '.join(missing)}; it has results "
                         f"for: {' '.join(every)}")
    return {
        "method": method,
        "datasets": [g.dataset for g in chosen],
        "oop": [g.oop.mean for g in chosen],
        "ip": [g.ip.mean for g in chosen],
        # the zero-shot methods (variants) not drawn: named on the console (they were left out silently)
        "others": sorted({g.method for g in zs} - {method}),
    }


def plot_zeroshot(
    groups: Sequence[GroupSummary], out: str, method: Optional[str] = None,
    domains: Optional[Sequence[str]] = None, title: Optional[str] = None,
) -> Tuple[str, str]:
    """Grouped bars OOP vs IP per domain (+ Avg over domains with both); returns the PNG and PDF paths."""
    # Local: matplotlib is slow to import, and the Agg backend must be chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = zeroshot_bars(groups, method, domains)
    if bars["others"]:
        logger.warning("plotting %s; also found zero-shot results of %s (pick one with --method)", bars["method"],
                       ", ".join(bars["others"]))
    names = [short_name(d) for d in bars["datasets"]]
    oop = list(bars["oop"])
    ip = list(bars["ip"])
    both = [(o, i) for o, i in zip(oop, ip) if not math.isnan(o) and not math.isnan(i)]
    if len(both) > 1:
        names.append("Avg")
        oop.append(float(np.mean([o for o, _ in both])))
        ip.append(float(np.mean([i for _, i in both])))
    x = np.arange(len(names))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
    for shift, values, label, color in ((-width / 2, oop, "OOP", "#d62728"), (width / 2, ip, "IP", "#1f77b4")):
        heights = [0.0 if math.isnan(v) else v for v in values]
        rects = ax.bar(x + shift, heights, width, label=label, color=color)
        for rect, v in zip(rects, values):
            if not math.isnan(v):
                ax.annotate(f"{v:.1f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("Zero-shot accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    text = title if title is not None else f"Zero-shot accuracy, OOP vs IP ({bars['method']})"
    # wrapped to the figure's width: a variant's key ran off its edge
    ax.set_title("\n".join(textwrap.wrap(text, width=int(fig.get_figwidth() * 11)) or [""]), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def main(argv: Optional[List[str]] = None) -> int:
    p = ArgumentParser(prog="python -m scripts.plot_zeroshot", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="results directory, or the JSON of `parse_test_res --json`")
    p.add_argument("--out", default="figures/zeroshot_oop_ip", help="output path without extension")
    p.add_argument("--method", default=None, help="method key (default: the zero-shot method on most domains)")
    p.add_argument("--domains", nargs="+", default=None, help="registered or short names (default: all found)")
    p.add_argument("--title", default=None)
    p.add_argument("--log-mode", action="store_true", help="directory of old runs with log.txt only")
    args = p.parse_args(argv)
    if not Path(args.source).exists():
        print(f"error: {args.source} does not exist", file=sys.stderr)
        return 2
    try:
        check_figure_targets(args.out)
    except (OutputError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        png, pdf = plot_zeroshot(load_groups(args.source, args.log_mode), args.out, args.method, args.domains,
                                 args.title)
    except (WriteError, ValueError) as err:  # nothing to plot is a user mistake like any other: exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {png} and {pdf}")
    return 0


if __name__ == "__main__":
    exit_with(main)
