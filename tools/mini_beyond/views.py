"""Batched augmentation and the benchmark views: what build, eval and pretrain draw images from."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .common import BACKGROUND_COLOURS, CLIP_MEAN, CLIP_STD, DOMAINS, SPLITS, Assets

# --------------------------------------------------------------------------------------------
# Batched augmentation (premultiplied RGBA tensors -> RGB views on backgrounds)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugStrength:
    """Ranges of the random view parameters (all sampled per image, applied to the whole batch)."""

    zoom: Tuple[float, float] = (0.65, 1.35)  # >1 enlarges the emoji (crops its border)
    aspect: float = 0.15  # relative x/y zoom difference
    translate: float = 0.18  # fraction of the half-width
    rotate_deg: float = 20.0
    flip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    blur_p: float = 0.3
    noise_max: float = 0.03
    gradient_p: float = 0.3  # otherwise a solid background


PRETRAIN_AUG = AugStrength()
BENCHMARK_AUG = AugStrength(zoom=(0.7, 1.1), aspect=0.08, translate=0.1, rotate_deg=12.0, flip_p=0.5,
                            brightness=0.15, contrast=0.15, saturation=0.15, blur_p=0.15, noise_max=0.015,
                            gradient_p=0.0)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    radius = 2
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment(
    rgba: torch.Tensor,
    gen: torch.Generator,
    strength: AugStrength = PRETRAIN_AUG,
    background: Optional[torch.Tensor] = None,
    out_size: Optional[int] = None,
) -> torch.Tensor:
    """Random views of a batch of premultiplied RGBA images [B,4,H,W] in [0,1] -> RGB [B,3,S,S].

    Crop/zoom, aspect, translation, rotation and flip are one affine resampling (premultiplied, so
    bilinear filtering at the glyph edge is exact and the outside is transparent); the view is then
    composited on a background (``background`` [B,3] colours, else random ones, sometimes a
    gradient), colour-jittered, sometimes blurred and lightly noised. All randomness comes from
    ``gen`` so a seeded generator reproduces the views exactly.
    """
    b = rgba.shape[0]
    s = out_size or rgba.shape[-1]
    zoom = _uniform(b, *strength.zoom, gen)
    ar = _uniform(b, -strength.aspect, strength.aspect, gen)
    zx, zy = zoom * (1 + ar), zoom * (1 - ar)
    ang = _uniform(b, -strength.rotate_deg, strength.rotate_deg, gen) * math.pi / 180
    flip = torch.where(torch.rand(b, generator=gen) < strength.flip_p, -1.0, 1.0)
    tx = _uniform(b, -strength.translate, strength.translate, gen)
    ty = _uniform(b, -strength.translate, strength.translate, gen)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([
        torch.stack([cos * flip / zx, -sin / zy, tx], dim=1),
        torch.stack([sin * flip / zx, cos / zy, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [b, 4, s, s], align_corners=False)
    view = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb, alpha = view[:, :3], view[:, 3:4]

    if background is None:
        background = torch.rand(b, 3, generator=gen)
    bg = background.view(b, 3, 1, 1).expand(b, 3, s, s)
    if strength.gradient_p > 0:
        other = torch.rand(b, 3, generator=gen).view(b, 3, 1, 1)
        direction = torch.rand(b, generator=gen) * 2 * math.pi
        lin = torch.linspace(-0.5, 0.5, s)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        ramp = (xx[None] * torch.cos(direction).view(b, 1, 1) + yy[None] * torch.sin(direction).view(b, 1, 1)) + 0.5
        use = (torch.rand(b, generator=gen) < strength.gradient_p).float().view(b, 1, 1, 1)
        bg = bg + use * ramp[:, None] * (other - bg)
    x = rgb + (1 - alpha) * bg

    bright = _uniform(b, 1 - strength.brightness, 1 + strength.brightness, gen).view(b, 1, 1, 1)
    contrast = _uniform(b, 1 - strength.contrast, 1 + strength.contrast, gen).view(b, 1, 1, 1)
    sat = _uniform(b, 1 - strength.saturation, 1 + strength.saturation, gen).view(b, 1, 1, 1)
    x = x * bright
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray.mean(dim=(2, 3), keepdim=True) + (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * sat
    blur_w = (torch.rand(b, generator=gen) < strength.blur_p).float() * torch.rand(b, generator=gen)
    sel = blur_w > 0  # blur only the images that use it (an unblurred row would be unchanged)
    if sel.any():
        xs = x[sel]
        x[sel] = xs + blur_w[sel].view(-1, 1, 1, 1) * (_gaussian_blur(xs) - xs)
    noise_sd = _uniform(b, 0.0, strength.noise_max, gen).view(b, 1, 1, 1)
    x = x + noise_sd * torch.randn(x.shape, generator=gen)
    return x.clamp_(0, 1)


def rgba_tensor(rgba: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,4] -> float [N,4,H,W] in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(rgba)).permute(0, 3, 1, 2).float().div_(255)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _stream(seed: int, *keys: int) -> torch.Generator:
    """Independent, reproducible generator per (seed, keys): e.g. (domain, subset, split)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# --------------------------------------------------------------------------------------------
# Benchmark views and builder
# --------------------------------------------------------------------------------------------

SUBSETS = ("OOP", "IP")


def subset_records(assets: Assets, domain: str, subset: str) -> List[Dict[str, object]]:
    return list(assets.split["domains"][domain][subset.lower()])


def render_views(
    assets: Assets, domain: str, subset: str, split: str, per_class: int, seed: int = 0, size: int = 64,
) -> Tuple[np.ndarray, List[int], List[str]]:
    """Benchmark views of one (domain, subset, split): uint8 [C*per_class,S,S,3], labels, colour names.

    Each (domain, subset, split) has its own random stream, so train, val and test views are
    different draws and rebuilding one domain does not change another.
    """
    recs = subset_records(assets, domain, subset)
    if per_class <= 0 or not recs:
        return np.zeros((0, size, size, 3), np.uint8), [], []
    gen = _stream(seed, [d.name for d in DOMAINS].index(domain), SUBSETS.index(subset), SPLITS.index(split))
    labels = [lab for lab in range(len(recs)) for _ in range(per_class)]
    src = rgba_tensor(assets.rgba[[int(recs[lab]["index"]) for lab in labels]])
    colour_idx = torch.randint(len(BACKGROUND_COLOURS), (len(labels),), generator=gen)
    base = torch.tensor([BACKGROUND_COLOURS[i][1] for i in colour_idx.tolist()], dtype=torch.float32) / 255
    jitter = (torch.rand(len(labels), 3, generator=gen) - 0.5) * (24 / 255)
    views = augment(src, gen, BENCHMARK_AUG, background=(base + jitter).clamp(0, 1), out_size=size)
    arr = (views.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return arr, labels, [BACKGROUND_COLOURS[i][0] for i in colour_idx.tolist()]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def benchmark_caption(name: str, colour: str) -> str:
    return f"an emoji of {_article(name)} {name} on {_article(colour)} {colour} background"


def jpeg_bytes(img: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def subset_dirname(domain: str, subset: str, assets: Assets) -> str:
    dom = assets.split["domains"][domain]
    return f"{dom['prefix']}{len(dom[subset.lower()])}_{subset}"

