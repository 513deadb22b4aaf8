"""Small file-system and seeding helpers shared by the engine, datasets and scripts."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import os.path as osp
import random
import re
import secrets
import stat
import time
import warnings
import zlib
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import yaml
from PIL import Image

__all__ = [
    "mkdir_if_missing",
    "check_isfile",
    "read_image",
    "READ_IMAGE_VERSION",
    "shown_path",
    "UnreadableImageError",
    "ImageNotFoundError",
    "read_json",
    "write_json",
    "atomic_write",
    "atomic_write_text",
    "WriteError",
    "write_error",
    "clean_temp_files",
    "check_writable_dir",
    "hold_output_dir",
    "derive_seed",
    "listdir_nohidden",
    "set_random_seed",
    "tolist_if_not",
]

logger = logging.getLogger(__name__)


def absolute_path(path: Union[str, os.PathLike[str]]) -> str:
    """``path`` made absolute as the kernel reads it. ``osp.abspath`` folds ``..`` lexically, so
    ``lnk/../x`` (``lnk`` a symbolic link) became ``./x`` while ``mkdir``/``open`` use the link's
    target's parent: the log, the temporary files and the failed-start clean-up went to another folder
    than the results. A path with a ``..`` is resolved (``osp.realpath``); any other keeps its links."""
    path = os.fspath(path)
    if ".." in path.replace("\\", "/").split("/"):
        return osp.realpath(path)
    return osp.abspath(path)


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


#: Largest accepted ratio of an image's long side to its short side. Training resizes the *shorter*
#: side to ``INPUT.SIZE`` (64 or 224), which multiplies the pixel count by this ratio: a 2,000,000 x 1
#: PNG (a few KB, far below ``MAX_IMAGE_PIXELS``) became 128M x 64 pixels in ``PIL.Image.resize``
#: (a MemoryError traceback, after training). No photograph is that shape: panoramas and web banners
#: stay below about 20:1, and at 100:1 the resized 224-pixel image still fits in 15 MB.
MAX_ASPECT_RATIO = 100

#: What :func:`read_image`'s pixels are, for every store of pixels or of features computed from them
#: (the trainers' feature caches, lpclip's feature files): bump it when the decoding of some file
#: changes. 2: 16-bit and float grayscale images are scaled to 8 bits (PIL clipped them to white or
#: black), an ``I`` image of 8-bit levels is read as it is.
READ_IMAGE_VERSION = 2

#: PIL modes of single-channel 16-bit images. ``convert("RGB")`` clips them at 255 (almost every
#: pixel of a 16-bit photo reads as white), so :func:`read_image` scales them to 8 bits itself.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def _check_shape(path: str, width: int, height: int) -> None:
    """Refuse a size that would blow up memory: above ``MAX_IMAGE_PIXELS`` (a decompression bomb),
    or longer than :data:`MAX_ASPECT_RATIO` times its short side (the resize to the training size)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise UnreadableImageError(
            f'Image "{shown_path(path)}" has {width}x{height} pixels, more than PIL.Image.MAX_IMAGE_PIXELS '
            f"({limit}): refused as a possible decompression bomb"
        )
    short, long = min(width, height), max(width, height)
    if short < 1 or long > MAX_ASPECT_RATIO * short:
        raise UnreadableImageError(
            f'Image "{shown_path(path)}" is {width}x{height} pixels, an aspect ratio above {MAX_ASPECT_RATIO}:1 '
            f"(dassl.utils.tools.MAX_ASPECT_RATIO): resizing its short side to the training size would multiply "
            "its pixels by that ratio; no photograph is that shape, so it is refused (crop or remove the file)"
        )


def _to_8_bit(path: str, img: Image.Image) -> Image.Image:
    """A 16-bit ('I;16*', or 'I' within 0..65535) or float ('F' within [0, 1]) grayscale image as an
    8-bit 'L' image with the same brightness: value / 257 or value x 255, rounded half up. An 'I' image
    whose levels all lie within 0..255 holds 8-bit levels and is read as it is.

    PIL's own conversion clips these modes to 0..255 instead of scaling (a 16-bit photo reads as
    white, a [0, 1] float one as black). An 'I' or 'F' image with any other range (negative values,
    32-bit counts, NaN, floats above 1) has no known meaning as brightness, so it is refused rather
    than guessed at.
    """
    pixels = np.asarray(img)
    if img.mode in SIXTEEN_BIT_MODES:
        levels = pixels.astype(np.uint32)  # native byte order; room for + 128
    else:
        finite = bool(np.isfinite(pixels).all()) if img.mode == "F" else True
        low, high = (pixels.min(), pixels.max()) if finite else (float("nan"), float("nan"))
        if img.mode == "I" and 0 <= low and high <= 255:
            # 8-bit levels in a 32-bit container (an int TIFF): read as they are, as PIL did; as 16-bit
            # levels they would be a photo darker than 0.4 %, far the less likely reading
            return Image.fromarray(pixels.astype(np.uint8))
        if img.mode == "I" and 0 <= low and high <= 65535:
            levels = pixels.astype(np.uint32)
        elif img.mode == "F" and finite and 0.0 <= low and high <= 1.0:
            # float64: x * 255 of a float32 x is exact there, so x = 0.5 gives 128 as computed by hand
            scaled = np.floor(pixels.astype(np.float64) * 255.0 + 0.5)
            return Image.fromarray(scaled.astype(np.uint8))
        else:
            shown = "NaN or infinite values" if not finite else f"values {low}..{high}"
            expected = "16-bit values 0..65535" if img.mode == "I" else "values in [0, 1]"
            raise UnreadableImageError(
                f'Image "{shown_path(path)}" has PIL mode {img.mode!r} with {shown}: the pixel range is unknown '
                f"(expected {expected}), so it cannot be read as brightness; convert it to an 8-bit image"
            )
    # round(v / 257) in integers: 257 is odd, so v / 257 never ends in exactly .5
    return Image.fromarray(((levels + 128) // 257).astype(np.uint8))


def read_image(path: str) -> Image.Image:
    """Open and fully decode an image as RGB, or raise an :class:`UnreadableImageError` naming it.

    Empty, truncated or non-image files, folders and dangling symlinks all end in that one error
    type (PIL raises half a dozen). Images above PIL's ``Image.MAX_IMAGE_PIXELS`` are refused before
    decoding (PIL itself only warns below twice that limit): a decompression bomb must not take the
    run's memory; so are images more than :data:`MAX_ASPECT_RATIO` times longer than wide (or the
    reverse), which the resize to the training size would blow up. 16-bit and float grayscale images
    are scaled to 8 bits (see :func:`_to_8_bit`) instead of PIL's clipping to white or black; 8-bit
    images are converted by PIL exactly as before.
    """
    if not osp.exists(path):
        raise ImageNotFoundError(f'Image not found: "{shown_path(path)}"')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                _check_shape(path, width, height)
                if img.mode in SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
                    return _to_8_bit(path, img).convert("RGB")
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader (no arbitrary objects) that refuses a key given twice in one mapping."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    first: Dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            earlier = first.setdefault(key, key_node)
        except TypeError:  # an unhashable key: construct_mapping names it
            continue
        if earlier is not key_node:  # by node, not by line: {done: a, done: b} holds both on one line
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (first on line {earlier.start_mark.line + 1}); keep one",
                key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(stream: Union[str, IO]) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping (a ``yaml.YAMLError`` naming it
    and both lines). PyYAML keeps the last one silently: a second ``OPTIM:`` section at the end of a
    config dropped every key of the first (its optimizer, schedule and warm-up fell back to the
    defaults, exit 0), and a launch entry's second ``done:`` replaced the first marker."""
    return yaml.load(stream, Loader=_UniqueKeyLoader)


def read_json(fpath: str) -> Any:
    with open(fpath, encoding="utf-8") as f:
        return json.load(f)


def read_json_object(fpath: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The JSON object in ``fpath``, or None when it cannot be read, is not JSON or not an object: what
    the "is this file an earlier output of ours?" checks ask before they let a rerun replace it."""
    try:
        with open(fpath, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


class WriteError(OSError):
    """A file of the run could not be written (read-only or full disk, a path component that is a
    file, ...). The message names the directory and the problem, so the CLI reports it in one line
    (without OSError's "[Errno N]" prefix)."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


def _write_problem(err: OSError) -> str:
    return {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a component of the path is a file, not a directory",
        errno.EEXIST: "a file of that name is in the way",
        errno.EISDIR: "a directory of that name is in the way",
    }.get(err.errno, err.strerror or str(err))


def write_error(path: str, err: OSError, what: str = "write") -> WriteError:
    """A :class:`WriteError` for ``err`` that names ``path``'s directory and the problem."""
    directory = osp.dirname(absolute_path(path))
    return WriteError(err.errno, f'cannot {what} "{path}" in directory "{directory}": {_write_problem(err)}')


#: Temporary siblings written by :func:`atomic_write`: ``.<target>.<pid>-<8 hex>.tmp``.
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
#: Names that earlier versions of this code used (``tempfile.mkstemp``): removed when older than a day.
_LEGACY_TEMP_RE = re.compile(r"^\.(?:.+\.[a-z0-9_]{8}\.tmp|tmp-[a-z0-9_]{8}\.json)$")
_LEGACY_TEMP_AGE_S = 24 * 3600


def _temp_path(fpath: str) -> str:
    dirname, base = osp.split(absolute_path(fpath))
    return osp.join(dirname, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _fsync_dir(dirname: str) -> None:
    """Make the rename durable (best effort: some file systems cannot open a directory)."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(fpath: str, write_fn: Callable[[IO], Any], mode: str = "w") -> None:
    """Write ``fpath`` through a hidden temporary sibling that is fsync'ed and then renamed over it.

    The project's one atomic writer (results, configs, checkpoints, feature and few-shot caches):
    readers and crashes never see a half-written file, and a failed write leaves the previous file
    untouched. The temporary file is created with mode 0666 filtered by the process umask (the
    ``mkstemp`` used before gave 0600, so a shared lab directory became unreadable to others). Its
    name ``.<target>.<pid>-<hex>.tmp`` lets :func:`clean_temp_files` recognise what a killed write
    left behind. An ``OSError`` becomes a :class:`WriteError` naming the directory.
    """
    dirname = osp.dirname(absolute_path(fpath))
    tmp = _temp_path(fpath)
    try:
        mkdir_if_missing(dirname)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise write_error(fpath, e) from e
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(fpath, e) from e
        raise
    _fsync_dir(dirname)


def atomic_write_text(fpath: str, text: str) -> None:
    atomic_write(fpath, lambda f: f.write(text))


def write_json(obj: Any, fpath: str, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON, atomically (default: indented as Dassl does)."""
    kwargs: Dict[str, Any] = {"indent": 4, "separators": (",", ": ")}
    kwargs.update(dump_kwargs)
    atomic_write(fpath, lambda f: json.dump(obj, f, **kwargs))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def hold_output_dir(directory: str) -> Iterator[None]:
    """Hold the existing run folder ``directory`` for the block: an exclusive advisory lock (``flock``)
    on the directory itself, so no lock file is written and a killed process leaves no stale lock.

    A second process that starts a run in the same folder meanwhile -- two grids, or two launcher
    lines, writing one ``--out`` -- gets a :class:`WriteError` (one line). Before, both trained the
    folder, both printed "done", and the later results.json silently replaced the earlier one. A file
    system that cannot lock a directory (some network mounts) leaves the run unlocked, as before.
    """
    fd: Optional[int] = None
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriteError(errno.EBUSY, f'"{directory}" is in use: another process is running there now '
                                 "(a run or grid writing the same folder); wait for it to end, or write "
                                 "elsewhere") from None
            except OSError:
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)


def check_not_in_use(directory: str) -> None:
    """Raise :func:`hold_output_dir`'s "in use" :class:`WriteError` now, when another process holds the
    existing folder ``directory``: checked before the folder's content is judged, so a folder a live run
    is writing is not called "a run of another configuration" with the advice to ``--overwrite`` it."""
    if osp.isdir(directory):
        with hold_output_dir(directory):
            pass


def clean_temp_files(directory: str, recursive: bool = True) -> List[str]:
    """Remove the temporary files that killed :func:`atomic_write` calls left in ``directory``.

    Only names of our own pattern are touched: ``.<target>.<pid>-<hex>.tmp`` whose writer process is
    gone, and the ``mkstemp`` names of earlier versions once they are a day old. Returns the paths
    removed (logged). Anything else, hidden or not, is never deleted.
    """
    removed: List[str] = []
    if not directory or not osp.isdir(directory):
        return removed
    walker = os.walk(directory) if recursive else [(directory, [], os.listdir(directory))]
    now = time.time()
    for dirpath, _, files in walker:
        for name in files:
            path = osp.join(dirpath, name)
            m = _TEMP_RE.match(name)
            if m:
                stale = not _pid_alive(int(m.group("pid")))
            elif _LEGACY_TEMP_RE.match(name):
                try:
                    stale = now - os.lstat(path).st_mtime > _LEGACY_TEMP_AGE_S
                except OSError:
                    stale = False
            else:
                continue
            if stale and osp.isfile(path) and not osp.islink(path):
                try:
                    os.remove(path)
                except OSError as e:
                    logger.warning("Could not remove the stale temporary file %s (%s)", path, e)
                    continue
                removed.append(path)
    if removed:
        logger.info("Removed %d temporary file(s) left by interrupted writes: %s", len(removed), removed)
    return removed


def missing_dirs(directory: str) -> List[str]:
    """Every folder that creating ``directory`` adds, outermost first, as absolute paths ([] when it
    exists). The path is walked as written, as ``os.makedirs`` does: ``x/../y`` creates ``x`` too.
    Taken before a run creates its output folder, for :func:`remove_failed_start`."""
    parts = [p for p in directory.split(os.sep) if p]
    current = os.sep if osp.isabs(directory) else ""
    missing: List[str] = []
    for part in parts:
        current = osp.join(current, part) if current else part
        if part not in (".", "..") and not osp.lexists(current):
            missing.append(absolute_path(current))
    return missing


class FormerFile(NamedTuple):
    """A file as it was before a run wrote over it (:func:`former_file`), to give it back."""

    data: bytes
    mode: int
    #: the target when the path was a symbolic link (the run's atomic write replaced the link itself)
    link: Optional[str] = None


def former_file(path: str) -> Optional[FormerFile]:
    """``path``'s bytes, permission bits and link target before a run writes it (None: no file there)."""
    if not osp.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
        return FormerFile(data, stat.S_IMODE(os.stat(path).st_mode), os.readlink(path) if osp.islink(path) else None)
    except OSError:
        return None


def _give_back(path: str, former: FormerFile) -> None:
    """Put ``former`` back at ``path``: the link as it was (its target was never written), or the bytes
    with their permission bits."""
    if former.link is not None:
        if not osp.islink(path) or os.readlink(path) != former.link:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            os.symlink(former.link, path)
        return
    atomic_write(path, lambda f: f.write(former.data), mode="wb")
    os.chmod(path, former.mode)


def remove_failed_start(output_dir: str, created: Sequence[str], written: Sequence[str],
                        previous: Optional[Mapping[str, FormerFile]] = None) -> bool:
    """Undo what a run that stopped before it produced anything wrote. ``created`` is what
    :func:`missing_dirs` said creating ``output_dir`` would add; ``written`` the files the start wrote;
    ``previous`` what those it replaced were (:func:`former_file`: a finished run's ``config.yaml``,
    rewritten by a start that then failed), which is given back: bytes, permission bits, a symbolic link.

    When the run created ``output_dir`` and it holds nothing but the regular files in ``written`` (and
    empty folders), those go, and so does a file of ``written`` beside it (a log named after an
    ``--output-dir`` ending in .txt). Otherwise (the folder existed, or holds something else: a
    checkpoint, another process's file, a link) only ``written`` is undone: each replaced file gets its
    bytes back and each new regular file goes. Then each other folder in ``created`` goes if it is
    empty -- ``rmdir`` never takes what another run put there. Returns whether ``output_dir`` was removed."""
    previous = {absolute_path(k): v for k, v in (previous or {}).items()}
    out = absolute_path(output_dir)
    removed = (out in created and not previous and osp.isdir(out) and not osp.islink(out)
               and _remove_own_tree(out, written))
    for path in written:
        if not path or (removed and not osp.lexists(path)):
            continue
        if absolute_path(path) in previous:
            _give_back(path, previous[absolute_path(path)])
        elif osp.isfile(path) and not osp.islink(path):
            os.remove(path)
    for d in reversed(created):
        if d != out and osp.isdir(d) and not osp.islink(d):
            with contextlib.suppress(OSError):
                os.rmdir(d)
    return removed


def _remove_own_tree(out: str, written: Sequence[str]) -> bool:
    """Remove ``out`` when it holds only regular files of ``written`` and folders; else change nothing."""
    ours = {absolute_path(p) for p in written if p}
    files, dirs = [], []
    for root, subdirs, names in os.walk(out):
        dirs.append(root)
        for name in subdirs + names:
            path = osp.join(root, name)
            if osp.islink(path) or (name in names and (path not in ours or not osp.isfile(path))):
                return False
            if name in names:
                files.append(path)
    try:
        for path in files:
            os.remove(path)
        for d in reversed(dirs):  # children first
            os.rmdir(d)
    except OSError:  # something appeared meanwhile: it stays, and so does its folder
        return False
    return True


def _not_a_directory(path: str) -> str:
    """What ``path`` (which exists as an entry but is no directory) is, for an error line: a link to a
    file was called "a dangling symbolic link"."""
    if osp.islink(path):
        return "a symbolic link to a file, not a directory" if osp.exists(path) else "a dangling symbolic link"
    return "a file, not a directory"


def _check_creatable(directory: str, what: str) -> None:
    """:func:`check_writable_dir` without creating anything: the nearest existing ancestor of a missing
    ``directory`` must be a directory this process may create entries in."""
    path = absolute_path(directory)
    while not osp.lexists(path):
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    if not osp.isdir(path):
        raise WriteError(errno.ENOTDIR, f'cannot create the {what} "{directory}": "{path}" is {_not_a_directory(path)}')
    if not os.access(path, os.W_OK | os.X_OK):
        err = OSError(errno.EROFS if _read_only(path) else errno.EACCES, "")
        raise WriteError(err.errno, f'cannot create the {what} "{directory}" in "{path}": {_write_problem(err)}')


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_writable_dir(directory: str, what: str = "output directory", create: bool = True) -> None:
    """Create ``directory`` and prove that a file can be written there, or raise a :class:`WriteError`
    naming it (read-only, permission denied, a file in the way, full). Called before any work starts;
    the probe is a temporary file of :func:`atomic_write`'s pattern, removed at once. With
    ``create=False`` a missing ``directory`` is left uncreated (a command that may still fail on a
    user error before writing leaves no empty folders behind); its nearest existing ancestor is checked."""
    if not directory:
        return
    if not create and not osp.isdir(directory):
        _check_creatable(directory, what)
        return
    try:
        mkdir_if_missing(directory)
    except OSError as e:
        raise WriteError(e.errno, f'cannot create the {what} "{directory}": {_write_problem(e)}') from e
    if not osp.isdir(directory):
        raise WriteError(errno.ENOTDIR, f'the {what} "{directory}" is {_not_a_directory(directory)}')
    probe = _temp_path(osp.join(directory, "write-probe"))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"ok\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise WriteError(e.errno, f'cannot write into the {what} "{directory}": {_write_problem(e)}') from e
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)


def check_outside(path: str, folders: Sequence[str], what: str = "--output-dir") -> None:
    """Raise a :class:`WriteError` when ``path`` is one of ``folders`` or lies inside one (links resolved):
    a run's folder among a dataset's images and split files (``datasets.check`` still passed) mixes
    outputs into the data every later run reads."""
    real = osp.realpath(absolute_path(path))
    for folder in folders:
        base = osp.realpath(folder)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            raise WriteError(errno.EINVAL, f'{what} "{path}" lies inside the dataset folder "{folder}": a run would '
                                           "write among its images; use a folder outside the dataset")


def derive_seed(seed: int, *parts: Union[int, str]) -> int:
    """A 32-bit seed derived from ``seed`` and ``parts`` (epoch, view, purpose, grid cell, ...).

    The project's one rule for independent random streams: ``numpy.random.SeedSequence([seed, *parts])``.
    Integer parts give exactly the seeds the engine, the feature cache and FSNL used before (e.g.
    ``derive_seed(seed, epoch)``), so existing runs stay bit-identical; a string part (a purpose
    such as ``"cache-view"``) enters as its CRC-32. ``seed`` and integer parts must be >= 0.
    """
    entropy = [int(seed)] + [zlib.crc32(p.encode("utf-8")) if isinstance(p, str) else int(p) for p in parts]
    if any(v < 0 for v in entropy):
        raise ValueError(f"derive_seed needs non-negative values, got {entropy}")
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


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
