"""Frozen-feature caches: training views (opt-in) and evaluation features, keyed by content.

Every method here keeps the image encoder frozen, so the only reason to run it at every step is
fresh augmentation. ``DATALOADER.FEATURE_CACHE.VIEWS K`` trades that for speed: K augmented views
of every training image are encoded once (and stored on disk), and each epoch draws one view per
image. The online mode (fresh augmentation every step, K = 0) stays the default because it is the
paper's setting; the README reports the accuracy difference on Mini-Beyond.

Evaluation features (the frozen test/val image features) need no augmentation at all, so they are
encoded once per dataset split, backbone and transform and reused by every run and by the OOP->IP
cross-evaluation (``TEST.FEATURE_CACHE_DIR``; within a process through the trainer's ``shared``).

Keys (issue 11, item 5). A cache file lives in a *slot* named by what the run asks for (dataset,
subset, split or shots/seed/views, backbone name, weights spelling, precision, device); inside it
the file stores the *content identity* of everything its values depend on, compared field by field
before any reuse:

* ``weights``: :func:`clip.weights_identity` (tag, or size + SHA-256 of a weights file, memoised
  per file version; QuickGELU);
* ``images``: every image's path, size and mtime in order (:func:`dassl.utils.identity.files_digest`)
  and, for training views, the labels;
* ``transform``: the transform's ``repr`` (sizes, interpolation, crops, normalisation) and, for
  training views, ``cfg.INPUT``;
* ``backbone``, ``precision`` (resolved) and the device type;
* training views also: the split files' content (SHA-256), shots, seed and K.

A difference recomputes and overwrites the slot, and the log says why ("weights changed", "images
changed", ...). Files are written atomically (temporary file + rename).
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clip import weights_identity
from dassl.data import build_data_loader
from dassl.data.samplers import build_sampler
from dassl.utils import atomic_torch_save, derive_seed
from dassl.utils.identity import content_identity, files_digest, json_digest

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
#: ``TEST.FEATURE_CACHE_DIR`` value that turns the on-disk evaluation cache off
DISABLED = "none"
#: environment variable naming the root of the project's caches (default ``~/.cache/fsnl``)
CACHE_ENV = "FSNL_CACHE_DIR"

#: what the log says when a stored key field differs from this run's
REASONS = {
    "weights": "weights changed",
    "images": "images changed",
    "labels": "labels changed",
    "transform": "transform changed",
    "input": "INPUT config changed",
    "split_files": "split file changed",
    "backbone": "backbone changed",
    "precision": "precision changed",
    "device": "device changed",
    "version": "cache format changed",
}


def add_config(cfg: Any) -> None:
    """``DATALOADER.FEATURE_CACHE.*`` (shared by every CLIP trainer) and the evaluation cache keys."""
    from yacs.config import CfgNode as CN

    cfg.DATALOADER.FEATURE_CACHE = CN()
    cfg.DATALOADER.FEATURE_CACHE.VIEWS = 0  # 0 = online augmentation (the paper's setting)
    cfg.DATALOADER.FEATURE_CACHE.DIR = ""  # default: <OUTPUT_DIR>/feature_cache
    # Frozen test/val features are encoded once per run and reused by every periodic evaluation ...
    cfg.TEST.CACHE_FEATURES = True
    # ... and stored on disk, keyed by content, for every later run: "" = $FSNL_CACHE_DIR/eval_features
    # (default ~/.cache/fsnl/eval_features), "none" = memory only.
    cfg.TEST.FEATURE_CACHE_DIR = ""


def default_cache_root() -> str:
    """``$FSNL_CACHE_DIR``, else ``$XDG_CACHE_HOME/fsnl``, else ``~/.cache/fsnl``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return osp.abspath(osp.expanduser(root))
    xdg = os.environ.get("XDG_CACHE_HOME") or osp.join(osp.expanduser("~"), ".cache")
    return osp.join(xdg, "fsnl")


def eval_cache_dir(cfg: Any) -> Optional[str]:
    """Where evaluation features are stored (None: memory only)."""
    value = str(cfg.TEST.get("FEATURE_CACHE_DIR", "") or "")
    if value.lower() == DISABLED:
        return None
    return osp.abspath(osp.expanduser(value)) if value else osp.join(default_cache_root(), "eval_features")


def _weights(cfg: Any) -> Dict[str, Any]:
    return json.loads(json.dumps(weights_identity(cfg), default=str))


def _locator(cfg: Any, precision: str, device: str) -> Dict[str, Any]:
    bb = cfg.MODEL.BACKBONE
    return {"backbone": str(bb.NAME), "weights": str(bb.get("WEIGHTS", "")),
            "quick_gelu": str(bb.get("QUICK_GELU", "auto")), "precision": precision, "device": device}


def cache_meta(cfg: Any, dataset: Any, precision: str, views: int, transform: Any = None,
               device: str = "cpu") -> Dict[str, Any]:
    """Everything that determines the cached training views' values, as plain JSON data."""
    split_files = getattr(dataset, "split_files", {}) or {}
    train = list(dataset.train_x)
    return {
        "version": CACHE_VERSION,
        "slot": dict(_locator(cfg, precision, device), kind="train", dataset=str(cfg.DATASET.NAME),
                     sub_classes=str(cfg.DATASET.get("SUB_CLASSES", "")), shots=int(cfg.DATASET.NUM_SHOTS),
                     seed=int(cfg.SEED), views=int(views)),
        "backbone": str(cfg.MODEL.BACKBONE.NAME),
        "weights": _weights(cfg),
        "precision": precision,
        "device": device,
        "transform": repr(transform),
        "input": json.loads(json.dumps(cfg.INPUT, default=str)),
        "split_files": {str(k): content_identity(v)["sha256"] for k, v in sorted(split_files.items())
                        if osp.isfile(v)},
        "images": files_digest(d.impath for d in train),
        "labels": json_digest([[d.impath, int(d.label)] for d in train]),
    }


def eval_meta(cfg: Any, items: Sequence[Any], transform: Any, precision: str, device: str,
              split: str) -> Dict[str, Any]:
    """The key of one split's evaluation features: independent of the method, shots and seed."""
    return {
        "version": CACHE_VERSION,
        "slot": dict(_locator(cfg, precision, device), kind="eval", dataset=str(cfg.DATASET.NAME),
                     sub_classes=str(cfg.DATASET.get("SUB_CLASSES", "")), split=split,
                     paths=json_digest([d.impath for d in items])),
        "backbone": str(cfg.MODEL.BACKBONE.NAME),
        "weights": _weights(cfg),
        "precision": precision,
        "device": device,
        "transform": repr(transform),
        "images": files_digest(d.impath for d in items),
    }


def cache_path(directory: str, meta: Dict[str, Any]) -> str:
    """The slot file: named by what was asked for, so a changed input lands on the same file."""
    slot = meta["slot"]
    tag = f"views{slot['views']}" if slot["kind"] == "train" else str(slot["split"])
    return osp.join(directory, f"{slot['kind']}_{tag}_{json_digest(slot)}.pt")


def changes(stored: Dict[str, Any], meta: Dict[str, Any]) -> List[str]:
    """Human reasons for every key field that differs (``"weights changed"``, ...)."""
    keys = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
    return [REASONS.get(k, f"{k} changed") for k in keys]


def load_cached(path: str, meta: Dict[str, Any]) -> Optional[torch.Tensor]:
    """The stored features if the file exists and its key matches exactly, else None (logged why)."""
    if not osp.isfile(path):
        logger.info("No feature cache at %s: encoding", path)
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        stored = json.loads(payload.get("meta", "{}"))
        features = payload["features"]
    except Exception as e:  # a truncated or foreign file is recomputed, never trusted
        logger.warning("Ignoring unreadable feature cache %s (%s): recomputing", path, e)
        return None
    reasons = changes(stored, meta)
    if reasons:
        logger.warning("Feature cache %s is stale (%s): recomputing", path, ", ".join(reasons))
        return None
    return features


def save_cached(path: str, meta: Dict[str, Any], features: torch.Tensor) -> None:
    atomic_torch_save({"meta": json.dumps(meta, sort_keys=True), "features": features}, path)


def encode_items(cfg: Any, items: Sequence[Any], transform: Callable,
                 encode: Callable[[torch.Tensor], torch.Tensor], desc: str,
                 disable: Optional[bool] = None) -> torch.Tensor:
    """``[N, D]`` features of ``items`` in order (one pass of a sequential loader)."""
    loader = build_data_loader(cfg, sampler_type="SequentialSampler", data_source=items,
                               batch_size=int(cfg.DATALOADER.TEST.BATCH_SIZE), tfm=transform,
                               is_train=False, split=desc)
    feats = [encode(batch["img"]).cpu() for batch in tqdm(loader, desc=desc, disable=disable, leave=False)]
    return torch.cat(feats)


def feature_batches(features: torch.Tensor, items: Sequence[Any], batch_size: int) -> List[Dict[str, Any]]:
    """Evaluation batches (``feat``, ``label``, ``impath``) over cached features, in item order."""
    out = []
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start:start + batch_size]
        out.append({"feat": features[start:start + len(chunk)],
                    "label": torch.tensor([int(d.label) for d in chunk], dtype=torch.long),
                    "impath": [d.impath for d in chunk]})
    return out


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
