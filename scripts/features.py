"""Frozen-CLIP features of a domain's images and of class-name prompts, for the analysis scripts.

``scripts.cluster_eval``, ``scripts.plot_tsne`` and ``tools.cluster_names`` all need the same thing:
the config ``train.py`` would build, one loaded backbone reused across domains and subsets, and the
L2-normalised image features of some splits of one subset with their labels, class names and paths.
The encoding itself is :func:`lpclip.feat_extractor.encode_loader` (batched, ``inference_mode``), so
there is one feature path in the repository; no trainer is built.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import configs
from clip import autocast, load_clip
from dassl.cli import non_negative_int, rng_seed
from dassl.data import build_data_loader
from dassl.data.datasets import build_dataset
from dassl.data.transforms import build_transform
from lpclip.feat_extractor import encode_loader, pick_device
from scripts.domains import REPO_ROOT, resolve_domain

__all__ = [
    "DEFAULT_CONFIG",
    "FeatureSet",
    "add_backbone_args",
    "build_cfg",
    "cfg_from_args",
    "load_backbone",
    "image_features",
    "text_features",
]

logger = logging.getLogger(__name__)

#: The paper's backbone and preprocessing (OpenCLIP ViT-B-16, LAION-400M, 224 px).
DEFAULT_CONFIG = "configs/trainers/FSNL_openclip/vit_b16_ep200_standard.yaml"


@dataclass
class FeatureSet:
    """Normalised image features ``[N, D]`` with labels, label-ordered class names and image paths."""

    features: np.ndarray
    labels: np.ndarray
    classnames: List[str]
    impaths: List[str]
    dataset: str
    sub_classes: str
    #: the splits read, each once, in the order first named
    splits: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _config_path(path: str) -> str:
    """A trainer yaml as given when it exists from the cwd, else relative to the repository root."""
    p = Path(path)
    if p.is_absolute() or p.is_file():
        return str(p)
    return str(REPO_ROOT / p)


def build_cfg(
    root: str,
    dataset: str,
    config_file: str = DEFAULT_CONFIG,
    backbone: str = "",
    weights: str = "",
    seed: Optional[int] = None,
    opts: Sequence[str] = (),
) -> Any:
    """The frozen cfg of ``train.py`` for ``dataset`` (registered or short name) under ``root``."""
    extra = list(opts)
    if weights:
        extra += ["MODEL.BACKBONE.WEIGHTS", weights]
    return configs.build_cfg(
        dataset=str(REPO_ROOT / "configs" / "datasets" / f"{resolve_domain(dataset)}.yaml"),
        config=_config_path(config_file) if config_file else "", opts=extra, root=str(root),
        backbone=backbone, seed=seed,
    )


def add_backbone_args(parser: Any) -> None:
    """The backbone/config options shared by the analysis CLIs."""
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"trainer yaml giving backbone, input size and test batch size (default {DEFAULT_CONFIG})")
    parser.add_argument("--backbone", default="", help="MODEL.BACKBONE.NAME (e.g. ViT-L-14, mini-clip, test-tiny)")
    parser.add_argument("--weights", default="", help="MODEL.BACKBONE.WEIGHTS (open_clip tag, file, or none)")
    parser.add_argument("--seed", type=rng_seed, default=0, help="seed of k-means / t-SNE / subsampling")
    parser.add_argument("--device", default="", help="torch device (default: the GPU when available, else CPU)")
    parser.add_argument("--batch-size", type=non_negative_int, default=0, help="default: DATALOADER.TEST.BATCH_SIZE")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "amp"),
                        help="fp32, or amp (fp16 autocast) on a GPU")


def cfg_from_args(args: Any, dataset: str) -> Any:
    """``build_cfg`` from the options of :func:`add_backbone_args` (plus ``args.root`` / ``args.opts``)."""
    return build_cfg(args.root, dataset, args.config, args.backbone, args.weights, args.seed,
                     list(getattr(args, "opts", None) or []))


def load_backbone(cfg: Any, device: Optional[torch.device] = None, precision: str = "fp32") -> Any:
    """The frozen :class:`clip.LoadedCLIP` of ``cfg`` on ``device`` (default: GPU if allowed, else CPU)."""
    return load_clip(cfg, device if device is not None else pick_device(cfg), precision)


def _subsample(data: List[Any], max_per_class: int, seed: int) -> List[Any]:
    if max_per_class <= 0:
        return data
    by_label: Dict[int, List[Any]] = {}
    for item in data:
        by_label.setdefault(item.label, []).append(item)
    rng = random.Random(seed)
    out: List[Any] = []
    for label in sorted(by_label):
        items = by_label[label]
        out += items if len(items) <= max_per_class else rng.sample(items, max_per_class)
    return out


def image_features(
    cfg: Any,
    loaded: Any,
    sub_classes: str = "OOP",
    splits: Sequence[str] = ("test",),
    device: Optional[torch.device] = None,
    batch_size: int = 0,
    max_per_class: int = 0,
    seed: int = 0,
) -> FeatureSet:
    """Features of ``splits`` (full splits, test transform) of one subset of ``cfg``'s dataset.

    The input size follows the backbone when the config disagrees (e.g. ``--backbone`` with a 336 px
    model), so one config serves every backbone. ``max_per_class > 0`` keeps a seeded random sample of
    that many images per class (t-SNE does not need thousands of points). A split named twice is read
    once: its images twice over changed k-means and the image counts the analyses report.
    """
    splits = tuple(dict.fromkeys(splits))
    device = device if device is not None else next(loaded.model.parameters()).device
    sub_cfg = cfg.clone()
    sub_cfg.defrost()
    sub_cfg.DATASET.SUB_CLASSES = sub_classes
    sub_cfg.DATASET.NUM_SHOTS = -1
    size = tuple(int(s) for s in loaded.image_size)
    if tuple(sub_cfg.INPUT.SIZE) != size:
        logger.info("INPUT.SIZE %s -> %s to match %s", tuple(sub_cfg.INPUT.SIZE), size, loaded.name)
        sub_cfg.INPUT.SIZE = size
    sub_cfg.freeze()

    dataset = build_dataset(sub_cfg)
    parts = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}
    unknown = [s for s in splits if s not in parts]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(parts)}")
    data = _subsample([d for s in splits for d in (parts[s] or [])], max_per_class, seed)
    if not data:
        raise ValueError(f"{sub_cfg.DATASET.NAME} ({sub_classes}) has no image in splits {list(splits)}")
    loader = build_data_loader(
        sub_cfg, sampler_type="SequentialSampler", data_source=data,
        batch_size=int(batch_size or sub_cfg.DATALOADER.TEST.BATCH_SIZE),
        tfm=build_transform(sub_cfg, is_train=False), is_train=False, split="+".join(splits),
    )
    out = encode_loader(loaded, loader, device, loaded.precision, 1)
    feats = F.normalize(out["features_raw"], dim=-1).numpy().astype(np.float32)
    logger.info("%s/%s %s: %d images -> features %s", sub_cfg.DATASET.NAME, sub_classes, "+".join(splits),
                len(data), tuple(feats.shape))
    return FeatureSet(
        features=feats,
        labels=out["labels"].numpy(),
        classnames=list(dataset.classnames),
        impaths=[d.impath for d in data],
        dataset=str(sub_cfg.DATASET.NAME),
        sub_classes=sub_classes,
        splits=splits,
    )


@torch.inference_mode()
def text_features(loaded: Any, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
    """L2-normalised text features ``[T, D]`` of ``texts``."""
    model = loaded.model
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids = loaded.tokenizer(list(texts[start:start + batch_size])).to(device)
        with autocast(loaded.precision, device):
            chunks.append(model.encode_text(ids).float().cpu())
    return F.normalize(torch.cat(chunks), dim=-1).numpy().astype(np.float32)
