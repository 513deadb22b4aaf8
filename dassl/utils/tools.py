"""Small file-system and seeding helpers shared by the engine, datasets and scripts."""
from __future__ import annotations

import errno
import json
import logging
import os
import os.path as osp
import random
import tempfile
from typing import Any, List

import numpy as np
import torch
from PIL import Image

__all__ = [
    "mkdir_if_missing",
    "check_isfile",
    "read_image",
    "read_json",
    "write_json",
    "atomic_write_text",
    "listdir_nohidden",
    "set_random_seed",
    "tolist_if_not",
]

logger = logging.getLogger(__name__)


def mkdir_if_missing(dirname: str) -> None:
    """Create ``dirname`` (and parents); safe when several processes race to create it."""
    if not dirname:
        return
    try:
        os.makedirs(dirname, exist_ok=True)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise


def check_isfile(fpath: str) -> bool:
    """True if ``fpath`` is a file; logs a warning otherwise so callers can fall back quietly."""
    isfile = osp.isfile(fpath)
    if not isfile:
        logger.warning('No file found at "%s"', fpath)
    return isfile


def read_image(path: str) -> Image.Image:
    """Open an image as RGB; a missing file raises an error that names it."""
    if not osp.exists(path):
        raise FileNotFoundError(f'Image not found: "{path}"')
    with Image.open(path) as img:
        return img.convert("RGB")


def read_json(fpath: str) -> Any:
    with open(fpath, encoding="utf-8") as f:
        return json.load(f)


def _atomic_write(fpath: str, write_fn: Any, mode: str = "w") -> None:
    """Write through a temporary sibling file and ``os.replace`` it, so readers (and crashes)
    never see a half-written file."""
    dirname = osp.dirname(osp.abspath(fpath))
    mkdir_if_missing(dirname)
    fd, tmp = tempfile.mkstemp(prefix=f".{osp.basename(fpath)}.", suffix=".tmp", dir=dirname)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(fpath: str, text: str) -> None:
    _atomic_write(fpath, lambda f: f.write(text))


def write_json(obj: Any, fpath: str) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    _atomic_write(fpath, lambda f: json.dump(obj, f, indent=4, separators=(",", ": ")))


def listdir_nohidden(path: str, sort: bool = False) -> List[str]:
    """Directory entries that do not start with a dot (``.DS_Store``, editor swap files, ...)."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def tolist_if_not(x: Any) -> List[Any]:
    if not isinstance(x, list):
        x = [x]
    return x
