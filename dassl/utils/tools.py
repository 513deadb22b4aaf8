"""Small file-system and seeding helpers shared by the engine, datasets and scripts."""
from __future__ import annotations

import errno
import json
import logging
import os
import os.path as osp
import random
import tempfile
import warnings
from typing import Any, List

import numpy as np
import torch
from PIL import Image

__all__ = [
    "mkdir_if_missing",
    "check_isfile",
    "read_image",
    "shown_path",
    "UnreadableImageError",
    "ImageNotFoundError",
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


def shown_path(path: Any) -> str:
    """``path`` for a one-line message: as is when printable, else escaped (a newline in a file name
    must not start a second, forged ``error:`` line)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    return text if text.isprintable() else ascii(text)


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; the message names the path and the reason.

    An ``OSError`` so DataLoader workers can re-raise it with its message (one-argument init).
    """


class ImageNotFoundError(UnreadableImageError, FileNotFoundError):
    """The image path does not exist (or is a dangling symlink)."""


def read_image(path: str) -> Image.Image:
    """Open and fully decode an image as RGB, or raise an :class:`UnreadableImageError` naming it.

    Empty, truncated or non-image files, folders and dangling symlinks all end in that one error
    type (PIL raises half a dozen). Images above PIL's ``Image.MAX_IMAGE_PIXELS`` are refused before
    decoding (PIL itself only warns below twice that limit): a decompression bomb must not take the
    run's memory.
    """
    if not osp.exists(path):
        raise ImageNotFoundError(f'Image not found: "{shown_path(path)}"')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                limit = Image.MAX_IMAGE_PIXELS
                width, height = img.size
                if limit is not None and width * height > limit:
                    raise UnreadableImageError(
                        f'Image "{shown_path(path)}" has {width}x{height} pixels, more than PIL.Image.MAX_IMAGE_PIXELS '
                        f"({limit}): refused as a possible decompression bomb"
                    )
                return img.convert("RGB")
    except UnreadableImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImageError(
            f'Image "{shown_path(path)}" refused as a possible decompression bomb (more than PIL.Image.MAX_IMAGE_PIXELS = '
            f"{Image.MAX_IMAGE_PIXELS} pixels): {e}"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = " ".join((str(e) or type(e).__name__).split())
        raise UnreadableImageError(f'Cannot decode image "{shown_path(path)}": {reason}') from None


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
