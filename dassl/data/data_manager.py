"""DataManager (dataset + loaders) and DatasetWrapper (one item dict per image)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset

from ..utils import read_image
from .datasets import build_dataset
from .samplers import build_sampler
from .transforms import build_transform

__all__ = ["DataManager", "DatasetWrapper", "LoaderError", "build_data_loader"]

logger = logging.getLogger(__name__)


class LoaderError(ValueError):
    """A loader the config cannot fill (an empty split, no complete batch for the sampler): a user's
    mistake, reported in one line (it was a traceback)."""


class DatasetWrapper(Dataset):
    """Reads one ``Datum`` and returns ``img, label, domain, impath, caption, index``.

    With ``DATALOADER.K_TRANSFORMS > 1`` (train only) ``img`` is a list of K augmentations; with a
    list of transforms the extra views are stored as ``img2``, ``img3``, ...; ``img0`` (the
    un-augmented image as a tensor) is added when ``DATALOADER.RETURN_IMG0``.
    """

    def __init__(self, cfg: Any, data_source: Sequence[Any], transform: Optional[Any] = None,
                 is_train: bool = False) -> None:
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"DATALOADER.K_TRANSFORMS = {self.k_tfm} needs a transform")
        self._to_tensor = None

    def __len__(self) -> int:
        return len(self.data_source)

    def _apply(self, tfm: Callable, img0: Any) -> Any:
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        item = self.data_source[idx]
        output: Dict[str, Any] = {
            "label": item.label,
            "domain": item.domain,
            "impath": item.impath,
            "caption": getattr(item, "caption", "") or "",
            "index": idx,
        }
        img0 = read_image(item.impath)
        if self.transform is None:
            output["img"] = self._tensor(img0)
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._apply(tfm, img0)
        else:
            output["img"] = self._apply(self.transform, img0)
        if self.return_img0:
            output["img0"] = self._tensor(img0)
        return output

    def _tensor(self, img: Any) -> torch.Tensor:
        if self._to_tensor is None:
            size = list(self.cfg.INPUT.SIZE)
            self._to_tensor = T.Compose([T.Resize(size), T.ToTensor()])
        return self._to_tensor(img)


def build_data_loader(
    cfg: Any,
    sampler_type: str = "SequentialSampler",
    data_source: Optional[Sequence[Any]] = None,
    batch_size: int = 64,
    n_domain: int = 0,
    n_ins: int = 2,
    tfm: Optional[Any] = None,
    is_train: bool = True,
    dataset_wrapper: Optional[Callable[..., Dataset]] = None,
    split: str = "",
) -> DataLoader:
    """A DataLoader over ``data_source``; train loaders drop the last partial batch when at least
    one full batch exists (so a set smaller than the batch still yields one batch)."""
    if not data_source:
        dataset = cfg.DATASET if cfg is not None and "DATASET" in cfg else {}
        where = (f" of {dataset.get('NAME')} ({dataset.get('SUB_CLASSES', '')}) under DATASET.ROOT {dataset.get('ROOT')}"
                 if dataset.get("NAME") else "")
        raise LoaderError(f"The {split or 'requested'} split{where} is empty: cannot build a data loader; its "
                          "split file lists no image for it")
    sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                            n_domain=n_domain, n_ins=n_ins)
    wrapper = dataset_wrapper or DatasetWrapper
    loader = DataLoader(
        wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=bool(torch.cuda.is_available() and cfg.USE_CUDA),
    )
    if len(loader) == 0:
        raise LoaderError(
            f"The {split or 'requested'} loader has no batch ({len(data_source)} items, "
            f"batch size {batch_size}, sampler {sampler_type}); use a smaller batch size, or RandomSampler"
        )
    return loader


class DataManager:
    """Builds the dataset named by ``DATASET.NAME`` and its train/val/test loaders."""

    def __init__(
        self,
        cfg: Any,
        custom_tfm_train: Optional[Any] = None,
        custom_tfm_test: Optional[Any] = None,
        dataset_wrapper: Optional[Callable[..., Dataset]] = None,
    ) -> None:
        dataset = build_dataset(cfg)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            logger.info("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            logger.info("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        dl = cfg.DATALOADER
        train_loader_x = build_data_loader(
            cfg,
            sampler_type=dl.TRAIN_X.SAMPLER,
            data_source=dataset.train_x,
            batch_size=dl.TRAIN_X.BATCH_SIZE,
            n_domain=dl.TRAIN_X.N_DOMAIN,
            n_ins=dl.TRAIN_X.N_INS,
            tfm=tfm_train,
            is_train=True,
            dataset_wrapper=dataset_wrapper,
            split="train_x",
        )

        train_loader_u = None
        if dataset.train_u:
            node = dl.TRAIN_X if dl.TRAIN_U.SAME_AS_X else dl.TRAIN_U
            train_loader_u = build_data_loader(
                cfg,
                sampler_type=node.SAMPLER,
                data_source=dataset.train_u,
                batch_size=node.BATCH_SIZE,
                n_domain=node.N_DOMAIN,
                n_ins=node.N_INS,
                tfm=tfm_train,
                is_train=True,
                dataset_wrapper=dataset_wrapper,
                split="train_u",
            )

        val_loader = None
        if dataset.val:
            val_loader = build_data_loader(
                cfg,
                sampler_type=dl.TEST.SAMPLER,
                data_source=dataset.val,
                batch_size=dl.TEST.BATCH_SIZE,
                tfm=tfm_test,
                is_train=False,
                dataset_wrapper=dataset_wrapper,
                split="val",
            )

        test_loader = build_data_loader(
            cfg,
            sampler_type=dl.TEST.SAMPLER,
            data_source=dataset.test,
            batch_size=dl.TEST.BATCH_SIZE,
            tfm=tfm_test,
            is_train=False,
            dataset_wrapper=dataset_wrapper,
            split="test",
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.train_loader_x = train_loader_x
        self.train_loader_u = train_loader_u
        self.val_loader = val_loader
        self.test_loader = test_loader
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    def summary_rows(self, cfg: Any) -> List[List[str]]:
        rows = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", ", ".join(cfg.DATASET.SOURCE_DOMAINS)])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", ", ".join(cfg.DATASET.TARGET_DOMAINS)])
        sub = cfg.DATASET.get("SUB_CLASSES")
        if sub:
            rows.append(["Subset", str(sub)])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            rows.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        return rows

    def show_dataset_summary(self, cfg: Any) -> None:
        rows = self.summary_rows(cfg)
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        rule = "-" * w0 + "  " + "-" * w1
        lines = [rule] + [f"{a:<{w0}}  {b}" for a, b in rows] + [rule]
        logger.info("\n".join(lines))
