"""Download LAION-Beyond from the Hugging Face Hub, then validate it with ``datasets.check``.

    python -m datasets.download --root DIR [--domains Animals Food ...] [--variant 400M|2B|5B]

Only the folders of the requested domains are fetched: for each domain prefix (``Animals``,
``Insects_Spiders``, ``Plants_Fugi``, ...) the patterns ``<Prefix>[0-9]*_OOP/*`` and
``<Prefix>[0-9]*_IP/*``, i.e. the ``<Prefix><n>_OOP/`` / ``<Prefix><n>_IP/`` folders of spec §4.1
(``images/`` plus the ``split_Xin_*.json``). The class counts in the folder names are left open
because they differ between releases.

Assumption for ``--variant 2B`` / ``5B`` (the hub layout of those releases is not documented): the
same folder naming under a ``2B/`` or ``5B/`` top-level folder. Their files land in ``DIR/2B/...``,
and that sub-folder is the ``--root`` to train on; this script prints it.

Downloads go through ``huggingface_hub.snapshot_download`` (tqdm progress bars, parallel files).
Re-running the same command resumes: files already complete in ``DIR`` are skipped and partial ones
continue. Without network access the script says so and suggests downloading on another machine and
pointing ``--root`` at the copy.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import check_writable_dir
from datasets import check, laion_beyond
from datasets.laion_beyond import SUBSETS, laion_beyond_domains

try:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
except ImportError:  # reported when a download is attempted
    snapshot_download = None
    HfHubHTTPError = OSError

__all__ = ["REPO_ID", "VARIANTS", "benchmark_domains", "resolve_domains", "allow_patterns", "data_root",
           "download", "main"]

logger = logging.getLogger(__name__)

REPO_ID = "MHuangX/LAION-Beyond"
REPO_TYPE = "dataset"
VARIANTS = ("400M", "2B", "5B")
DEFAULT_VARIANT = "400M"


def benchmark_domains() -> Dict[str, type]:
    """The nine LAION-Beyond domains (not Mini-Beyond or other datasets reusing the loader)."""
    return {n: c for n, c in laion_beyond_domains().items() if c.__module__ == laion_beyond.__name__}


def resolve_domains(names: Sequence[str]) -> List[Tuple[str, str]]:
    """(registered name, folder prefix) for registered names (``Animals92_42``) or prefixes (``animals``)."""
    domains = benchmark_domains()
    if not names:
        return [(n, c.prefix) for n, c in sorted(domains.items(), key=lambda kv: kv[1].prefix)]
    out: List[Tuple[str, str]] = []
    for name in names:
        low = name.lower()
        hits = [n for n, c in domains.items() if low in (n.lower(), c.prefix.lower())]
        hits = hits or [n for n, c in domains.items() if c.prefix.lower().startswith(low)]
        if len(hits) != 1:
            known = ", ".join(sorted(c.prefix for c in domains.values()))
            what = "ambiguous" if hits else "unknown"
            raise ValueError(f"{what} domain {name!r}; choose from {known} (or their registered names)")
        pair = (hits[0], domains[hits[0]].prefix)
        if pair not in out:
            out.append(pair)
    return out


def allow_patterns(prefixes: Sequence[str], variant: str = DEFAULT_VARIANT) -> List[str]:
    """Hub path patterns of the OOP and IP folders of ``prefixes`` in one release."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    top = "" if variant == DEFAULT_VARIANT else f"{variant}/"
    return [f"{top}{prefix}[0-9]*_{subset}/*" for prefix in prefixes for subset in SUBSETS]


def data_root(root: str, variant: str = DEFAULT_VARIANT) -> str:
    """The folder to pass as ``--root`` / ``DATASET.ROOT`` after downloading ``variant`` into ``root``."""
    return root if variant == DEFAULT_VARIANT else os.path.join(root, variant)


def download(
    root: str,
    domains: Sequence[str] = (),
    variant: str = DEFAULT_VARIANT,
    revision: Optional[str] = None,
    max_workers: int = 8,
) -> str:
    """Fetch the requested domains into ``root``; returns the data root to train on.

    Raises ``ConnectionError`` with a how-to-proceed message when the hub cannot be used.
    """
    if snapshot_download is None:
        raise ConnectionError(
            "huggingface_hub is not installed (pip install huggingface_hub), so the hub cannot be used: "
            f"download {REPO_ID} elsewhere and point --root at the copy."
        )
    pairs = resolve_domains(domains)
    patterns = allow_patterns([prefix for _, prefix in pairs], variant)
    logger.info("Downloading %s (%s) from %s into %s: %s", ", ".join(n for n, _ in pairs), variant, REPO_ID,
                root, " ".join(patterns))
    kwargs: Dict[str, Any] = {
        "repo_id": REPO_ID,
        "repo_type": REPO_TYPE,
        "local_dir": root,
        "allow_patterns": patterns,
        "max_workers": max_workers,
    }
    if revision:
        kwargs["revision"] = revision
    try:
        snapshot_download(**kwargs)
    except (OSError, HfHubHTTPError) as err:
        raise ConnectionError(
            f"Could not download {REPO_ID} from the Hugging Face Hub ({type(err).__name__}: {err}).\n"
            "Without internet access here: download elsewhere and point --root at the copy, i.e. run this "
            f"command (or `hf download {REPO_ID} --repo-type dataset --local-dir COPY`) on a machine that "
            "can reach the hub, copy the folder over, and pass --root COPY to train.py "
            "(`python -m datasets.check --root COPY` validates it). Re-running this command resumes."
        ) from err
    return data_root(root, variant)


def main(argv: Sequence[str] = ()) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="where to put the dataset (created if needed)")
    parser.add_argument("--domains", nargs="+", default=[],
                        help="prefixes (Animals, Food, Insects_Spiders, ...) or registered names; default: all nine")
    parser.add_argument("--variant", choices=VARIANTS, default=DEFAULT_VARIANT,
                        help="LAION release the OOP/IP split refers to (2B/5B: see the assumption above)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--max-workers", type=int, default=8, help="parallel file downloads")
    parser.add_argument("--no-check", action="store_true", help="skip the validation with datasets.check")
    args = parser.parse_args(list(argv) or None)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")

    root = os.path.abspath(os.path.expanduser(args.root))
    try:
        pairs = resolve_domains(args.domains)
        if args.max_workers < 1:
            raise ValueError(f"--max-workers {args.max_workers}: must be >= 1")
        check_writable_dir(root, "--root")  # a file there was a FileExistsError traceback
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        target = download(root, [n for n, _ in pairs], args.variant, args.revision, args.max_workers)
    except ConnectionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Downloaded into {root}; train with --root {target}")
    if args.no_check:
        return 0
    return check.main(["--root", target, "--domains", *[n for n, _ in pairs]])


if __name__ == "__main__":
    exit_with(lambda: main(sys.argv[1:]))
