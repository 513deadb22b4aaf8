"""The whole grid in one process per (domain, backbone): every method × shots × seed from shared features.

    python -m scripts.grid --root data/mini_beyond --out output/mini_grid --config-set mini \\
        --domains MiniAnimals MiniFood --methods fsnl coop clip_adapter taskres zeroshot linear_probe \\
        --shots 1 2 4 8 16 --seeds 1 2 3 [--views 8] [--dry-run] [--force]

A *cell* is one run the sweep would start as ``python train.py ...`` (``scripts.sweep.plan_runs``, the
same registry, config sets and rules), with ``DATALOADER.FEATURE_CACHE.VIEWS K`` added for the
trained methods, or one domain's linear probe. The engine builds each cell's config with
:func:`configs.build_cfg` (exactly the call ``train.py`` makes for that command line), builds the
normal trainer with a ``shared`` dict and runs it, so a cell writes what that ``train.py`` run writes
(``config.yaml``, ``log.txt``, checkpoints, ``results.json``) with the same numbers. Shared per
(domain, backbone), through ``shared``:

* the frozen CLIP, loaded once (keyed by the weights identity);
* the evaluation features: every test / val image encoded once (``trainers.feature_cache.FeatureStore``
  keyed by file identity), also for the IP cross-evaluation and the linear probe's full splits;
* the training views: view ``v`` of an image is drawn from an RNG seeded by (seed, image, v), so
  each (image, view, seed) is encoded once into the store, for the union of all cells' few-shot
  images, and every cell gets exactly the views its standalone run would compute. The in-memory store
  is the cache: cells do not write ``feature_cache/`` files (the only file a standalone run adds).

Every cell starts from ``set_random_seed(SEED)``, as ``train.py`` does, and nothing a cell draws
depends on an earlier cell (model loads and view encoding run in forked RNGs), so results do not
depend on the grid's order. Each cell logs to its own ``log.txt``; the console gets a progress bar
(cells done / total, ETA) and one line per finished cell. A cell is skipped only when its folder holds
a finished run with the cell's fingerprint (``dassl.results``, the same check as ``scripts.sweep``); a
finished run of another fingerprint stops the grid before it starts, with one line naming the
differing keys (``--force`` overwrites). SIGTERM / SIGUSR1 (SLURM preemption) stop the grid after the running cell; rerunning
continues with the missing cells.
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
import concurrent.futures as cf
import contextlib
import json
import logging
import multiprocessing
import os
import os.path as osp
import queue
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from tqdm import tqdm

import train
from clip import autocast, weights_identity
from configs import ConfigError, build_cfg
from dassl import results
from dassl.cli import ArgumentParser
from dassl.data.datasets import build_dataset, data_dirs
from dassl.data.transforms import build_transform
from dassl.engine import build_trainer, expected_fingerprint
from dassl.utils import (
    WriteError,
    absolute_path,
    check_cpu_option,
    check_outside,
    check_writable_dir,
    clean_temp_files,
    hold_output_dir,
    set_random_seed,
    setup_logger,
    usable_cpus,
)
from dassl.utils.identity import json_digest
from dassl.utils.registry import RegistryKeyError
from lpclip import feat_extractor, linear_probe
from scripts.domains import (
    LAION_BEYOND_DOMAINS,
    REPO_ROOT,
    DomainError,
    check_shots,
    count_classes,
    resolve_domains,
)
from scripts.methods import CONFIG_SETS, RULES, Method, get_method, method_names, resolve_config_set
from scripts.run_identity import CONFLICTS, RunConflict, command_state, conflict_message
from scripts.sweep import (
    FEATURE_SPLITS,
    FEATURE_SUBSETS,
    PROBE_SEED,
    RESULTS_FILE,
    Run,
    SweepSpec,
    check_counts,
    check_opts,
    linear_probe_jobs,
    merge_opts,
    plan_runs,
    probe_dir,
    trainer_config,
)
from trainers import feature_cache as fc
from trainers.base import shared_clip

__all__ = ["Cell", "GridPlan", "GridSummary", "plan_grid", "auto_workers", "group_cells", "cell_state",
           "is_finished", "run_cell", "run_grid", "GridStop", "main"]

logger = logging.getLogger(__name__)

DEFAULT_VIEWS = 8
#: Exit status of a grid stopped by SIGTERM / SIGUSR1 (rerun to continue).
STOPPED = 143
#: Exit status of a grid cut short by a second Ctrl-C (128 + SIGINT; rerun to continue).
INTERRUPTED = 130


@dataclass(frozen=True)
class GridPlan:
    """The arguments of :func:`plan_grid` (paths absolute): a worker process replans its group from them,
    since a plan is deterministic and cheaper to send than the cells' configs."""

    root: str
    out: str
    methods: Tuple[str, ...]
    shots: Tuple[int, ...]
    seeds: Optional[Tuple[int, ...]]
    config_set: str
    config: Optional[str]
    rule: Optional[str]
    views: int
    opts: Tuple[str, ...]

    def cells(self, domains: Sequence[str]) -> List[Cell]:
        return plan_grid(self.root, self.out, domains, self.methods, self.shots, self.seeds, self.config_set,
                         self.config, self.rule, self.views, self.opts)


@dataclass
class Cell:
    """One run of the grid: a ``train.py`` run (``run``) or a domain's linear probe (``run`` None)."""

    method: Method
    dataset: str
    cfg: Any
    run: Optional[Run] = None
    shots: Tuple[int, ...] = ()
    feature_dir: str = ""
    output_dir: str = ""
    #: how the cell was planned (None: built by hand; such cells always run in this process)
    plan: Optional[GridPlan] = None
    #: the probe cell's equivalent commands (the sweep's extractor and probe jobs), for ``--dry-run``
    commands: Tuple[str, ...] = ()
    #: replace what the folder holds of a run of another configuration (``--force``: ``train.py --overwrite``)
    overwrite: bool = False

    @property
    def label(self) -> str:
        return self.run.label if self.run is not None else f"linear_probe {self.dataset}"

    @property
    def results_file(self) -> str:
        return osp.join(self.output_dir, RESULTS_FILE)

    @property
    def group(self) -> Tuple[str, str]:
        """(dataset, backbone identity): the unit that shares one model and one feature store."""
        return self.dataset, json_digest(weights_identity(self.cfg))


@dataclass
class GridSummary:
    ran: List[Cell] = field(default_factory=list)
    skipped: List[Cell] = field(default_factory=list)
    failed: List[Tuple[Cell, str]] = field(default_factory=list)
    #: stopped by SIGTERM / SIGUSR1 / a first Ctrl-C (after the running cells)
    stopped: bool = False
    #: aborted by a second Ctrl-C (the running cells were cut short)
    aborted: bool = False
    seconds: Dict[str, float] = field(default_factory=dict)
    #: images (and views) the encoder saw through the feature stores, over all groups
    encoded: int = 0
    #: cells planned (skipped ones included); 0: the cells counted below
    total: int = 0
    #: output dirs of the failed cells whose failure was a user's mistake (``train.user_errors``)
    mistakes: Set[str] = field(default_factory=set)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed; 2 when every failure was a user's mistake (as train.py exits for one),
        else 1 (a bug, or a lost worker)."""
        if not self.failed:
            return 0
        return 2 if all(cell.output_dir in self.mistakes for cell, _ in self.failed) else 1

    @property
    def not_run(self) -> int:
        return max(0, self.total - len(self.ran) - len(self.skipped) - len(self.failed))

    def line(self) -> str:
        total = self.total or len(self.ran) + len(self.skipped) + len(self.failed)
        why = (" (interrupted: rerun to continue)" if self.aborted
               else " (stopped by a signal: rerun to continue)" if self.stopped else "")
        return (f"{total} cell(s): ran {len(self.ran)}, skipped {len(self.skipped)}, failed {len(self.failed)}"
                + (f", not run {self.not_run}" if self.not_run else "") + why)


# ---------------------------------------------------------------------------------------------- plan
def _abs(path: str) -> str:
    return absolute_path(path)


def _run_cfg(run: Run, root: str) -> Any:
    """The config ``train.py`` builds for ``run.argv(root)`` (same call as ``train.setup_cfg``)."""
    return build_cfg(trainer=run.trainer, dataset=_repo_path(f"configs/datasets/{run.dataset}.yaml"),
                     config=_repo_path(run.config), opts=[x for pair in run.opts for x in pair],
                     root=root, output_dir=run.output_dir, seed=run.seed)


def _repo_path(path: str) -> str:
    return path if osp.isabs(path) else os.fspath(REPO_ROOT / path)


def _probe_cfg(spec: SweepSpec, dataset: str, sub: str, config_path: str) -> Any:
    """The config of ``lpclip.feat_extractor`` for one subset (what the sweep's extractor jobs build)."""
    opts = merge_opts([("DATASET.SUB_CLASSES", sub)], spec.opts)
    return build_cfg(dataset=_repo_path(f"configs/datasets/{dataset}.yaml"), config=_repo_path(config_path),
                     opts=[x for pair in opts for x in pair], root=spec.root,
                     output_dir=spec.feature_dir or osp.join(spec.out, "clip_feat"), seed=PROBE_SEED)


def plan_grid(
    root: str, out: str, domains: Sequence[str], methods: Sequence[str], shots: Sequence[int],
    seeds: Optional[Sequence[int]] = None, config_set: str = "paper", config: Optional[str] = None,
    rule: Optional[str] = None, views: int = DEFAULT_VIEWS, opts: Sequence[str] = (),
) -> List[Cell]:
    """Every cell, in domain → method → shots → seed order (paths made absolute). Shots must be >= 1 and
    seeds >= 0 (ValueError); a method, shot count or seed given twice is planned once."""
    root, out = _abs(root), _abs(out)
    shots, seeds = check_counts(shots, seeds)
    methods = list(dict.fromkeys(methods))
    plan = GridPlan(root, out, tuple(methods), tuple(int(k) for k in shots),
                    tuple(int(s) for s in seeds) if seeds is not None else None, config_set, config, rule,
                    int(views), tuple(opts))
    cells: List[Cell] = []
    for dataset in resolve_domains(domains):
        for name in methods:
            method = get_method(name)
            check_opts(opts, method, {"DATALOADER.FEATURE_CACHE.VIEWS": "--views"} if method.kind == "train" else None)
            extra = list(opts)
            if method.kind == "train" and views > 0:
                extra = ["DATALOADER.FEATURE_CACHE.VIEWS", str(int(views)), *extra]
            spec = SweepSpec(method=name, root=root, out=out, domains=[dataset], shots=list(shots),
                             seeds=list(seeds) if seeds is not None else None, config=config,
                             opts=extra, config_set=config_set, rule=rule)
            if method.kind == "probe":
                config_path, _ = trainer_config(method.config_trainer, config or method.config_for(config_set, 1))
                cells.append(Cell(method, dataset, _probe_cfg(spec, dataset, "OOP", config_path),
                                  shots=tuple(int(k) for k in shots),
                                  feature_dir=spec.feature_dir or osp.join(out, "clip_feat"),
                                  output_dir=probe_dir(spec, dataset), plan=plan,
                                  commands=tuple(job.command for job in linear_probe_jobs(spec, dataset))))
                continue
            for run in plan_runs(spec, dataset, method):
                cells.append(Cell(method, dataset, _run_cfg(run, root), run=run, output_dir=run.output_dir,
                                  plan=plan))
    return cells


def group_cells(cells: Sequence[Cell]) -> Dict[Tuple[str, str], List[Cell]]:
    """Cells by (dataset, backbone identity), each group in the given order."""
    groups: Dict[Tuple[str, str], List[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    return groups


def _probe_argv(cell: Cell) -> List[str]:
    """``lpclip.linear_probe``'s arguments for the probe cell (the sweep's job, with the grid's shots)."""
    return ["--feature-dir", cell.feature_dir, "--dataset", cell.dataset, "--sub-classes", "OOP",
            "--output-dir", cell.output_dir, "--shots", *[str(k) for k in cell.shots]]


def cell_state(cell: Cell, match_code: bool = False) -> results.Finished:
    """What the cell's folder holds (``dassl.results``): ``match`` (a finished run with the cell's
    fingerprint: skip), ``missing`` (run), ``mismatch`` / ``unreadable`` (another run: never reused)."""
    if cell.run is None:
        # the probe's features must be the ones this cell extracts (same job identity), not merely exist;
        # every file is checked: the cell (re)writes all six, so one missing file must not let it
        # overwrite another extraction's file beside it
        missing = False
        for sub in FEATURE_SUBSETS:
            cfg = _subset_cfg(cell.cfg, sub)
            for split in FEATURE_SPLITS:
                path = feat_extractor.feature_file(cell.feature_dir, cell.dataset, sub, split)
                state = feat_extractor.feature_file_state(path, cfg, split)
                if state.state == "missing":
                    missing = True
                elif not state.done:
                    return state
        if missing:
            return results.Finished("missing", cell.results_file)
        return command_state(["python", "-m", "lpclip.linear_probe", *_probe_argv(cell)], cell.results_file,
                             match_code=match_code)
    expected = expected_fingerprint(cell.cfg)
    if not osp.isfile(cell.results_file):
        # a killed run of another configuration: its checkpoints stopped the cell only when it ran
        unfinished = (train.unfinished_run_differences(cell.output_dir, expected, cell.run.eval_only)
                      if osp.isdir(cell.output_dir) else [])
        if unfinished:
            return results.Finished("mismatch", cell.output_dir, unfinished, what="unfinished run (its checkpoints)")
        return results.Finished("missing", cell.results_file)
    return results.find_finished(cell.output_dir, expected, match_code=match_code)


def is_finished(cell: Cell, match_code: bool = False) -> bool:
    """A finished run with the cell's fingerprint is in its folder."""
    return cell_state(cell, match_code).done


# ---------------------------------------------------------------------------------------------- run
def _cell_logging(output_dir: str) -> None:
    """The cell's log goes to its ``log.txt``; the console keeps warnings and the engine's lines."""
    check_writable_dir(output_dir)
    setup_logger(output_dir, console="summary")
    clean_temp_files(output_dir)


def _run_train_cell(cell: Cell, shared: Dict[Any, Any], epoch_bars: bool = False) -> Dict[str, Any]:
    """What ``train.main`` does for the cell's command line, with the group's ``shared`` objects;
    ``epoch_bars`` shows the cell's epochs (no per-batch bars) under the grid's bar."""
    cfg = cell.cfg
    assert cell.run is not None
    train.validate_cfg(cfg, training=not cell.run.eval_only)
    # what train.py checks before writing: another configuration's results or checkpoints in the folder
    conflict = train.check_output_dir_run(cfg, evaluating=cell.run.eval_only, overwrite=cell.overwrite)
    existed = osp.isdir(cfg.OUTPUT_DIR)
    check_writable_dir(cfg.OUTPUT_DIR)
    with hold_output_dir(cfg.OUTPUT_DIR):  # as train.py: no other grid or run writes the folder meanwhile
        if existed or os.listdir(cfg.OUTPUT_DIR):  # again under the lock: a run another process finished
            # there since is not replaced (a folder just made and still empty holds none)
            conflict = train.check_output_dir_run(cfg, evaluating=cell.run.eval_only, overwrite=cell.overwrite)
        _cell_logging(cfg.OUTPUT_DIR)
        train.replace_conflicting_run(cfg, conflict, evaluating=cell.run.eval_only)
        if cfg.SEED >= 0:
            set_random_seed(cfg.SEED)
        trainer = build_trainer(cfg, shared=shared)
        trainer.show_progress = epoch_bars
        trainer.progress_batches = False
        if cell.run.eval_only:
            trainer.test()
            trainer.finalize()
        else:
            trainer.train()
    return dict(getattr(trainer, "final_results", None) or {})


def _subset_cfg(cfg: Any, sub: str) -> Any:
    """The probe cell's extraction config for subset ``sub`` (what the sweep's extractor job builds)."""
    out = cfg.clone()
    out.defrost()
    out.DATASET.SUB_CLASSES = sub
    out.freeze()
    return out


def _probe_features(cell: Cell, sub: str, shared: Dict[Any, Any]) -> None:
    """Write the feature files ``lpclip.feat_extractor`` would write for ``sub``, from the store; a file
    that already is this extraction's (same job identity) is kept as it is: the probe results beside it
    name its content."""
    cfg = _subset_cfg(cell.cfg, sub)
    paths = {split: feat_extractor.feature_file(cell.feature_dir, cfg.DATASET.NAME, sub, split)
             for split in FEATURE_SPLITS}
    todo = [split for split, path in paths.items() if not feat_extractor.feature_file_state(path, cfg, split).done]
    if not todo:
        return
    device = feat_extractor.pick_device(cfg)
    loaded = shared_clip(shared, cfg, device, "fp32")
    dataset = build_dataset(cfg)
    tfm = build_transform(cfg, is_train=False)
    store = shared.setdefault(fc.store_namespace("eval", cfg, tfm, loaded.precision.name, str(device), None),
                              fc.FeatureStore())

    def encode(images: torch.Tensor) -> torch.Tensor:
        with autocast(loaded.precision, device):
            return loaded.model.encode_image(images.to(device, dtype=loaded.dtype)).float()

    for split in todo:
        data = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}[split]
        with torch.inference_mode():
            fc.fill_store(store, data, [-1], tfm, encode, 0, str(cfg.DATASET.ROOT),
                          int(cfg.DATALOADER.TEST.BATCH_SIZE), f"encode {sub} {split}")
        raw = fc.gather(store, data, -1)
        labels = torch.tensor([d.label for d in data], dtype=torch.int64)
        arrays = feat_extractor.feature_arrays(raw, labels, torch.arange(len(data)), list(dataset.classnames),
                                               loaded, False, 1, feat_extractor.fingerprint_string(cfg, loaded),
                                               feat_extractor.job_string(cfg, split))
        feat_extractor.save_npz(paths[split], arrays)


def _run_probe_cell(cell: Cell, shared: Dict[Any, Any]) -> None:
    """The sweep's extractor jobs and its probe job for the domain, in this process. The probe's own
    mistakes (another probe's results in the folder, unusable features) are user errors: one line."""
    _cell_logging(cell.output_dir)
    for sub in FEATURE_SUBSETS:
        _probe_features(cell, sub, shared)
    argv = _probe_argv(cell) + (["--overwrite"] if cell.overwrite else [])
    json_path, _, per_shot = linear_probe.run(linear_probe.parse_args(argv))
    logger.info("%s", "; ".join(f"K={r['shots']} {r['accuracy_mean']:.2f}" for r in per_shot.values()))
    logger.info("wrote %s", json_path)


def run_cell(cell: Cell, shared: Dict[Any, Any], epoch_bars: bool = False) -> None:
    """Run one cell with the group's ``shared`` objects (model, feature stores); ``epoch_bars``: a
    tqdm bar of the cell's epochs (on a terminal)."""
    if cell.run is None:
        _run_probe_cell(cell, shared)
    else:
        _run_train_cell(cell, shared, epoch_bars)


def _done_line(cell: Cell, seconds: float) -> str:
    """The cell's console line: ``train.run_summary``'s for a run, the accuracies per K for the probe."""
    if cell.run is not None:
        try:
            with open(cell.results_file, encoding="utf-8") as f:
                return train.run_summary(cell.cfg, json.load(f), seconds)
        except (OSError, ValueError):
            return f"{cell.label}: no results.json ({seconds:.0f} s)"
    return f"done {cell.label}: {_result_line(cell)} ({seconds:.0f} s) -> {cell.output_dir}"


def _result_line(cell: Cell) -> str:
    try:
        with open(cell.results_file, encoding="utf-8") as f:
            shots = json.load(f).get("shots", {})
    except (OSError, ValueError):
        return "(no results.json)"
    return ", ".join(f"K={k} {v['accuracy_mean']:.2f}" for k, v in shots.items() if isinstance(v, dict))


def _error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def auto_workers(cells: Sequence[Cell]) -> int:
    """Worker processes for ``workers=0``: one per CPU core (at most one per group) on a CPU machine,
    one where CUDA is available (the groups would share one device)."""
    if torch.cuda.is_available():
        return 1
    return max(1, min(usable_cpus(), len(group_cells(cells))))


def _threads_per_worker(workers: int, threads: int) -> int:
    """Torch threads of each worker: ``threads`` when given, else the cores divided among the workers.

    The mini CLIP's steps are small enough that one thread each beats two threads shared: on 2 cores an
    FSNL step takes 0.092 s with 1 thread and 0.140 s with 2 (``benchmarks.grid`` measures the grid)."""
    if threads > 0:
        return int(threads)
    return max(1, usable_cpus() // max(1, workers))


def _group_cost(group: Sequence[Cell]) -> float:
    """Relative cost of a group, for scheduling the longest first: cells × C² (the prompt methods encode
    B·C or C texts per step, over C·K images)."""
    cell = group[0]
    try:
        classes = count_classes(str(cell.cfg.DATASET.ROOT), cell.dataset, "OOP")
    except Exception:  # scheduling only: an unreadable split fails in the cell, with its own message
        classes = 1
    return float(len(group) * classes * classes)


def run_grid(
    cells: Sequence[Cell], force: bool = False, fail_fast: bool = False,
    stop: Optional[threading.Event] = None, after_cell: Optional[Callable[[Cell], None]] = None,
    match_code: bool = False, workers: int = 1, threads: int = 0,
) -> GridSummary:
    """Run every pending cell, group by group; a failed cell is recorded and the grid goes on.

    ``workers`` > 1 runs the (dataset, backbone) groups in that many worker processes (0: see
    :func:`auto_workers`), the longest group first, each with ``threads`` torch threads (0: the cores
    divided among the workers); every group still shares one model and one feature store, and a cell's
    result does not depend on the process it ran in. ``after_cell`` is only called for cells run here.

    Raises :class:`RunConflict` (one line naming the differing keys) before running anything when a
    cell's folder holds a finished run of another fingerprint, unless ``force``."""
    summary = GridSummary(total=len(cells))
    pending, summary.skipped = pending_cells(cells, force, match_code)
    groups = group_cells(pending)
    workers = auto_workers(pending) if workers <= 0 else int(workers)
    if workers > 1 and len(groups) > 1 and all(c.plan is not None for c in pending):
        _run_parallel(groups, summary, workers, _threads_per_worker(workers, threads), stop, fail_fast)
        return summary
    progress = _Progress(len(pending))
    try:
        with _cut_short_allowed(stop):
            _run_groups(groups, summary, progress, stop, fail_fast, after_cell, epoch_bars=True)
    except KeyboardInterrupt:  # a second Ctrl-C: the running cell is cut short (it left no results.json)
        summary.aborted = True
    finally:
        progress.close()
    return summary


def _run_groups(groups: Dict[Tuple[str, str], List[Cell]], summary: GridSummary, progress: Any,
                stop: Any, fail_fast: bool, after_cell: Optional[Callable[[Cell], None]] = None,
                epoch_bars: bool = False) -> None:
    """The cells of ``groups`` in this process (one ``shared`` dict per group), recorded in ``summary``;
    ``progress.done(cell, line)`` gets one line per finished or failed cell. ``epoch_bars``: each cell shows
    its epochs under the grid's bar (one process only: bars of several processes would garble)."""
    for group in groups.values():
        shared: Dict[Any, Any] = {fc.STORE_ONLY: True}
        stores_before = summary.encoded
        for cell in group:
            if stop is not None and stop.is_set():
                summary.stopped = True
                return
            start = time.time()
            try:
                run_cell(cell, shared, epoch_bars=epoch_bars)
            except Exception as err:  # one failed cell must not lose the others
                # a user's mistake (bad image, config, folder) is one line, as train.py prints it;
                # anything else is a bug and keeps its traceback in the log
                mistake = isinstance(err, train.user_errors())
                logger.error("cell failed: %s: %s", cell.label, _error_line(err), exc_info=not mistake,
                             extra={"console": not mistake})  # the console has the FAILED line below
                summary.failed.append((cell, _error_line(err)))
                if mistake:
                    summary.mistakes.add(cell.output_dir)
                progress.done(cell, f"FAILED {cell.label}: {_error_line(err)}", why=_error_line(err))
                if fail_fast:
                    return
            else:
                summary.ran.append(cell)
                seconds = time.time() - start
                summary.seconds[cell.output_dir] = seconds
                progress.done(cell, _done_line(cell, seconds), seconds=seconds)
            finally:
                summary.encoded = stores_before + sum(
                    v.encoded for v in shared.values() if isinstance(v, fc.FeatureStore))
                if after_cell is not None:
                    after_cell(cell)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null: later writes, and the flush at exit, find no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


class _Progress:
    """The grid's console: a tqdm bar of cells (done / total, ETA) and one line per finished cell,
    numbered across the whole grid. The worker processes' cells arrive through :meth:`done` too."""

    def __init__(self, total: int) -> None:
        self.total, self.count = int(total), 0
        self.bar = tqdm(total=self.total, desc="grid", unit="cell", disable=None, dynamic_ncols=True)

    def done(self, _cell: Optional[Cell], line: str, why: Optional[str] = None, seconds: float = 0.0) -> None:
        self.count += 1
        try:
            self.bar.write(f"[{self.count}/{self.total}] {line}")
        except BrokenPipeError:
            # the reader went away (``| head``, a dead ``tee`` or ssh session): the grid goes on with its
            # console silenced, instead of a traceback that stopped the remaining cells
            _silence_stdout()
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _QueueProgress:
    """A worker's stand-in for :class:`_Progress`: each cell's outcome and line go to the parent's queue,
    as they happen (the parent counts cells from these, so a worker that dies later loses none)."""

    def __init__(self, queue: Any, dataset: str) -> None:
        self.queue, self.dataset = queue, dataset

    def done(self, cell: Cell, line: str, why: Optional[str] = None, seconds: float = 0.0) -> None:
        self.queue.put((cell.output_dir, f"[{self.dataset}] {line}", why, float(seconds)))


def _worker_init(threads: int, stop: Any, lines: Any) -> None:
    """A worker process: its torch threads, and SIGTERM / SIGUSR1 ask it to stop after the running cell
    (SLURM signals every process of the job; the grid's parent collects what finished)."""
    torch.set_num_threads(int(threads))
    # Ctrl-C reaches every process of the terminal's group: the parent decides (stop after the running
    # cells, or on a second Ctrl-C kill the workers), so a worker does not die with a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: stop.set())
    _WorkerContext.stop = stop
    _WorkerContext.lines = lines


class _WorkerContext:
    """What a worker process received at start-up (one per process, set by ``_worker_init``): the stop
    event and the queue its cells' console lines go to."""

    stop: Any = None
    lines: Any = None


def _group_worker(plan: GridPlan, dataset: str, output_dirs: Sequence[str], fail_fast: bool
                  ) -> Dict[str, Any]:
    """Run one group's pending cells (``output_dirs``) in a worker process; returns what happened."""
    wanted = set(output_dirs)
    cells = [c for c in plan.cells([dataset]) if c.output_dir in wanted]
    summary = GridSummary()
    groups = group_cells(cells)
    _run_groups(groups, summary, _QueueProgress(_WorkerContext.lines, dataset), _WorkerContext.stop, fail_fast)
    return {"ran": [c.output_dir for c in summary.ran], "failed": [(c.output_dir, why) for c, why in summary.failed],
            "seconds": dict(summary.seconds), "encoded": summary.encoded, "stopped": summary.stopped,
            "mistakes": sorted(summary.mistakes)}


def _run_parallel(groups: Dict[Tuple[str, str], List[Cell]], summary: GridSummary, workers: int, threads: int,
                  stop: Optional[threading.Event], fail_fast: bool) -> None:
    """Each group in a worker process (spawned: no inherited OpenMP or CUDA state), longest first.

    The workers report every cell through a queue as it ends (outcome, seconds, console line); that is
    what the summary counts. A worker that dies (killed, out of memory) breaks the whole pool: once the
    pool is down, each cell nobody reported counts as run if its folder holds its finished run (it ended
    before its line went out), else as failed. A second Ctrl-C (``KeyboardInterrupt``) kills the workers;
    their unreported, unfinished cells count as not run."""
    ctx = multiprocessing.get_context("spawn")
    worker_stop = ctx.Event()
    lines = ctx.Queue()
    order = sorted(groups.values(), key=_group_cost, reverse=True)
    total = sum(len(g) for g in order)
    by_dir = {c.output_dir: c for g in order for c in g}
    print(f"grid: {total} cell(s) in {len(order)} group(s), {min(workers, len(order))} worker process(es) x "
          f"{threads} torch thread(s)", file=sys.stderr, flush=True)
    progress = _Progress(total)
    reported: set = set()  # output dirs of the cells counted in the summary
    broken: List[Tuple[List[Cell], str]] = []  # groups whose worker was lost, and why
    reports: List[Dict[str, Any]] = []

    def record(output_dir: str, line: str, why: Optional[str], seconds: float) -> None:
        if output_dir in reported or output_dir not in by_dir:
            return
        reported.add(output_dir)
        cell = by_dir[output_dir]
        if why is None:
            summary.ran.append(cell)
            summary.seconds[output_dir] = seconds
        else:
            summary.failed.append((cell, why))
        progress.done(cell, line)

    def drain() -> None:
        while True:
            try:
                record(*lines.get_nowait())
            except queue.Empty:
                return

    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(order)), mp_context=ctx,
                                  initializer=_worker_init, initargs=(threads, worker_stop, lines))
    waiting: set = set()
    try:
        # The workers are spawned by these submits. Spawned with Ctrl-C ignored, they start with it ignored
        # (an ignored SIGINT survives exec, and Python then installs no KeyboardInterrupt handler): a Ctrl-C
        # while a worker still imports would otherwise end it with a traceback before _worker_init runs.
        with _sigint_ignored():
            futures = {pool.submit(_group_worker, g[0].plan, g[0].dataset, [c.output_dir for c in g], fail_fast): g
                       for g in order}
        waiting = set(futures)
        with _cut_short_allowed(stop):
            while waiting:
                done, waiting = cf.wait(waiting, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                drain()
                if stop is not None and stop.is_set():
                    worker_stop.set()
                for fut in done:
                    try:
                        report = fut.result()
                    except cf.process.BrokenProcessPool:  # a worker died: its group is settled once the pool is down
                        broken.append((futures[fut],
                                       "a worker process died (killed, or out of memory?); rerun to continue"))
                        continue
                    except Exception as err:  # a bug in the worker's own code (not in a cell: those are recorded)
                        broken.append((futures[fut], f"worker process failed: {_error_line(err)}"))
                        continue
                    reports.append(report)
                    summary.mistakes.update(report["mistakes"])
                    summary.encoded += int(report["encoded"])
                    summary.stopped = summary.stopped or bool(report["stopped"])
                    if fail_fast and report["failed"]:
                        worker_stop.set()
    except KeyboardInterrupt:
        summary.aborted = True
    finally:
        with _sigint_ignored():  # settling what happened must not be cut short by another Ctrl-C
            _settle_pool(pool, bool(waiting), worker_stop)
            drain()  # lines still in the queue when the last worker returned (the pool has shut down)
            for report in reports:  # a returned worker's cells whose line never arrived
                for d in report["ran"]:
                    record(d, f"[{by_dir[d].dataset}] done {by_dir[d].label}", None, report["seconds"].get(d, 0.0))
                for d, why in report["failed"]:
                    record(d, f"[{by_dir[d].dataset}] FAILED {by_dir[d].label}: {why}", why, 0.0)
            lost = [(cell, why) for group, why in broken for cell in group]
            if summary.aborted:
                lost += [(cell, "") for cell in by_dir.values()]
            for cell, why in lost:
                if cell.output_dir in reported:
                    continue
                if is_finished(cell):  # it ended before its line went out
                    record(cell.output_dir, f"[{cell.dataset}] done {cell.label}", None, 0.0)
                elif why and not summary.aborted:
                    record(cell.output_dir, f"[{cell.dataset}] FAILED {cell.label}: {why}", why, 0.0)
            progress.close()


def _settle_pool(pool: cf.ProcessPoolExecutor, cut_short: bool, worker_stop: Any) -> None:
    """Shut the pool down; ``cut_short`` (a second Ctrl-C, or an error here): kill its workers first, so
    that their running cells end now instead of being waited for."""
    if cut_short:
        worker_stop.set()
        for proc in multiprocessing.active_children():  # the pool's worker processes
            proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


class GridStop(threading.Event):
    """The stop request the CLI's signal handlers share with :func:`run_grid`.

    Setting it (SIGTERM, SIGUSR1, a first Ctrl-C: :meth:`interrupt`) stops the grid after the running
    cells. A second Ctrl-C cuts them short by raising ``KeyboardInterrupt``, but only while ``run_grid``
    has it ``armed``, which is exactly where that exception is caught and summarised; at most once (the
    handler disarms before raising). Before the cells start and after they end, a second Ctrl-C does
    nothing: it once escaped as a traceback, or cost the summary, when it came as the grid finished."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def interrupt(self) -> None:
        """What a Ctrl-C does (the CLI's SIGINT handler)."""
        if not self.is_set():
            self.set()
            print("interrupted: stopping after the running cell (Ctrl-C again to stop now)", file=sys.stderr,
                  flush=True)
        elif self.armed:
            self.armed = False
            raise KeyboardInterrupt


@contextlib.contextmanager
def _cut_short_allowed(stop: Optional[threading.Event]) -> Iterator[None]:
    """Inside, a second Ctrl-C may cut the running cells short (a :class:`GridStop`; the caller catches
    the ``KeyboardInterrupt``, which can come up to this block's last instruction and never after it)."""
    if not isinstance(stop, GridStop):
        yield
        return
    stop.armed = True
    try:
        yield
    finally:
        stop.armed = False


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C is ignored inside (main thread only: elsewhere signals cannot be set and do not arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m scripts.grid", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--out", required=True, help="output root (the sweep's layout)")
    p.add_argument("--domains", nargs="+", default=list(LAION_BEYOND_DOMAINS))
    p.add_argument("--methods", nargs="+", default=["zeroshot", "fsnl", "coop", "cocoop", "clip_adapter",
                                                    "taskres", "linear_probe"], choices=list(method_names()))
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: each method's (zero-shot: 3)")
    p.add_argument("--config-set", default=None, choices=list(CONFIG_SETS),
                   help="the registry's configs per shot count (default paper); not with --config")
    p.add_argument("--config", default=None, help="one trainer config for every method (rule none unless --rule)")
    p.add_argument("--rule", default=None, choices=list(RULES))
    p.add_argument("--views", type=int, default=DEFAULT_VIEWS,
                   help="DATALOADER.FEATURE_CACHE.VIEWS of the trained methods (augmented views per image)")
    p.add_argument("--dry-run", action="store_true", help="print the equivalent train.py commands and exit")
    p.add_argument("--force", action="store_true",
                   help="rerun every cell, overwriting finished runs (also those of another fingerprint)")
    p.add_argument("--match-code", action="store_true",
                   help="a finished run counts only if the same code version (git commit) produced it")
    p.add_argument("--fail-fast", action="store_true")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes, one (dataset, backbone) group each at a time (0: one per CPU core on "
                        "a CPU machine, at most one per group; 1 with CUDA)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per worker (0: the CPU cores divided among the workers)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... for every cell (last)")
    return p


@contextlib.contextmanager
def _stop_handlers(stop: GridStop) -> Iterator[None]:
    """SIGTERM / SIGUSR1 (SLURM preemption) and a first Ctrl-C stop the grid after the running cells; a
    second Ctrl-C cuts them short (:class:`GridStop`). Either way the summary line follows and a rerun
    runs only the missing cells. The previous handlers come back on exit (``main`` called in-process)."""
    def handler(signum: int, _frame: Any) -> None:
        stop.set()
        print(f"signal {signum}: stopping after the running cell", file=sys.stderr, flush=True)

    names = [name for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)]
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    for name in names:
        previous[getattr(signal, name)] = signal.signal(getattr(signal, name), handler)
    if previous[signal.SIGINT] is not signal.SIG_IGN:  # started with Ctrl-C ignored (cmd &): it stays so
        signal.signal(signal.SIGINT, lambda *_: stop.interrupt())
    try:
        yield
    finally:
        for signum, was in previous.items():
            signal.signal(signum, was)


def _check_args(args: argparse.Namespace) -> None:
    """Counts that make no sense, a dataset root that is no folder and an output root that cannot be
    written (``--dry-run`` creates nothing), before any cell runs."""
    if args.views < 1:
        raise ConfigError(f"--views {args.views}: the number of augmented views per image must be >= 1")
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be >= 0 (0 picks it from the CPU cores)")
    try:
        check_cpu_option(args.threads)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not osp.isdir(args.root):
        raise ConfigError(f"--root {args.root} is not a directory (the dataset root)")
    if osp.isfile(osp.join(args.out, results.RESULTS_FILE)):  # the grid nested its tree inside that run
        raise ConfigError(f'--out "{args.out}" is the folder of one run (it holds {results.RESULTS_FILE}); give the '
                          "grid an output root of its own")
    # nothing is created yet (a config mistake found while planning leaves no empty --out behind), but
    # --out must be creatable: --dry-run's commands must be ones the run would accept
    check_writable_dir(args.out, create=False)


def pending_cells(cells: Sequence[Cell], force: bool = False, match_code: bool = False) -> Tuple[List[Cell], List[Cell]]:
    """``(pending, finished)``: what :func:`run_grid` would run and skip. Raises :class:`RunConflict`
    (one line naming the differing keys) when a cell's folder holds another fingerprint's run, unless
    ``force`` (then every cell is pending, to be overwritten). ``--dry-run`` asks the same question."""
    if force:
        return [replace(cell, overwrite=True) for cell in cells], []
    states = [cell_state(cell, match_code) for cell in cells]
    if any(s.state in CONFLICTS for s in states):
        raise RunConflict(conflict_message(states))
    pending = [cell for cell, state in zip(cells, states) if not state.done]
    return pending, [cell for cell, state in zip(cells, states) if state.done]


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while planning (before any cell ran) or while summarising
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def _check_cells(cells: Sequence[Cell], out: str) -> None:
    """Every trained cell's config passes ``train.py``'s checks (names, values), and ``out`` lies outside
    every planned domain's dataset folders, before any cell runs: an ``--opts OPTIM.MAX_EPOCH -3`` is one
    line here, not a failure per cell after the first has trained."""
    for cfg in {cell.dataset: cell.cfg for cell in cells}.values():
        check_outside(out, data_dirs(cfg), "--out")
    for cell in cells:
        if cell.run is None:
            continue
        try:
            train.validate_cfg(cell.cfg, training=not cell.run.eval_only)
        except ConfigError as err:
            raise ConfigError(f"{cell.label}: {err}") from None


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        config_set = resolve_config_set(args.config_set, args.config)
    except (ConfigError, WriteError, ValueError) as err:
        print(f"error: {train.error_message(err)}", file=sys.stderr)
        return 2
    try:
        cells = plan_grid(args.root, args.out, args.domains, args.methods, args.shots, args.seeds,
                          config_set, args.config, args.rule, args.views, args.opts)
        for dataset in dict.fromkeys(c.dataset for c in cells):
            # the domain must be under --root (e.g. "Plants" is LAION-Beyond's, not Mini-Beyond's MiniPlants),
            # and a trained cell's shot count must exist there (each such cell failed on its own before)
            check_shots(args.root, dataset, [c.run.shots for c in cells if c.run is not None and c.dataset == dataset])
        _check_cells(cells, args.out)
    except (DomainError, ConfigError, RegistryKeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WriteError as err:
        print(f"error: {train.error_message(err)}", file=sys.stderr)
        return 2
    if args.dry_run:
        try:  # the same conflicts the real run refuses, before printing anything
            pending, _ = pending_cells(cells, args.force, args.match_code)
        except RunConflict as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for cell in pending:
            print("\n".join([shlex.join(cell.run.argv(_abs(args.root)))] if cell.run else cell.commands))
        return 0
    try:
        check_writable_dir(args.out)  # planned and checked: now the output root may be created
    except WriteError as err:
        print(f"error: {train.error_message(err)}", file=sys.stderr)
        return 2
    stop = GridStop()
    start = time.time()
    with _stop_handlers(stop):
        try:
            workers = auto_workers(cells) if args.workers <= 0 else args.workers
            torch.set_num_threads(_threads_per_worker(workers, args.threads))  # the cells run here when one worker
            summary = run_grid(cells, force=args.force, fail_fast=args.fail_fast, stop=stop,
                               match_code=args.match_code, workers=workers, threads=args.threads)
        except RunConflict as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        with _sigint_ignored():  # the summary is printed whole
            print(f"grid: {summary.line()} in {time.time() - start:.0f} s", file=sys.stderr)
            for cell, why in summary.failed:
                print(f"  FAILED {cell.label}: {why}", file=sys.stderr)
    if summary.aborted:
        return INTERRUPTED
    if summary.stopped:
        return STOPPED
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
