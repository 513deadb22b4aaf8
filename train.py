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

import argparse
import importlib
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from configs import FIELDS, ConfigError, build_cfg, extend_cfg  # noqa: F401  (re-exported)
from dassl.config import FINAL_MODEL_CHOICES
from dassl.engine import ModelLoadError
from dassl.utils import check_availability, collect_env_info, set_random_seed, setup_logger
from dassl.utils.registry import RegistryKeyError

logger = logging.getLogger("train")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=str, default="", help="path to the dataset root")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
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
    # Declared before the positional remainder so it parses wherever it appears before the first
    # KEY VALUE override (the reference declared it after REMAINDER: B19).
    parser.add_argument("--enhanced-base", type=str, default="none",
                        help="TaskRes only: enhanced base weights ('none' = zero-shot CLIP)")
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


def validate_cfg(cfg: Any) -> None:
    """Reject unknown trainer/dataset/evaluator/optimizer names before anything is built."""
    from dassl.data.datasets import DATASET_REGISTRY
    from dassl.engine import TRAINER_REGISTRY
    from dassl.evaluation import EVALUATOR_REGISTRY
    from dassl.optim import AVAI_OPTIMS, AVAI_SCHEDS

    _check_choice("TRAINER.NAME (--trainer)", cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names())
    _check_choice("DATASET.NAME", cfg.DATASET.NAME, DATASET_REGISTRY.registered_names())
    _check_choice("TEST.EVALUATOR", cfg.TEST.EVALUATOR, EVALUATOR_REGISTRY.registered_names())
    _check_choice("TEST.FINAL_MODEL", cfg.TEST.FINAL_MODEL, FINAL_MODEL_CHOICES)
    _check_choice("OPTIM.NAME", cfg.OPTIM.NAME, AVAI_OPTIMS)
    _check_choice("OPTIM.LR_SCHEDULER", cfg.OPTIM.LR_SCHEDULER, AVAI_SCHEDS)


# --------------------------------------------------------------------------------------------- main
def _log_args_and_cfg(args: argparse.Namespace, cfg: Any) -> None:
    lines = ["***************", "** Arguments **", "***************"]
    for key in sorted(vars(args)):
        lines.append(f"{key}: {getattr(args, key)}")
    lines += ["************", "** Config **", "************", str(cfg)]
    logger.info("\n".join(lines))


def main(args: argparse.Namespace) -> Any:
    """Run one experiment; returns the trainer (``--eval-only``: after writing results.json)."""
    from dassl.engine import build_trainer

    cfg = setup_cfg(args)
    validate_cfg(cfg)
    if cfg.SEED >= 0:
        logger.info("Setting fixed seed: %d", cfg.SEED)
        set_random_seed(cfg.SEED)
    setup_logger(cfg.OUTPUT_DIR)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True

    _log_args_and_cfg(args, cfg)
    logger.info("Collecting env info ...")
    logger.info("** System info **\n%s\n", collect_env_info())

    # An --eval-only trainer skips train-only work (training views, caption preprocessing).
    trainer = build_trainer(cfg, **({"eval_only": True} if args.eval_only else {}))
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
        return trainer
    if not args.no_train:
        trainer.train()
    return trainer


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


def _project_errors() -> Tuple[type, ...]:
    """User-facing error types of the project packages (absent when a test stubs them out)."""
    errors: List[type] = []
    for module, name in (("clip", "BackboneError"), ("datasets.laion_beyond", "DatasetError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """``python train.py ...``: config, data and backbone mistakes become one ``error:`` line and exit 2."""
    args = parse_args(argv)
    try:
        main(args)
    except (ConfigError, RegistryKeyError, ModelLoadError, *_project_errors()) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
