"""Frozen-feature cache: encode augmented views of the few-shot images once, train from features.

Every method here keeps the image encoder frozen, so the only reason to run it at every step is
fresh augmentation. ``DATALOADER.FEATURE_CACHE.VIEWS K`` trades that for speed: K augmented views
of every training image are encoded once (and stored on disk), and each epoch draws one view per
image. The online mode (fresh augmentation every step, K = 0) stays the default because it is the
paper's setting; the README reports the accuracy difference on Mini-Beyond.

A cache file is only reused when everything that determines its content matches: backbone,
weights, precision, input transform, dataset, subset, split-file contents, shots, seed, K and the
exact list of training images. A mismatch is logged and the features are recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dassl.data import build_data_loader
from dassl.data.samplers import build_sampler
from dassl.utils import atomic_torch_save, derive_seed

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def add_config(cfg: Any) -> None:
    """``DATALOADER.FEATURE_CACHE.*`` (shared by every CLIP trainer) and ``TEST.CACHE_FEATURES``."""
    from yacs.config import CfgNode as CN

    cfg.DATALOADER.FEATURE_CACHE = CN()
    cfg.DATALOADER.FEATURE_CACHE.VIEWS = 0  # 0 = online augmentation (the paper's setting)
    cfg.DATALOADER.FEATURE_CACHE.DIR = ""  # default: <OUTPUT_DIR>/feature_cache
    # Frozen test/val features are encoded once per run and reused by every periodic evaluation.
    cfg.TEST.CACHE_FEATURES = True


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_meta(cfg: Any, dataset: Any, precision: str, views: int) -> Dict[str, Any]:
    """Everything that determines the cached features' values, as plain JSON data."""
    split_files = getattr(dataset, "split_files", {}) or {}
    images = hashlib.sha1()
    for d in dataset.train_x:
        images.update(f"{d.impath}\t{d.label}\n".encode())
    bb = cfg.MODEL.BACKBONE
    return {
        "version": CACHE_VERSION,
        "backbone": str(bb.NAME),
        "weights": str(bb.get("WEIGHTS", "")),
        "quick_gelu": str(bb.get("QUICK_GELU", "auto")),
        "precision": precision,
        "input": json.loads(json.dumps(cfg.INPUT, default=str)),
        "dataset": str(cfg.DATASET.NAME),
        "sub_classes": str(cfg.DATASET.get("SUB_CLASSES", "")),
        "split_files": {str(k): _file_digest(v) for k, v in sorted(split_files.items()) if osp.isfile(v)},
        "shots": int(cfg.DATASET.NUM_SHOTS),
        "seed": int(cfg.SEED),
        "views": int(views),
        "images": images.hexdigest(),
    }


def cache_path(directory: str, meta: Dict[str, Any]) -> str:
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return osp.join(directory, f"train_views{meta['views']}_{key}.pt")


def load_cached(path: str, meta: Dict[str, Any]) -> Optional[torch.Tensor]:
    """The stored features if the file exists and its metadata matches exactly, else None."""
    if not osp.isfile(path):
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file is recomputed, never trusted
        logger.warning("Ignoring unreadable feature cache %s (%s)", path, e)
        return None
    stored = json.loads(payload.get("meta", "{}"))
    if stored != meta:
        changed = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
        logger.warning("Feature cache %s does not match this run (%s differ): recomputing", path, changed)
        return None
    return payload["features"]


def save_cached(path: str, meta: Dict[str, Any], features: torch.Tensor) -> None:
    atomic_torch_save({"meta": json.dumps(meta, sort_keys=True), "features": features}, path)


def encode_views(
    cfg: Any, data_source: Sequence[Any], transform: Callable, encode: Callable[[torch.Tensor], torch.Tensor],
    views: int, seed: int,
) -> torch.Tensor:
    """``[views, N, D]`` features of ``views`` augmented passes over ``data_source`` (in order)."""
    loader = build_data_loader(cfg, sampler_type="SequentialSampler", data_source=data_source,
                               batch_size=int(cfg.DATALOADER.TEST.BATCH_SIZE), tfm=transform,
                               is_train=False, split="train (feature cache)")
    out: List[torch.Tensor] = []
    for v in range(views):
        # Each view's augmentation stream depends only on (seed, view): reruns give the same cache.
        torch.manual_seed(derive_seed(max(seed, 0), v, 7))
        feats = [encode(batch["img"]).cpu() for batch in tqdm(loader, desc=f"cache view {v + 1}/{views}",
                                                                  disable=None, leave=False)]
        out.append(torch.cat(feats))
    return torch.stack(out)


class CachedFeatureDataset(Dataset):
    """Items like ``DatasetWrapper``'s, with ``feat`` (one cached view) instead of ``img``."""

    def __init__(self, features: torch.Tensor, data_source: Sequence[Any], seed: int) -> None:
        self.features = features
        self.data_source = list(data_source)
        self.seed = max(int(seed), 0)
        self.view = torch.zeros(len(self.data_source), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 11))
        self.view = torch.randint(self.features.shape[0], (len(self.data_source),), generator=g)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        d = self.data_source[idx]
        return {"feat": self.features[self.view[idx], idx], "label": d.label, "domain": d.domain,
                "impath": d.impath, "caption": d.caption, "index": idx}


def cached_train_loader(cfg: Any, dataset: CachedFeatureDataset) -> DataLoader:
    """Same sampler, batch size and drop_last rule as the image loader, over cached features."""
    node = cfg.DATALOADER.TRAIN_X
    sampler = build_sampler(node.SAMPLER, cfg=cfg, data_source=dataset.data_source,
                            batch_size=node.BATCH_SIZE, n_domain=node.N_DOMAIN, n_ins=node.N_INS)
    return DataLoader(dataset, batch_size=node.BATCH_SIZE, sampler=sampler, num_workers=0,
                      drop_last=len(dataset) >= node.BATCH_SIZE)
