"""Collect run results into per-seed statistics, the paper's H-mean table and shot curves.

    python -m scripts.parse_test_res OUT                      # every (dataset, method, shots) group
    python -m scripts.parse_test_res OUT --table --shots 4    # rows = methods, columns = domains + Avg
    python -m scripts.parse_test_res OUT --curves             # OOP accuracy vs shots (zero-shot at 0)
    python -m scripts.parse_test_res OUT --log-mode           # old Dassl runs: "* accuracy: X%" in log.txt

Every ``results.json`` below the directory is read. The run's place in the reference output layout
gives its dataset, method and shots: ``<Dataset>/shots_<K>/<phase>/<method...>/seed<S>`` (phase
``train`` for the OOP-trained run, ``test_IP`` / ``test_All`` for reference-style eval-only runs),
``<Dataset>/<ZeroshotTrainer>/ZS_<SUB>/seed<S>`` for zero-shot (0 shots) and
``<Dataset>/linear_probe`` for the linear probe (one entry per shot count and run). A file elsewhere
falls back on its own ``dataset`` / ``trainer`` / ``shots`` / ``seed`` fields. Results of the same
(dataset, method, shots, seed) are merged, so an OOP run and a separate IP evaluation form one seed.

The method is the first folder below the phase (``FSNL_openclip_USE_CAPTION_True``, ``CoOp_openclip``,
``TaskRes``...); ``--method-depth N`` keeps N folders to tell variants apart, with FSNL's
``_BS_<n>_LR_<x>`` (derived from C and K by the rule) dropped so one method stays one row.

Nothing is merged or dropped silently (``dassl.results``): runs are grouped by method + dataset + shots
+ configuration, the run fingerprint without the seed (and without ``DATASET.SUB_CLASSES`` /
``TEST.CROSS_EVAL``, so that a separate IP evaluation joins its training run's seed). Configurations
of one method that differ become separate rows, labelled by the keys in which they differ
(``FSNL [TRAINER.FSNL.LOSS='caption']``); files written before the results contract (no fingerprint)
form their own configuration, labelled ``legacy`` when they meet fingerprinted runs. Two results of
the same seed, configuration and evaluation are a duplicate: a warning names both paths and the first
(sorted by path) is used.

CoOp's flags (its ``parse_test_res.py``): ``DIR`` holding ``seed*/`` folders is one experiment,
summarised as ``* accuracy: mean% +- spread%``; ``--multi-exp`` summarises every experiment folder
directly below ``DIR``; ``--test-log`` reads evaluation-only runs (a log needs no "Finish training"
line, which is otherwise required, as in CoOp, so that an unfinished training is not counted);
``--ci95`` is ``--ci``. Each seed's accuracy comes from its ``results.json`` when there is one, else
from the last ``* accuracy:`` line of its ``log.txt``. Deliberate difference: CoOp's ``--ci95`` is
``1.96·σ/√n`` with the population σ (ddof 0); here the spread is always the sample std (ddof 1) and
the interval the Student-t one, which is honest for 3 seeds.

H-mean ``H = 2·OOP·IP / (OOP + IP)``. The paper does not say how it was averaged over seeds (spec §8.6),
so both conventions exist and the output names the one used: ``--hmean per-seed`` (default: H of each
seed, then the mean over seeds) or ``--hmean from-means`` (H of the seed-averaged OOP and IP). The
spread is the sample standard deviation over seeds (ddof 1) or, with ``--ci``, the half-width of the
95% Student-t confidence interval of the mean.

Values are checked, never taken on trust: every accuracy a file carries (``accuracy``,
``metrics.accuracy``, ``oop``, ``ip``, ``hmean``, ``subsets.<SUB>.accuracy``, a linear probe's
``accuracies``) must be a JSON number in [0, 100] (the contract stores percentages); a NaN, an
infinity, -5, 1e9 or a string such as ``"62.2"`` makes the whole file a warning naming the file and the
key, and the file is skipped, so a seed is either counted with all its numbers or not at all. The
contract's authority is ``subsets.<SUB>.accuracy`` (what the evaluation measured; the engine copies it
to ``oop`` / ``ip`` / ``accuracy`` and derives ``hmean``): where a copy disagrees, a warning names both
keys and the subsets value is used; H is always recomputed from OOP and IP. A seed that lacks one
accuracy (an IP evaluation that never ran) still counts for the others; every mean over fewer seeds
than its row holds is shown as ``value (n=2)`` and said in a warning, and the JSON carries ``n`` per
number and ``runs`` per row. A ``results.json`` that is not UTF-8 is skipped with a warning like any
other unreadable file.

Outputs (``--md`` / ``--csv`` / ``--json``) are checked, all of them, before anything is read or
written: a target is refused in one ``error:`` line when it is a directory or a symbolic link, when its
name is one a run writes (``results.json``, ``config.yaml``, ``log.txt*``), when it lies in a run folder
(its folder or a folder above holds a ``results.json``: a run's own files and subfolders are never
touched), when two options name the same file, or when it exists and is not a file of that kind this
tool wrote (recognised by content: the opening line of its Markdown, the header of its CSV, the keys of
its JSON), so rerunning a command refreshes its own table and nothing else is ever replaced. Files are
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
import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from scipy import stats

from dassl import results
from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.utils import WriteError, atomic_write_text, check_writable_dir
from dassl.utils.identity import json_digest
from scripts.domains import short_name
from scripts.methods import METHODS, label_for

__all__ = [
    "RunRecord",
    "Stat",
    "GroupSummary",
    "HMEAN_CONVENTIONS",
    "hmean",
    "compute_stat",
    "load_results",
    "load_logs",
    "merge_seeds",
    "summarize",
    "collect",
    "method_labels",
    "build_table",
    "build_curves",
    "summary_to_json",
    "groups_from_json",
    "render_summary_md",
    "render_table_md",
    "render_curves_md",
    "hmean_note",
    "spread_note",
    "MD_OPENINGS",
    "OutputError",
    "PayloadError",
    "check_output_target",
    "written_md",
    "written_csv",
    "written_json",
    "main",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = results.RESULTS_FILE
#: Not part of the configuration a row stands for: the seed varies inside a row, and an evaluation on
#: another subset (IP after OOP training) joins its training run's seed.
GROUP_IGNORED = ("SEED", "DATASET.SUB_CLASSES", "TEST.CROSS_EVAL")
LEGACY = "legacy"
_FINISH_LINE = "Finish training"
HMEAN_CONVENTIONS = ("per-seed", "from-means")
ZEROSHOT_SHOTS = 0
_SHOTS_DIR = re.compile(r"shots_(\d+)$")
_SEED_DIR = re.compile(r"seed(-?\d+)$")
_ZS_DIR = re.compile(r"ZS_(\w+)$")
_FSNL_RULE_PART = re.compile(r"_BS_\d+_LR_[0-9.eE+-]+")
_ACCURACY_LINE = re.compile(r"\* accuracy: ([0-9.]+)%")
_LOG_NAME = re.compile(r"log\.txt(-.*)?$")
_PHASE_SUBSET = MappingProxyType({"train": "OOP", "test_OOP": "OOP", "test_IP": "IP", "test_All": "All"})
#: Names a run writes into its own folder (the results contract, Dassl's logger): never an output of
#: this tool, wherever it lies (a results.json written here would be read as a run by the next scan).
_RUN_FILE = re.compile(r"(results\.json|config\.yaml|log\.txt(-.*)?)$")
#: Two copies of one accuracy agree when they differ by less than this (the engine writes one float
#: twice, so only an edit or another writer makes them differ).
_AGREE = 1e-6
#: The opening of every Markdown text this tool writes (the summary, --table, --curves and CoOp's
#: view): how an existing --md target is recognised as an earlier output that may be replaced.
MD_OPENINGS = (
    "H-mean convention: ",
    "H-mean of OOP and IP accuracy (%)",
    "OOP accuracy vs shots per class",
    "===\nSummary of directory: ",
)
#: The CSV headers this tool writes start with one of these (--csv's recognition, as for Markdown).
_CSV_OPENINGS = ("dataset,method,label,shots,", "method,label,")
#: The keys of every --json payload (a results.json has none of them).
_JSON_KEYS = ("hmean_convention", "spread", "source", "groups")


class OutputError(ValueError):
    """An output target this tool refuses to write (one line naming the option, the file and the fix)."""


class PayloadError(ValueError):
    """A ``--json`` payload (what the plots read back) that is not what this tool writes; the message
    names the key (``groups[3].shots``)."""


class _Unusable(ValueError):
    """A results.json (or log) whose numbers cannot be counted; the caller warns naming the file and
    skips it as a whole, so a seed never enters one mean and silently misses another."""

@dataclass
class RunRecord:
    """One evaluation (or several merged into one seed) of one (dataset, method, shots, seed)."""

    dataset: str
    method: str
    shots: int
    seed: Optional[int]
    oop: Optional[float] = None
    ip: Optional[float] = None
    accuracy: Optional[float] = None
    phase: str = "train"
    sub_classes: str = ""
    path: str = ""
    #: configuration key (see :func:`config_identity`); ``legacy`` for files without a fingerprint.
    config: str = LEGACY
    #: the flat identity the key was computed from (to label differing configurations).
    identity: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Stat:
    """Mean and spread of a metric over seeds (``nan`` when undefined)."""

    mean: float = math.nan
    std: float = math.nan
    ci95: float = math.nan
    n: int = 0

    def spread(self, kind: str) -> float:
        return self.ci95 if kind == "ci95" else self.std


@dataclass
class GroupSummary:
    dataset: str
    method: str
    shots: int
    seeds: List[Any] = field(default_factory=list)
    oop: Stat = field(default_factory=Stat)
    ip: Stat = field(default_factory=Stat)
    hmean: Stat = field(default_factory=Stat)
    accuracy: Stat = field(default_factory=Stat)
    label: str = ""
    config: str = LEGACY
    paths: List[str] = field(default_factory=list)
    #: how many merged runs (seeds) the row holds; a metric whose ``n`` is smaller averages only the
    #: seeds that carry it, which every view marks (``value (n=2)``).
    runs: int = 0


# ------------------------------------------------------------------------------------ statistics


def hmean(oop: float, ip: float) -> float:
    """Harmonic mean of two accuracies (0 when both are 0)."""
    total = oop + ip
    return 0.0 if total == 0 else 2.0 * oop * ip / total


def compute_stat(values: Sequence[float]) -> Stat:
    """Mean, sample std (ddof 1, :func:`dassl.results.sample_std`) and 95% Student-t half-width."""
    mean, std, n = results.mean_std(values)
    if n == 0:
        return Stat()
    if n == 1:
        return Stat(mean, math.nan, math.nan, 1)
    return Stat(mean, std, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n), n)


# ------------------------------------------------------------------------------------ loading


def _percent(value: Any, key: str) -> Optional[float]:
    """``value`` as an accuracy in %, None when absent (JSON null: not evaluated). Anything but a finite
    JSON number in [0, 100] raises :class:`_Unusable` naming ``key``: the contract writes percentages as
    numbers, so NaN, -5, 1e9 or the string "62.2" is an edit or another writer, never a result."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Unusable(f"{key} is {value!r}, not a number")
    # an int is compared as it is: float() of a huge JSON integer would overflow
    in_range = 0 <= value <= 100 if isinstance(value, int) else math.isfinite(value) and 0.0 <= value <= 100.0
    if not in_range:
        raise _Unusable(f"{key} is {value!r}, not a percentage in [0, 100]")
    return float(value)


def _integer(value: Any, key: str) -> int:
    """A shot count or seed: a JSON integer (the key of a JSON object, always a string, may spell one)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unusable(f"{key} is {value!r}, not an integer")
    return value


def _object(data: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Unusable(f"{key} is a JSON {type(value).__name__}, not an object")
    return value


def _method_key(parts: Sequence[str], depth: int) -> str:
    kept = [_FSNL_RULE_PART.sub("", p) for p in parts[: max(1, depth)]]
    return "/".join(kept)


def _seed_from(part: str) -> Optional[int]:
    m = _SEED_DIR.fullmatch(part)
    return int(m.group(1)) if m else None


def _layout(run_dir: Path, depth: int) -> Optional[Dict[str, Any]]:
    """Dataset / method / shots / seed / phase read from a run folder's place in the output layout."""
    parts = run_dir.parts
    seed = _seed_from(parts[-1]) if parts else None
    body = parts[:-1] if seed is not None else parts
    for i in range(len(body) - 1, 0, -1):
        m = _SHOTS_DIR.fullmatch(body[i])
        if m and i + 2 < len(body):
            return {
                "dataset": body[i - 1],
                "shots": int(m.group(1)),
                "phase": body[i + 1],
                "method": _method_key(body[i + 2:], depth),
                "seed": seed,
                "sub_classes": _PHASE_SUBSET.get(body[i + 1], ""),
            }
    if len(body) >= 3:
        m = _ZS_DIR.fullmatch(body[-1])
        if m:
            return {
                "dataset": body[-3],
                "shots": ZEROSHOT_SHOTS,
                "phase": "zeroshot",
                "method": body[-2],
                "seed": seed,
                "sub_classes": m.group(1),
            }
    return None


def _agreed(path: Path, copies: Sequence[Tuple[str, Optional[float]]]) -> Optional[float]:
    """The first present value of ``copies``, which lists the authority first; a later copy that differs
    is a warning naming both keys (never a silent choice)."""
    present = [(key, value) for key, value in copies if value is not None]
    if not present:
        return None
    (key, value), rest = present[0], present[1:]
    for other, copy in rest:
        if abs(copy - value) > _AGREE:
            logger.warning("%s: %s = %.6g disagrees with %s = %.6g; using %s (the contract's record: "
                           "subsets.<SUB>.accuracy, of which the top-level values are copies)",
                           path, key, value, other, copy, key)
    return value


def _metrics(path: Path, data: Dict[str, Any], sub_classes: str) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """``(oop, ip, accuracy)`` of one results.json, every value checked (:func:`_percent`) before any is
    used, so a file is either used whole or skipped whole (:class:`_Unusable`).

    Authority, as the engine writes them (``trainers.cross_eval``): ``subsets.<SUB>.accuracy`` is what
    each evaluation measured; ``accuracy`` / ``metrics.accuracy`` copy the main subset's, ``oop`` /
    ``ip`` the OOP / IP ones, and ``hmean`` is derived (it is recomputed here, so only checked). Files
    without ``subsets`` (legacy) fall back on the copies, and an OOP (IP) run's ``accuracy`` is its OOP
    (IP) accuracy."""
    measured: Dict[str, Optional[float]] = {}
    for name, entry in _object(data, "subsets").items():
        if not isinstance(entry, dict):
            raise _Unusable(f"subsets.{name} is a JSON {type(entry).__name__}, not an object")
        measured[str(name)] = _percent(entry.get("accuracy"), f"subsets.{name}.accuracy")
    main = _percent(_object(data, "metrics").get("accuracy"), "metrics.accuracy")
    top = {key: _percent(data.get(key), key) for key in ("accuracy", "oop", "ip", "hmean")}
    accuracy = _agreed(path, [(f"subsets.{sub_classes}.accuracy", measured.get(sub_classes)),
                              ("metrics.accuracy", main), ("accuracy", top["accuracy"])])
    oop = _agreed(path, [("subsets.OOP.accuracy", measured.get("OOP")), ("oop", top["oop"])]
                  + ([("accuracy", accuracy)] if sub_classes == "OOP" else []))
    ip = _agreed(path, [("subsets.IP.accuracy", measured.get("IP")), ("ip", top["ip"])]
                 + ([("accuracy", accuracy)] if sub_classes == "IP" else []))
    if top["hmean"] is not None:
        if oop is None or ip is None:
            logger.warning("%s: hmean = %.6g without both an OOP and an IP accuracy; ignored", path, top["hmean"])
        elif abs(hmean(oop, ip) - top["hmean"]) > _AGREE:
            logger.warning("%s: hmean = %.6g disagrees with H(OOP %.6g, IP %.6g) = %.6g; the H-mean is "
                           "recomputed from OOP and IP", path, top["hmean"], oop, ip, hmean(oop, ip))
    return oop, ip, accuracy


def config_identity(fp: Optional[Dict[str, Any]]) -> Tuple[str, Dict[str, Any]]:
    """``(key, flat identity)`` of the configuration a run belongs to: its fingerprint without
    :data:`GROUP_IGNORED` (and without the seed of a random init); ``legacy`` without a fingerprint."""
    if not fp:
        return LEGACY, {}
    flat: Dict[str, Any] = {k: v for k, v in results.evaluation_config(fp).items() if k not in GROUP_IGNORED}
    flat["trainer"] = fp.get("trainer")
    for key, value in (fp.get("data") or {}).items():
        flat[f"data.{key}"] = value
    weights = fp.get("weights")
    if isinstance(weights, dict):
        weights = {k: v for k, v in weights.items() if k != "seed"}
    flat["weights"] = weights
    return json_digest(flat), flat


def _linear_probe_records(path: Path, data: Dict[str, Any]) -> List[RunRecord]:
    # lpclip.linear_probe: {"dataset", "sub_classes", "shots": {"K": {"accuracies": [...], "seeds": [...]}}};
    # each of its runs counts as one seed of the group.
    # Every entry is checked before any record is made: the file counts whole or not at all.
    dataset = str(data.get("dataset") or (path.parent.parent.name if path.parent.name == "linear_probe" else ""))
    sub = str(data.get("sub_classes") or "OOP")
    runs: List[Tuple[int, int, float]] = []
    for key, res in data["shots"].items():
        where = f"shots.{key}"
        if not isinstance(res, dict):
            raise _Unusable(f"{where} is a JSON {type(res).__name__}, not an object")
        shots = _integer(res.get("shots", key), f"{where}.shots")
        accs = res.get("accuracies")
        if accs is None:
            accs = [res["accuracy_mean"]] if res.get("accuracy_mean") is not None else []
            names = [f"{where}.accuracy_mean"]
        elif isinstance(accs, list):
            names = [f"{where}.accuracies[{i}]" for i in range(len(accs))]
        else:
            raise _Unusable(f"{where}.accuracies is {accs!r}, not a list")
        seeds = res.get("seeds")
        if seeds is None:
            seeds = list(range(1, len(accs) + 1))
        if not isinstance(seeds, list) or len(seeds) != len(accs):
            raise _Unusable(f"{where}.seeds is {seeds!r}, not one seed per accuracy ({len(accs)})")
        for i, (seed, acc, name) in enumerate(zip(seeds, accs, names)):
            value = _percent(acc, name)
            if value is None:
                raise _Unusable(f"{name} is null, not an accuracy")
            runs.append((shots, _integer(seed, f"{where}.seeds[{i}]"), value))
    return [
        RunRecord(dataset=dataset, method="linear_probe", shots=shots, seed=seed,
                  oop=value if sub == "OOP" else None, ip=value if sub == "IP" else None, accuracy=value,
                  phase="train", sub_classes=sub, path=str(path))
        for shots, seed, value in sorted(runs, key=lambda r: r[:2])
    ]


def _trust_the_record(path: Path, data: Dict[str, Any], where: Dict[str, Any]) -> Dict[str, Any]:
    """Where a fingerprinted results.json contradicts its folder, the file wins (with a warning): a
    run of trainer T is labelled T wherever it lies (a zero-shot evaluation written into a CoOp folder
    was a "CoOp" row), and a training run's shots are its ``DATASET.NUM_SHOTS`` (a ``NUM_SHOTS -1``
    run in ``shots_1/`` was a 1-shot row) and its seed its ``SEED`` (seed1/ copied to seed2/ was a
    second seed; now a duplicate of the first, with a warning). A folder that starts with the trainer's name, or carries
    the same registry label, agrees (``FSNL_openclip_USE_CAPTION_False`` is an FSNL_openclip run)."""
    if not isinstance(data.get("fingerprint"), dict):
        return where
    where = dict(where)
    trainer = str(data.get("trainer") or "")
    folder = where["method"].split("/")[0]
    if trainer and not folder.startswith(trainer) and label_for(folder)[1] != label_for(trainer)[1]:
        logger.warning("%s: a %s run in the folder of %s; labelled by its trainer", path, trainer, folder)
        where["method"] = trainer
    shots = data.get("shots")
    if (where["phase"] == "train" and not data.get("loaded") and isinstance(shots, int)
            and not isinstance(shots, bool) and shots != where["shots"]):
        logger.warning("%s: trained with DATASET.NUM_SHOTS %d but lies in shots_%s/; counted as %d-shot",
                       path, shots, where["shots"], shots)
        where["shots"] = shots
    seed = data.get("seed")
    if (where["phase"] in ("train", "zeroshot") and not data.get("loaded") and isinstance(seed, int)
            and not isinstance(seed, bool) and seed >= 0  # SEED -1: unseeded runs, one per folder
            and where["seed"] is not None and seed != where["seed"]):
        # a run folder copied to another seed's name counted as one more seed, silently
        logger.warning("%s: trained with SEED %d but lies in seed%s/; counted as seed %d", path, seed,
                       where["seed"], seed)
        where["seed"] = seed
    return where


def _record_from_json(path: Path, data: Dict[str, Any], depth: int) -> List[RunRecord]:
    if isinstance(data.get("shots"), dict):
        return _linear_probe_records(path, data)
    where = _layout(path.parent, depth)
    if where is None:
        if not data.get("dataset") or not data.get("trainer"):
            logger.warning("Skipping %s: neither its folder nor its fields say which run it is", path)
            return []
        shots = _integer(data.get("shots") or 0, "shots")
        # a zero-shot trainer's run is the 0-shot column whatever NUM_SHOTS it recorded; a trained run keeps
        # its shots, -1 (all images) included: it was filed in the zero-shot column as "0"
        zero_shot = any(m.kind == "zeroshot" and m.trainer == str(data["trainer"]) for m in METHODS.values())
        where = {
            "dataset": str(data["dataset"]),
            "method": str(data["trainer"]),
            "shots": ZEROSHOT_SHOTS if zero_shot else shots,
            "seed": data.get("seed"),
            "phase": "train",
            "sub_classes": "",
        }
    else:
        where = _trust_the_record(path, data, where)
    seed = where["seed"] if where["seed"] is not None else data.get("seed")
    seed = None if seed is None else _integer(seed, "seed")
    sub = str(data.get("sub_classes") or where["sub_classes"] or "")
    oop, ip, accuracy = _metrics(path, data, sub)
    return [RunRecord(
        dataset=where["dataset"], method=where["method"], shots=where["shots"],
        seed=seed, oop=oop, ip=ip, accuracy=accuracy,
        phase=where["phase"], sub_classes=sub, path=str(path),
    )]


def load_results(root: str, method_depth: int = 1) -> List[RunRecord]:
    """One record per evaluation found in the ``results.json`` files below ``root`` (unmerged), read
    through the results contract; unreadable files and files with a value that is not an accuracy
    (:func:`_metrics`) are skipped with a warning naming the file and the key."""
    records: List[RunRecord] = []
    for res in results.iter_results(root):
        key, identity = config_identity(res.fingerprint)
        try:
            found = _record_from_json(Path(res.path), res.data, method_depth)
        except _Unusable as err:
            logger.warning("Skipping %s: %s; fix the file or rerun that run", res.path, err)
            continue
        for rec in found:
            rec.config, rec.identity = key, identity
            records.append(rec)
    return records


def _last_accuracy(path: Path) -> Optional[float]:
    value = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _ACCURACY_LINE.search(line)
                if m:
                    value = _percent(float(m.group(1)), "its '* accuracy:' line")
    except OSError as err:
        logger.warning("Skipping unreadable %s (%s)", path, err)
    except ValueError as err:  # "1.2.3" (float) or out of [0, 100] (_Unusable)
        logger.warning("Skipping %s: %s", path, err if isinstance(err, _Unusable) else "an '* accuracy:' line "
                       "that is not a number")
        return None
    return value


def load_logs(root: str, method_depth: int = 1) -> List[RunRecord]:
    """Dassl-compatible: the last ``* accuracy: X%`` of each run folder's newest log.

    Dassl writes ``log.txt`` and, when it exists already, ``log.txt-<timestamp>``; the newest file that
    holds an accuracy line is used. The accuracy is the OOP one for ``train`` / ``ZS_OOP`` folders and
    the IP one for ``test_IP`` / ``ZS_IP`` folders. Folders holding a ``results.json`` (runs of this code
    base, whose last log line may be the automatic IP evaluation) are skipped with a warning.
    """
    by_dir: Dict[Path, List[Path]] = {}
    for path in Path(root).rglob("log.txt*"):
        if path.is_file() and _LOG_NAME.fullmatch(path.name):
            by_dir.setdefault(path.parent.resolve(), []).append(path)
    records = []
    for run_dir in sorted(by_dir):
        if (run_dir / RESULTS_FILE).is_file():
            # This code base's runs also log their automatic IP evaluation, so the last accuracy
            # line is not the OOP one; their results.json is authoritative.
            logger.warning("Skipping the log of %s: it has a results.json (parse it without --log-mode)", run_dir)
            continue
        where = _layout(run_dir, method_depth)
        if where is None:
            logger.warning("Skipping %s: not in the <Dataset>/shots_<K>/<phase>/<method>/seed<S> layout", run_dir)
            continue
        # "log.txt" is the oldest; timestamped names sort chronologically after it.
        files = sorted(by_dir[run_dir], key=lambda p: (p.name != "log.txt", p.name))
        value = None
        for path in reversed(files):
            value = _last_accuracy(path)
            if value is not None:
                break
        if value is None:
            continue
        sub = where["sub_classes"]
        records.append(RunRecord(
            dataset=where["dataset"], method=where["method"], shots=where["shots"], seed=where["seed"],
            oop=value if sub == "OOP" else None, ip=value if sub == "IP" else None, accuracy=value,
            phase=where["phase"], sub_classes=sub, path=str(path),
        ))
    return records


def merge_seeds(records: Iterable[RunRecord]) -> List[RunRecord]:
    """One record per (dataset, method, shots, seed): OOP and IP may come from different evaluations.

    The training run (phase ``train`` or zero-shot on OOP) is the primary record: its accuracy is the
    group's ``accuracy`` and its OOP/IP values win over those of separate evaluations.
    """
    groups: Dict[Tuple[Any, ...], List[RunRecord]] = {}
    for rec in records:
        key = (rec.dataset, rec.method, rec.shots, rec.config, rec.seed if rec.seed is not None else rec.path)
        groups.setdefault(key, []).append(rec)
    merged = []
    for key in sorted(groups, key=str):
        recs = _drop_duplicates(sorted(
            groups[key],
            key=lambda r: (not (r.phase == "train" or (r.phase == "zeroshot" and r.sub_classes == "OOP")), r.path),
        ))
        first = recs[0]
        _warn_disagreeing(recs)
        merged.append(RunRecord(
            dataset=first.dataset, method=first.method, shots=first.shots, seed=first.seed,
            oop=next((r.oop for r in recs if r.oop is not None), None),
            ip=next((r.ip for r in recs if r.ip is not None), None),
            accuracy=first.accuracy, phase=first.phase, sub_classes=first.sub_classes,
            path=";".join(r.path for r in recs), config=first.config, identity=first.identity,
        ))
    return merged


def _warn_disagreeing(recs: Sequence[RunRecord]) -> None:
    """Warn when records of one seed and configuration give one metric different values (naming both
    paths and the one used). :func:`_drop_duplicates` catches two records of one (phase, subset); a run
    outside the layout (phase ``train``) beside the grid's zero-shot cell (phase ``zeroshot``) were both
    OOP results of seed 1, and one of them was dropped without a word."""
    for metric in ("oop", "ip"):
        found = [(getattr(r, metric), r.path) for r in recs if getattr(r, metric) is not None]
        differing = [(v, p) for v, p in found[1:] if not math.isclose(v, found[0][0], abs_tol=1e-9)]
        if differing:
            first = recs[0]
            logger.warning("Results disagree for %s %s K=%d seed %s (same configuration): %s %.2f in %s, %.2f in %s; "
                           "using the first", first.dataset, first.method, first.shots, first.seed, metric.upper(),
                           found[0][0], found[0][1], differing[0][0], differing[0][1])


def _drop_duplicates(recs: List[RunRecord]) -> List[RunRecord]:
    """Keep one record per (phase, subset) of one seed and configuration; warn naming both paths."""
    kept: Dict[Tuple[str, str], RunRecord] = {}
    for rec in recs:
        slot = (rec.phase, rec.sub_classes)
        if slot in kept:
            logger.warning("Duplicate result for %s %s K=%d seed %s (same configuration): %s and %s; using the first",
                           rec.dataset, rec.method, rec.shots, rec.seed, kept[slot].path, rec.path)
            continue
        kept[slot] = rec
    return list(kept.values())


#: Config keys a method's sweep sets per shot count (the rule's batch size and learning rate, each shot
#: count's config file's epochs): the points of one curve may differ in them and still be one method.
#: Exact keys: another optimizer, weight decay or schedule is another configuration.
SHOT_SCHEDULE_KEYS = frozenset({"DATASET.NUM_SHOTS", "OPTIM.LR", "OPTIM.MAX_EPOCH", "DATALOADER.TRAIN_X.BATCH_SIZE",
                                "TRAIN.CHECKPOINT_FREQ"})


def _differing(idents: Sequence[Dict[str, Any]]) -> set:
    union = set().union(*(i.keys() for i in idents))
    return {k for k in union if len({json.dumps(i.get(k), sort_keys=True, default=str) for i in idents}) > 1}


def _variant_labels(runs: Sequence[RunRecord]) -> Dict[Tuple[str, str], str]:
    """``{(method, config key): label}``: for each method, the keys whose values differ between its
    configurations inside any (dataset, shots) cell, or across the shot counts of one dataset outside
    :data:`SHOT_SCHEDULE_KEYS` (a curve joined 1-shot runs of one views setting to 2-shot runs of
    another, unlabelled), and each configuration's values of those keys."""
    cells: Dict[Tuple[str, str, int], Dict[str, Dict[str, Any]]] = {}
    curves: Dict[Tuple[str, str], Dict[str, Dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r.method, r.dataset, r.shots), {})[r.config] = r.identity
        if r.config != LEGACY:
            curves.setdefault((r.method, r.dataset), {})[r.config] = r.identity
    keys: Dict[str, set] = {}
    for (method, _, _), configs in cells.items():
        if len(configs) < 2:
            continue
        keys.setdefault(method, set()).update(_differing(list(configs.values())) or {"(legacy)"})
    for (method, _), configs in curves.items():
        across = _differing(list(configs.values())) - SHOT_SCHEDULE_KEYS
        if across:
            keys.setdefault(method, set()).update(across)
    labels: Dict[Tuple[str, str], str] = {}
    for r in runs:
        wanted = keys.get(r.method)
        if not wanted:
            continue
        if r.config == LEGACY:
            labels[(r.method, r.config)] = "legacy: no fingerprint"
            continue
        parts = []
        for k in sorted(wanted - {"(legacy)"}):
            value = r.identity.get(k)
            if k.startswith("data."):
                parts.append(f"{k}={str(value)[:8]}")
            elif k == "weights":
                parts.append(f"weights={json_digest(value, 8)}")
            else:
                parts.append(f"{k}={value!r}")
        labels[(r.method, r.config)] = ", ".join(parts) or "fingerprinted"
    return labels


def summarize(runs: Iterable[RunRecord], hmean_convention: str = "per-seed") -> List[GroupSummary]:
    """Statistics over seeds for each (dataset, method, shots) of merged runs."""
    if hmean_convention not in HMEAN_CONVENTIONS:
        raise ValueError(f"hmean convention must be one of {HMEAN_CONVENTIONS}, got {hmean_convention!r}")
    runs = list(runs)
    variants = _variant_labels(runs)
    groups: Dict[Tuple[str, str, int], List[RunRecord]] = {}
    for run in runs:
        variant = variants.get((run.method, run.config))
        method = f"{run.method} [{variant}]" if variant else run.method
        groups.setdefault((run.dataset, method, run.shots), []).append(run)
    out = []
    for (dataset, method, shots), recs in sorted(groups.items()):
        for metric in ("oop", "ip", "accuracy"):
            lacking = [r.path for r in recs if getattr(r, metric) is None]
            if 0 < len(lacking) < len(recs):
                logger.warning("%s %s K=%d: the %s mean is over %d of %d seeds (shown as n=%d); none in %s",
                               dataset, method, shots, metric, len(recs) - len(lacking), len(recs),
                               len(recs) - len(lacking), "; ".join(lacking))
        oop = compute_stat([r.oop for r in recs if r.oop is not None])
        ip = compute_stat([r.ip for r in recs if r.ip is not None])
        if hmean_convention == "per-seed":
            h = compute_stat([hmean(r.oop, r.ip) for r in recs if r.oop is not None and r.ip is not None])
        elif oop.n and ip.n:
            h = Stat(hmean(oop.mean, ip.mean), math.nan, math.nan, min(oop.n, ip.n))
        else:
            h = Stat()
        out.append(GroupSummary(
            dataset=dataset, method=method, shots=shots,
            seeds=sorted(r.seed for r in recs if r.seed is not None),
            oop=oop, ip=ip, hmean=h, accuracy=compute_stat([r.accuracy for r in recs if r.accuracy is not None]),
            config=recs[0].config, paths=[p for r in recs for p in r.path.split(";")], runs=len(recs),
        ))
    labels = method_labels([g.method for g in out])
    for g in out:
        g.label = labels[g.method]
    return out


def collect(
    root: str, log_mode: bool = False, hmean_convention: str = "per-seed", method_depth: int = 1
) -> List[GroupSummary]:
    """Load, merge and summarise everything below ``root`` (what the plot script reuses)."""
    records = load_logs(root, method_depth) if log_mode else load_results(root, method_depth)
    return summarize(merge_seeds(records), hmean_convention)


# ------------------------------------------------------------------------------------ views


def _known(method: str) -> Tuple[int, str]:
    """Row order and paper label of a method key from the registry (``scripts/methods.py``); a
    `` [variant]`` suffix (configurations that differ) is kept."""
    base, sep, variant = method.partition(" [")
    suffix = f" [{variant}" if sep else ""
    first, _, rest = base.partition("/")
    order, label = label_for(first)
    if label is None:
        return order, method
    return order, label + (f" ({rest})" if rest else "") + suffix


def method_labels(methods: Iterable[str], raw: bool = False) -> Dict[str, str]:
    """Paper names for method keys, falling back to the key when two keys would share a name."""
    keys = sorted(set(methods))
    labels = {m: (m if raw else _known(m)[1]) for m in keys}
    counts: Dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {m: (label if counts[label] == 1 else m) for m, label in labels.items()}


def _method_order(method: str) -> Tuple[int, str]:
    return _known(method)[0], method


def _fmt(stat: Stat, spread: Optional[str], digits: int = 2, runs: int = 0) -> str:
    """``mean ± spread``, with `` (n=k)`` when the mean is over fewer seeds than its row's ``runs``."""
    if stat.n == 0 or math.isnan(stat.mean):
        return "-"
    text = f"{stat.mean:.{digits}f}"
    if spread and not math.isnan(stat.spread(spread)):
        text += f" ± {stat.spread(spread):.{digits}f}"
    if stat.n < runs:
        text += f" (n={stat.n})"
    return text


def _runs(group: GroupSummary) -> int:
    """Seeds of a row: its merged runs (an older --json lacks them: the most any number counts)."""
    return group.runs or max(len(group.seeds), group.oop.n, group.ip.n, group.hmean.n, group.accuracy.n)


#: Said under a view whose cells are marked by :func:`_fmt`.
_N_NOTE = "(n=k): the mean of only k of the row's seeds; the others lack that accuracy (see the warnings)."


def _short(dataset: str) -> str:
    return short_name(dataset)


def build_table(groups: Sequence[GroupSummary], shots: int) -> Dict[str, Any]:
    """H-mean table at ``shots``: methods trained with that K plus the zero-shot rows (0 shots)."""
    zero_shot_only = {g.method for g in groups if g.shots == ZEROSHOT_SHOTS} - {
        g.method for g in groups if g.shots != ZEROSHOT_SHOTS
    }
    chosen = [g for g in groups if g.shots == shots or (g.shots == ZEROSHOT_SHOTS and g.method in zero_shot_only)]
    domains = sorted({g.dataset for g in chosen}, key=lambda d: (_short(d).lower(), d))
    rows = []
    for method in sorted({g.method for g in chosen}, key=_method_order):
        cells = {g.dataset: g.hmean for g in chosen if g.method == method and g.hmean.n}
        runs = {g.dataset: _runs(g) for g in chosen if g.method == method and g.dataset in cells}
        if not cells:
            continue  # never evaluated on IP (TaskRes, linear probe): no H-mean to show
        means = [cells[d].mean for d in domains if d in cells and cells[d].n and not math.isnan(cells[d].mean)]
        rows.append({
            "method": method,
            "label": next(g.label for g in chosen if g.method == method),
            "cells": cells,
            "runs": runs,
            "avg": sum(means) / len(means) if means else math.nan,
            "complete": len(means) == len(domains),
        })
    return {"shots": shots, "domains": domains, "rows": rows}


#: The accuracies a curve can follow: OOP, IP (cross-evaluation) or their H-mean.
CURVE_METRICS = ("oop", "ip", "hmean")


def build_curves(groups: Sequence[GroupSummary], metric: str = "oop") -> Dict[str, Any]:
    """One accuracy (``metric``: OOP, IP or H) per (dataset, method) over shots; zero-shot methods sit
    at 0 shots; methods without that accuracy (class-specific ones have no IP) get no points."""
    if metric not in CURVE_METRICS:
        raise ValueError(f"unknown curve metric {metric!r}; choose from {', '.join(CURVE_METRICS)}")
    datasets = sorted({g.dataset for g in groups}, key=lambda d: (_short(d).lower(), d))
    shots = sorted({g.shots for g in groups})
    curves = []
    for dataset in datasets:
        for method in sorted({g.method for g in groups if g.dataset == dataset}, key=_method_order):
            points = sorted((g for g in groups if g.dataset == dataset and g.method == method), key=lambda g: g.shots)
            curves.append({
                "dataset": dataset,
                "method": method,
                "label": points[0].label,
                "zero_shot": all(p.shots == ZEROSHOT_SHOTS for p in points),
                "points": [(p.shots, getattr(p, metric)) for p in points if getattr(p, metric).n],
                "runs": {p.shots: _runs(p) for p in points},
            })
    return {"datasets": datasets, "shots": shots, "curves": curves, "metric": metric}


# ------------------------------------------------------------------------------------ rendering


def hmean_note(hmean_convention: str) -> str:
    if hmean_convention == "per-seed":
        how = "H = 2·OOP·IP/(OOP+IP) of each seed, then the mean over seeds"
    else:
        how = "H of the seed-averaged accuracies, 2·mean(OOP)·mean(IP)/(mean(OOP)+mean(IP))"
    return f"H-mean convention: {hmean_convention} ({how})."


def spread_note(spread: Optional[str]) -> str:
    if not spread:
        return "Means over seeds; accuracies in %."
    what = "95% Student-t confidence interval of the mean" if spread == "ci95" else results.STD_CONVENTION
    return f"Mean ± {what}; accuracies in %."


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_summary_md(groups: Sequence[GroupSummary], hmean_convention: str, spread: Optional[str]) -> str:
    header = ["Dataset", "Method", "Shots", "Seeds", "OOP", "IP", "H-mean", "Accuracy"]
    rows = [
        [g.dataset, g.label, str(g.shots), str(_runs(g))]
        + [_fmt(stat, spread, runs=_runs(g)) for stat in (g.oop, g.ip, g.hmean, g.accuracy)]
        for g in sorted(groups, key=lambda g: (g.dataset, _method_order(g.method), g.shots))
    ]
    note = f"{hmean_note(hmean_convention)} {spread_note(spread)}"
    text = note + "\n\n" + _md_table(header, rows) + "\n"
    if any("(n=" in cell for row in rows for cell in row[4:]):
        text += f"\n{_N_NOTE}\n"
    return text


def render_table_md(table: Dict[str, Any], hmean_convention: str, spread: Optional[str]) -> str:
    domains = table["domains"]
    header = ["Method"] + [_short(d) for d in domains] + ["Avg"]
    rows = []
    incomplete = False
    for row in table["rows"]:
        cells = [_fmt(row["cells"][d], spread, runs=row["runs"].get(d, 0)) if d in row["cells"] else "-"
                 for d in domains]
        avg = "-" if math.isnan(row["avg"]) else f"{row['avg']:.2f}"
        if not row["complete"] and avg != "-":
            avg += "*"
            incomplete = True
        rows.append([row["label"]] + cells + [avg])
    title = (f"H-mean of OOP and IP accuracy (%), {table['shots']} shots (zero-shot rows: no training); "
             "Avg = mean over the domains.")
    note = f"{hmean_note(hmean_convention)} {spread_note(spread)}"
    if spread and hmean_convention == "from-means":
        note += " (An H-mean of means has no spread.)"
    text = f"{title}\n{note}\n\n{_md_table(header, rows)}\n"
    if incomplete:
        text += "\n\\* averaged over the domains available for that method only.\n"
    if any("(n=" in cell for row in rows for cell in row[1:]):
        text += f"\n{_N_NOTE}\n"
    return text


def render_curves_md(curves: Dict[str, Any], spread: Optional[str]) -> str:
    shots = curves["shots"]
    marked = False
    parts = [f"OOP accuracy vs shots per class (0 = zero-shot). {spread_note(spread)}"]
    for dataset in curves["datasets"]:
        rows = []
        for c in (c for c in curves["curves"] if c["dataset"] == dataset):
            by_k = dict(c["points"])
            rows.append([c["label"]] + [_fmt(by_k[k], spread, runs=c["runs"].get(k, 0)) if k in by_k else "-"
                                        for k in shots])
            marked = marked or any("(n=" in cell for cell in rows[-1][1:])
        parts.append(f"### {dataset}\n\n" + _md_table(["Method"] + [str(k) for k in shots], rows))
    if marked:
        parts.append(_N_NOTE)
    return "\n\n".join(parts) + "\n"


def _stat_json(stat: Stat) -> Dict[str, Any]:
    def clean(x: float) -> Optional[float]:
        return None if math.isnan(x) else round(x, 6)

    return {"mean": clean(stat.mean), "std": clean(stat.std), "ci95": clean(stat.ci95), "n": stat.n}


def _payload_number(obj: Dict[str, Any], key: str, where: str, high: float = math.inf) -> float:
    """A number of a ``--json`` payload (``nan`` for null); :class:`PayloadError` naming ``where.key``
    for a string, NaN/Infinity or a value outside [0, ``high``]."""
    value = obj.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{where}.{key} is {value!r}, not a number")
    if not (0 <= value <= high if isinstance(value, int) else math.isfinite(value) and 0.0 <= value <= high):
        raise PayloadError(f"{where}.{key} is {value!r}, not a number in [0, {high:g}]")
    return float(value)


def _payload_count(obj: Dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError(f"{where}.{key} is {value!r}, not a count")
    return value


def _stat_from_json(obj: Any, where: str = "stat") -> Stat:
    """The inverse of :func:`_stat_json`, checked: a mean is an accuracy in [0, 100] %."""
    if not obj:
        return Stat()
    if not isinstance(obj, dict):
        raise PayloadError(f"{where} is {obj!r}, not an object with mean, std, ci95 and n")
    return Stat(_payload_number(obj, "mean", where, 100.0), _payload_number(obj, "std", where),
                _payload_number(obj, "ci95", where), _payload_count(obj, "n", where))


def summary_to_json(groups: Sequence[GroupSummary]) -> List[Dict[str, Any]]:
    return [
        {
            "dataset": g.dataset, "method": g.method, "label": g.label, "shots": g.shots, "seeds": g.seeds,
            "config": g.config, "paths": g.paths, "runs": _runs(g),
            "oop": _stat_json(g.oop), "ip": _stat_json(g.ip), "hmean": _stat_json(g.hmean),
            "accuracy": _stat_json(g.accuracy),
        }
        for g in groups
    ]


def _payload_text(g: Dict[str, Any], key: str, where: str, default: Optional[str] = None) -> str:
    value = g.get(key, default)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where}.{key} is {value!r}, not a name")
    return value


def _payload_list(g: Dict[str, Any], key: str, where: str) -> List[Any]:
    value = g.get(key, [])
    if not isinstance(value, list):
        raise PayloadError(f"{where}.{key} is {value!r}, not a list")
    return list(value)


def groups_from_json(payload: Any) -> List[GroupSummary]:
    """Inverse of the ``groups`` list written by ``--json`` (what the plot script reads). Every field
    is checked: anything else than what ``--json`` writes is a :class:`PayloadError` naming the key
    (``groups[3].shots``), never a KeyError or a number taken from a string."""
    if not isinstance(payload, dict) or not isinstance(payload.get("groups"), list):
        raise PayloadError("no 'groups' list: not the JSON that `python -m scripts.parse_test_res --json` writes")
    out = []
    for i, g in enumerate(payload["groups"]):
        where = f"groups[{i}]"
        if not isinstance(g, dict):
            raise PayloadError(f"{where} is {g!r}, not an object")
        method = _payload_text(g, "method", where)
        shots = g.get("shots")
        if isinstance(shots, bool) or not isinstance(shots, int):
            raise PayloadError(f"{where}.shots is {shots!r}, not an integer")
        group = GroupSummary(
            dataset=_payload_text(g, "dataset", where), method=method, shots=shots,
            seeds=_payload_list(g, "seeds", where),
            oop=_stat_from_json(g.get("oop"), f"{where}.oop"), ip=_stat_from_json(g.get("ip"), f"{where}.ip"),
            hmean=_stat_from_json(g.get("hmean"), f"{where}.hmean"),
            accuracy=_stat_from_json(g.get("accuracy"), f"{where}.accuracy"),
            label=_payload_text(g, "label", where, method) if g.get("label") else method,
            config=_payload_text(g, "config", where, LEGACY), paths=_payload_list(g, "paths", where),
            runs=_payload_count(g, "runs", where),
        )
        group.runs = _runs(group)
        out.append(group)
    return out


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return value


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue()


def _csv_summary(groups: Sequence[GroupSummary], hmean_convention: str, spread: str) -> str:
    header = ["dataset", "method", "label", "shots", "n_seeds", "seeds"]  # n_seeds: the row's runs
    for metric in ("oop", "ip", "hmean", "accuracy"):
        header += [f"{metric}_mean", f"{metric}_{spread}", f"{metric}_n"]
    header.append("hmean_convention")
    rows = []
    for g in groups:
        row: List[Any] = [g.dataset, g.method, g.label, g.shots, _runs(g), " ".join(map(str, g.seeds))]
        for stat in (g.oop, g.ip, g.hmean, g.accuracy):
            row += [stat.mean, stat.spread(spread), stat.n]
        row.append(hmean_convention)
        rows.append(row)
    return _csv_text(header, rows)


def _csv_table(table: Dict[str, Any], spread: str) -> str:
    domains = table["domains"]
    # <domain>_n: seeds the cell's mean is over; <domain>_runs: seeds of that method there (they differ
    # when some seeds lack an IP accuracy). "avg,complete" stay last: how --csv recognises its own file.
    header = (["method", "label"] + domains + [f"{d}_{spread}" for d in domains] + [f"{d}_n" for d in domains]
              + [f"{d}_runs" for d in domains] + ["avg", "complete"])
    rows = []
    for row in table["rows"]:
        cells = row["cells"]
        rows.append(
            [row["method"], row["label"]]
            + [cells[d].mean if d in cells else math.nan for d in domains]
            + [cells[d].spread(spread) if d in cells else math.nan for d in domains]
            + [cells[d].n if d in cells else 0 for d in domains]
            + [row["runs"].get(d, 0) for d in domains]
            + [row["avg"], row["complete"]]
        )
    return _csv_text(header, rows)


def _csv_curves(curves: Dict[str, Any], spread: str) -> str:
    header = ["dataset", "method", "label", "shots", "oop_mean", f"oop_{spread}", "n", "runs"]
    rows = [
        [c["dataset"], c["method"], c["label"], k, s.mean, s.spread(spread), s.n, c["runs"].get(k, 0)]
        for c in curves["curves"]
        for k, s in c["points"]
    ]
    return _csv_text(header, rows)


def _table_json(table: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "shots": table["shots"],
        "domains": table["domains"],
        "rows": [
            {"method": r["method"], "label": r["label"], "avg": None if math.isnan(r["avg"]) else r["avg"],
             "complete": r["complete"], "cells": {d: _stat_json(s) for d, s in r["cells"].items()},
             "runs": r["runs"]}
            for r in table["rows"]
        ],
    }


def _curves_json(curves: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [
        {"dataset": c["dataset"], "method": c["method"], "label": c["label"], "zero_shot": c["zero_shot"],
         "points": [{"shots": k, **_stat_json(s), "runs": c["runs"].get(k, 0)} for k, s in c["points"]]}
        for c in curves["curves"]
    ]


# ------------------------------------------------------------------------------------ CoOp's view


def _seed_dirs(directory: Path) -> List[Path]:
    return sorted((p for p in directory.iterdir() if p.is_dir() and _SEED_DIR.fullmatch(p.name)),
                  key=lambda p: int(_SEED_DIR.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def _seed_accuracy(seed_dir: Path, test_log: bool) -> Tuple[Optional[float], str, str, Dict[str, Any]]:
    """The seed's headline accuracy, where it came from and its configuration (:func:`config_identity`):
    results.json (via the contract), else the last ``* accuracy:`` of ``log.txt`` (which must say
    "Finish training" unless ``test_log``; a log has no fingerprint: ``legacy``)."""
    if (seed_dir / RESULTS_FILE).is_file():
        res = results.read_results_or_warn(str(seed_dir / RESULTS_FILE))
        if res is None:
            return None, "", LEGACY, {}
        try:
            _, _, accuracy = _metrics(Path(res.path), res.data, str(res.get("sub_classes") or ""))
        except _Unusable as err:
            logger.warning("Skipping %s: %s; fix the file or rerun that run", res.path, err)
            return None, "", LEGACY, {}
        key, identity = config_identity(res.fingerprint)
        return accuracy, str(seed_dir / RESULTS_FILE), key, identity
    log = seed_dir / "log.txt"
    if not log.is_file():
        return None, "", LEGACY, {}
    text = log.read_text(encoding="utf-8", errors="replace")
    if not test_log and _FINISH_LINE not in text:
        logger.warning("Skipping %s: no %r line (unfinished training; --test-log reads evaluation-only logs)",
                       log, _FINISH_LINE)
        return None, "", LEGACY, {}
    return _last_accuracy(log), str(log), LEGACY, {}


def coop_experiments(directory: str, multi_exp: bool, test_log: bool) -> List[Tuple[str, List[float], List[str]]]:
    """CoOp's view: ``[(experiment dir, per-seed accuracies, sources)]`` for ``directory`` itself or,
    with ``multi_exp``, for every folder directly below it that holds ``seed*/`` folders.

    CoOp averaged whatever ``seed*/`` folders an experiment held; here seeds of different
    configurations (another ``--config``/opts run into the same folder) are never averaged together:
    each configuration gets its own summary, labelled by the keys in which they differ, and a
    warning names the experiment."""
    root = Path(directory)
    exps = sorted(p for p in root.iterdir() if p.is_dir() and _seed_dirs(p)) if multi_exp else [root]
    out = []
    for exp in exps:
        by_config: Dict[str, Tuple[Dict[str, Any], List[float], List[str]]] = {}
        for seed_dir in _seed_dirs(exp):
            value, source, key, identity = _seed_accuracy(seed_dir, test_log)
            if value is not None:
                _, values, sources = by_config.setdefault(key, (identity, [], []))
                values.append(value)
                sources.append(source)
        if len(by_config) <= 1:
            _, values, sources = next(iter(by_config.values()), ({}, [], []))
            out.append((str(exp), values, sources))
            continue
        labels = _variant_labels([RunRecord(dataset="", method=str(exp), shots=0, seed=None, config=key,
                                            identity=identity) for key, (identity, _, _) in by_config.items()])
        logger.warning("%s holds seeds of %d different configurations; each is summarised on its own",
                       exp, len(by_config))
        for key, (_, values, sources) in by_config.items():
            out.append((f"{exp} [{labels[(str(exp), key)]}]", values, sources))
    return out


def render_coop(experiments: Sequence[Tuple[str, List[float], List[str]]], spread: str) -> str:
    lines = []
    for exp, values, _ in experiments:
        stat = compute_stat(values)
        lines += ["===", f"Summary of directory: {exp}"]
        if not stat.n:
            lines.append("* no finished seed")
            continue
        half = stat.spread(spread)
        shown = "-" if math.isnan(half) else f"{half:.2f}%"
        lines.append(f"* accuracy: {stat.mean:.2f}% +- {shown} ({stat.n} seed(s))")
    what = "95% Student-t confidence interval of the mean" if spread == "ci95" else results.STD_CONVENTION
    lines.append(f"Spread: {what}.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ output targets


def _run_folder(folder: Path) -> Optional[Path]:
    """``folder`` or the nearest folder above it that is a run's: it holds a ``results.json`` or a
    ``config.yaml`` with a fingerprint header (a run still training has no results.json yet)."""
    for candidate in (folder, *folder.parents):
        if os.path.isfile(candidate / RESULTS_FILE) or results.read_header_fingerprint(
                str(candidate / results.CONFIG_FILE)) is not None:
            return candidate
    return None


def _opening(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(size).decode("utf-8", errors="replace")
    except OSError:
        return ""


def written_md(path: Path) -> bool:
    """A Markdown text this tool wrote: it opens as one of :data:`MD_OPENINGS`."""
    return _opening(path).startswith(MD_OPENINGS)


def written_csv(path: Path) -> bool:
    """A CSV this tool wrote: its header is one of the summary's, the curves' or the table's."""
    header = _opening(path).split("\n", 1)[0]
    return header.startswith(_CSV_OPENINGS[0]) or (header.startswith(_CSV_OPENINGS[1])
                                                   and header.endswith(",avg,complete"))


def json_recogniser(keys: Sequence[str], list_key: str, exact: bool = False) -> Callable[[Path], bool]:
    """A recogniser for :func:`check_output_target`: whether a file is a JSON object that a tool wrote,
    told by its keys (all of ``keys``; only those with ``exact``) and ``list_key`` holding a list."""
    def ours(path: Path) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError):
            return False
        if not isinstance(data, dict) or not all(k in data for k in keys) or (exact and set(data) != set(keys)):
            return False
        return isinstance(data[list_key], list)
    return ours


#: A ``--json`` payload: an object with all of :data:`_JSON_KEYS` (a results.json has none).
written_json = json_recogniser(_JSON_KEYS, "groups")


def target_label(path: str, option: str, given: str) -> str:
    """How an error names an output file: ``--out x.png`` when the option gave it, else
    ``x.png (from --out x)`` for a file the option's value stands for."""
    return f"{option} {path}" if path == given else f"{path} (from {option} {given})"


def check_output_target(path: str, label: str, what: str, ours: Callable[[Path], bool]) -> None:
    """Refuse ``path`` as the place of a ``what`` (:class:`OutputError`, its message starting with
    ``label``, e.g. ``--md table.md``) unless writing it can destroy nothing but an earlier output of this
    tool: not a run's file name, not a link or a directory, not inside a run folder (:func:`_run_folder`),
    and, when it exists, a regular file that ``ours`` recognises. Then its folder must be writable
    (:class:`WriteError`, nothing created). All of it before anything is written."""
    target = Path(path)
    if _RUN_FILE.fullmatch(target.name):
        raise OutputError(f"{label}: {target.name} is the name of a file a run writes (a results.json anywhere "
                          f"is read as a run); give the {what} another name")
    if os.path.islink(path):
        raise OutputError(f"{label} is a symbolic link; give the path of a plain file for the {what}")
    if os.path.isdir(path):
        raise OutputError(f"{label} is a directory; give a file path for the {what}")
    folder = Path(os.path.realpath(target.parent))
    run = _run_folder(folder)
    if run is not None:
        raise OutputError(f"{label} lies in the run folder {run}; write the {what} outside the run folders "
                          "(a run's own files are never replaced)")
    if os.path.lexists(path) and not (os.path.isfile(path) and ours(target)):
        raise OutputError(f"{label} exists and is not a {what} this tool wrote; move it away or choose "
                          "another name")
    check_writable_dir(str(folder), what=f"folder of {label}", create=False)


#: What each output option writes and how an earlier file of it is recognised.
_OUTPUTS = MappingProxyType({
    "md": ("--md", "Markdown output", written_md),
    "csv": ("--csv", "CSV output", written_csv),
    "json": ("--json", "JSON output", written_json),
})


def _check_targets(args: argparse.Namespace) -> None:
    """Every ``--md`` / ``--csv`` / ``--json`` target (:func:`check_output_target`), and no file named twice."""
    seen: Dict[str, str] = {}
    for dest, (option, what, ours) in _OUTPUTS.items():
        path = getattr(args, dest)
        if not path:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise OutputError(f"{seen[real]} and {option} both name {path}; give each its own file")
        seen[real] = option
        check_output_target(path, f"{option} {path}", what, ours)


def _write(path: str, text: str) -> None:
    atomic_write_text(path, text)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m scripts.parse_test_res", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("directory", help="output root to search recursively")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--table", action="store_true", help="methods x domains H-mean table at --shots")
    view.add_argument("--curves", action="store_true", help="OOP accuracy vs shots per domain and method")
    p.add_argument("--shots", type=int, default=4, help="shot count of --table (default 4, as in the paper)")
    p.add_argument("--hmean", choices=HMEAN_CONVENTIONS, default="per-seed")
    p.add_argument("--ci", "--ci95", dest="ci", action="store_true",
                   help="spread = 95%% Student-t CI half-width instead of the sample std (--ci95: CoOp's name)")
    p.add_argument("--multi-exp", action="store_true",
                   help="CoOp: summarise every experiment folder (holding seed*/) directly below DIR")
    p.add_argument("--test-log", action="store_true",
                   help="CoOp: read evaluation-only runs (logs need no 'Finish training' line)")
    p.add_argument("--no-spread", action="store_true", help="print means only")
    p.add_argument("--log-mode", action="store_true", help="parse '* accuracy: X%%' lines of log.txt files")
    p.add_argument("--method-depth", type=int, default=1, help="folders below the phase that name a method")
    p.add_argument("--raw-names", action="store_true", help="show method folder names instead of paper names")
    p.add_argument("--md", help="also write the Markdown here")
    p.add_argument("--csv", help="write the selected view as CSV")
    p.add_argument("--json", help="write all groups (and the selected view) as JSON")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not Path(args.directory).is_dir():
        print(f"error: {args.directory} is not a directory", file=sys.stderr)
        return 2
    if args.method_depth < 0:  # accepted before, and read as depth 1
        print(f"error: --method-depth {args.method_depth}: must be >= 0 (folders below the phase that name a "
              "method)", file=sys.stderr)
        return 2
    spread = "ci95" if args.ci else "std"
    coop_view = bool(args.multi_exp or args.test_log or _seed_dirs(Path(args.directory)))
    if coop_view and (args.csv or args.json):
        # CoOp's view is a text summary; --csv/--json used to be ignored without a word.
        print(f"error: --csv/--json do not apply to CoOp's seed*/ view of {args.directory} (it writes the "
              "summary text only); use --md, or give the output root for the grouped views", file=sys.stderr)
        return 2
    try:
        _check_targets(args)
    except (OutputError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if coop_view:
        experiments = coop_experiments(args.directory, args.multi_exp, args.test_log)
        if not any(values for _, values, _ in experiments):
            print(f"error: no finished seed*/ run (results.json or log.txt) under {args.directory}", file=sys.stderr)
            return 2
        md = render_coop(experiments, spread)
        sys.stdout.write(md)
        return _write_outputs([(args.md, md)])
    groups = collect(args.directory, args.log_mode, args.hmean, args.method_depth)
    if args.raw_names:
        for g in groups:
            g.label = g.method
    if not groups:
        source = "log.txt files with accuracy lines" if args.log_mode else "results.json files"
        print(f"error: no {source} found under {args.directory}", file=sys.stderr)
        return 2
    trained = sorted({g.shots for g in groups if g.shots != ZEROSHOT_SHOTS})
    if args.table and args.shots not in trained:
        # an empty table with rc 0 reads like "every method failed"; say what is there instead
        print(f"error: no run trained with {args.shots} shots under {args.directory} (shots found: "
              f"{' '.join(map(str, trained)) or 'none, only zero-shot runs'}); pick one with --shots", file=sys.stderr)
        return 2
    shown_spread = None if args.no_spread else spread
    payload: Dict[str, Any] = {
        "hmean_convention": args.hmean,
        "spread": spread,
        "source": "log" if args.log_mode else "results.json",
        "groups": summary_to_json(groups),
    }
    if args.table:
        table = build_table(groups, args.shots)
        md = render_table_md(table, args.hmean, shown_spread)
        csv_text = _csv_table(table, spread)
        payload["table"] = _table_json(table)
    elif args.curves:
        curves = build_curves(groups)
        md = render_curves_md(curves, shown_spread)
        csv_text = _csv_curves(curves, spread)
        payload["curves"] = _curves_json(curves)
    else:
        md = render_summary_md(groups, args.hmean, shown_spread)
        csv_text = _csv_summary(groups, args.hmean, spread)
    sys.stdout.write(md)
    return _write_outputs([(args.md, md), (args.csv, csv_text), (args.json, json.dumps(payload, indent=2) + "\n")])


def _write_outputs(outputs: Sequence[Tuple[Optional[str], str]]) -> int:
    """Write each requested ``(path, text)`` atomically; a failure (full disk...) is one error line, rc 2."""
    try:
        for path, text in outputs:
            if path:
                _write(path, text)
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_with(main)
