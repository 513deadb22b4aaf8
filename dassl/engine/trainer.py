"""Trainer classes with Dassl's hooks (spec §10.4) and the project's additions.

Additions over Dassl (docs/architecture.md, "Engine"):

* ``SimpleTrainer(cfg, shared=None)``: ``shared`` lets trainers built for cross-evaluation reuse
  expensive objects (e.g. the loaded CLIP).
* Checkpoints hold plain tensors/numbers/strings plus ``meta`` (``checkpoint_meta()``); all loading
  goes through ``load_state(name, state_dict, meta)``, which trainers override to map weights
  across label spaces.
* ``model-best`` never moves the resume pointer (B14); ``load_model`` copes with checkpoints that
  carry no ``val_result`` (B13); ``TEST.FINAL_MODEL`` selects on the val split (``best_val``), on
  the test split as the reference did (``best_test``, B10) or keeps the last epoch (default).
* ``test()`` keeps the full metric dict in ``last_results``; ``finalize()`` asks the hook
  ``extra_evaluations()`` for further evaluations (none here: benchmarks such as LAION-Beyond's
  OOP->IP cross-evaluation live in their trainer base, ``trainers/cross_eval.py``) and writes
  ``OUTPUT_DIR/results.json``, including ``load_info`` (what ``load_model`` loaded).
* ``SimpleTrainer(cfg, shared, eval_only=True)`` builds a trainer that only evaluates given weights:
  trainers skip their train-only work (feature caches, caption preprocessing).
* ``load_model`` refuses a model directory whose checkpoints share no class with this label space
  (:class:`CheckpointError`, unless ``accepts_label_space`` says the disjoint space is intended),
  and records ``model_dir``, ``epoch``, ``checkpoints`` and ``classes_shared`` in ``load_info``.
* Models are never wrapped in ``nn.DataParallel`` (B9: wrapped models hide their attributes).
* With ``SEED >= 0`` every epoch starts from a seed derived from (SEED, epoch), so a run resumed
  from a checkpoint sees exactly the batches and augmentations of an uninterrupted run.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import os.path as osp
import time
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .. import results as results_contract
from ..data import DataManager
from ..data.datasets import data_identity
from ..evaluation import build_evaluator
from ..optim.lr_scheduler import missing_state_keys
from ..utils import (
    BEST_NAME,
    POINTER_NAME,
    AverageMeter,
    CheckpointError,
    MetricMeter,
    absolute_path,
    derive_seed,
    list_checkpoints,
    listdir_nohidden,
    load_checkpoint,
    mkdir_if_missing,
    nonfinite_tensors,
    package_versions,
    regular_name,
    save_checkpoint,
    set_random_seed,
    tolist_if_not,
)
from .build import TRAINER_REGISTRY, expected_fingerprint

__all__ = ["TrainingDiverged", "TrainerBase", "SimpleTrainer", "TrainerX", "TrainerXU", "NullWriter", "check_model_dir", "check_run_finished", "checkpoint_file",
           "read_model_checkpoint", "check_model_checkpoint"]

logger = logging.getLogger(__name__)

Names = Optional[Union[str, Sequence[str]]]


class NullWriter:
    """Stands in for tensorboard's SummaryWriter when tensorboard is not installed."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


# ------------------------------------------------------------------ model dirs (--model-dir)
def checkpoint_file(directory: str, name: str, epoch: Optional[int], log: bool = True) -> str:
    """The file an evaluation of model ``name`` reads from ``directory``: ``model.pth.tar-<epoch>``,
    else ``model-best.pth.tar``, else (as CoOp does) the pointer's or the latest regular checkpoint,
    with a log line saying so.

    The ``checkpoint`` pointer may only name a file beside it: ``save_checkpoint`` writes a bare file
    name, and a pointer edited to ``../../other_run/...`` or an absolute path used to load another
    run's weights (filed as this folder's) or any file on the machine (a traceback). Such a pointer is
    a :class:`CheckpointError` naming it. So is a pointer whose file is missing when there is no
    ``model-best.pth.tar``: the latest file left is an earlier epoch, and loading it silently filed that
    epoch's numbers as the training run's final model. ``log=False``: the up-front check, which must not log
    before the run's own log file is set up."""
    mdir = osp.join(directory, name)
    if epoch is not None:
        candidates = [osp.join(mdir, regular_name(int(epoch)))]
    else:
        candidates = [osp.join(mdir, BEST_NAME)]
        pointer = osp.join(mdir, POINTER_NAME)
        if osp.isfile(pointer):
            with open(pointer, encoding="utf-8", errors="replace") as f:
                target = f.readline().strip()
            if target in ("", ".", "..") or osp.basename(target) != target or "\\" in target or "\0" in target:
                raise CheckpointError(
                    f'the checkpoint pointer "{pointer}" names {target!r}, which is not a file in its own folder; '
                    f"it may only name a checkpoint beside it (e.g. {regular_name(1)}): fix or delete the pointer"
                )
            if not osp.isfile(osp.join(mdir, target)) and not osp.isfile(candidates[0]):
                raise CheckpointError(
                    f'the checkpoint pointer "{pointer}" names {target}, the run\'s last checkpoint, which is not '
                    "there (a partial copy, or a file deleted since); restore it, or pick a checkpoint that is "
                    "there with --load-epoch N"
                )
            candidates.append(osp.join(mdir, target))
        regular = list_checkpoints(mdir)
        if regular:
            candidates.append(osp.join(mdir, regular[max(regular)]))
    for path in candidates:
        if osp.isfile(path):
            if log and epoch is None and path != candidates[0]:
                logger.info("No %s in %s: loading the last-epoch checkpoint %s instead",
                            BEST_NAME, mdir, osp.basename(path))
            return path
    if osp.isdir(mdir):
        existing = listdir_nohidden(mdir, sort=True)
        what = f"it contains: {existing}" if existing else "it is empty"
    else:
        what = "that directory does not exist"
    wanted = regular_name(int(epoch)) if epoch is not None else f"{BEST_NAME}, the pointed-to or the latest checkpoint"
    raise FileNotFoundError(f'No checkpoint ({wanted}) for model "{name}" in "{mdir}": {what}')


def read_model_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint an evaluation loads, or a :class:`CheckpointError` naming the file. Resuming
    skips an unreadable checkpoint for an older one; an evaluation was asked for this very file, so
    it stops (a truncated file used to end in torch's multi-line traceback)."""
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # truncated zip, garbage bytes, a foreign file: all mean "unusable"
        raise CheckpointError(
            f'checkpoint "{path}" is unreadable ({type(e).__name__}: {" ".join(str(e).split()).split(". ")[0][:160]}); it is '
            "truncated or not a checkpoint: pick another with --load-epoch, or retrain"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f'checkpoint "{path}" holds no state_dict; point --model-dir at a training run')
    if "epoch" in ckpt and not _whole(ckpt["epoch"]):  # int("two") was a traceback
        raise CheckpointError(f'checkpoint "{path}" records the epoch {ckpt["epoch"]!r}, not a whole number: it is '
                              "damaged or not a checkpoint of this code; pick another with --load-epoch, or retrain")
    bad = nonfinite_tensors(ckpt["state_dict"])
    if bad:
        raise CheckpointError(f'checkpoint "{path}" holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[:3]}): '
                              "the run diverged or the file is damaged; pick another with --load-epoch, or retrain")
    return ckpt


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unfit_state(path: str, what: str, err: Any) -> str:
    return (f'cannot resume from "{path}": its {what} state does not fit ({" ".join(str(err).split())[:120]}); '
            "delete that checkpoint to resume from the one before, or use --overwrite to start over")


def no_weights_message(trainer: str, directory: str) -> str:
    return (f"--model-dir {directory}: {trainer} has no trained weights to load (nothing is learned); "
            "drop --model-dir")


def same_trainer_family(cls: Any, ours: str, theirs: str) -> bool:
    """True when trainer ``theirs`` is ``ours`` (class ``cls``), or a registered subclass or base of it
    (same models and state layout, e.g. a variant that only changes the backbone)."""
    if not theirs or theirs == ours:
        return True
    if theirs not in TRAINER_REGISTRY or not isinstance(cls, type):
        return False
    other = TRAINER_REGISTRY.get(theirs)
    return isinstance(other, type) and (issubclass(other, cls) or issubclass(cls, other))


def _model_dir_run(directory: str, output_dir: str) -> Optional[Dict[str, Any]]:
    """The fingerprint of the *training* run whose results.json lies in ``directory`` (None: none,
    unreadable, an evaluation's, or this run's own folder)."""
    if osp.realpath(directory) == osp.realpath(output_dir or "") or not osp.isfile(osp.join(directory, "results.json")):
        return None
    try:
        fp = results_contract.read_results(directory).fingerprint
    except results_contract.ResultsError:
        return None
    return dict(fp) if isinstance(fp, dict) and fp.get("id") and fp.get("source") is None else None


def _cli_value(value: Any) -> str:
    """A recorded (JSON) config value as a command line's ``KEY VALUE`` override writes it."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else json.dumps(value)
    return json.dumps(value)


def check_model_checkpoint(cfg: Any, directory: str, path: str, meta: Dict[str, Any], trainer_cls: Any = None,
                           mine: Optional[Dict[str, Any]] = None, identity: bool = True) -> None:
    """Refuse, as one :class:`CheckpointError`, to evaluate the checkpoint ``path`` of ``directory``
    (``--model-dir``) under ``cfg`` when

    * it belongs to another trainer (``meta["trainer"]``, outside this trainer's family): its state
      cannot mean the same thing in this model (before: a KeyError or shape traceback, or TaskRes'
      "0 classes"); with ``identity``, any other trainer, a variant of this one included;
    * its own fingerprint (``meta["fingerprint"]``, what the training run recorded) is not the run
      whose results.json lies in ``directory``: a checkpoint copied in from another run would be
      evaluated and filed as that folder's model;
    * the run that trained it differs from ``cfg`` in a key of the model's identity
      (``trainer_cls.model_identity_key``: backbone and weights, shots, seed, the method's own
      settings). An evaluation's results.json is labelled and grouped by its own config (shots,
      seed, backbone), so a 2-shot seed-1 model evaluated under ``DATASET.NUM_SHOTS 1 SEED 3`` was
      filed as a 1-shot seed-3 result, and a model evaluated on other backbone weights is another
      model. Evaluation-side keys (``DATASET.SUB_CLASSES``, ``TEST.*``, precision) may differ:
      cross-evaluation (OOP weights on IP or All) is what ``--eval-only`` is for.

    Checkpoints without a fingerprint (the reference's) are compared by trainer only, and only where
    no results.json of this code lies beside them (its run wrote a fingerprint into each of its own
    checkpoints). The exact trainer and the third
    check are the command line's policy (``train.py --eval-only`` labels results.json by its config):
    ``identity=False`` leaves them out, as :meth:`SimpleTrainer.load_model` does for library use (loading
    a model into a trainer of another seed, e.g. to compare initialisations, is no mistake there)."""
    ours = str(cfg.TRAINER.NAME)
    cls = trainer_cls if trainer_cls is not None else TRAINER_REGISTRY.get(ours)
    theirs_trainer = str(meta.get("trainer") or "")
    if not same_trainer_family(cls, ours, theirs_trainer):
        raise CheckpointError(
            f'--model-dir {directory}: "{path}" is a checkpoint of trainer {theirs_trainer}, not {ours}; evaluate '
            f"it with --trainer {theirs_trainer} and that run's config, or point --model-dir at a {ours} run"
        )
    if identity and theirs_trainer and theirs_trainer != ours:
        # A variant of this trainer (an ablation, GCD, another default backbone) has the same state
        # layout, but results.json is labelled by the evaluation's trainer: a GCD model evaluated with
        # FSNL_openclip was filed as an FSNL result (exit 0), an ablation's as the full method's.
        raise CheckpointError(
            f'--model-dir {directory}: "{path}" is a checkpoint of trainer {theirs_trainer}, not {ours}; results.json '
            f"is labelled by the evaluation's trainer, so evaluate it with --trainer {theirs_trainer}"
        )
    theirs = meta.get("fingerprint")
    run = _model_dir_run(directory, str(cfg.OUTPUT_DIR))
    if not isinstance(theirs, dict):
        if run is not None:  # this code writes a fingerprint into every checkpoint of a run
            raise CheckpointError(
                f'--model-dir {directory}: "{path}" records no run fingerprint, so the run whose results.json lies '
                f"in the folder (run {str(run.get('id'))[:12]}) did not write it (another program's file, or "
                "copied in); evaluate it from a folder of its own"
            )
        return
    if run is not None and run.get("id") != theirs.get("id"):
        differences = results_contract.diff_fingerprints(run, theirs)
        raise CheckpointError(
            f'--model-dir {directory}: "{path}" was written by run {str(theirs.get("id"))[:12]}, but the folder\'s '
            f'results.json is run {str(run.get("id"))[:12]} (folder\'s run -> checkpoint\'s: {"; ".join(differences)}): the checkpoint '
            "comes from another run; evaluate it from the folder it was trained in"
        )
    key_of = getattr(cls, "model_identity_key", None)
    if not identity or key_of is None:
        return
    mine = mine if mine is not None else expected_fingerprint(cfg)

    def identity(fp: Dict[str, Any]) -> Dict[str, Any]:
        # the weights by what they are (``weights``: tag, or size + SHA-256 of the file), not by how the
        # path was written: ``default``, a relative and an absolute path to one file are one model
        return {"config": {k: v for k, v in (fp.get("config") or {}).items()
                           if key_of(k) and k != "MODEL.BACKBONE.WEIGHTS"},
                "weights": fp.get("weights")}

    differences = results_contract.diff_fingerprints(identity(theirs), identity(mine))
    trained = theirs.get("config") or {}
    current = mine.get("config") or {}
    if differences:
        fix = [f"{k} {_cli_value(trained[k])}" for k in sorted(trained) if key_of(k) and trained[k] != current.get(k)]
        hint = f"set {' '.join(fix)}" if fix else "evaluate on the backbone weights it was trained with"
        raise CheckpointError(
            f"--model-dir {directory}: its model was trained under another identity than this evaluation's config "
            f"(training -> evaluation: {'; '.join(differences)}); results.json is labelled by the "
            f"evaluation's config, so repeat the training run's values: {hint}"
        )
    schedule = [k for k in sorted(set(trained) | set(current))
                if k.startswith(results_contract.TRAINING_ONLY_PREFIXES) and trained.get(k) != current.get(k)]
    if schedule:  # not a mistake (they do not change an evaluation), but results.json records both
        shown = "; ".join(f"{k} {_cli_value(trained.get(k))} (this command: {_cli_value(current.get(k))})"
                          for k in schedule[:3]) + (f" and {len(schedule) - 3} more" if len(schedule) > 3 else "")
        logger.warning("--model-dir %s was trained with %s: they do not change the evaluation; its results.json "
                       "records this command's values under config and the training run's under source_run, and "
                       "parse_test_res files it under the training run's", directory, shown)


def check_model_dir(cfg: Any, directory: str, epoch: Optional[int] = None) -> None:
    """Up-front checks of ``--model-dir`` before anything is built or written: the directory exists,
    and every model folder's checkpoint that an evaluation would load (:func:`checkpoint_file`) is
    readable and passes :func:`check_model_checkpoint`. What needs the built model (label space, the
    weights fitting it) is checked by ``load_model``."""
    if not osp.isdir(directory):
        raise CheckpointError(f'--model-dir "{directory}": no such directory; point it at a training run\'s --output-dir')
    cls = TRAINER_REGISTRY.get(str(cfg.TRAINER.NAME))
    mine: Optional[Dict[str, Any]] = None
    for entry in sorted(os.listdir(directory)):
        mdir = osp.join(directory, entry)
        if not osp.isdir(mdir) or not (list_checkpoints(mdir) or osp.isfile(osp.join(mdir, BEST_NAME))
                                       or osp.isfile(osp.join(mdir, POINTER_NAME))):
            continue
        if epoch is not None and not osp.isfile(osp.join(mdir, regular_name(int(epoch)))):
            continue  # load_model names what is missing, for the models this trainer has
        path = checkpoint_file(directory, entry, epoch, log=False)
        ckpt = read_model_checkpoint(path)
        meta = ckpt.get("meta") or {}
        mine = mine if mine is not None else expected_fingerprint(cfg)
        check_model_checkpoint(cfg, directory, path, meta, cls, mine)
        if epoch is None and osp.basename(path) != BEST_NAME:
            check_run_finished(directory, int(ckpt.get("epoch", 0)), meta)


def check_run_finished(directory: str, loaded_epoch: int, meta: Optional[Dict[str, Any]] = None) -> None:
    """An evaluation without ``--load-epoch`` means the training run's final model. A run of this code
    killed after epoch 1 of 2 (no results.json, its last checkpoint before ``OPTIM.MAX_EPOCH``) was
    evaluated from that checkpoint and filed like a finished run's model: a :class:`CheckpointError`
    now, pointing to the two intended meanings. Folders of other code (CoOp's outputs: no config.yaml
    with a fingerprint) are not judged, and a finished run's last checkpoint is its final epoch. The
    planned epochs come from the checkpoint's own recorded fingerprint (``meta``), which the run wrote
    with its weights, else from config.yaml (checkpoints without one): without config.yaml a killed
    run's checkpoint passed as the final model, and a config.yaml edited to fewer epochs passed one too."""
    if osp.isfile(osp.join(directory, results_contract.RESULTS_FILE)):
        return
    recorded = ((meta or {}).get("fingerprint") or {}).get("config") or {}
    value = recorded.get("OPTIM.MAX_EPOCH") if isinstance(recorded, dict) else None
    planned = value if _whole(value) else results_contract.recorded_max_epoch(directory)
    if planned is not None and loaded_epoch < planned:
        raise CheckpointError(
            f"--model-dir {directory}: its training has not finished (the last checkpoint is epoch {loaded_epoch} "
            f"of OPTIM.MAX_EPOCH {planned}, and it has no results.json); finish it (rerun its train.py command: "
            f"it resumes), or evaluate that checkpoint on purpose with --load-epoch {loaded_epoch}"
        )


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite (too high a learning rate, mostly): reported by ``train.py`` as
    one ``error:`` line. A FloatingPointError, as Dassl's ``detect_anomaly`` raised."""


class TrainerBase:
    """Model registry, checkpointing and the epoch loop."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict[str, Optional[torch.optim.Optimizer]] = OrderedDict()
        self._scheds: OrderedDict[str, Optional[Any]] = OrderedDict()
        self._writer: Optional[Any] = None
        #: completed training epochs of the weights currently in the models.
        self.model_epoch = 0
        #: what ``load_model`` loaded (``model_dir``, ``epoch``, ``checkpoints``, ``classes_shared``;
        #: trainers that load by class name add ``names_loaded`` "3/5"); ``finalize()`` writes it to
        #: results.json as ``loaded``. None: the weights were trained by this run.
        self.load_info: Optional[Dict[str, Any]] = None
        #: ``({name: state_dict}, meta)`` of the checkpoint ``load_model`` loaded, as the file holds it:
        #: a model that keeps only what fits its label space (FSNL's names) drops the rest, which an
        #: evaluation of another label space (the OOP -> IP cross-evaluation) still needs.
        self.loaded_checkpoint: Optional[Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]] = None

    # ------------------------------------------------------------------ registration
    def register_model(self, name: str = "model", model: Optional[nn.Module] = None,
                       optim: Optional[torch.optim.Optimizer] = None, sched: Optional[Any] = None) -> None:
        """Register a trainable module (with its optimizer and scheduler) for saving/loading."""
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if self.__dict__.get("_optims") is None:
            raise AttributeError("Cannot assign optim before super().__init__() call")
        if self.__dict__.get("_scheds") is None:
            raise AttributeError("Cannot assign sched before super().__init__() call")
        if name in self._models:
            raise KeyError(f'Found duplicate model name "{name}"')
        if isinstance(model, nn.DataParallel):
            raise TypeError("Do not register nn.DataParallel models: their attributes become unreachable (B9)")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: Names = None) -> List[str]:
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = tolist_if_not(list(names) if isinstance(names, tuple) else names)
        for name in names:
            if name not in names_real:
                raise KeyError(f'Unknown model name "{name}"; registered: {names_real}')
        return names

    # ------------------------------------------------------------------ state
    def checkpoint_meta(self) -> Dict[str, Any]:
        """Plain data stored with every checkpoint (label space etc.)."""
        return {}

    def load_state(self, name: str, state_dict: Dict[str, Any], meta: Dict[str, Any]) -> None:
        """Load one registered model's weights; trainers override this to map across label spaces.

        Parameters load strictly. Persistent *buffers* are frozen inputs derived at construction,
        e.g. the ``token_prefix``/``token_suffix`` class-name embeddings of CoOp-family prompt
        learners, which must come from the current class names (CoOp's own trainers delete them
        before loading). So a buffer keeps the model's value (with a log line) when the checkpoint
        belongs to another label space (``meta["classnames"]`` differs) or its shape differs;
        weights trained on one label space then evaluate on another.
        """
        model = self._models[name]
        buffers = dict(model.named_buffers())
        theirs = meta.get("classnames")
        dm = getattr(self, "dm", None)
        ours = [str(c) for c in dm.dataset.classnames] if dm is not None else None
        other_space = theirs is not None and ours is not None and [str(c) for c in theirs] != ours
        state = dict(state_dict)
        kept = [k for k, v in state.items() if k in buffers and torch.is_tensor(v)
                and (other_space or tuple(v.shape) != tuple(buffers[k].shape))]
        for key in kept:
            state[key] = buffers[key]
        if kept:
            logger.info('Model "%s": buffers %s keep this label space\'s values', name, kept)
        model.load_state_dict(state, strict=True)

    def export_state(self) -> Dict[str, Dict[str, Any]]:
        """``{name: state_dict}`` of every registered model."""
        return {name: model.state_dict() for name, model in self._models.items()}

    def import_state(self, states: Dict[str, Dict[str, Any]], meta: Optional[Dict[str, Any]] = None) -> None:
        """Load weights exported by another trainer (``meta`` describes their label space)."""
        for name in self.get_model_names():
            if name not in states:
                logger.warning('import_state: no weights for model "%s"; it keeps its initial state', name)
                continue
            self.load_state(name, states[name], dict(meta or {}))
        for name in states:
            if name not in self._models:
                logger.warning('import_state: ignoring weights of unknown model "%s"', name)

    def save_model(self, epoch: int, directory: str, is_best: bool = False,
                   val_result: Optional[float] = None, model_name: str = "") -> None:
        """Save every registered model as ``<directory>/<name>/…`` (epoch is 0-based here and
        stored 1-based, so ``model.pth.tar-<E>`` holds the weights after E epochs)."""
        meta = self.checkpoint_meta()
        for name in self.get_model_names():
            optim = self._optims[name]
            sched = self._scheds[name]
            state = {
                "state_dict": self._models[name].state_dict(),
                "epoch": int(epoch) + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": None if val_result is None else float(val_result),
                "meta": meta,
            }
            save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def check_resume_meta(self, path: str, meta: Dict[str, Any]) -> None:
        """Refuse to resume from a checkpoint of another trainer or label space (issue 11): the
        trainer name and the class names stored in ``meta`` must equal this run's."""
        mine = self.checkpoint_meta()
        for key, what in (("trainer", "trainer"), ("classnames", "label space (class names)")):
            if key == "trainer" and self._same_trainer_family(str(meta.get(key, ""))):
                continue
            if key in meta and key in mine and meta[key] != mine[key]:
                theirs = meta[key] if key == "trainer" else f"{len(meta[key])} classes"
                ours = mine[key] if key == "trainer" else f"{len(mine[key])} classes"
                raise CheckpointError(
                    f'cannot resume from "{path}": it is a checkpoint of another {what} ({theirs}; this run: '
                    f"{ours}); point --resume at a run of this trainer and dataset, or use another --output-dir"
                )

    def check_resume_identity(self, path: str, meta: Dict[str, Any]) -> None:
        """Refuse to resume a checkpoint written under another configuration (its ``meta["fingerprint"]``,
        see :meth:`SimpleTrainer.config_fingerprint`), naming the differing keys. Before, a folder whose
        config.yaml and results.json were gone resumed the old checkpoint under e.g. a new ``OPTIM.LR``
        and recorded the old model's numbers under the new fingerprint. Checkpoints written before
        they carried a fingerprint resume with a warning."""
        theirs = meta.get("fingerprint")
        mine_fn = getattr(self, "config_fingerprint", None)
        if mine_fn is None:
            return
        if not isinstance(theirs, dict):
            logger.warning('Checkpoint "%s" records no configuration fingerprint (written by older code); '
                           "resuming it on trust", path)
            return
        differences = results_contract.diff_fingerprints(theirs, mine_fn(), seed=True)
        if self._same_trainer_family(str(theirs.get("trainer", ""))):  # as check_resume_meta allows
            differences = [d for d in differences if not d.startswith(("trainer ", "TRAINER.NAME ", "fingerprint id"))]
        if differences:
            resume = str(self.cfg.get("RESUME", "") or "")
            explicit = bool(resume) and osp.realpath(resume) != osp.realpath(str(self.cfg.OUTPUT_DIR))
            fix = ("resume it with the configuration it was trained with, or drop --resume to train this one "
                   "afresh" if explicit else "use another --output-dir, or --overwrite to train this "
                   "configuration afresh there")
            raise CheckpointError(
                f'cannot resume from "{path}": it is a checkpoint of another configuration (differs in: '
                f'{"; ".join(differences)}); {fix}'
            )

    def _same_trainer_family(self, name: str) -> bool:
        """True when the trainer ``name`` is this one, or a registered subclass or base of it (same
        models and state layout, e.g. a variant that only changes the schedule)."""
        return same_trainer_family(type(self), str(self.cfg.TRAINER.NAME), name)

    def _valid_checkpoint(self, path: str) -> Optional[Dict[str, Any]]:
        """The checkpoint at ``path``, or None (with a warning) when it is truncated or not ours."""
        try:
            ckpt = load_checkpoint(path)
        except Exception as e:  # truncated zip, garbage bytes, foreign pickle: all mean "unusable"
            logger.warning('Checkpoint "%s" is unreadable (%s: %s)', path, type(e).__name__,
                           " ".join(str(e).split())[:160])
            return None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or not _whole(ckpt.get("epoch")):
            logger.warning('Checkpoint "%s" holds no state_dict/epoch', path)
            return None
        bad = nonfinite_tensors(ckpt["state_dict"])
        if bad:  # resuming from it would end in a NaN loss at the first step
            logger.warning('Checkpoint "%s" holds NaN or infinite weights (e.g. %s)', path, bad[:3])
            return None
        return ckpt

    def resume_model_if_exist(self, directory: str, required: bool = False) -> int:
        """Restore models, optimizers and schedulers from the newest *valid* regular checkpoint of
        every model in ``directory`` (never from ``model-best``); return the completed epochs.

        A truncated or garbage latest checkpoint is skipped with a warning and the next older epoch
        is used. Trainer and label space are checked (:meth:`check_resume_meta`) and every model's
        weights are loaded before any optimizer or scheduler state is touched. ``required``
        (``--resume DIR``): no usable checkpoint is a :class:`CheckpointError` instead of a fresh start.
        """
        names = self.get_model_names()
        if not names:
            return 0
        found = {name: list_checkpoints(osp.join(directory, name)) for name in names}
        if not any(found.values()):
            if required:
                raise CheckpointError(
                    f'--resume "{directory}": no checkpoint of {self.cfg.TRAINER.NAME} (models {names}) there; '
                    "expected <dir>/<model>/model.pth.tar-<epoch>"
                )
            logger.info("No checkpoint found, train from scratch")
            return 0
        missing = [n for n in names if not found[n]]
        if missing:
            if required:
                raise CheckpointError(f'--resume "{directory}": no checkpoint for models {missing}')
            logger.warning("Checkpoints in %s lack models %s; training from scratch", directory, missing)
            return 0

        common = sorted(set.intersection(*(set(found[n]) for n in names)), reverse=True)
        chosen: Optional[Dict[str, Dict[str, Any]]] = None
        for epoch in common:
            ckpts = {n: self._valid_checkpoint(osp.join(directory, n, found[n][epoch])) for n in names}
            if all(c is not None and int(c["epoch"]) == epoch for c in ckpts.values()):
                chosen = ckpts  # type: ignore[assignment]
                break
        newest = max(max(found[n]) for n in names)
        if chosen is None:
            if required:
                raise CheckpointError(f'--resume "{directory}": no readable checkpoint (all are truncated or invalid)')
            logger.warning("No valid checkpoint in %s (all unreadable): training from scratch", directory)
            return 0
        start_epoch = int(next(iter(chosen.values()))["epoch"])
        if start_epoch != newest:
            logger.warning("The newest checkpoint (epoch %d) in %s is unusable: resuming from epoch %d, the "
                           "newest valid one", newest, directory, start_epoch)

        for name, ckpt in chosen.items():
            self.check_resume_meta(osp.join(directory, name, found[name][start_epoch]), ckpt.get("meta") or {})
            self.check_resume_identity(osp.join(directory, name, found[name][start_epoch]), ckpt.get("meta") or {})
        logger.info('Found checkpoint at "%s" (will resume training)', directory)
        for name, ckpt in chosen.items():
            path = osp.join(directory, name, found[name][start_epoch])
            try:
                self.load_state(name, ckpt["state_dict"], ckpt.get("meta") or {})
            except (RuntimeError, ValueError, KeyError) as e:
                raise CheckpointError(f'cannot resume from "{path}": its weights do not fit this model '
                                      f"({' '.join(str(e).split())[:200]})") from e
        for name, ckpt in chosen.items():
            path = osp.join(directory, name, found[name][start_epoch])
            optim, sched = self._optims[name], self._scheds[name]
            if optim is not None and ckpt.get("optimizer") is not None:
                try:
                    optim.load_state_dict(ckpt["optimizer"])
                except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:  # a traceback before
                    raise CheckpointError(_unfit_state(path, "optimizer", e)) from None
            if sched is not None and ckpt.get("scheduler") is not None:
                missing = missing_state_keys(sched, ckpt["scheduler"])
                if missing:
                    raise CheckpointError(_unfit_state(path, "scheduler", f"it lacks {missing}"))
                sched.load_state_dict(ckpt["scheduler"])
            logger.info('Resumed "%s" from %s (epoch %d)', name, osp.join(directory, name, found[name][start_epoch]),
                        start_epoch)

        best_path = osp.join(directory, names[0], BEST_NAME)
        if osp.exists(best_path):
            best = self._valid_checkpoint(best_path)
            if best is not None and isinstance(best.get("val_result"), (int, float)):
                self.best_result = float(best["val_result"])
        self.model_epoch = start_epoch
        return start_epoch

    def label_space(self) -> Optional[List[str]]:
        """The class names this trainer predicts (None: unknown, no label-space check)."""
        return None

    def accepts_label_space(self, meta: Dict[str, Any]) -> bool:
        """Whether a checkpoint sharing *no* class with this label space is still meant to be loaded
        (e.g. a benchmark's sibling subset); the engine's answer is no."""
        return False

    def check_label_space(self, directory: str, meta: Dict[str, Any]) -> Optional[str]:
        """``"k/n"``: how many of this run's n classes the checkpoint was trained on (None when either
        side does not name its classes). Zero shared classes is a :class:`CheckpointError` unless
        :meth:`accepts_label_space`; a partial match is logged."""
        ours = self.label_space()
        theirs = meta.get("classnames")
        if not ours or not isinstance(theirs, (list, tuple)):
            return None
        known = {str(c) for c in theirs}
        shared = sum(str(c) in known for c in ours)
        if shared == 0 and not self.accepts_label_space(meta):
            raise CheckpointError(
                f"--model-dir {directory}: its checkpoint was trained on {len(theirs)} classes "
                f"({meta.get('dataset') or 'unknown dataset'}, {meta.get('sub_classes') or 'unknown subset'}) and "
                f"shares none of this run's {len(ours)} classes; point --model-dir at a run of this dataset"
            )
        if 0 < shared < len(ours):
            logger.warning("--model-dir %s shares %d of this run's %d classes; the other %d keep their "
                           "initial state", directory, shared, len(ours), len(ours) - shared)
        return f"{shared}/{len(ours)}"

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load weights for evaluation: ``model.pth.tar-<epoch>`` when ``epoch`` is given, else
        ``model-best.pth.tar`` if present, else the pointer's file, else the latest epoch.

        Every checkpoint is checked before its weights load (:func:`check_model_checkpoint`: its
        trainer and the run it belongs to; ``train.py`` checks the training identity an evaluation must
        share up front, :func:`check_model_dir`), and a file
        that does not load or does not fit the model is a :class:`CheckpointError` naming it, so
        ``train.py`` reports one line. What was loaded is recorded in ``self.load_info``
        (written to results.json)."""
        if not directory:
            logger.info("load_model() is skipped as no model directory is given")
            return
        names = self.get_model_names()
        cfg = getattr(self, "cfg", None)
        if not names and cfg is not None:
            raise CheckpointError(no_weights_message(str(cfg.TRAINER.NAME), directory))
        info: Dict[str, Any] = {"model_dir": absolute_path(directory), "requested_epoch": epoch, "epoch": None,
                                "checkpoints": {}}
        self.load_info = info
        self.loaded_checkpoint = None
        states: Dict[str, Dict[str, Any]] = {}
        loaded_meta: Dict[str, Any] = {}
        for name in names:
            path = checkpoint_file(directory, name, epoch)
            ckpt = read_model_checkpoint(path)
            ep = int(ckpt.get("epoch", 0))
            val = ckpt.get("val_result")
            extra = f", val_result={val:.2f}" if isinstance(val, (int, float)) else ""
            meta = ckpt.get("meta") or {}
            if cfg is not None:
                check_model_checkpoint(cfg, directory, path, meta, type(self), identity=False)
            shared = self.check_label_space(directory, meta)
            if shared is not None:
                info["classes_shared"] = shared
            logger.info('Load %s to %s (epoch=%d%s)', path, name, ep, extra)
            try:
                self.load_state(name, ckpt["state_dict"], meta)
            except CheckpointError:
                raise
            except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
                text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                raise CheckpointError(f'--model-dir {directory}: "{path}" does not fit this model: '
                                      f"{' '.join(str(text).split())}") from e
            self.model_epoch = ep
            info["epoch"] = ep
            info["checkpoints"][name] = osp.relpath(path, directory)
            states[name], loaded_meta = ckpt["state_dict"], dict(meta)
        self.loaded_checkpoint = (states, loaded_meta)

    # ------------------------------------------------------------------ modes and steps
    def set_model_mode(self, mode: str = "train", names: Names = None) -> None:
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"Unknown model mode {mode!r}")

    def update_lr(self, names: Names = None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        """A NaN or infinite loss stops the run with a :class:`TrainingDiverged` (a user error: one line
        naming the epoch and the learning rate; Dassl raised a bare FloatingPointError traceback)."""
        if not torch.isfinite(loss).all():
            epoch, batch = getattr(self, "epoch", None), getattr(self, "batch_idx", None)
            where = (f" at epoch {int(epoch) + 1}" if epoch is not None else "") + (
                f", batch {int(batch) + 1}" if batch is not None else "")
            cfg = getattr(self, "cfg", None)
            lr = cfg.OPTIM.LR if cfg is not None and "OPTIM" in cfg else None
            raise TrainingDiverged(
                f"the loss became {float(loss.detach().float().sum())}{where}: training diverged; lower OPTIM.LR"
                + (f" (now {float(lr):g})" if lr is not None else ""))

    def init_writer(self, log_dir: str) -> None:
        if self.__dict__.get("_writer") is None or isinstance(self._writer, NullWriter):
            try:  # local: tensorboard is optional (not in requirements.txt) and slow to import
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed: scalars are not logged")
                self._writer = NullWriter()
                return
            mkdir_if_missing(log_dir)
            logger.info("Initialize tensorboard (log_dir=%s)", log_dir)
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None

    def write_scalar(self, tag: str, scalar_value: Any, global_step: Optional[int] = None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def model_zero_grad(self, names: Names = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names: Names = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names: Names = None) -> None:
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    # ------------------------------------------------------------------ loop
    def seed_epoch(self, epoch: int) -> None:
        """Hook called before every epoch (SimpleTrainer derives a seed from SEED and epoch)."""

    #: Progress bars for epochs and batches (shown only on a terminal); ``train.py --quiet`` clears it.
    show_progress: bool = True
    #: Whether the per-batch bars show under the epoch bar (the grid engine shows epochs only).
    progress_batches: bool = True

    def progress_disabled(self) -> Optional[bool]:
        """tqdm's ``disable``: None (auto: off when stdout is not a TTY) or True (``--quiet``)."""
        return None if self.show_progress else True

    def progress_label(self) -> str:
        cfg = getattr(self, "cfg", None)
        if cfg is None:
            return type(self).__name__
        return f"{cfg.TRAINER.NAME} {cfg.DATASET.NAME} seed{cfg.SEED}"

    def train(self, start_epoch: int, max_epoch: int) -> None:
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.loaded_checkpoint = None  # training moves the weights away from any checkpoint loaded before
        self.before_train()
        epochs = tqdm(range(self.start_epoch, self.max_epoch), desc=self.progress_label(), unit="epoch",
                      initial=self.start_epoch, total=self.max_epoch, disable=self.progress_disabled(),
                      leave=False, dynamic_ncols=True)
        for epoch in epochs:
            self.epoch = epoch
            self.seed_epoch(epoch)
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def run_epoch(self) -> None:
        raise NotImplementedError

    def test(self, split: Optional[str] = None) -> float:
        raise NotImplementedError

    def parse_batch_train(self, batch: Any) -> Any:
        raise NotImplementedError

    def parse_batch_test(self, batch: Any) -> Any:
        raise NotImplementedError

    def forward_backward(self, batch: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def model_inference(self, input: Any) -> torch.Tensor:
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """Builds data, model and evaluator from ``cfg``; implements the loop hooks, test and finalize."""

    def __init__(self, cfg: Any, shared: Optional[Dict[Any, Any]] = None, eval_only: bool = False) -> None:
        super().__init__()
        self.check_cfg(cfg)
        self.cfg = cfg
        self.shared: Dict[Any, Any] = shared if shared is not None else {}
        #: built only to evaluate given weights (``build_model`` may skip train-only work)
        self.eval_only = bool(eval_only)
        use_cuda = torch.cuda.is_available() and bool(cfg.USE_CUDA)
        self.device = torch.device("cuda" if use_cuda else "cpu")

        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.batch_idx = 0
        self.num_batches = 0
        self.model: Optional[nn.Module] = None
        self.optim: Optional[torch.optim.Optimizer] = None
        self.sched: Optional[Any] = None
        self.scaler: Optional[Any] = None
        self.best_result = -np.inf
        self.last_results: Optional[OrderedDict[str, float]] = None
        self.last_split: Optional[str] = None
        self._warned_no_val = False
        self._config_fp: Optional[Dict[str, Any]] = None

        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)

    #: Whether the trainer has trained weights to load (``--model-dir``). Training-free trainers
    #: (zero-shot CLIP) set False: ``train.py`` then refuses ``--model-dir`` up front instead of
    #: ignoring it while recording it in results.json and hashing it into the fingerprint.
    LOADS_WEIGHTS: bool = True

    #: Whether ``forward_backward`` takes a list of K augmented views per image
    #: (``DATALOADER.K_TRANSFORMS`` > 1, as Dassl's FixMatch-style trainers do). Trainers that take one
    #: view set False: ``configs.check_cfg`` then refuses K != 1 for training (it was a traceback).
    TAKES_VIEW_LISTS: bool = True

    def check_cfg(self, cfg: Any) -> None:
        """Hook to reject configurations a trainer cannot run."""

    @classmethod
    def model_identity_key(cls, key: str) -> bool:
        """Whether the config ``key`` is part of what a trained model *is*, so that an evaluation of it
        (``--eval-only --model-dir``) must use the training run's value (:func:`check_model_checkpoint`):
        the backbone and its weights, the shots and the seed (results.json files the evaluation under
        them). Trainers add their own model-shaping keys."""
        return key in ("SEED", "DATASET.NUM_SHOTS") or key.startswith("MODEL.BACKBONE.")

    @classmethod
    def identity_parts(cls, cfg: Any) -> Dict[str, Any]:
        """The run-fingerprint parts beyond the config, from ``cfg`` alone (no data loaded, no model
        built), so that a sweep computes exactly what ``finalize()`` records: ``data`` from the
        dataset class's ``data_identity(cfg)``, ``weights`` from :meth:`weights_identity`."""
        return {"data": data_identity(cfg), "weights": cls.weights_identity(cfg)}

    @classmethod
    def weights_identity(cls, cfg: Any) -> Optional[Dict[str, Any]]:
        """What the frozen weights of ``cfg`` are: here the registered resolvers' answer
        (``dassl.results.default_weights_identity``; e.g. the OpenAI CLIP file a CoOp-family trainer
        loads by name), None when none knows the backbone. Trainers that load weights their own way
        (the OpenCLIP ones) override this."""
        return results_contract.default_weights_identity(cfg)

    def run_fingerprint(self) -> Dict[str, Any]:
        """This run's fingerprint (dassl.results): the cfg-only parts plus the few-shot sample digest."""
        dataset = getattr(getattr(self, "dm", None), "dataset", None)
        info = self.load_info or {}
        model_dir, output_dir = info.get("model_dir", "") or "", str(self.cfg.OUTPUT_DIR)
        source = results_contract.source_identity(model_dir, info.get("requested_epoch"), output_dir)
        return results_contract.fingerprint(self.cfg, trainer=str(self.cfg.TRAINER.NAME),
                                            fewshot=getattr(dataset, "fewshot_digest", None), source=source,
                                            source_run=results_contract.source_run(model_dir, output_dir),
                                            **type(self).identity_parts(self.cfg))

    def build_data_loader(self) -> None:
        """Build the DataManager; trainers needing custom transforms override this."""
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement build_model() and register its trainable modules"
        )

    def label_space(self) -> Optional[List[str]]:
        dm = getattr(self, "dm", None)
        return [str(c) for c in dm.dataset.classnames] if dm is not None else None

    def config_fingerprint(self) -> Dict[str, Any]:
        """The fingerprint of what this run trains (config, data, weights; no evaluation source, no
        few-shot digest), computed once: what every checkpoint records, so that a checkpoint is only
        ever resumed by a run of its own configuration."""
        if self._config_fp is None:
            self._config_fp = results_contract.fingerprint(self.cfg, trainer=str(self.cfg.TRAINER.NAME),
                                                           **type(self).identity_parts(self.cfg))
        return self._config_fp

    def checkpoint_meta(self) -> Dict[str, Any]:
        meta: Dict[str, Any] = {"trainer": str(self.cfg.TRAINER.NAME), "dataset": str(self.cfg.DATASET.NAME),
                                "fingerprint": self.config_fingerprint()}
        classnames = self.label_space()
        if classnames is not None:
            meta["classnames"] = classnames
        sub = self.cfg.DATASET.get("SUB_CLASSES")
        if sub is not None:
            meta["sub_classes"] = str(sub)
        return meta

    def seed_epoch(self, epoch: int) -> None:
        seed = int(self.cfg.SEED)
        if seed < 0:
            return
        set_random_seed(derive_seed(seed, int(epoch)))

    def train(self) -> None:  # type: ignore[override]
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.cfg.OUTPUT_DIR
        self.start_epoch = self.resume_model_if_exist(directory, required=bool(self.cfg.RESUME))
        if self.start_epoch >= self.max_epoch and self.get_model_names():
            logger.info(
                "Training is already complete (checkpoint at epoch %d of %d in %s): skipping to evaluation",
                self.start_epoch, self.max_epoch, directory,
            )
        self.init_writer(osp.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()

    def selection_split(self) -> str:
        """Split used to pick ``model-best`` under TEST.FINAL_MODEL best_val / best_test."""
        if self.cfg.TEST.FINAL_MODEL == "best_test":
            return "test"
        if self.val_loader is None:
            if not self._warned_no_val:
                logger.warning("TEST.FINAL_MODEL is best_val but there is no val split: selecting on test")
                self._warned_no_val = True
            return "test"
        return "val"

    def after_epoch(self) -> None:
        cfg = self.cfg
        last_epoch = (self.epoch + 1) == self.max_epoch
        freq = int(cfg.TRAIN.CHECKPOINT_FREQ)
        tick = freq > 0 and (self.epoch + 1) % freq == 0
        self.model_epoch = self.epoch + 1

        if cfg.TEST.FINAL_MODEL in ("best_val", "best_test") and not cfg.TEST.NO_TEST:
            if freq <= 0 or tick or last_epoch:
                curr_result = self.test(split=self.selection_split())
                if curr_result > self.best_result:
                    self.best_result = curr_result
                    self.save_model(self.epoch, self.output_dir, is_best=True, val_result=curr_result,
                                    model_name=BEST_NAME)
        # The regular checkpoint comes last: the pointer it moves marks the epoch as complete.
        if tick or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    def after_train(self) -> None:
        logger.info("Finish training")
        cfg = self.cfg
        if not cfg.TEST.NO_TEST:
            if cfg.TEST.FINAL_MODEL in ("best_val", "best_test"):
                names = self.get_model_names()
                if names and all(osp.exists(osp.join(self.output_dir, n, BEST_NAME)) for n in names):
                    logger.info("Deploy the model with the best %s performance", self.selection_split())
                    self.load_model(self.output_dir)
                    self.load_info = None  # this run's own best checkpoint: nothing foreign was loaded
                else:
                    logger.warning("No model-best checkpoint in %s: evaluating the last-epoch model",
                                   self.output_dir)
            else:
                logger.info("Deploy the last-epoch model")
            self.test()
            self.finalize()
        elapsed = round(time.time() - getattr(self, "time_start", time.time()))
        logger.info("Elapsed: %s", datetime.timedelta(seconds=elapsed))
        self.close_writer()

    # ------------------------------------------------------------------ evaluation
    def _resolve_split(self, split: Optional[str]) -> str:
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            return "val"
        if split == "val":
            logger.info("No val split: evaluating on the test split")
        return "test"

    def eval_loader(self, split: str) -> Iterable[Any]:
        """The batches ``test(split)`` iterates; trainers may substitute cached features."""
        return self.val_loader if split == "val" else self.test_loader

    def before_test(self) -> None:
        """Called once at the start of ``test()`` under ``no_grad`` (e.g. to cache text features)."""

    def after_test(self) -> None:
        """Called once at the end of ``test()``, also when it fails."""

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Evaluate on ``split`` (default TEST.SPLIT; val falls back to test); returns the headline
        metric and keeps the full dict in ``self.last_results``."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = self._resolve_split(split)
        loader = self.eval_loader(split)
        logger.info("Evaluate on the *%s* set", split)
        self.before_test()
        try:
            for batch in tqdm(loader, desc=split, disable=self.progress_disabled() if self.progress_batches else True,
                              leave=False):
                input, label = self.parse_batch_test(batch)
                output = self.model_inference(input)
                impaths = batch.get("impath") if isinstance(batch, dict) else None
                self.evaluator.process(output, label, impaths)
        finally:
            self.after_test()
        results = self.evaluator.evaluate()
        for k, v in results.items():
            if isinstance(v, (int, float)):
                self.write_scalar(f"{split}/{k}", v, self.epoch)
        self.last_results = results
        self.last_split = split
        return list(results.values())[0]

    def model_inference(self, input: Any) -> torch.Tensor:
        return self.model(input)

    def parse_batch_test(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        return input, label

    def get_current_lr(self, names: Names = None) -> float:
        for name in self.get_model_names(names):
            optim = self._optims[name]
            if optim is not None:
                return float(optim.param_groups[0]["lr"])
        return 0.0

    # ------------------------------------------------------------------ results
    def extra_evaluations(self, main_metrics: Dict[str, float]) -> Dict[str, Any]:
        """Hook: evaluations beyond the main ``test()``, as entries merged into results.json.

        The engine knows no benchmark, so it has none; a benchmark's trainer base adds its own (the
        LAION-Beyond OOP->IP cross-evaluation and H-mean: ``trainers.cross_eval``)."""
        return {}

    def finalize(self, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Evaluate (if needed), run :meth:`extra_evaluations`, then write ``OUTPUT_DIR/results.json``."""
        cfg = self.cfg
        if self.last_results is None or self.last_split != self._resolve_split(None):
            self.test()
        assert self.last_results is not None
        main_metrics = OrderedDict(self.last_results)
        main_split = self.last_split
        extra_entries = self.extra_evaluations(main_metrics)

        results: Dict[str, Any] = OrderedDict()
        results["trainer"] = cfg.TRAINER.NAME
        results["dataset"] = cfg.DATASET.NAME
        results["sub_classes"] = cfg.DATASET.get("SUB_CLASSES")
        results["shots"] = cfg.DATASET.NUM_SHOTS
        results["seed"] = cfg.SEED
        results["backbone"] = cfg.MODEL.BACKBONE.NAME
        if "WEIGHTS" in cfg.MODEL.BACKBONE:
            results["weights"] = cfg.MODEL.BACKBONE.WEIGHTS
        results["epoch"] = self.model_epoch
        results["final_model"] = cfg.TEST.FINAL_MODEL
        results["split"] = main_split
        results["device"] = str(self.device)
        results["accuracy"] = list(main_metrics.values())[0]
        results["metrics"] = main_metrics
        results.update(extra_entries)
        results["versions"] = package_versions()
        if extra:
            results.update(extra)
        results = results_contract.jsonable(results)
        fp = self.run_fingerprint()
        path = results_contract.write_results(self.output_dir, results, fp, kind="run", loaded=self.load_info)
        logger.info("Results written to %s (fingerprint %s)", path, fp["id"])
        self.final_results = results_contract.read_results(path).data
        return self.final_results


class TrainerX(SimpleTrainer):
    """Trainer over labelled data only (``train_loader_x``)."""

    def _log_progress(self, batch_time: AverageMeter, data_time: AverageMeter, losses: MetricMeter,
                      lr: float) -> None:
        freq = max(int(self.cfg.TRAIN.PRINT_FREQ), 1)
        meet_freq = (self.batch_idx + 1) % freq == 0
        only_few_batches = self.num_batches < freq
        if not (meet_freq or only_few_batches):
            return
        nb_remain = (self.num_batches - self.batch_idx - 1) + (self.max_epoch - self.epoch - 1) * self.num_batches
        eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
        logger.info(
            f"epoch [{self.epoch + 1}/{self.max_epoch}] "
            f"batch [{self.batch_idx + 1}/{self.num_batches}] "
            f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) "
            f"data {data_time.val:.3f} ({data_time.avg:.3f}) "
            f"{losses} "
            f"lr {lr:.4e} "
            f"eta {eta}"
        )

    def _write_iter_scalars(self, losses: MetricMeter, lr: float) -> None:
        n_iter = self.epoch * self.num_batches + self.batch_idx
        for name, meter in losses.meters.items():
            self.write_scalar("train/" + name, meter.avg, n_iter)
        self.write_scalar("train/lr", lr, n_iter)

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        desc = f"epoch {self.epoch + 1}/{self.max_epoch}"
        end = time.time()
        batch_bars = self.progress_disabled() if self.progress_batches else True
        for batch_idx, batch in enumerate(tqdm(self.train_loader_x, desc=desc, disable=batch_bars, leave=False)):
            self.batch_idx = batch_idx
            data_time.update(time.time() - end)
            # the rate this step uses: trainers step the schedule inside the last batch's update, so
            # reading it after showed the next epoch's (Dassl's log did; warm-up epochs looked skipped)
            lr = self.get_current_lr()
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            self._log_progress(batch_time, data_time, losses, lr)
            self._write_iter_scalars(losses, lr)
            end = time.time()

    def parse_batch_train(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain


class TrainerXU(TrainerX):
    """Trainer over labelled + unlabelled data; ``TRAIN.COUNT_ITER`` picks the epoch length."""

    def run_epoch(self) -> None:
        if self.train_loader_u is None:
            raise RuntimeError("TrainerXU needs a dataset with train_u")
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        len_x, len_u = len(self.train_loader_x), len(self.train_loader_u)
        count = self.cfg.TRAIN.COUNT_ITER
        if count == "train_x":
            self.num_batches = len_x
        elif count == "train_u":
            self.num_batches = len_u
        elif count == "smaller_one":
            self.num_batches = min(len_x, len_u)
        else:
            raise ValueError(f"Unknown TRAIN.COUNT_ITER {count!r}")
        iter_x, iter_u = iter(self.train_loader_x), iter(self.train_loader_u)
        end = time.time()
        for batch_idx in range(self.num_batches):
            self.batch_idx = batch_idx
            try:
                batch_x = next(iter_x)
            except StopIteration:
                iter_x = iter(self.train_loader_x)
                batch_x = next(iter_x)
            try:
                batch_u = next(iter_u)
            except StopIteration:
                iter_u = iter(self.train_loader_u)
                batch_u = next(iter_u)
            data_time.update(time.time() - end)
            lr = self.get_current_lr()  # the rate this step uses (see TrainerX.run_epoch)
            loss_summary = self.forward_backward(batch_x, batch_u)  # type: ignore[call-arg]
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            self._log_progress(batch_time, data_time, losses, lr)
            self._write_iter_scalars(losses, lr)
            end = time.time()

    def parse_batch_train(self, batch_x: Dict[str, Any], batch_u: Dict[str, Any]) -> Tuple[torch.Tensor, ...]:  # type: ignore[override]
        input_x = batch_x["img"].to(self.device)
        label_x = batch_x["label"].to(self.device)
        input_u = batch_u["img"].to(self.device)
        return input_x, label_x, input_u
