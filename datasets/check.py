"""Validate a LAION-Beyond root before training on it.

    python -m datasets.check --root DIR [--domains Animals92_42 Food53_27] [--workers N] [--no-decode]

Uses the loader's own discovery, split-file validation (paths that leave ``images/``, duplicate
records, train/val/test overlap, labels, class names), image scan (missing files, symlinks out
of ``images/``, folders) and same-file check across splits (symlinks, hard links), on the full
splits of both subsets, then decodes every image in a process pool (progress bar on stderr) exactly
as training reads it (``dassl.utils.read_image``, which also refuses absurd aspect ratios and 16-bit
or float pixels of unknown range), and prints one table row per domain and subset plus each
problem. Without ``--domains`` every registered domain found under the root is checked (domains
with neither subset present are listed as absent, not as errors). Exit status 0 when all is well,
1 when problems were found, 2 when nothing could be checked.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from tqdm import tqdm

from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import UnreadableImageError, check_cpu_option, read_image, shown_path, usable_cpus
from datasets.laion_beyond import (
    MISSING,
    SUBSETS,
    DatasetError,
    DatasetNotFoundError,
    SplitGroup,
    SubsetSplit,
    check_disjoint_classnames,
    file_identity,
    find_subset_dir,
    images_dir_of,
    laion_beyond_domains,
    legacy_fewshot_caches,
    linked_duplicate_problems,
    load_subset,
    scan_images,
)

__all__ = ["SubsetReport", "DomainReport", "check_domain", "check_root", "decode_problems", "copy_problems",
           "format_table", "main"]

DECODE_CHUNK = 64


@dataclass
class SubsetReport:
    subset: str
    directory: str = ""
    num_classes: Optional[int] = None
    num_images: Dict[str, int] = field(default_factory=dict)
    num_missing: Optional[int] = None
    num_bad: Optional[int] = None
    #: Images that exist inside images/ and must still be decoded.
    to_decode: List[str] = field(default_factory=list)
    #: The split of every image of the subset (``train`` / ``val`` / ``test``), for the copy check.
    split_of: Dict[str, str] = field(default_factory=dict)


@dataclass
class DomainReport:
    name: str
    subsets: Dict[str, SubsetReport] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    absent: bool = False


def check_domain(root: str, name: str, prefix: str, required: bool) -> DomainReport:
    """Check one domain; ``required`` turns "no folder at all" into a problem instead of "absent"."""
    report = DomainReport(name)
    dirs: Dict[str, Optional[str]] = {}
    discovery_errors: Dict[str, DatasetError] = {}
    for subset in SUBSETS:
        try:
            dirs[subset] = find_subset_dir(root, prefix, subset)
        except DatasetError as err:
            dirs[subset] = None
            discovery_errors[subset] = err
    nothing_there = all(isinstance(e, DatasetNotFoundError) for e in discovery_errors.values())
    if not any(dirs.values()) and nothing_there and not required:
        report.absent = True
        return report
    report.problems.extend(str(e) for e in discovery_errors.values())

    parts: List[SubsetSplit] = []
    linked: List[SplitGroup] = []
    for subset in SUBSETS:
        directory = dirs[subset]
        if directory is None:
            continue
        sub = SubsetReport(subset, directory)
        report.subsets[subset] = sub
        try:
            part = load_subset(directory, subset)
        except DatasetError as err:
            report.problems.append(err.report)
            continue
        parts.append(part)
        report.warnings.extend(part.warnings)
        sub.num_classes = len(part.classnames)
        sub.num_images = {"train": len(part.train), "val": len(part.val), "test": len(part.test)}
        found = scan_images([*part.train, *part.val, *part.test], images_dir_of(part))
        missing = [shown_path(p) for p, why in found.items() if why == MISSING]
        unusable = [f"{shown_path(p)}: {why}" for p, why in found.items() if why != MISSING]
        sub.num_missing = len(missing)
        sub.num_bad = len(unusable)
        sub.to_decode = sorted({d.impath for d in (*part.train, *part.val, *part.test)} - set(found))
        sub.split_of = {d.impath: split for split in ("train", "val", "test") for d in getattr(part, split)}
        # the files found usable (a symlink out of images/ is not followed, not even by a stat)
        linked.append((part.split_file, {split: [d for d in getattr(part, split) if d.impath not in found]
                                         for split in ("train", "val", "test")}, images_dir_of(part)))
        if missing:
            shown = "\n".join(f"  {p}" for p in missing[:5])
            report.problems.append(
                f"{len(missing)} image(s) referenced by {part.split_file} are missing, e.g.:\n{shown}"
            )
        if unusable:
            shown = "\n".join(f"  {p}" for p in unusable)
            report.problems.append(
                f"{len(unusable)} image(s) referenced by {part.split_file} are unusable:\n{shown}"
            )
        for path in legacy_fewshot_caches(directory):
            report.warnings.append(f"{path}: pickled few-shot cache of the reference code; ignored by the "
                                   "loader (never unpickled), safe to delete")
        # Superclass mode is only used for a zero-shot side experiment: report, don't fail.
        try:
            load_subset(directory, subset, superclass=True)
        except DatasetError as err:
            report.warnings.append(f"superclass mode (USE_SUPERCLASS_F_ZS_TEST) unusable: {err}")
    # test images that are links to train images (also across OOP and IP, which All trains on together)
    report.problems.extend(linked_duplicate_problems(linked))
    if len(parts) == len(SUBSETS):
        try:
            check_disjoint_classnames(parts)
        except DatasetError as err:
            report.problems.append(str(err))
    return report


def _decode_one(path: str) -> Tuple[Optional[str], str]:
    """``(None, digest)`` if ``path`` decodes as training will read it, else ``(reason, digest)``; the
    digest (SHA-256 of the file's bytes) finds copies across splits (:func:`copy_problems`)."""
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        digest = ""
    try:
        read_image(path)
    except UnreadableImageError as err:
        return str(err), digest
    return None, digest


def _decode_all(paths: Sequence[str], workers: int = 0, progress: bool = True) -> Dict[str, Tuple[Optional[str], str]]:
    """``{path: (reason or None, digest)}``, in a process pool (0 workers: all cores). Decoding is
    CPU-bound, so processes rather than threads; with one worker it runs in process."""
    workers = workers or usable_cpus()
    bar = tqdm(total=len(paths), desc="decoding images", unit="img", disable=not progress, file=sys.stderr)
    results: Dict[str, Tuple[Optional[str], str]] = {}
    try:
        if workers == 1 or len(paths) <= DECODE_CHUNK:
            for path in paths:
                results[path] = _decode_one(path)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for path, outcome in zip(paths, pool.map(_decode_one, paths, chunksize=DECODE_CHUNK)):
                    results[path] = outcome
                    bar.update()
    finally:
        bar.close()
    return results


def decode_problems(paths: Sequence[str], workers: int = 0, progress: bool = True) -> Dict[str, str]:
    """``{path: reason}`` of the images that do not decode (see :func:`_decode_all`)."""
    return {path: reason for path, (reason, _) in _decode_all(paths, workers, progress).items() if reason is not None}


def copy_problems(report: DomainReport, digests: Mapping[str, str]) -> List[str]:
    """One problem listing the images of two splits (or of OOP and IP) whose files hold the same bytes
    but are separate files (one file under two names is :func:`linked_duplicate_problems`' case): a test
    image copied from the training set leaks it into the test score, and no check saw it."""
    groups: Dict[str, List[Tuple[str, str, str]]] = defaultdict(list)
    for sub in report.subsets.values():
        for path in sub.to_decode:
            if digests.get(path):
                groups[digests[path]].append((sub.subset, sub.split_of.get(path, "?"), path))
    shown_as = {path: os.path.relpath(path, os.path.join(sub.directory, "images"))
                for sub in report.subsets.values() for path in sub.to_decode}
    copies = []
    for entries in groups.values():
        if len({(subset, split) for subset, split, _ in entries}) < 2:
            continue  # the same bytes twice in one split: two shots of one image, not a leak
        if len({file_identity(p) for _, _, p in entries}) < 2:
            continue  # one file under several names: reported by the link check
        copies.append(sorted(entries, key=lambda e: ("train", "val", "test").index(e[1]) if e[1] != "?" else 3))
    if not copies:
        return []
    shown = "; ".join(" = ".join(f"{subset} {split} '{shown_as[path]}'" for subset, split, path in e[:2])
                      for e in copies[:5])
    more = f" and {len(copies) - 5} more" if len(copies) > 5 else ""
    return [f"{len(copies)} image(s) whose file is a byte-for-byte copy of one in another split (the test score "
            f"would include training images): {shown}{more}; remove or replace the copies"]


def decode_reports(reports: Sequence[DomainReport], workers: int = 0, progress: bool = True) -> None:
    """Decode every scanned image of ``reports`` in one pool and add a problem per subset with bad files,
    and one per domain with copies across splits."""
    paths = [p for rep in reports for sub in rep.subsets.values() for p in sub.to_decode]
    outcomes = _decode_all(paths, workers, progress)
    bad = {path: reason for path, (reason, _) in outcomes.items() if reason is not None}
    for rep in reports:
        for sub in rep.subsets.values():
            reasons = [bad[p] for p in sub.to_decode if p in bad]
            sub.num_bad = (sub.num_bad or 0) + len(reasons)
            if reasons:
                listing = "\n".join(f"  {r}" for r in reasons)
                rep.problems.append(f"{len(reasons)} image(s) of {sub.directory} cannot be decoded:\n{listing}")
        rep.problems.extend(copy_problems(rep, {path: digest for path, (_, digest) in outcomes.items()}))


def check_root(root: str, domains: Sequence[str] = ()) -> List[DomainReport]:
    """Reports for the named domains (all must exist) or for every registered domain."""
    available = laion_beyond_domains()
    unknown = [d for d in domains if d not in available]
    if unknown:
        raise ValueError(f"Unknown domain(s) {unknown}; registered: {sorted(available)}")
    names = list(domains) or sorted(available)
    return [check_domain(root, n, available[n].prefix, required=bool(domains)) for n in names]


def format_table(reports: Sequence[DomainReport]) -> str:
    # the status is the domain's (a clean IP row read "PROBLEMS" under a bare "Status" when its OOP
    # subset had a bad image): problems such as a copied image or a class in both subsets span the two
    header = ("Domain", "Subset", "Folder", "Classes", "Train", "Val", "Test", "Missing", "Bad", "Domain status")
    rows = []
    for rep in reports:
        if rep.absent:
            continue
        status = "ok" if not rep.problems else "PROBLEMS"
        for subset in SUBSETS:
            sub = rep.subsets.get(subset)
            if sub is None:
                rows.append((rep.name, subset, "-", "-", "-", "-", "-", "-", "-", status))
                continue
            n = sub.num_images
            rows.append((
                rep.name, subset, os.path.basename(sub.directory),
                "-" if sub.num_classes is None else str(sub.num_classes),
                str(n.get("train", "-")), str(n.get("val", "-")), str(n.get("test", "-")),
                "-" if sub.num_missing is None else str(sub.num_missing),
                "-" if sub.num_bad is None else str(sub.num_bad), status,
            ))
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] = (), stream: Optional[TextIO] = None) -> int:
    stream = stream if stream is not None else sys.stdout
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="DATASET.ROOT to check")
    parser.add_argument("--domains", nargs="+", default=[], help="registered dataset names (default: all found)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default: all cores)")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding the images (existence only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(list(argv) or None)
    root = os.path.abspath(os.path.expanduser(args.root))
    # mistakes are one ``error:`` line on stderr (they went to the report's stream, and a --root that is a
    # file or missing read as "no domain found"; --workers -1 was a traceback after the scan)
    try:
        check_cpu_option(args.workers, "--workers")  # --workers 100000 forked that many decoders at once
        if not os.path.isdir(root):
            raise ValueError(f"--root {args.root} is {'a file' if os.path.exists(root) else 'missing'}; "
                             "give the folder that holds the domain folders (DATASET.ROOT)")
        reports = check_root(root, args.domains)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    found = [r for r in reports if not r.absent]
    if not found:
        print(f"error: no LAION-Beyond domain found under {root} (expected folders such as Animals92_OOP/)",
              file=sys.stderr)
        return 2
    if not args.no_decode:
        decode_reports(found, args.workers, progress=not args.no_progress)
    print(format_table(found), file=stream)
    for rep in found:
        for message in rep.warnings:
            print(f"warning [{rep.name}]: {message}", file=stream)
    problems = [(rep.name, p) for rep in found for p in rep.problems]
    if problems:
        print(f"\n{len(problems)} problem(s):", file=stream)
        for name, message in problems:
            print(f"[{name}] {message}", file=stream)
        return 1
    print(f"\nAll {len(found)} domain(s) OK.", file=stream)
    return 0


if __name__ == "__main__":
    exit_with(main)
