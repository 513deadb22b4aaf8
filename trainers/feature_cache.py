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
* ``images``: every image's path, size, mtime, ctime and inode in order
  (:func:`dassl.utils.identity.files_digest`)
  and, for training views, the labels;
* ``transform``: the transform's ``repr`` (sizes, interpolation, crops, normalisation) and, for
  training views, ``cfg.INPUT``;
* ``backbone``, ``precision`` (resolved) and the device type;
* training views also: the split files' content (SHA-256), shots, seed and K.

A difference recomputes and overwrites the slot, and the log says why ("weights changed", "images
changed", ...). So does a file whose tensor is not the one written with its key: the features must
be a floating-point ``[N, D]`` (evaluation) or ``[views, N, D]`` (training views) tensor, N the key's
image count, and match the shape, dtype and SHA-256 stored beside them (a sliced, narrowed or
replaced tensor used to end in a traceback, or a one-view cache was silently used under ``VIEWS 2``).
Files are written atomically (temporary file + rename).

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
from yacs.config import CfgNode as CN

from clip import drawn_anew, weights_identity
from dassl.data import build_data_loader
from dassl.data.samplers import build_sampler
from dassl.utils import READ_IMAGE_VERSION, absolute_path, atomic_torch_save, derive_seed, read_image
from dassl.utils.identity import content_identity, files_digest, json_digest, version_identity

logger = logging.getLogger(__name__)

# 3: content keys (version 2 of the keys) + per-image view RNG; 4: the image count in the key and the
# features' shape, dtype and SHA-256 stored beside them (an edited tensor is recomputed, not used);
# 5: ``read_image`` scales 16-bit and float grayscale images to 8 bits instead of PIL's clipping
# (dcc9659, 5b4c94a): features cached before for such images are not what the code now encodes; from
# then on the keys also carry ``dassl.utils.READ_IMAGE_VERSION`` ("decoder"), which the next change of
# the decoding bumps for every store of features at once (lpclip's files too); 6: image keys add the
# ctime and inode (``version_identity``): files swapped by rename with size and mtime kept were reused
CACHE_VERSION = 6

#: ``shared`` flag set by the grid engine: the in-memory stores are the cache, nothing goes to disk.
STORE_ONLY = "feature_store_only"

#: Store key of one image: its real path and ``dassl.utils.identity.version_identity``.
ImageKey = Tuple[str, Tuple[int, int, int, int]]
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
    "count": "number of images changed",
    "version": "cache format changed",
    "decoder": "image decoding changed",
}


def add_config(cfg: Any) -> None:
    """``DATALOADER.FEATURE_CACHE.*`` (shared by every CLIP trainer) and the evaluation cache keys."""
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
        return absolute_path(osp.expanduser(root))
    xdg = os.environ.get("XDG_CACHE_HOME") or osp.join(osp.expanduser("~"), ".cache")
    return osp.join(xdg, "fsnl")


def weights_drawn_anew(cfg: Any) -> bool:
    """Whether ``cfg``'s backbone is unseeded random weights (:func:`clip.drawn_anew`): the on-disk
    caches are skipped for them."""
    return drawn_anew(weights_identity(cfg))


def eval_cache_dir(cfg: Any) -> Optional[str]:
    """Where evaluation features are stored (None: memory only, also for unseeded random weights)."""
    value = str(cfg.TEST.get("FEATURE_CACHE_DIR", "") or "")
    if value.lower() == DISABLED or weights_drawn_anew(cfg):
        return None
    return absolute_path(osp.expanduser(value)) if value else osp.join(default_cache_root(), "eval_features")


def _weights(cfg: Any) -> Dict[str, Any]:
    return json.loads(json.dumps(weights_identity(cfg), default=str))


def _locator(cfg: Any, ident: Dict[str, Any], precision: str, device: str) -> Dict[str, Any]:
    """The part of a slot that names the model (``ident``: its :func:`_weights`). Seeded random weights
    (``WEIGHTS none``) are one model per seed, so the seed names them too: without it, evaluations of
    two seeds' models shared one evaluation slot and each replaced the other's features in turn
    (correct, but every run encoded its splits again)."""
    bb = cfg.MODEL.BACKBONE
    out = {"backbone": str(bb.NAME), "weights": str(bb.get("WEIGHTS", "")),
           "quick_gelu": str(bb.get("QUICK_GELU", "auto")), "precision": precision, "device": device}
    if ident.get("kind") == "random":
        out["random_seed"] = int(ident.get("seed", -1))
    return out


def cache_meta(cfg: Any, dataset: Any, precision: str, views: int, transform: Any = None,
               device: str = "cpu") -> Dict[str, Any]:
    """Everything that determines the cached training views' values, as plain JSON data."""
    split_files = getattr(dataset, "split_files", {}) or {}
    train = list(dataset.train_x)
    weights = _weights(cfg)
    return {
        "version": CACHE_VERSION,
        "slot": dict(_locator(cfg, weights, precision, device), kind="train", dataset=str(cfg.DATASET.NAME),
                     sub_classes=str(cfg.DATASET.get("SUB_CLASSES", "")), shots=int(cfg.DATASET.NUM_SHOTS),
                     seed=int(cfg.SEED), views=int(views)),
        "backbone": str(cfg.MODEL.BACKBONE.NAME),
        "weights": weights,
        "precision": precision,
        "device": device,
        "transform": repr(transform),
        "decoder": READ_IMAGE_VERSION,
        "input": json.loads(json.dumps(cfg.INPUT, default=str)),
        "split_files": {str(k): content_identity(v)["sha256"] for k, v in sorted(split_files.items())
                        if osp.isfile(v)},
        "images": files_digest(d.impath for d in train),
        "labels": json_digest([[d.impath, int(d.label)] for d in train]),
        "count": len(train),
    }


def eval_meta(cfg: Any, items: Sequence[Any], transform: Any, precision: str, device: str,
              split: str) -> Dict[str, Any]:
    """The key of one split's evaluation features: independent of the method, shots and seed."""
    weights = _weights(cfg)
    return {
        "version": CACHE_VERSION,
        "slot": dict(_locator(cfg, weights, precision, device), kind="eval", dataset=str(cfg.DATASET.NAME),
                     sub_classes=str(cfg.DATASET.get("SUB_CLASSES", "")), split=split,
                     paths=json_digest([d.impath for d in items])),
        "backbone": str(cfg.MODEL.BACKBONE.NAME),
        "weights": weights,
        "precision": precision,
        "device": device,
        "transform": repr(transform),
        "decoder": READ_IMAGE_VERSION,
        "images": files_digest(d.impath for d in items),
        "count": len(items),
    }


def cache_path(directory: str, meta: Dict[str, Any]) -> str:
    """The slot file: named by what was asked for, so a changed input lands on the same file."""
    slot = meta["slot"]
    tag = f"views{slot['views']}" if slot["kind"] == "train" else str(slot["split"])
    return osp.join(directory, f"{slot['kind']}_{tag}_{json_digest(slot)}.pt")


def changes(stored: Dict[str, Any], meta: Dict[str, Any]) -> List[str]:
    """Human reasons for every key field that differs (``"weights changed"``, ...); a file of another
    cache format is that alone (its other fields may simply not exist yet)."""
    if stored.get("version") != meta.get("version"):
        return [REASONS["version"]]
    keys = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
    return [REASONS.get(k, f"{k} changed") for k in keys]


def content_record(features: torch.Tensor) -> Dict[str, Any]:
    """Shape, dtype and SHA-256 of the tensor's bytes: stored beside the features, so a tensor edited
    or swapped under an unchanged key (a slice, another width, a one-view cache under ``VIEWS 2``)
    is recognised and recomputed instead of being used."""
    flat = features.detach().cpu().contiguous().reshape(-1)
    return {"shape": list(features.shape), "dtype": str(features.dtype),
            "sha256": hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()}


def shape_problem(features: Any, meta: Dict[str, Any]) -> str:
    """Why ``features`` cannot be this key's features ("" when they can): a floating-point tensor of
    ``[N, D]`` (evaluation) or ``[views, N, D]`` (training views), N the key's image count."""
    if not isinstance(features, torch.Tensor):
        return f"features are a {type(features).__name__}, not a tensor"
    if not features.is_floating_point():
        return f"features have dtype {features.dtype}, not a floating-point type"
    slot = meta.get("slot", {})
    train = slot.get("kind") == "train"
    expected = ([int(slot.get("views", 0))] if train else []) + [int(meta.get("count", -1))]
    shown = "[views, N, D]" if train else "[N, D]"
    if features.dim() != len(expected) + 1 or list(features.shape[:-1]) != expected or features.shape[-1] < 1:
        return f"features have shape {list(features.shape)}, expected {shown} = [{', '.join(map(str, expected))}, D]"
    return ""


def load_cached(path: str, meta: Dict[str, Any]) -> Optional[torch.Tensor]:
    """The stored features if the file exists, its key matches exactly and the tensor is the one that
    was written for it (shape against the key, shape / dtype / SHA-256 against the stored record);
    else None, logged why, and the caller recomputes and overwrites its own slot file."""
    if not osp.isfile(path):
        logger.info("No feature cache at %s: encoding", path)
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        stored = json.loads(payload.get("meta", "{}"))
        features = payload["features"]
        record = payload.get("content")
    except Exception as e:  # a truncated or foreign file is recomputed, never trusted
        logger.warning("Ignoring unreadable feature cache %s (%s): recomputing", path, e)
        return None
    reasons = changes(stored, meta)
    if reasons:
        logger.warning("Feature cache %s is stale (%s): recomputing", path, ", ".join(reasons))
        return None
    problem = shape_problem(features, meta)
    if not problem and (not isinstance(record, dict) or record != content_record(features)):
        problem = "the features are not the ones written with this key (shape, dtype or checksum differ)"
    if problem:
        logger.warning("Ignoring feature cache %s (%s): recomputing", path, problem)
        return None
    return features


def save_cached(path: str, meta: Dict[str, Any], features: torch.Tensor) -> None:
    atomic_torch_save({"meta": json.dumps(meta, sort_keys=True), "features": features,
                       "content": content_record(features)}, path)


def image_key(impath: str) -> ImageKey:
    """The store key of an image file: its real path and file version (a rewritten or swapped image is a
    new key)."""
    real = osp.realpath(impath)
    return real, version_identity(real)


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
    (the transform by its ``repr``, which lists the ops and most parameters). Training views also key
    on ``INPUT``, as the on-disk cache does: a ``repr`` does not show every parameter (torchvision's
    ``AutoAugment`` omits its interpolation), so two cells differing only there shared views."""
    meta = {"kind": kind, "weights": weights_identity(cfg), "precision": precision, "device": device,
            "transform": repr(transform), "seed": seed}
    if kind == "train":
        meta["input"] = json.loads(json.dumps(cfg.INPUT, default=str))
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
            # the CPU generator only: torch.manual_seed would also queue a CUDA seeding that records a
            # stack trace per call (about 1 ms, more than the transform itself); transforms draw on the CPU
            torch.default_generator.manual_seed(view_seed(self.seed, _rel(datum.impath, self.root), view))
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
