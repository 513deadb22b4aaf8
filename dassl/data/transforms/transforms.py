"""Image transforms named by ``INPUT.TRANSFORMS`` (Dassl's vocabulary).

Train: an initial resize to ``INPUT.SIZE`` unless a crop sets the size → augmentations →
ToTensor → tensor-level ops (cutout, normalize, noise). Test: resize the shorter side to
``max(INPUT.SIZE)`` → centre crop → ToTensor → normalize. ``INPUT.INTERPOLATION`` applies to every
resize/crop (CLIP configs use bicubic).
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

from ...utils.registry import check_availability

__all__ = ["build_transform", "INTERPOLATION_MODES", "AVAI_CHOICES", "Cutout", "GaussianNoise", "InstanceNormalization"]

logger = logging.getLogger(__name__)

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

AVAI_CHOICES = (
    "random_flip",
    "random_resized_crop",
    "normalize",
    "instance_norm",
    "random_crop",
    "random_translation",
    "center_crop",
    "cutout",
    "imagenet_policy",
    "randaugment",
    "colorjitter",
    "randomgrayscale",
    "gaussian_noise",
    "gaussian_blur",
)


class Cutout:
    """Zero ``n_holes`` random ``length``×``length`` squares of a CHW tensor (DeVries & Taylor)."""

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes = n_holes
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        mask = torch.ones((h, w), dtype=img.dtype)
        for _ in range(self.n_holes):
            y = int(torch.randint(h, (1,)))
            x = int(torch.randint(w, (1,)))
            y1, y2 = max(y - self.length // 2, 0), min(y + self.length // 2, h)
            x1, x2 = max(x - self.length // 2, 0), min(x + self.length // 2, w)
            mask[y1:y2, x1:x2] = 0
        return img * mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_holes={self.n_holes}, length={self.length})"


class GaussianNoise:
    """Add N(mean, std²) noise to a tensor image with probability ``p``."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5) -> None:
        self.mean = mean
        self.std = std
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(1)) > self.p:
            return img
        return img + torch.randn_like(img) * self.std + self.mean

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}, p={self.p})"


class InstanceNormalization:
    """Normalise each channel of one image by its own mean and std."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        flat = img.reshape(c, -1)
        mean = flat.mean(dim=1).view(c, 1, 1)
        std = flat.std(dim=1).view(c, 1, 1)
        return (img - mean) / (std + self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _tensor_tail(cfg: Any, choices: Sequence[str], normalize: T.Normalize) -> List[Any]:
    tail: List[Any] = [T.ToTensor()]
    if "cutout" in choices:
        tail.append(Cutout(cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN))
    if "normalize" in choices:
        tail.append(normalize)
    if "gaussian_noise" in choices:
        tail.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        tail.append(InstanceNormalization())
    return tail


def _build_train(cfg: Any, choices: Sequence[str], size: List[int], interp: InterpolationMode,
                 normalize: T.Normalize) -> T.Compose:
    inp = cfg.INPUT
    ops: List[Any] = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        ops.append(T.Resize(size, interpolation=interp))
    if "random_translation" in choices:
        ops.append(T.RandomAffine(degrees=0, translate=(0.125, 0.125), interpolation=interp))
    if "random_crop" in choices:
        ops.append(T.RandomCrop(size, padding=inp.CROP_PADDING))
    if "random_resized_crop" in choices:
        ops.append(T.RandomResizedCrop(size, scale=tuple(inp.RRCROP_SCALE), interpolation=interp))
    if "center_crop" in choices:
        ops.append(T.CenterCrop(size))
    if "random_flip" in choices:
        ops.append(T.RandomHorizontalFlip())
    if "imagenet_policy" in choices:
        ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=interp))
    if "randaugment" in choices:
        ops.append(T.RandAugment(num_ops=inp.RANDAUGMENT_N, magnitude=inp.RANDAUGMENT_M, interpolation=interp))
    if "colorjitter" in choices:
        ops.append(T.ColorJitter(brightness=inp.COLORJITTER_B, contrast=inp.COLORJITTER_C,
                                 saturation=inp.COLORJITTER_S, hue=inp.COLORJITTER_H))
    if "randomgrayscale" in choices:
        ops.append(T.RandomGrayscale(p=inp.RGS_P))
    if "gaussian_blur" in choices:
        kernel = inp.GB_K if inp.GB_K % 2 == 1 else inp.GB_K + 1
        ops.append(T.RandomApply([T.GaussianBlur(kernel)], p=inp.GB_P))
    return T.Compose(ops + _tensor_tail(cfg, choices, normalize))


def _build_test(cfg: Any, choices: Sequence[str], size: List[int], interp: InterpolationMode,
                normalize: T.Normalize) -> T.Compose:
    ops: List[Any] = [T.Resize(max(size), interpolation=interp), T.CenterCrop(size)]
    return T.Compose(ops + _tensor_tail(cfg, choices, normalize))


def build_transform(cfg: Any, is_train: bool = True, choices: Optional[Sequence[str]] = None) -> T.Compose:
    """Compose the train or test transform from ``choices`` (default ``cfg.INPUT.TRANSFORMS``)."""
    if cfg.INPUT.NO_TRANSFORM:
        logger.info("Note: no transform is applied (INPUT.NO_TRANSFORM)")
        return T.Compose([T.ToTensor()])
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    for choice in choices:
        check_availability(choice, AVAI_CHOICES)
    check_availability(cfg.INPUT.INTERPOLATION, list(INTERPOLATION_MODES))
    size = list(cfg.INPUT.SIZE)
    if len(size) != 2:
        raise ValueError(f"INPUT.SIZE must be (height, width), got {cfg.INPUT.SIZE}")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    normalize = T.Normalize(mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD))
    if is_train:
        tfm = _build_train(cfg, choices, size, interp, normalize)
    else:
        tfm = _build_test(cfg, choices, size, interp, normalize)
    if cfg.VERBOSE:
        logger.info("Building transform_%s: %s", "train" if is_train else "test", tfm)
    return tfm
