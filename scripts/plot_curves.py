"""Few-shot curves like the paper's Figure 5: OOP accuracy vs shots, one panel per domain.

    python -m scripts.plot_curves OUT --out figures/curves            # a results directory
    python -m scripts.plot_curves table.json --out figures/curves     # parse_test_res --json output

One line per method (mean over seeds, ``--band`` adds ± std), the zero-shot model as a star at 0 shots.
Writes ``<out>.png`` and ``<out>.pdf``. Results are read through ``scripts.parse_test_res`` so the
table and the figure can never disagree (the same checks, warnings and skipped files).

Every user mistake is one ``error:`` line and exit code 2, before anything is written: a source JSON
that is not ``parse_test_res --json``'s (``{}``, ``"shots": "a"``, not UTF-8...; the key is named), a
source with nothing to plot (or none of ``--domains``), and an ``--out`` whose ``.png`` / ``.pdf``
``parse_test_res.check_output_target`` refuses: a directory, a link, a run's folder, or an existing
file that is not a figure Matplotlib wrote (a rerun replaces its own figures, nothing else). Figures are
written atomically.
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
import io
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import WriteError, atomic_write
from scripts.domains import names_dataset, short_name, unmatched_names
from scripts.parse_test_res import (
    GroupSummary,
    OutputError,
    PayloadError,
    build_curves,
    check_output_target,
    collect,
    groups_from_json,
    target_label,
)

__all__ = ["PANEL_WIDTH", "PANEL_HEIGHT", "DPI", "FIGURE_MARK", "load_groups", "written_figure", "figure_paths",
           "check_figure_targets", "save_figure", "plot_curves", "main"]

PANEL_WIDTH = 3.4  # inches per panel
PANEL_HEIGHT = 2.9
DPI = 150
METRIC_LABELS = {"oop": "OOP accuracy (%)", "ip": "IP accuracy (%)", "hmean": "H-mean of OOP and IP (%)"}
#: How each figure file starts; with Matplotlib's name in its metadata, an earlier figure to replace.
_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-"}


def load_groups(source: str, log_mode: bool = False, method_depth: int = 1) -> List[GroupSummary]:
    """Groups from a results directory, or from the JSON written by ``parse_test_res --json``; a file
    that is not that JSON is a :class:`PayloadError` naming the file and the key."""
    path = Path(source)
    if path.is_dir():
        return collect(str(path), log_mode=log_mode, method_depth=method_depth)
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except OSError as err:
        raise PayloadError(f"{source}: cannot read ({err.strerror or err}); check the path and its permissions") from None
    except UnicodeDecodeError as err:
        raise PayloadError(f"{source}: not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                           "give a results directory or the JSON of parse_test_res --json") from None
    except json.JSONDecodeError as err:
        raise PayloadError(f"{source}: not valid JSON (line {err.lineno}: {err.msg}); give a results directory "
                           "or the JSON of parse_test_res --json") from None
    except RecursionError:
        raise PayloadError(f"{source}: JSON nested too deeply to be parse_test_res --json output") from None
    try:
        return groups_from_json(payload)
    except PayloadError as err:
        raise PayloadError(f"{source}: {err}") from None


#: What :func:`save_figure` writes into every figure's metadata (the PNG's ``Source``, the PDF's
#: ``Creator``), so that a rerun knows the file for one of the project's own figures.
FIGURE_MARK = "fsnl plot scripts: scripts.plot_curves.save_figure"
_FIGURE_METADATA = {"png": {"Source": FIGURE_MARK}, "pdf": {"Creator": FIGURE_MARK}}


def written_figure(path: Path) -> bool:
    """A PNG / PDF (by its first bytes, as its extension says) that :func:`save_figure` wrote (its
    :data:`FIGURE_MARK` in the metadata): an earlier figure of this or a sibling plot script, which a
    rerun may replace. Any Matplotlib file passed before, so a hand-made paper figure named like the
    ``--out`` was replaced."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    magic = _MAGIC.get(path.suffix.lower())
    return magic is not None and data.startswith(magic) and FIGURE_MARK.encode() in data


def _out_base(out: str) -> Path:
    base = Path(out)
    return base.with_suffix("") if base.suffix.lower() in (".png", ".pdf", ".json") else base


def save_figure(fig: Any, out: str, dpi: int = DPI) -> Tuple[str, str]:
    """Save ``fig`` as ``<out>.png`` and ``<out>.pdf`` (any extension on ``out`` is dropped) and close it.
    Each file is rendered in memory and written atomically: a failed or killed save leaves the previous
    figure whole (``savefig`` onto the path truncated it first)."""
    # Local: matplotlib is slow to import and only the plotting path needs it (callers set Agg first).
    import matplotlib.pyplot as plt

    base = _out_base(out)
    png, pdf = f"{base}.png", f"{base}.pdf"
    try:
        for path, fmt, kwargs in ((png, "png", {"dpi": dpi}), (pdf, "pdf", {})):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata=_FIGURE_METADATA[fmt], **kwargs)
            atomic_write(path, lambda f, data=buf.getvalue(): f.write(data), mode="wb")
    finally:
        plt.close(fig)
    return png, pdf


def figure_paths(out: str) -> Tuple[str, str]:
    """The ``.png`` and ``.pdf`` that :func:`save_figure` writes for ``out``."""
    base = _out_base(out)
    return f"{base}.png", f"{base}.pdf"


def check_figure_targets(out: str, option: str = "--out") -> None:
    """Refuse (:class:`OutputError` / :class:`WriteError`, one line naming ``option``) an ``out`` whose
    ``.png`` or ``.pdf`` :func:`check_output_target` would not let :func:`save_figure` replace: every plot
    script calls this before it reads or computes anything, so a figure never lands on a run's files
    or on a file that is not an earlier figure, and a refused command has written nothing."""
    for path in figure_paths(out):
        check_output_target(path, target_label(path, option, out), "figure", written_figure)


def plot_curves(
    groups: Sequence[GroupSummary],
    out: str,
    domains: Optional[Sequence[str]] = None,
    band: bool = False,
    ncols: Optional[int] = None,
    title: Optional[str] = None,
    metric: str = "oop",
) -> Tuple[str, str]:
    """Draw the curves of ``groups`` and save ``<out>.png`` / ``<out>.pdf``; returns both paths."""
    # Local: matplotlib is slow to import, and the Agg backend must be chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = build_curves(groups, metric)
    datasets = [d for d in curves["datasets"] if not domains or any(names_dataset(n, d) for n in domains)]
    if not datasets:
        raise ValueError("nothing to plot: no results for the requested domains")
    shots = sorted({k for c in curves["curves"] if c["dataset"] in datasets for k, _ in c["points"]})

    methods: List[str] = []
    for c in curves["curves"]:
        if c["method"] not in methods:
            methods.append(c["method"])
    palette = plt.get_cmap("tab10")
    colors: Dict[str, object] = {m: palette(i % 10) for i, m in enumerate(methods)}

    n = len(datasets)
    ncols = ncols or min(n, max(1, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    # The legend goes below the panels with as many entries per row as fit the width (about 0.075
    # inch per character at the default font size, plus the marker); the figure grows to hold it.
    labels = list(dict.fromkeys(c["label"] for c in curves["curves"] if c["dataset"] in datasets and c["points"]))
    width = PANEL_WIDTH * ncols
    entry = max((0.45 + 0.075 * len(label) for label in labels), default=1.0)
    per_row = max(1, min(len(labels), int(width // entry)))
    legend_height = 0.15 + 0.28 * math.ceil(len(labels) / per_row)
    height = PANEL_HEIGHT * nrows + legend_height
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    handles: Dict[str, object] = {}
    for ax, dataset in zip(axes.flat, datasets):
        for c in (c for c in curves["curves"] if c["dataset"] == dataset and c["points"]):
            xs = [k for k, _ in c["points"]]
            ys = [s.mean for _, s in c["points"]]
            color = colors[c["method"]]
            if c["zero_shot"]:
                (line,) = ax.plot(xs, ys, linestyle="none", marker="*", markersize=11, color=color)
            else:
                (line,) = ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, color=color)
                if band:
                    sd = [0.0 if math.isnan(s.std) else s.std for _, s in c["points"]]
                    ax.fill_between(xs, [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)],
                                    color=color, alpha=0.15, linewidth=0)
            handles.setdefault(c["label"], line)
        ax.set_title(short_name(dataset))
        ax.set_xticks(shots)
        ax.set_xlabel("Shots per class")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.legend([handles[label] for label in labels if label in handles], [lb for lb in labels if lb in handles],
               loc="lower center", ncol=per_row, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))

    return save_figure(fig, out)


def main(argv: Optional[List[str]] = None) -> int:
    p = ArgumentParser(
        prog="python -m scripts.plot_curves", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", help="results directory, or the JSON of `parse_test_res --json`")
    p.add_argument("--out", default="figures/fewshot_curves", help="output path without extension")
    p.add_argument("--domains", nargs="+", default=None, help="registered or short names (default: all found)")
    p.add_argument("--band", action="store_true", help="shade ± one std over seeds")
    p.add_argument("--metric", choices=list(METRIC_LABELS), default="oop",
                   help="the accuracy on the y axis: OOP, IP (cross-evaluation) or their H-mean")
    p.add_argument("--ncols", type=int, default=None)
    p.add_argument("--title", default=None)
    p.add_argument("--log-mode", action="store_true", help="directory of old runs with log.txt only")
    p.add_argument("--method-depth", type=int, default=1)
    args = p.parse_args(argv)
    if args.ncols is not None and args.ncols < 1:  # a "figure size must be positive" traceback after the reading
        p.error(f"argument --ncols: {args.ncols} panels per row; give at least 1")
    if args.method_depth < 0:  # read as depth 1, as parse_test_res refuses it
        p.error(f"argument --method-depth: {args.method_depth}; must be >= 0 (folders below the phase that name "
                "a method)")
    if not Path(args.source).exists():
        print(f"error: {args.source} does not exist", file=sys.stderr)
        return 2
    try:
        check_figure_targets(args.out)
        groups = load_groups(args.source, args.log_mode, args.method_depth)
    except (OutputError, PayloadError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    found = sorted({g.dataset for g in groups})
    if not found:
        print(f"error: nothing to plot: no results in {args.source}; give a directory of finished runs or "
              "the JSON of parse_test_res --json", file=sys.stderr)
        return 2
    # every named domain must have results: a typo among correct names was dropped silently, and the
    # figure then lacked a panel that the command line asked for
    missing = unmatched_names(args.domains or (), found)
    if missing:
        what = "nothing to plot: no results" if len(missing) == len(set(args.domains)) else "no results"
        print(f"error: {what} for --domains {' '.join(missing)} in {args.source}; "
              f"choose among the domains found: {' '.join(found)}", file=sys.stderr)
        return 2
    try:
        png, pdf = plot_curves(groups, args.out, args.domains, args.band, args.ncols, args.title, args.metric)
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {png} and {pdf}")
    return 0


if __name__ == "__main__":
    exit_with(main)
