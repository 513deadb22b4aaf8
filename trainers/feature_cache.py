"""Frozen-feature cache: encode augmented views of the few-shot images once, train from features.

Every method here keeps the image encoder frozen, so the only reason to run it at every step is
fresh augmentation. ``DATALOADER.FEATURE_CACHE.VIEWS K`` trades that for speed: K augmented views
of every training image are encoded once (and stored on disk), and each epoch draws one view per
image. The online mode (fresh augmentation every step, K = 0) stays the default because it is the
paper's setting; the README reports the accuracy difference on Mini-Beyond.

A cache file is only reused when everything that determines its content matches: backbone,
weights, precision, input transform, dataset, subset, split-file contents, shots, seed, K and the
exact list of training images. A mismatch is logged and the features are recomputed.

View ``v`` of an image is drawn from its own RNG, seeded by ``(SEED, the image's path relative to
DATASET.ROOT, v)``: an image's views do not depend on which other images a run has, nor on their
order. That is what lets the grid engine (``scripts/grid.py``) encode the union of every cell's
few-shot images once into a :class:`FeatureStore` (keyed by file identity, seed, transform and view)
and hand each cell exactly the features its own ``train.py`` run would compute. (Until cache version
1 the views came from one RNG stream per view over the loader order; cached-mode numbers moved by
that change, see the README.)

Frozen evaluation features go through a :class:`FeatureStore` as well (test transform, no view), so
test and val images shared by many cells are encoded once per process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clip import weights_identity
from dassl.data.samplers import build_sampler
from dassl.utils import atomic_torch_save, derive_seed, read_image
from dassl.utils.identity import json_digest, stat_identity

logger = logging.getLogger(__name__)

CACHE_VERSION = 2

#: ``shared`` flag set by the grid engine: the in-memory stores are the cache, nothing goes to disk.
STORE_ONLY = "feature_store_only"

#: ``shared`` flag while a cross-evaluation trainer is built: it never trains, so it encodes no views.
EVALUATION_ONLY = "evaluation_only"

#: Store key of one image: (real path, size, mtime_ns), as ``dassl.utils.identity.stat_identity``.
ImageKey = Tuple[str, int, int]


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


def image_key(impath: str) -> ImageKey:
    """The store key of an image file: its real path, size and mtime (a rewritten image is a new key)."""
    real = osp.realpath(impath)
    size, mtime_ns = stat_identity(real)
    return real, size, mtime_ns


def view_seed(seed: int, rel_path: str, view: int) -> int:
    """The RNG seed of view ``view`` of one image: a function of (seed, image, view) only."""
    digest = int(hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:15], 16)
    return derive_seed(max(int(seed), 0), digest, int(view), 7)


def _rel(impath: str, root: str) -> str:
    """The image's path relative to the dataset root (so a moved dataset keeps its views)."""
    real, base = osp.realpath(impath), osp.realpath(root) if root else ""
    if base and (real == base or real.startswith(base.rstrip(os.sep) + os.sep)):
        return osp.relpath(real, base).replace(os.sep, "/")
    return real.replace(os.sep, "/")


class FeatureStore:
    """Frozen features by ``(image key, view)``, for one model, transform and seed (see the module doc).

    ``encoded`` counts the images the encoder has seen through this store: each (image, view) is
    encoded at most once, however many runs ask for it.
    """

    def __init__(self) -> None:
        self._feats: Dict[Tuple[ImageKey, int], torch.Tensor] = {}
        self.encoded = 0

    def __len__(self) -> int:
        return len(self._feats)

    def __contains__(self, key: Tuple[ImageKey, int]) -> bool:
        return key in self._feats

    def get(self, key: Tuple[ImageKey, int]) -> torch.Tensor:
        return self._feats[key]

    def put(self, key: Tuple[ImageKey, int], feat: torch.Tensor) -> None:
        self._feats[key] = feat


def store_namespace(kind: str, cfg: Any, transform: Any, precision: str, device: str,
                    seed: Optional[int]) -> Tuple[str, str]:
    """The ``shared`` key of a store: everything the features depend on besides the image and view
    (the transform by its ``repr``, which lists every op and parameter)."""
    meta = {"kind": kind, "weights": weights_identity(cfg), "precision": precision, "device": device,
            "transform": repr(transform), "seed": seed}
    return ("feature_store", json_digest(meta))


class _Items(Dataset):
    """``(datum, view)`` pairs to encode; a view >= 0 is drawn from its own seeded RNG."""

    def __init__(self, items: Sequence[Tuple[Any, int]], transform: Callable, seed: int, root: str) -> None:
        self.items, self.transform, self.seed, self.root = list(items), transform, seed, root

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        datum, view = self.items[idx]
        img = read_image(datum.impath)
        if view < 0:
            return {"img": self.transform(img), "index": idx}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, _rel(datum.impath, self.root), view))
            return {"img": self.transform(img), "index": idx}


def fill_store(
    store: FeatureStore, data_source: Sequence[Any], views: Iterable[int], transform: Callable,
    encode: Callable[[torch.Tensor], torch.Tensor], seed: int, root: str, batch_size: int, desc: str,
) -> None:
    """Encode every ``(image, view)`` of ``data_source`` × ``views`` that ``store`` lacks (view -1:
    the deterministic transform), in data order, ``batch_size`` images per encoder call."""
    todo: List[Tuple[Any, int]] = []
    seen = set()
    for v in views:
        for d in data_source:
            key = (image_key(d.impath), int(v))
            if key not in store and key not in seen:
                seen.add(key)
                todo.append((d, int(v)))
    if not todo:
        return
    loader = DataLoader(_Items(todo, transform, seed, root), batch_size=max(1, int(batch_size)), shuffle=False,
                        num_workers=0)
    for batch in tqdm(loader, desc=desc, disable=None, leave=False):
        images = batch["img"]
        # A one-image batch takes another matrix kernel (gemv) whose last bits differ; pad it so a
        # feature never depends on how many other images shared its batch.
        feats = encode(torch.cat([images, images]) if len(images) == 1 else images)[: len(images)].cpu()
        for row, idx in enumerate(batch["index"].tolist()):
            d, v = todo[idx]
            store.put((image_key(d.impath), v), feats[row])
        store.encoded += len(images)


def gather(store: FeatureStore, data_source: Sequence[Any], view: int) -> torch.Tensor:
    """``[N, D]`` features of ``data_source`` at ``view`` from ``store``."""
    return torch.stack([store.get((image_key(d.impath), int(view))) for d in data_source])


def encode_views(
    cfg: Any, data_source: Sequence[Any], transform: Callable, encode: Callable[[torch.Tensor], torch.Tensor],
    views: int, seed: int, store: Optional[FeatureStore] = None,
) -> torch.Tensor:
    """``[views, N, D]`` features of ``views`` augmented views of every image of ``data_source``.

    View ``v`` of an image depends only on (``seed``, the image, ``v``); images already in ``store``
    (the grid engine's, shared across runs) are not encoded again.
    """
    store = store if store is not None else FeatureStore()
    fill_store(store, data_source, range(int(views)), transform, encode, seed, str(cfg.DATASET.ROOT),
               int(cfg.DATALOADER.TEST.BATCH_SIZE), "cache views")
    return torch.stack([gather(store, data_source, v) for v in range(int(views))])


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
