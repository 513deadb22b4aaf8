"""Command-line entry point (CoOp's interface): build the config, seed, log, build the trainer, run.

Run from the repository root::

    python train.py --root DATA --seed 1 --trainer FSNL_openclip \
        --dataset-config-file configs/datasets/Pokemon89_39.yaml \
        --config-file configs/trainers/FSNL_openclip/vit_b16_ep200_standard.yaml \
        --output-dir output/pokemon/seed1 DATASET.NUM_SHOTS 4

Config merge order: Dassl defaults → project keys (``extend_cfg``) → dataset yaml → trainer yaml →
trainer preset (``preset_cfg`` of backbone variants) → command-line fields → trailing ``KEY VALUE``
overrides. Config mistakes (unknown key, trainer, dataset or evaluator) end with one ``error:``
line on stderr that names the closest valid choice, and exit code 2.
"""
from __future__ import annotations

if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import argparse
import importlib
import logging
import os
import os.path as osp
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import trainers
from configs import FIELDS, ConfigError, build_cfg, check_cfg, extend_cfg  # noqa: F401  (re-exported)
from dassl import results as run_results
from dassl.cli import ArgumentParser
from dassl.config import FINAL_MODEL_CHOICES
from dassl.data import LoaderError
from dassl.data.datasets import DATASET_REGISTRY, data_dirs
from dassl.engine import TRAINER_REGISTRY, TrainingDiverged, build_trainer, expected_fingerprint
from dassl.engine.trainer import check_model_dir, no_weights_message
from dassl.evaluation import EVALUATOR_REGISTRY
from dassl.optim import AVAI_OPTIMS, AVAI_SCHEDS
from dassl.utils import (
    CheckpointError,
    UnreadableImageError,
    WriteError,
    check_availability,
    check_not_in_use,
    check_outside,
    check_writable_dir,
    clean_temp_files,
    close_log_file,
    collect_env_info,
    former_file,
    hold_output_dir,
    list_checkpoints,
    load_checkpoint,
    log_file_for,
    missing_dirs,
    remove_failed_start,
    set_random_seed,
    setup_logger,
)
from dassl.utils.registry import RegistryKeyError
from datasets.laion_beyond import SUB_CLASSES_CHOICES
from trainers import feature_cache

logger = logging.getLogger("train")

#: Environment variable that, like ``--debug``, shows tracebacks instead of one-line errors.
DEBUG_ENV = "FSNL_DEBUG"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=str, default=None, help="path to the dataset root")
    parser.add_argument("--output-dir", type=str, default=None, help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (>= 0 seeds everything; -1 leaves the run unseeded)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="trainer config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="dataset config file")
    parser.add_argument("--trainer", type=str, default="", help="name of the trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of the CNN/ViT backbone")
    parser.add_argument("--head", type=str, default="", help="name of the head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="",
                        help="load a model from this directory for --eval-only")
    parser.add_argument("--load-epoch", type=int, help="load the checkpoint of this epoch (default: best/last)")
    parser.add_argument("--no-train", action="store_true", help="build the trainer but do not train")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what --output-dir holds of a run of another configuration (its "
                             "results.json and checkpoints) instead of refusing")
    parser.add_argument("--verbose", action="store_true",
                        help="print every log line on the console (default: log.txt gets them, the console "
                             "one line per finished run plus warnings)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (they only show on a terminal)")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of user errors instead of one line (also {DEBUG_ENV}=1)")
    # Declared before the positional remainder so it parses wherever it appears before the first
    # KEY VALUE override (the reference declared it after REMAINDER: B19).
    parser.add_argument("--enhanced-base", type=str, default=None,
                        help="TaskRes only: enhanced base weights ('none', the config's default = zero-shot CLIP)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command line (KEY VALUE pairs)")
    args = parser.parse_args(argv)
    # REMAINDER swallows everything after the first override; recover a trailing --enhanced-base
    # (how the reference's TaskRes scripts could be misread) instead of failing on it as a key.
    opts = list(args.opts or [])
    if "--enhanced-base" in opts:
        i = opts.index("--enhanced-base")
        if i + 1 >= len(opts):
            parser.error("argument --enhanced-base: expected one argument")
        args.enhanced_base = opts[i + 1]
        del opts[i : i + 2]
    args.opts = opts
    for flag, value in (("--root", args.root), ("--output-dir", args.output_dir)):
        if value is not None and not value.strip():  # `--output-dir "$OUT"` with OUT unset: ./output before
            parser.error(f"{flag} is empty (an unset shell variable?); give a folder, or leave {flag} out for the "
                         "config's value")
    # The reference ignored both without --eval-only, so "train from this model" silently trained
    # from scratch and "evaluate epoch 5" trained a new run: refuse them instead.
    stray = [flag for flag, value in (("--model-dir", args.model_dir), ("--load-epoch", args.load_epoch))
             if value not in ("", None)]
    if stray and not args.eval_only:
        one = len(stray) == 1
        parser.error(f"{' and '.join(stray)} {'names' if one else 'name'} the model that --eval-only evaluates; "
                     f"add --eval-only to evaluate it, or drop {'it' if one else 'them'} to train (--resume DIR "
                     "continues an interrupted run)")
    if args.load_epoch is not None and args.load_epoch < 1:
        # checkpoints count the epochs trained (model.pth.tar-1 is the first); -1 was looked up as
        # "model.pth.tar--1" and reported missing
        parser.error(f"--load-epoch {args.load_epoch}: checkpoints are numbered from epoch 1 "
                     "(model.pth.tar-<E>); give an epoch >= 1, or drop --load-epoch for the final model")
    if args.load_epoch is not None and not args.model_dir:
        parser.error("--load-epoch picks a checkpoint of --model-dir; add --model-dir DIR (the training run's "
                     "--output-dir), or drop --load-epoch")
    return args


# ---------------------------------------------------------------------------------------------- cfg
def fields_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The :func:`configs.build_cfg` fields that ``train.py``'s options set."""
    return {name: getattr(args, name, None) for name in FIELDS}


def setup_cfg(args: argparse.Namespace) -> Any:
    """The frozen run config of a parsed command line (see :func:`configs.build_cfg`)."""
    return build_cfg(trainer=args.trainer, dataset=args.dataset_config_file, config=args.config_file,
                     opts=args.opts, **fields_from_args(args))


def _check_choice(key: str, value: str, available: Sequence[str]) -> None:
    if not value:
        raise ConfigError(f"{key} is empty; available: {', '.join(sorted(available)) or '(none registered)'}")
    try:
        check_availability(value, list(available))
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def validate_cfg(cfg: Any, training: bool = True) -> None:
    """Reject unknown trainer/dataset/evaluator/optimizer names and every config mistake
    :func:`configs.check_cfg` detects, before anything is built."""
    try:
        _check_choice("TRAINER.NAME (--trainer)", cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names())
    except ConfigError as e:
        broken = trainers.broken_modules()
        raise ConfigError(f"{e}; not loaded: {' | '.join(broken)}" if broken else str(e)) from None
    _check_choice("DATASET.NAME", cfg.DATASET.NAME, DATASET_REGISTRY.registered_names())
    if getattr(DATASET_REGISTRY.get(cfg.DATASET.NAME), "supports_subsets", False):
        _check_choice("DATASET.SUB_CLASSES", str(cfg.DATASET.SUB_CLASSES), SUB_CLASSES_CHOICES)
    _check_choice("TEST.EVALUATOR", cfg.TEST.EVALUATOR, EVALUATOR_REGISTRY.registered_names())
    _check_choice("TEST.FINAL_MODEL", cfg.TEST.FINAL_MODEL, FINAL_MODEL_CHOICES)
    _check_choice("OPTIM.NAME", cfg.OPTIM.NAME, AVAI_OPTIMS)
    _check_choice("OPTIM.LR_SCHEDULER", cfg.OPTIM.LR_SCHEDULER, AVAI_SCHEDS)
    check_cfg(cfg, training=training)


#: Config keys that name a cache folder (empty: the default place; ``TEST.FEATURE_CACHE_DIR none``: off).
CACHE_DIR_KEYS = ("DATASET.FEWSHOT_CACHE_DIR", "TEST.FEATURE_CACHE_DIR", "DATALOADER.FEATURE_CACHE.DIR")


def check_cache_dirs(cfg: Any) -> None:
    """A cache folder the config names must be a folder this run can create or write, checked before
    any work (a ``WriteError`` naming the key): a file there was only a warning for the few-shot and
    evaluation caches (the user's setting silently dropped) and, for the training views, a failure after
    the data and the backbone had loaded that named neither the key nor the fix."""
    for key in CACHE_DIR_KEYS:
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        value = str(node or "").strip()
        # only the evaluation cache has an "off" value; the others take "none" as a folder's name
        if value and not (key == "TEST.FEATURE_CACHE_DIR" and value.lower() == feature_cache.DISABLED):
            check_writable_dir(osp.expanduser(value), what=f"{key} folder", create=False)


def check_resume_dir(directory: str) -> None:
    """``--resume DIR`` must hold at least one regular checkpoint (``<model>/model.pth.tar-<E>``);
    which models, trainer and label space is checked when the trainer resumes, before any
    optimizer state is touched. Before, a wrong DIR silently trained from scratch (issue 11)."""
    if not osp.isdir(directory):
        raise CheckpointError(f'--resume "{directory}": no such directory')
    subdirs = [osp.join(directory, d) for d in sorted(os.listdir(directory)) if osp.isdir(osp.join(directory, d))]
    if not any(list_checkpoints(d) for d in subdirs):
        raise CheckpointError(
            f'--resume "{directory}": no checkpoint there (expected <model>/model.pth.tar-<epoch>, written '
            "with TRAIN.CHECKPOINT_FREQ or at the last epoch)"
        )


def _checkpoint_differences(out: str, expected: Dict[str, Any]) -> List[str]:
    """What differs between this run and the newest checkpoint in ``out`` (its ``meta["fingerprint"]``);
    [] when there is none, it matches, or it records no fingerprint (older code: resumed on trust)."""
    for entry in sorted(os.listdir(out)):
        found = list_checkpoints(osp.join(out, entry)) if osp.isdir(osp.join(out, entry)) else {}
        if not found:
            continue
        try:
            meta = load_checkpoint(osp.join(out, entry, found[max(found)])).get("meta") or {}
        except Exception:  # unreadable: the trainer skips it with a warning, as when resuming
            continue
        theirs = meta.get("fingerprint")
        if isinstance(theirs, dict):
            return run_results.diff_fingerprints(theirs, {**expected, "source": None})
    return []


def output_dir_conflict(cfg: Any, model_dir: str = "", load_epoch: Optional[int] = None,
                        evaluating: bool = False) -> Optional[str]:
    """What in ``OUTPUT_DIR`` belongs to a run of another configuration, as "<what> (differs in: <keys>)",
    or None. A run must not overwrite or auto-resume (Dassl resumes from ``OUTPUT_DIR``) another
    configuration's run (issue 11: nothing reused unless its identity matches). Before, ``train.py``
    into a finished run's folder with e.g. another ``OPTIM.LR`` "resumed" its last checkpoint, skipped
    to evaluation and rewrote results.json with the new fingerprint over the old model's numbers; an
    ``--eval-only`` run (checked with its ``--model-dir`` as part of its identity) silently replaced a
    training run's results.json and config.yaml. Checked before anything is written: a finished run's
    results.json, else a config.yaml header with checkpoints beside it, else the newest checkpoint's
    recorded fingerprint. A results.json that cannot be read or has no fingerprint is another
    program's (or damaged): it is not replaced either. An explicit ``--resume`` of this very folder
    continues its run on purpose (the trainer checks the checkpoint's identity); a ``--resume`` of
    another folder does not make this one's results fair game (it did: they were overwritten)."""
    out = str(cfg.OUTPUT_DIR)
    if not out or not osp.isdir(out) or (cfg.RESUME and not evaluating and _same_dir(str(cfg.RESUME), out)):
        return None
    expected = expected_fingerprint(cfg, model_dir, load_epoch) if evaluating else expected_fingerprint(cfg)
    state = run_results.find_finished(out, expected)
    if state.state == "mismatch" and state.results is not None and state.results.fingerprint:
        return f"a finished run of another configuration (differs in: {'; '.join(state.differences)})"
    if state.state == "unreadable":
        return f"a {run_results.RESULTS_FILE} that cannot be read ({'; '.join(state.differences)})"
    if state.state == "mismatch":
        return f"a {run_results.RESULTS_FILE} without a run fingerprint (written by other code)"
    if state.state == "match":
        return None
    differences = unfinished_run_differences(out, expected, evaluating)
    if differences:
        return f"checkpoints of a run of another configuration (differs in: {'; '.join(differences)})"
    return None


def unfinished_run_differences(out: str, expected: Dict[str, Any], evaluating: bool = False) -> List[str]:
    """How the run whose checkpoints lie in the folder ``out`` (no results.json: unfinished, e.g. killed)
    differs from the fingerprint ``expected`` (empty: none there, or the same run, which resumes). The
    grid asks it while planning, so such a folder stops it before any cell trains."""
    subdirs = [osp.join(out, d) for d in sorted(os.listdir(out)) if osp.isdir(osp.join(out, d))]
    if not any(list_checkpoints(d) for d in subdirs):
        return []
    differences = run_results.config_differences(osp.join(out, run_results.CONFIG_FILE), expected)
    if differences is None:  # no config.yaml header: the checkpoints say what they are
        differences = _checkpoint_differences(out, expected)
    elif evaluating and differences and differences[0].startswith("fingerprint "):
        # same keys, other id: the folder is the training run of the model being evaluated
        differences = ["source (this folder is a training run's; the evaluation would replace its config.yaml)"]
    return list(differences)


def _same_dir(a: str, b: str) -> bool:
    return osp.realpath(osp.expanduser(a)) == osp.realpath(osp.expanduser(b))


def check_output_dir_run(cfg: Any, model_dir: str = "", load_epoch: Optional[int] = None,
                         evaluating: bool = False, overwrite: bool = False) -> Optional[str]:
    """Raise a one-line :class:`ConfigError` when :func:`output_dir_conflict` finds another run's
    results or checkpoints in ``OUTPUT_DIR``, unless ``overwrite`` (``--overwrite``, what
    ``scripts.sweep --force`` passes); then return the conflict for the caller to log and clear."""
    conflict = output_dir_conflict(cfg, model_dir, load_epoch, evaluating)
    if conflict and not overwrite:
        action = "evaluating" if evaluating else "training"
        raise ConfigError(
            f'--output-dir "{cfg.OUTPUT_DIR}" holds {conflict}; {action} here would overwrite it. Use another '
            "--output-dir, or --overwrite to replace it"
            + ("" if evaluating else " (--resume DIR continues a run on purpose)")
        )
    return conflict


def replace_conflicting_run(cfg: Any, conflict: Optional[str], evaluating: bool = False) -> None:
    """After ``check_output_dir_run(..., overwrite=True)`` returned a ``conflict``: remove the other
    run's results.json and checkpoints (an evaluation keeps the checkpoints: its ``--model-dir`` may be
    this very folder), with a log line naming what went. Nothing to do without a conflict."""
    if not conflict:
        return
    removed = run_results.clear_run(cfg.OUTPUT_DIR, checkpoints=not evaluating)
    logger.warning("overwrite: %s held %s; removed %s", cfg.OUTPUT_DIR, conflict,
                   ", ".join(osp.relpath(p, cfg.OUTPUT_DIR) for p in removed) or "nothing")


# --------------------------------------------------------------------------------------------- main
def _log_args_and_cfg(args: argparse.Namespace, cfg: Any) -> None:
    lines = ["***************", "** Arguments **", "***************"]
    for key in sorted(vars(args)):
        lines.append(f"{key}: {getattr(args, key)}")
    lines += ["************", "** Config **", "************", str(cfg)]
    logger.info("\n".join(lines))


def main(args: argparse.Namespace) -> Any:
    """Run one experiment; returns the trainer (``--eval-only``: after writing results.json)."""
    cfg = setup_cfg(args)
    validate_cfg(cfg, training=not (args.eval_only or args.no_train))
    if not str(cfg.OUTPUT_DIR).strip():  # an OUTPUT_DIR "" override wrote into the current directory
        raise ConfigError("OUTPUT_DIR is empty; give the run's folder (--output-dir DIR)")
    check_outside(str(cfg.OUTPUT_DIR), data_dirs(cfg), "--output-dir" if args.output_dir else "OUTPUT_DIR")
    check_cache_dirs(cfg)
    if cfg.RESUME:
        check_resume_dir(cfg.RESUME)
    if args.eval_only and args.model_dir:
        check_eval_model_dir(cfg, args.model_dir, args.load_epoch)
    # also under --no-train: building the trainer writes config.yaml (and with --eval-only, results.json)
    model_dir = args.model_dir if args.eval_only else ""
    overwrite = run_results.overwrite_requested(getattr(args, "overwrite", False))
    check_not_in_use(str(cfg.OUTPUT_DIR))  # a folder a live run writes is "in use", not "another configuration"
    conflict = check_output_dir_run(cfg, model_dir, args.load_epoch, evaluating=args.eval_only, overwrite=overwrite)
    created = missing_dirs(str(cfg.OUTPUT_DIR)) if cfg.OUTPUT_DIR else []
    # what a failed start must give back: a finished run's config.yaml (building the trainer rewrites it)
    # and its log.txt (a logger still open on it in this process appends to it)
    config_file = osp.join(str(cfg.OUTPUT_DIR), run_results.CONFIG_FILE)
    former = {p: f for p in (config_file, log_file_for(str(cfg.OUTPUT_DIR))) if (f := former_file(p)) is not None}
    check_writable_dir(cfg.OUTPUT_DIR)
    with hold_output_dir(str(cfg.OUTPUT_DIR)):
        if not created or os.listdir(str(cfg.OUTPUT_DIR)):  # again under the lock: a run another process
            # finished here since is not replaced (a folder this process just made and still empty holds none)
            conflict = check_output_dir_run(cfg, model_dir, args.load_epoch, evaluating=args.eval_only,
                                            overwrite=overwrite)
        return _run_held(args, cfg, conflict, created, config_file, former)


def _run_held(args: argparse.Namespace, cfg: Any, conflict: Optional[str], created: List[str], config_file: str,
              former: Dict[str, Any]) -> Any:
    """The run itself, in its output folder held by :func:`main` (``hold_output_dir``)."""
    log_file = setup_logger(cfg.OUTPUT_DIR, console="all" if getattr(args, "verbose", False) else "summary")
    clean_temp_files(cfg.OUTPUT_DIR)
    replace_conflicting_run(cfg, conflict, evaluating=args.eval_only)
    if cfg.SEED >= 0:
        logger.info("Setting fixed seed: %d", cfg.SEED)
        set_random_seed(cfg.SEED)
    elif not (args.eval_only or args.no_train):  # CoOp's SEED -1: no seeding, as in the reference
        logger.warning("SEED=%d: training is unseeded, so another run of this command gives other numbers under "
                       "the same fingerprint (a sweep counts either as this configuration's run); pass --seed S "
                       "for a reproducible run", cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True

    _log_args_and_cfg(args, cfg)
    logger.info("Collecting env info ...")
    logger.info("** System info **\n%s\n", collect_env_info())

    def undo_start() -> None:
        """What a start that ends before training wrote goes again (see ``remove_failed_start``)."""
        close_log_file()
        remove_failed_start(str(cfg.OUTPUT_DIR), created, [config_file, log_file or ""], previous=former)

    start = time.time()
    trainer = None
    try:
        # An --eval-only trainer skips train-only work (training views, caption preprocessing).
        trainer = build_trainer(cfg, **({"eval_only": True} if args.eval_only else {}))
        trainer.show_progress = not getattr(args, "quiet", False)
        if args.eval_only:
            if args.model_dir:
                try:
                    trainer.load_model(args.model_dir, epoch=args.load_epoch)
                except FileNotFoundError as e:
                    raise ConfigError(f"--model-dir: {e}") from None
            else:
                check_untrained_eval(trainer, cfg)
            trainer.test()
            trainer.finalize()
        elif not args.no_train:
            trainer.train()
    except KeyboardInterrupt:
        message = interrupted_message(trainer, cfg, evaluating=args.eval_only)
        logger.info("%s", message)  # log.txt only: the console gets it once, from cli()
        if not hasattr(trainer, "time_start"):  # stopped before training: as a failed start
            undo_start()
        raise RunInterrupted(message) from None
    except user_errors():
        # A mistake only the built trainer finds (--eval-only without a model, a --resume folder whose
        # checkpoints are all unreadable, ...): a failed start leaves nothing behind. A folder this run
        # created holds just its config.yaml and log then, and goes; in a folder that existed, a new log
        # goes and the files the start rewrote get their former bytes back. The log of a run that had
        # started training stays.
        if not hasattr(trainer, "time_start"):
            undo_start()
        raise
    results = getattr(trainer, "final_results", None)
    if results or (trainer is not None and not args.eval_only and not args.no_train and cfg.TEST.NO_TEST):
        logger.info("%s", run_summary(cfg, results or {}, time.time() - start), extra={"console": True})
    elif args.no_train and trainer is not None:  # every other path ends with a line; this one said nothing
        logger.info("built %s for %s (--no-train: nothing trained or evaluated); config.yaml and log.txt in %s",
                    cfg.TRAINER.NAME, cfg.DATASET.NAME, cfg.OUTPUT_DIR, extra={"console": True})
    return trainer


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run, carrying the one line ``cli`` prints (where it stopped and how to
    go on) instead of Python's KeyboardInterrupt traceback."""


def interrupted_message(trainer: Any, cfg: Any, evaluating: bool = False) -> str:
    """What an interrupted run tells the user. Every file is written atomically (a killed write leaves
    only a temporary sibling, removed by the next run), so what is on disk is whole: the checkpoints
    of the epochs finished so far, no results.json unless the run got that far."""
    if trainer is None or evaluating or not trainer.get_model_names():
        return "interrupted before results.json was written; rerun the same command"
    epochs = [set(list_checkpoints(osp.join(str(cfg.OUTPUT_DIR), n))) for n in trainer.get_model_names()]
    saved = max(set.intersection(*epochs), default=0)
    total = int(getattr(trainer, "max_epoch", 0) or 0)
    started = hasattr(trainer, "time_start")
    where = f" at epoch {min(int(trainer.epoch) + 1, total)}/{total}" if started and total else ""
    again = ("rerun the same command" if not cfg.RESUME or osp.realpath(cfg.RESUME) == osp.realpath(cfg.OUTPUT_DIR)
             else f"rerun it with --resume {cfg.OUTPUT_DIR}")
    if saved:
        return f"interrupted{where}; {again} to resume from the checkpoint of epoch {saved}"
    return (f"interrupted{where} before any checkpoint was saved (TRAIN.CHECKPOINT_FREQ N saves every N epochs); "
            f"{again} to start over")


def check_eval_model_dir(cfg: Any, model_dir: str, load_epoch: Optional[int]) -> None:
    """``--eval-only --model-dir``, checked before anything is built or written: a trainer without
    trained weights (zero-shot) refuses it (it was ignored, yet recorded in results.json as
    ``loaded`` and hashed into the fingerprint, splitting the zero-shot group), and the model dir's
    checkpoints must be readable and belong to this trainer, to the run whose results.json lies
    beside them and to this config's model identity (``dassl.engine.trainer.check_model_dir``)."""
    cls = TRAINER_REGISTRY.get(str(cfg.TRAINER.NAME))
    if not getattr(cls, "LOADS_WEIGHTS", True):
        raise ConfigError(no_weights_message(str(cfg.TRAINER.NAME), model_dir))
    try:
        check_model_dir(cfg, model_dir, load_epoch)
    except FileNotFoundError as e:
        raise ConfigError(f"--model-dir: {e}") from None


def check_untrained_eval(trainer: Any, cfg: Any) -> None:
    """``--eval-only`` of a trainable method without ``--model-dir`` would report the initial model
    as if it were a result: an error, unless ``TEST.ALLOW_UNTRAINED True`` asks for exactly that
    (results.json then records ``loaded: {"untrained": true}``)."""
    models = trainer.get_model_names()
    if not models:
        return
    if not bool(cfg.TEST.get("ALLOW_UNTRAINED", False)):
        raise ConfigError(
            f"--eval-only of {cfg.TRAINER.NAME} needs --model-dir (a finished training run's output dir) "
            f"to evaluate trained weights; to evaluate the untrained initial model on purpose, add "
            f"TEST.ALLOW_UNTRAINED True"
        )
    logger.warning("TEST.ALLOW_UNTRAINED: evaluating the untrained initial %s model", cfg.TRAINER.NAME)
    trainer.load_info = {"model_dir": None, "epoch": 0, "untrained": True}


def run_summary(cfg: Any, results: Dict[str, Any], seconds: float) -> str:
    """The one console line of a finished run, e.g.
    ``done FSNL_openclip MiniAnimals 4-shot seed1: OOP 77.3 IP 78.9 H 78.1 (52 s) -> output/run``."""
    shots = int(cfg.DATASET.NUM_SHOTS)
    head = f"done {cfg.TRAINER.NAME} {cfg.DATASET.NAME}" + (f" {shots}-shot" if shots > 0 else "") + f" seed{cfg.SEED}"
    parts = [f"{label} {results[key]:.1f}" for key, label in (("oop", "OOP"), ("ip", "IP"), ("all", "All"),
                                                               ("hmean", "H"))
             if isinstance(results.get(key), (int, float))]
    if not parts and isinstance(results.get("accuracy"), (int, float)):
        parts = [f"accuracy {results['accuracy']:.1f}"]
    if not results and cfg.TEST.NO_TEST:
        # Dassl's TEST.NO_TEST trains and saves without the final test: no results.json, and before, no line
        parts = [f"trained, not evaluated (TEST.NO_TEST True; evaluate it with --eval-only --model-dir {cfg.OUTPUT_DIR})"]
    return f"{head}: {' '.join(parts) or 'no metric'} ({seconds:.0f} s) -> {cfg.OUTPUT_DIR}"


def _project_errors() -> Tuple[type, ...]:
    """User-facing error types of the project packages (absent when a test stubs them out)."""
    errors: List[type] = []
    for module, name in (("clip", "BackboneError"), ("datasets.laion_beyond", "DatasetError"),
                         ("lpclip.files", "FeatureError"), ("lpclip.files", "OutputConflictError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def user_errors() -> Tuple[type, ...]:
    """Every exception type that is a user's mistake (bad config, data, weights, checkpoint, output
    folder): the entry points report it as one ``error:`` line with exit code 2, a bug keeps its
    traceback. The one list ``train.py``, ``scripts.grid`` and the analysis scripts share."""
    return (ConfigError, RegistryKeyError, WriteError, CheckpointError, UnreadableImageError, LoaderError,
            TrainingDiverged, *_project_errors())


WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def error_message(e: BaseException) -> str:
    """The user-facing text of ``e``. An error raised in a DataLoader worker comes back with the
    worker's traceback folded into its message; only its last line (the original message) is kept."""
    text = str(e)
    if WORKER_TRACEBACK in text:
        last = text.rstrip().splitlines()[-1]
        text = re.sub(rf"^(?:[\w.]+\.)?{re.escape(type(e).__name__)}: ", "", last)
    return text


def debug_requested(args: Optional[argparse.Namespace] = None) -> bool:
    """``--debug`` or ``FSNL_DEBUG`` set to anything but empty/0/false."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no", "off")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """``python train.py ...``: config, data, backbone and output-directory mistakes become one
    ``error:`` line and exit 2 (``--debug`` / ``FSNL_DEBUG=1``: the traceback instead)."""
    args = parse_args(argv)
    try:
        main(args)
    except user_errors() as e:
        if debug_requested(args):
            raise
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if debug_requested(args):
            raise
        print(str(e) if isinstance(e, RunInterrupted) else "interrupted; rerun the same command", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
