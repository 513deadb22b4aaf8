"""Content identity of the inputs a run depends on: files, JSON-able data and the code itself.

A result, a cache entry or a skip decision is only as trustworthy as the key it is filed under, and
"the same path" is not "the same content": weights get rewritten in place and images regenerated
under an unchanged split file. Everything that keys on an input goes through these functions:

* :func:`file_identity` -- size, mtime (ns) and a SHA-256 of the bytes. Hashing a multi-GB weights
  file costs seconds, so the hash is memoised per *file version* ``(real path, size, mtime_ns)``:
  computed once per process and file version, recomputed as soon as the file changes.
* :func:`stat_identity` -- size + mtime only: what a copy (``cp -p``, ``rsync -a``) keeps, for the
  checkpoint lists recorded in evaluation fingerprints.
* :func:`version_identity` -- size, mtime, ctime and inode: one ``stat`` that tells this file version on
  this disk, for cache keys over the thousands of images of a split, where hashing every file would
  cost more than the work the key protects.
* :func:`json_digest` -- a stable digest of plain data (sorted keys, no whitespace).
* :func:`code_version` -- the git commit (and whether the work tree is dirty) plus package versions.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import os.path as osp
import subprocess
from typing import Any, Dict, Iterable, Tuple

from .env import package_versions

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_CHUNK = 1 << 20


def json_digest(obj: Any, length: int = 16) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys, compact), truncated to ``length`` hex digits.

    Non-JSON values (tuples, numpy scalars, paths) go through ``str`` so that every caller gets the
    same digest for the same data.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@functools.lru_cache(maxsize=4096)
def _sha256_of_version(real_path: str, version: Tuple[int, int, int, int]) -> str:
    """The hash of one file version; ``version`` (:func:`version_identity`) is part of the memo key only."""
    h = hashlib.sha256()
    with open(real_path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def stat_identity(path: str) -> Tuple[int, int]:
    """``(size, mtime_ns)`` of ``path`` (symlinks followed)."""
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def version_identity(path: str) -> Tuple[int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode)`` of ``path`` (symlinks followed): changes whenever the file is
    rewritten or another file takes its path. Size and mtime alone missed both when the mtime was kept:
    files swapped by ``rename`` (same size, same mtime after a ``tar x`` / ``rsync -a``) kept their
    cached evaluation features, and the cross-evaluation scored the old images (IP 41.7 instead of
    33.3 on the toy benchmark). A rename or a rewrite sets the ctime, and a new file has its own inode.
    For caches only: a copy of a folder is a new version of every file (recomputed once)."""
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)


def file_identity(path: str, content_hash: bool = True) -> Dict[str, Any]:
    """Identity of one file: ``{"path", "size", "mtime_ns"[, "sha256"]}``.

    ``path`` is the resolved real path. The SHA-256 is memoised per file version, so asking again for
    an unchanged file costs one ``stat``.
    """
    real = osp.realpath(path)
    version = version_identity(real)
    ident: Dict[str, Any] = {"path": real, "size": version[0], "mtime_ns": version[1]}
    if content_hash:
        ident["sha256"] = _sha256_of_version(real, version)
    return ident


def content_identity(path: str) -> Dict[str, Any]:
    """Like :func:`file_identity` but independent of where the file lies and when it was touched:
    ``{"size", "sha256"}``. Use it where a copy of the same bytes must give the same key (a run
    fingerprint); use :func:`file_identity` for a cache that only needs to notice change."""
    ident = file_identity(path)
    return {"size": ident["size"], "sha256": ident["sha256"]}


def files_digest(paths: Iterable[str], length: int = 16) -> str:
    """One digest of many files' path and :func:`version_identity`, in the given order (e.g. a split's
    images). Cheap (one ``stat`` per file) and sensitive to any rewrite or swap of a file."""
    h = hashlib.sha256()
    for p in paths:
        h.update("\t".join(map(str, (p, *version_identity(p)))).encode() + b"\n")
    return h.hexdigest()[:length]


@functools.lru_cache(maxsize=1)
def _git_state() -> Tuple[str, bool]:
    """``(commit, dirty)`` of the checkout this code runs from, or ``("unknown", False)``."""
    try:
        commit = subprocess.run(
            ["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit or "unknown", bool(status)


def code_version() -> Dict[str, Any]:
    """``{"commit", "dirty", "packages": {name: version}}`` of the running code."""
    commit, dirty = _git_state()
    return {"commit": commit, "dirty": dirty, "packages": package_versions()}
