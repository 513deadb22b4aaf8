"""Dassl's default configuration (spec §10.1) plus the engine keys this project adds.

Every key that a yaml file or a command-line override may touch must exist here or be added by an
``add_*_config`` function before merging: yacs rejects unknown keys, which is what turns a typo in a
sweep script into an immediate error instead of a silently ignored setting.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

__all__ = ["get_cfg_default", "FINAL_MODEL_CHOICES"]

#: ``TEST.FINAL_MODEL`` values understood by the engine. ``best_test`` selects the checkpoint on the
#: test split: it reproduces the reference code (bug B10) and is named for what it does.
FINAL_MODEL_CHOICES = ("last_step", "best_val", "best_test")


def _input_defaults() -> CN:
    node = CN()
    node.SIZE = (224, 224)
    node.INTERPOLATION = "bilinear"
    node.TRANSFORMS = ()
    node.NO_TRANSFORM = False
    node.PIXEL_MEAN = [0.485, 0.456, 0.406]
    node.PIXEL_STD = [0.229, 0.224, 0.225]
    node.CROP_PADDING = 4
    node.RRCROP_SCALE = (0.08, 1.0)
    node.CUTOUT_N = 1
    node.CUTOUT_LEN = 16
    node.GN_MEAN = 0.0
    node.GN_STD = 0.15
    node.RANDAUGMENT_N = 2
    node.RANDAUGMENT_M = 10
    node.COLORJITTER_B = 0.4
    node.COLORJITTER_C = 0.4
    node.COLORJITTER_S = 0.4
    node.COLORJITTER_H = 0.1
    node.RGS_P = 0.2
    node.GB_P = 0.5
    node.GB_K = 21
    return node


def _dataset_defaults() -> CN:
    node = CN()
    node.ROOT = ""
    node.NAME = ""
    node.SOURCE_DOMAINS = ()
    node.TARGET_DOMAINS = ()
    node.NUM_LABELED = -1
    node.NUM_SHOTS = -1
    node.VAL_PERCENT = 0.1
    node.STL10_FOLD = -1
    node.CIFAR_C_TYPE = ""
    node.CIFAR_C_LEVEL = 1
    node.ALL_AS_UNLABELED = False
    return node


def _loader_node(sampler: str, batch_size: int) -> CN:
    node = CN()
    node.SAMPLER = sampler
    node.BATCH_SIZE = batch_size
    node.N_DOMAIN = 0
    node.N_INS = 16
    return node


def _dataloader_defaults() -> CN:
    node = CN()
    node.NUM_WORKERS = 4
    node.K_TRANSFORMS = 1
    node.RETURN_IMG0 = False
    node.TRAIN_X = _loader_node("RandomSampler", 32)
    node.TRAIN_U = _loader_node("RandomSampler", 32)
    node.TRAIN_U.SAME_AS_X = True
    node.TEST = CN()
    node.TEST.SAMPLER = "SequentialSampler"
    node.TEST.BATCH_SIZE = 32
    return node


def _model_defaults() -> CN:
    node = CN()
    node.INIT_WEIGHTS = ""
    node.BACKBONE = CN()
    node.BACKBONE.NAME = ""
    node.BACKBONE.PRETRAINED = True
    node.HEAD = CN()
    node.HEAD.NAME = ""
    node.HEAD.HIDDEN_LAYERS = ()
    node.HEAD.ACTIVATION = "relu"
    node.HEAD.BN = True
    node.HEAD.DROPOUT = 0.0
    return node


def _optim_defaults() -> CN:
    node = CN()
    node.NAME = "adam"
    node.LR = 0.0003
    node.WEIGHT_DECAY = 5e-4
    node.MOMENTUM = 0.9
    node.SGD_DAMPNING = 0
    node.SGD_NESTEROV = False
    node.RMSPROP_ALPHA = 0.99
    node.ADAM_BETA1 = 0.9
    node.ADAM_BETA2 = 0.999
    # STAGED_LR: layers named in NEW_LAYERS train at LR, the rest at LR * BASE_LR_MULT.
    node.STAGED_LR = False
    node.NEW_LAYERS = ()
    node.BASE_LR_MULT = 0.1
    node.LR_SCHEDULER = "single_step"
    # -1 or 0 means "no decay before MAX_EPOCH" for single_step.
    node.STEPSIZE = (-1,)
    node.GAMMA = 0.1
    node.MAX_EPOCH = 10
    node.WARMUP_EPOCH = -1
    node.WARMUP_TYPE = "linear"
    node.WARMUP_CONS_LR = 1e-5
    node.WARMUP_MIN_LR = 1e-5
    # True: the main schedule starts counting when the warm-up ends.
    node.WARMUP_RECOUNT = True
    return node


def _train_defaults() -> CN:
    node = CN()
    # Save a resumable checkpoint (and, for best_* selection, evaluate) every N epochs; 0 = only
    # the final epoch is saved.
    node.CHECKPOINT_FREQ = 0
    node.PRINT_FREQ = 10
    node.COUNT_ITER = "train_x"
    return node


def _test_defaults() -> CN:
    node = CN()
    node.EVALUATOR = "Classification"
    node.PER_CLASS_RESULT = False
    node.COMPUTE_CMAT = False
    node.NO_TEST = False
    node.SPLIT = "test"
    # last_step | best_val | best_test (see FINAL_MODEL_CHOICES).
    node.FINAL_MODEL = "last_step"
    # Other DATASET.SUB_CLASSES evaluated after the main test; "auto" = IP after OOP training on a
    # dataset that supports subsets; () disables. Read by the benchmark's trainer base
    # (trainers/cross_eval.py), never by the engine.
    node.CROSS_EVAL = ("auto",)
    # --eval-only of a trainable method without --model-dir is an error unless this asks for the
    # untrained (initial) model explicitly; results.json then records loaded.untrained = true.
    node.ALLOW_UNTRAINED = False
    return node


def get_cfg_default() -> CN:
    """A fresh, mutable copy of the defaults (callers extend, merge, then freeze it)."""
    cfg = CN()
    cfg.VERSION = 1
    cfg.OUTPUT_DIR = "./output"
    cfg.RESUME = ""
    cfg.SEED = -1
    cfg.USE_CUDA = True
    cfg.VERBOSE = True
    cfg.INPUT = _input_defaults()
    cfg.DATASET = _dataset_defaults()
    cfg.DATALOADER = _dataloader_defaults()
    cfg.MODEL = _model_defaults()
    cfg.OPTIM = _optim_defaults()
    cfg.TRAIN = _train_defaults()
    cfg.TEST = _test_defaults()
    cfg.TRAINER = CN()
    cfg.TRAINER.NAME = ""
    return cfg
