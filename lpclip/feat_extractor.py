"""Frozen CLIP image features of one split, for the linear probe (spec §9.1).

    python -m lpclip.feat_extractor --root DATA --output-dir clip_feat \\
        --config-file configs/trainers/CoOp_openclip/vit_b16_ep200_ctxv1_lpclip.yaml \\
        --dataset-config-file configs/datasets/Animals92_42.yaml --split train [--views 10] \\
        [--seed 1] [--num-shot K] [DATASET.SUB_CLASSES IP ...]

The config is built exactly as ``train.py`` builds it (``configs.build_cfg``), so
trailing ``KEY VALUE`` overrides work. Writes ``<output-dir>/<DATASET.NAME>/<SUB_CLASSES>/<split>.npz``
with

* ``features`` ``[N, D]`` float32, L2-normalised; ``features_raw`` the projected, unnormalised features
  (what the reference saved and probed);
* ``labels`` ``[N]`` int64, ``image_ids`` ``[N]`` (index of the source image in the split; the V views of
  one image share it), ``classnames`` (label order), and 0-d ``backbone``, ``weights``, ``transform``,
  ``views``.

Differences from the reference, all deliberate (B32, P9):

* ``DATASET.SUB_CLASSES`` defaults to OOP and any config key can be overridden on the command line;
  ``--seed`` and ``--num-shot`` are applied; the device and precision are not hard-coded;
* the train split uses the deterministic test transform unless ``--views V`` asks for V augmented views
  (train transform) per image, instead of one random augmentation;
* features are gathered batch-wise into one tensor under ``torch.inference_mode`` (no per-sample
  ``.tolist()``) and the file is written atomically.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
import sys
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import configs
from dassl.utils import atomic_write

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXTRACT_PRECISIONS = ("fp32", "amp")


def feature_file(output_dir: str, dataset_name: str, sub_classes: str, split: str) -> str:
    """The one layout shared with ``lpclip.linear_probe`` (B31)."""
    return osp.join(output_dir, dataset_name, sub_classes, f"{split}.npz")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lpclip.feat_extractor", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="dataset root (DATASET.ROOT)")
    p.add_argument("--output-dir", required=True, help="features go to <output-dir>/<DATASET.NAME>/<SUB_CLASSES>/")
    p.add_argument("--config-file", default="", help="trainer yaml (input size, backbone, batch size)")
    p.add_argument("--dataset-config-file", default="", help="dataset yaml (DATASET.NAME)")
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--seed", type=int, default=None,
                   help="SEED: seeds the augmentation of --views (and few-shot sampling with --num-shot)")
    p.add_argument("--num-shot", type=int, default=-1,
                   help="DATASET.NUM_SHOTS (default -1: the full split; the probe samples its own shots)")
    p.add_argument("--views", type=int, default=0,
                   help="train split only: V augmented views per image (train transform); 0 = test transform")
    p.add_argument("--backbone", default="", help="MODEL.BACKBONE.NAME")
    p.add_argument("--trainer", default="", help="TRAINER.NAME (only for trainer backbone presets)")
    p.add_argument("--precision", default="fp32", choices=EXTRACT_PRECISIONS,
                   help="fp32, or amp (fp16 autocast) on a GPU; CPU always runs fp32")
    p.add_argument("--batch-size", type=int, default=0, help="default: DATALOADER.TEST.BATCH_SIZE")
    p.add_argument("--device", default="", help="torch device; default: the GPU when available, else CPU")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, as for train.py")
    args = p.parse_args(argv)
    if args.views < 0:
        p.error("--views must be >= 0")
    if args.views and args.split != "train":
        p.error("--views only applies to --split train (val/test always use the test transform)")
    return args


def build_cfg(args: argparse.Namespace) -> Any:
    """The cfg ``train.py`` would build for these arguments (:func:`configs.build_cfg`)."""
    opts = list(args.opts or [])
    if args.num_shot != -1:
        opts += ["DATASET.NUM_SHOTS", str(args.num_shot)]
    return configs.build_cfg(trainer=args.trainer, dataset=args.dataset_config_file, config=args.config_file,
                             opts=opts, root=args.root, output_dir=args.output_dir, seed=args.seed,
                             backbone=args.backbone)


def pick_device(cfg: Any, requested: str = "") -> torch.device:
    if requested:
        return torch.device(requested)
    if cfg.USE_CUDA and torch.cuda.is_available():
        return torch.device(torch.cuda.current_device())
    return torch.device("cpu")


@torch.inference_mode()
def encode_loader(loaded: Any, loader: Any, device: torch.device, precision: Any, views: int = 1) -> Dict[str, torch.Tensor]:
    """Raw projected features, labels and image ids for ``views`` passes over ``loader``.

    Rows are view-major (view v of image i is row ``v·N + i``); the loader's ``index`` places each batch,
    so nothing depends on batch order or size.
    """
    from clip import autocast

    n = len(loader.dataset)
    dim = int(loaded.embed_dim)
    raw = torch.empty(views * n, dim, dtype=torch.float32)
    labels = torch.full((views * n,), -1, dtype=torch.int64)
    model = loaded.model
    for v in range(views):
        for batch in loader:
            rows = batch["index"].long() + v * n
            images = batch["img"].to(device, dtype=loaded.dtype, non_blocking=True)
            with autocast(precision, device):
                feats = model.encode_image(images)
            raw[rows] = feats.float().cpu()
            labels[rows] = torch.as_tensor(batch["label"]).long()
    if bool((labels < 0).any()):
        raise RuntimeError("Some images were not visited by the loader")
    image_ids = torch.arange(n, dtype=torch.int64).repeat(views)
    return {"features_raw": raw, "labels": labels, "image_ids": image_ids}


def save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (a crash never leaves a half-written file behind)."""
    atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb")


def extract(cfg: Any, split: str, views: int = 0, device: Optional[torch.device] = None,
            precision: str = "fp32", batch_size: int = 0) -> Dict[str, np.ndarray]:
    """Features of one split of ``cfg``'s dataset, as the arrays written to the npz."""
    from clip import load_clip
    from dassl.data import build_data_loader
    from dassl.data.datasets import build_dataset
    from dassl.data.transforms import build_transform

    device = device if device is not None else pick_device(cfg)
    dataset = build_dataset(cfg)
    data = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}[split]
    if not data:
        raise ValueError(f"{cfg.DATASET.NAME} ({cfg.DATASET.SUB_CLASSES}) has an empty {split} split")
    augment = views > 0
    tfm = build_transform(cfg, is_train=augment)
    loader = build_data_loader(
        cfg, sampler_type="SequentialSampler", data_source=data,
        batch_size=int(batch_size or cfg.DATALOADER.TEST.BATCH_SIZE), tfm=tfm, is_train=False, split=split,
    )
    loaded = load_clip(cfg, device, precision)
    out = encode_loader(loaded, loader, device, loaded.precision, max(views, 1))
    raw = out["features_raw"]
    logger.info("%s/%s %s: %d images x %d view(s) -> %s features (%s transform)", cfg.DATASET.NAME,
                cfg.DATASET.SUB_CLASSES, split, len(data), max(views, 1), tuple(raw.shape),
                "train" if augment else "test")
    return {
        "features": F.normalize(raw, dim=-1).numpy(),
        "features_raw": raw.numpy(),
        "labels": out["labels"].numpy(),
        "image_ids": out["image_ids"].numpy(),
        "classnames": np.array(list(dataset.classnames), dtype=str),
        "backbone": np.array(str(loaded.name)),
        "weights": np.array(str(loaded.weights)),
        "transform": np.array("train" if augment else "test"),
        "views": np.array(max(views, 1)),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dassl.utils import set_random_seed, setup_logger

    args = parse_args(argv)
    cfg = build_cfg(args)
    setup_logger(osp.join(args.output_dir, cfg.DATASET.NAME))
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)
    device = pick_device(cfg, args.device)
    logger.info("Extracting %s features of %s (%s) on %s, %s", args.split, cfg.DATASET.NAME,
                cfg.DATASET.SUB_CLASSES, device, args.precision)
    arrays = extract(cfg, args.split, args.views, device, args.precision, args.batch_size)
    path = feature_file(args.output_dir, cfg.DATASET.NAME, cfg.DATASET.SUB_CLASSES, args.split)
    save_npz(path, arrays)
    logger.info("Wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
