"""Shared plumbing for trainers built on a frozen OpenCLIP model.

Every method in this repository keeps CLIP frozen and trains a small module (names, context vectors,
an adapter, a residual). What they share lives here, so each trainer file only holds its method:

* loading CLIP once (and sharing it with the trainers built for cross-subset evaluation),
* precision that follows the device (``PREC``: fp32 | fp16 | amp | bf16; CPU always runs fp32),
* frozen image features under ``no_grad``/``inference_mode`` and autocast: evaluation features
  encoded once per dataset split, backbone and transform and reused across runs (an on-disk cache
  keyed by content, ``trainers/feature_cache.py``), and opt-in training views (the feature cache),
* the benchmark's evaluation protocol (OOP->IP cross-evaluation, H-mean: ``trainers/cross_eval.py``),
* class-text features computed once per ``test()`` call instead of once per batch (P1),
* one optimisation step that handles the AMP GradScaler, so no trainer re-implements it.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Any, ContextManager, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from clip import (
    LoadedCLIP,
    Precision,
    TextEncoder,
    autocast,
    load_clip,
    normalize_name,
    resolve_precision,
    weights_identity,
)
from clip.loader import check_backbone, expected_image_size
from clip.templates import DEFAULT_TEMPLATE
from dassl.engine import TrainerX
from dassl.utils.identity import json_digest

from . import feature_cache as fc
from .cross_eval import SubsetEvaluation

logger = logging.getLogger(__name__)

VALID_PRECISIONS = ("fp32", "fp16", "amp", "bf16")


def shared_clip(shared: Dict[Any, Any], cfg: Any, device: torch.device, precision: str) -> LoadedCLIP:
    """The frozen CLIP of ``cfg`` from ``shared``, loaded on first use.

    The weights identity (not the WEIGHTS string) keys the model: ``none`` is a seeded random init,
    so a grid engine's run of another seed must not get this one's model.
    """
    key = ("clip", json_digest(weights_identity(cfg)), precision, str(device))
    loaded = shared.get(key)
    if loaded is None:
        loaded = shared[key] = load_clip(cfg, device, precision)
    return loaded


class ClipTrainer(SubsetEvaluation, TrainerX):
    """A Dassl ``TrainerX`` around a frozen OpenCLIP model.

    Subclasses set ``PREC_KEY`` (the ``cfg.TRAINER.<KEY>.PREC`` they read) and implement
    ``build_model`` plus, for trainable methods, ``forward_backward``. Trainers whose class scores
    come from a fixed set of class text features implement ``compute_text_features()``; the base
    class then caches those features for the whole of each ``test()`` call.
    """

    PREC_KEY: str = "COOP"
    #: one augmented view per image and batch (``DATALOADER.FEATURE_CACHE.VIEWS K`` caches K of them)
    TAKES_VIEW_LISTS = False
    #: Sequences per text-tower call when encoding fixed prompts (bounds memory for large C).
    TEXT_CHUNK: int = 4096
    #: ``(backbone name, weights)`` forced by trainer variants such as ``FSNL_openclip_2B``; applied
    #: by :func:`preset_cfg` before the command line, so ``--backbone`` and opts still win.
    BACKBONE_PRESET: Optional[tuple] = None

    def __init__(self, cfg: Any, shared: Optional[Dict[Any, Any]] = None, eval_only: bool = False) -> None:
        super().__init__(cfg, shared=shared, eval_only=eval_only)
        self.check_cross_evaluation()
        if not self.eval_only:  # an evaluation never reads training views
            self.setup_feature_cache()
        else:
            self._cached_train = None

    # ------------------------------------------------------------------ config
    @classmethod
    def preset_cfg(cls, cfg: Any) -> None:
        """Write the variant's backbone into ``cfg`` (called by ``train.setup_cfg``)."""
        if cls.BACKBONE_PRESET is None:
            return
        name, weights, *rest = cls.BACKBONE_PRESET
        cfg.MODEL.BACKBONE.NAME = name
        cfg.MODEL.BACKBONE.WEIGHTS = weights
        if rest:
            cfg.MODEL.BACKBONE.QUICK_GELU = rest[0]

    @classmethod
    def weights_identity(cls, cfg: Any) -> Optional[Dict[str, Any]]:
        """The OpenCLIP backbone's weights identity (tag, or file content) for the run fingerprint."""
        return weights_identity(cfg)

    def check_cfg(self, cfg: Any) -> None:
        """Precision, backbone (resolvable, weights reachable offline) and INPUT.SIZE against the
        backbone's declared image size: all read from the config, so ``train.py`` runs this before
        any data or model is built (on an uninitialised instance: class attributes only)."""
        prec = self.prec_name(cfg)
        if prec not in VALID_PRECISIONS:
            raise ValueError(
                f"TRAINER.{self.PREC_KEY}.PREC must be one of {VALID_PRECISIONS}, got {prec!r}"
            )
        check_backbone(cfg)
        expected = expected_image_size(cfg)
        size = tuple(cfg.INPUT.SIZE)
        if expected is not None and size != expected:
            raise ValueError(
                f"INPUT.SIZE {size} does not match the image size {expected} of {cfg.MODEL.BACKBONE.NAME}; "
                f"set INPUT.SIZE {list(expected)}"
            )

    @classmethod
    def model_identity_key(cls, key: str) -> bool:
        """The engine's keys plus the method's own section ``TRAINER.<PREC_KEY>.*`` (context length,
        class-specific contexts, adapter ratio, residual scale ...), which shape the model the weights
        belong to; its ``PREC`` is how the model runs, so an evaluation may pick another."""
        section = f"TRAINER.{cls.PREC_KEY}."
        return super().model_identity_key(key) or (key.startswith(section) and key != section + "PREC")

    @classmethod
    def prec_name(cls, cfg: Any) -> str:
        node = cfg.TRAINER.get(cls.PREC_KEY)
        return str(node.PREC) if node is not None and "PREC" in node else "fp32"

    @property
    def precision(self) -> Precision:
        if not hasattr(self, "_precision"):
            self._precision = resolve_precision(self.prec_name(self.cfg), self.device)
        return self._precision

    def autocast(self) -> ContextManager:
        return autocast(self.precision, self.device)

    # ------------------------------------------------------------------ CLIP
    def load_clip(self) -> LoadedCLIP:
        """Load (or reuse, through ``shared``) the frozen CLIP for this backbone, weights and precision."""
        self.clip = shared_clip(self.shared, self.cfg, self.device, self.precision.name)
        self.check_input_size(self.clip)
        return self.clip

    def check_input_size(self, loaded: LoadedCLIP) -> None:
        size = tuple(self.cfg.INPUT.SIZE)
        expected = loaded.image_size
        expected = tuple(expected) if isinstance(expected, (tuple, list)) else (expected, expected)
        if size != expected:
            raise ValueError(
                f"INPUT.SIZE {size} does not match the backbone's image size {expected}; "
                f"set INPUT.SIZE {list(expected)}"
            )

    @property
    def classnames(self) -> List[str]:
        return list(self.dm.dataset.classnames)

    @property
    def hint(self) -> Optional[str]:
        return getattr(self.dm.dataset, "hint", None)

    def class_template(self) -> str:
        """The dataset's single zero-shot template with ``{}`` for the name."""
        hint = self.hint
        if hint:
            return "a photo of {}, a type of " + hint + "."
        return DEFAULT_TEMPLATE

    @staticmethod
    def display_names(classnames: List[str]) -> List[str]:
        return [normalize_name(c) for c in classnames]

    # ------------------------------------------------------------------ features
    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image features of the frozen visual tower, in fp32 (L2-normalised unless asked not to)."""
        model = self.clip.model
        with torch.no_grad(), self.autocast():
            feats = model.encode_image(images.to(self.device, dtype=self.clip.dtype)).float()
        return F.normalize(feats, dim=-1) if normalize else feats

    def batch_features(self, batch: Dict[str, Any], normalize: bool = True) -> torch.Tensor:
        """Features of a training batch: cached views (``feat``) when the feature cache is on."""
        if "feat" in batch:
            feats = batch["feat"].to(self.device, dtype=torch.float32)
            return F.normalize(feats, dim=-1) if normalize else feats
        return self.encode_images(batch["img"], normalize=normalize)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.model.logit_scale.detach().exp().float()

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """``[N, D]`` fp32 features of plain texts, ``TEXT_CHUNK`` sequences per text-tower call.

        The tower runs on truncated sequences (up to the longest EOT of the chunk), which is exact
        because CLIP's text transformer is causal.
        """
        encoder = TextEncoder(self.clip.model)
        ids = self.clip.tokenizer(list(texts))
        chunk = max(1, int(self.TEXT_CHUNK))
        feats = []
        with torch.no_grad(), self.autocast():
            for start in range(0, ids.shape[0], chunk):
                feats.append(encoder.encode_ids(ids[start:start + chunk].to(self.device)).float())
        if not feats:
            raise ValueError("No text to encode")
        out = torch.cat(feats)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_class_texts(self, template: str, names: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Features of ``template`` with ``{}`` replaced by each name (``str.replace``: names may hold braces)."""
        return self.encode_texts([template.replace("{}", n) for n in names], normalize=normalize)

    def compute_text_features(self) -> torch.Tensor:
        """Normalised ``[C, D]`` class text features; trainers with fixed class prompts override."""
        raise NotImplementedError

    def before_test(self) -> None:
        self._text_cache = None
        try:
            with torch.no_grad():
                self._text_cache = self.compute_text_features()
        except NotImplementedError:
            self._text_cache = None

    def after_test(self) -> None:
        self._text_cache = None

    def cached_text_features(self) -> torch.Tensor:
        cache = getattr(self, "_text_cache", None)
        if cache is None:
            with torch.no_grad():
                cache = self.compute_text_features()
        return cache

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits from *unnormalised* image features (what the feature caches hold)."""
        return self.logit_scale * F.normalize(feats, dim=-1) @ self.cached_text_features().t()

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        # 2-D input = cached image features (evaluation cache); 4-D = images.
        feats = input if input.dim() == 2 else self.encode_images(input, normalize=False)
        return self.logits_from_features(feats)

    # ------------------------------------------------------------------ feature caches
    def feature_store(self, kind: str, seed: Optional[int]) -> fc.FeatureStore:
        """The store of frozen features for this model, input transform and ``seed`` (``kind``
        ``train``: augmented views; ``eval``: the test transform), kept in ``shared`` so that
        cross-evaluation trainers and the grid engine's runs reuse what was encoded."""
        transform = self.dm.tfm_train if kind == "train" else self.dm.tfm_test
        key = fc.store_namespace(kind, self.cfg, transform, self.precision.name, str(self.device), seed)
        store = self.shared.get(key)
        if store is None:
            store = self.shared[key] = fc.FeatureStore()
        return store

    def setup_feature_cache(self) -> None:
        """Swap the image train loader for cached features when ``FEATURE_CACHE.VIEWS > 0``.

        Standalone runs keep the features on disk (``FEATURE_CACHE.DIR``); under the grid engine
        (``shared[fc.STORE_ONLY]``) the in-memory store is the cache and nothing is written.
        """
        node = self.cfg.DATALOADER.get("FEATURE_CACHE")
        views = int(node.VIEWS) if node is not None else 0
        self._cached_train = None
        if views <= 0 or not self.get_model_names() or self.eval_only:
            return
        seed = int(self.cfg.SEED)
        train_x = self.dm.dataset.train_x

        def encode() -> torch.Tensor:
            return fc.encode_views(self.cfg, train_x, self.dm.tfm_train,
                                   lambda x: self.encode_images(x, normalize=False), views, seed,
                                   store=self.feature_store("train", seed))

        if self.shared.get(fc.STORE_ONLY):
            feats = encode()
        elif fc.weights_drawn_anew(self.cfg):
            logger.info("Unseeded random weights: the training views are encoded, not read from or written to "
                        "the feature cache (no file can be known to be this model's)")
            feats = encode()
        else:
            meta = fc.cache_meta(self.cfg, self.dm.dataset, self.precision.name, views,
                                 transform=self.dm.tfm_train, device=self.device.type)
            # "~" as the other cache keys take it (a literal "~" folder was made in the current directory)
            directory = osp.expanduser(str(node.DIR).strip()) or osp.join(self.output_dir, "feature_cache")
            path = fc.cache_path(directory, meta)
            feats = fc.load_cached(path, meta)
            if feats is None:
                logger.info("Encoding %d augmented views of %d training images for the feature cache",
                            views, len(train_x))
                feats = encode()
                fc.save_cached(path, meta, feats)
                logger.info("Feature cache written to %s", path)
            else:
                logger.info("Feature cache loaded from %s", path)
        self._cached_train = fc.CachedFeatureDataset(feats, train_x, seed)
        self.train_loader_x = fc.cached_train_loader(self.cfg, self._cached_train)

    def before_epoch(self) -> None:
        super().before_epoch()
        if getattr(self, "_cached_train", None) is not None:
            self._cached_train.set_epoch(self.epoch)

    def eval_loader(self, split: str) -> Iterable[Dict[str, Any]]:
        """The evaluation batches over frozen features, encoded once per split, backbone and transform.

        Reuse, in order: this trainer's batches; the process-wide ``shared`` dict (the OOP->IP
        sibling, several runs in one process); the on-disk cache of ``TEST.FEATURE_CACHE_DIR``, keyed
        by content (:func:`trainers.feature_cache.eval_meta`). Otherwise the images are encoded.
        """
        loader = super().eval_loader(split)
        if not bool(self.cfg.TEST.get("CACHE_FEATURES", True)):
            return super().eval_loader(split)
        cache = self.__dict__.setdefault("_eval_cache", {})
        if split in cache:
            return cache[split]
        wrapped = getattr(loader, "dataset", None)
        items = list(getattr(wrapped, "data_source", None) or ())
        transform = getattr(wrapped, "transform", None)
        if not items:
            return loader
        meta = fc.eval_meta(self.cfg, items, transform, self.precision.name, self.device.type, split)
        key = ("eval_features", json_digest(meta))
        feats = self.shared.get(key)
        directory = fc.eval_cache_dir(self.cfg)
        path = fc.cache_path(directory, meta) if directory else None
        if feats is None and path is not None:
            feats = fc.load_cached(path, meta)
            if feats is not None:
                logger.info("Evaluation features of the %s split loaded from %s", split, path)
        if feats is None:
            with torch.inference_mode():
                feats = fc.encode_items(self.cfg, items, transform,
                                        lambda x: self.encode_images(x, normalize=False), f"encode {split}",
                                        disable=self.progress_disabled())
            if path is not None:
                try:
                    fc.save_cached(path, meta, feats)
                    logger.info("Evaluation features of the %s split written to %s", split, path)
                except OSError as e:
                    logger.warning("Could not write the evaluation feature cache %s (%s)", path, e)
        self.shared[key] = feats
        cache[split] = fc.feature_batches(feats, items, int(self.cfg.DATALOADER.TEST.BATCH_SIZE))
        return cache[split]

    def drop_eval_cache(self) -> None:
        """Forget the evaluation features held in memory (this trainer's and ``shared``'s), so the
        next ``test()`` reads them from disk or encodes them (benchmarks of a first evaluation)."""
        self.__dict__.pop("_eval_cache", None)
        for key in [k for k in self.shared if isinstance(k, tuple) and k[:1] == ("eval_features",)]:
            del self.shared[key]

    def parse_batch_test(self, batch: Dict[str, Any]):
        # cached features are kept on the CPU (shared by trainers and runs); moved per batch
        input = batch["feat"] if "feat" in batch else batch["img"]
        return input.to(self.device), batch["label"].to(self.device)

    # ------------------------------------------------------------------ optimisation
    def build_scaler(self) -> Optional[torch.amp.GradScaler]:
        if self.precision.use_scaler:
            return torch.amp.GradScaler(self.device.type)
        return None

    def optimize(self, loss: torch.Tensor, names: Optional[List[str]] = None) -> None:
        """Backward + step for ``loss``, through the GradScaler under AMP."""
        scaler = getattr(self, "scaler", None)
        if scaler is None:
            self.model_backward_and_update(loss, names)
            return
        self.detect_anomaly(loss)
        self.model_zero_grad(names)
        scaler.scale(loss).backward()
        for name in self.get_model_names(names):
            if self._optims.get(name) is not None:
                scaler.step(self._optims[name])
        scaler.update()

    def maybe_update_lr(self) -> None:
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()

    def parse_batch_train(self, batch: Dict[str, Any]):
        images = batch["img"].to(self.device)
        labels = batch["label"].to(self.device)
        return images, labels

