"""OpenAI CLIP's ``clip.clip`` API on open_clip, so CoOp-family trainers run unchanged.

``from clip import clip`` then gives ``clip.load``, ``clip.tokenize``, ``clip.available_models``,
``clip._MODELS``, ``clip._download`` and ``clip.build_model`` with OpenAI's signatures. Models are
:class:`clip.model.CLIP` (OpenAI's attribute layout over open_clip modules); the tokenizer is
open_clip's BPE.

Where the weights come from (:func:`_download`, first hit wins; nothing else is ever read):

1. ``<root>/<file>`` (``root`` defaults to ``~/.cache/clip``, CoOp's and OpenAI's download root),
   accepted only if its SHA-256 equals the digest OpenAI's URL carries;
2. open_clip's ``openai`` weights of the model, from its cache or its hub (offline: only what is
   cached); a ``.safetensors`` file is converted once to ``<root>/<stem>-open_clip-<sha>.pt``;
3. the local file named by the environment variable ``CLIP_WEIGHTS`` (a weight file, or a folder
   holding ``<file>``);
4. repository models (``_MODELS`` entries of ``clip/model_configs/`` whose registered default is
   ``none``, e.g. ``openai-tiny``): a seeded (0) random init written to ``<root>``, named by the
   digest of the model config, so a changed config never reuses stale weights.

A file of 2. or 4. that this module wrote is reused only while it still reads as weights; a truncated
or damaged copy is written again (it ended every run in a ``torch.load`` traceback).

If none applies, :class:`clip.BackboneNotFoundError` says so in one line (``train.py`` prints it as
``error: ...`` and exits 2). The file returned is a JIT archive or a plain state dict, so CoOp's
``torch.jit.load(...)`` with its ``torch.load`` fallback reads it.
"""
from __future__ import annotations

import functools
import logging
import os
import os.path as osp
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import open_clip
import torch
from open_clip.transform import image_transform
from safetensors.torch import load_file

from dassl.results import WEIGHTS_RESOLVERS
from dassl.utils import atomic_torch_save
from dassl.utils.identity import content_identity, file_identity, json_digest

from .loader import BackboneError, BackboneNotFoundError, register_repo_configs
from .model import CLIP, build_model, convert_weights
from .pretrained import DEFAULT_WEIGHTS, MODEL_CONFIG_DIR
from .simple_tokenizer import SimpleTokenizer

__all__ = [
    "BackboneError", "BackboneNotFoundError", "CLIP", "OPEN_CLIP_NAMES", "available_models", "build_model", "load",
    "load_state_dict", "openai_weights_identity", "tokenize",
]

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "~/.cache/clip"
WEIGHTS_ENV = "CLIP_WEIGHTS"
REPO_SCHEME = "repo://"
REPO_SEED = 0

#: OpenAI's model names and open_clip's names of the same architectures (weights tag ``openai``).
OPEN_CLIP_NAMES: Dict[str, str] = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}
#: Repository model configs with OpenAI-format dims (heads = width / 64), served without a download.
REPO_MODELS: Tuple[str, ...] = ("openai-tiny",)

_SHA256_IN_URL = re.compile(r"/([0-9a-f]{64})/")


def _repo_url(stem: str) -> str:
    with open(MODEL_CONFIG_DIR / f"{stem}.json", encoding="utf-8") as f:
        digest = json_digest(f.read(), length=12)
    return f"{REPO_SCHEME}{stem}/{stem}-{digest}.pt"


def _model_urls() -> Dict[str, str]:
    urls = {name: open_clip.get_pretrained_cfg(oc, "openai")["url"] for name, oc in OPEN_CLIP_NAMES.items()}
    urls.update({stem: _repo_url(stem) for stem in REPO_MODELS})
    return urls


#: OpenAI's name → download URL table (read-only; CoOp-family code indexes it with MODEL.BACKBONE.NAME).
_MODELS: Mapping[str, str] = MappingProxyType(_model_urls())


def available_models() -> List[str]:
    """The names :func:`load` and ``_MODELS`` accept."""
    return list(_MODELS)


def _name_of_url(url: str) -> Optional[str]:
    return next((name for name, u in _MODELS.items() if u == url), None)


def _sha_ok(path: str, url: str) -> bool:
    match = _SHA256_IN_URL.search(url)
    return match is None or file_identity(path)["sha256"] == match.group(1)


@functools.lru_cache(maxsize=64)
def _readable_version(real_path: str, size: int, mtime_ns: int) -> bool:
    """Whether one file version reads as weights (``size``/``mtime_ns``: part of the memo key only)."""
    try:
        load_state_dict(real_path)
    except Exception:  # noqa: BLE001  (a damaged zip, pickle or JIT archive fails in many ways)
        return False
    return True


def _readable(path: str) -> bool:
    """Whether ``path`` reads as weights, checked once per file version."""
    ident = file_identity(path, content_hash=False)
    return _readable_version(ident["path"], ident["size"], ident["mtime_ns"])


def _own_file_intact(path: str) -> bool:
    """A weights file this module wrote itself (an open_clip conversion, a repository model's init) is
    reused only while it still reads: a truncated or damaged copy of it (a partial rsync of a home
    folder) ended every OpenAI-CLIP run in a ``torch.load`` traceback. Checked once per file version."""
    if _readable(path):
        return True
    logger.warning("%s cannot be read (truncated or damaged): writing it again", path)
    return False


def _from_open_clip(name: str, root: str) -> Optional[str]:
    """open_clip's ``openai`` weights for ``name`` (its cache, or its hub when online), torch-readable."""
    pcfg = open_clip.get_pretrained_cfg(OPEN_CLIP_NAMES[name], "openai")
    try:
        path = open_clip.pretrained.download_pretrained(pcfg)
    except Exception as e:  # noqa: BLE001  (hub/URL errors differ by backend; each one means "not here")
        logger.info("open_clip has no openai weights for %s here (%s)", name, str(e).splitlines()[0] if str(e) else e)
        return None
    if not path or not osp.isfile(path):
        return None
    if not path.endswith(".safetensors"):
        return path
    target = osp.join(root, f"{Path(path).stem}-open_clip-{file_identity(path)['sha256'][:16]}.pt")
    if not osp.isfile(target) or not _own_file_intact(target):
        os.makedirs(root, exist_ok=True)
        atomic_torch_save(load_file(path), target)
        logger.info("Converted open_clip's %s to %s", path, target)
    return target


def _from_env(filename: str) -> Optional[str]:
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    if not value:
        return None
    path = osp.expanduser(value)
    if osp.isdir(path):
        path = osp.join(path, filename)
    if not osp.isfile(path):
        raise BackboneNotFoundError(f"{WEIGHTS_ENV}={value!r}: no weight file {path!r}")
    return path


def _repo_weights(stem: str, target: str) -> Optional[str]:
    """A seeded random init of the repository model ``stem`` as an OpenAI-format state dict."""
    if DEFAULT_WEIGHTS.get(stem) != "none":
        return None
    register_repo_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REPO_SEED)
        model = open_clip.create_model(stem, pretrained=None, pretrained_image=False, pretrained_text=False)
    convert_weights(model)  # stored as OpenAI releases its weights: fp16 where OpenAI has fp16
    os.makedirs(osp.dirname(target), exist_ok=True)
    atomic_torch_save(model.state_dict(), target)
    logger.info("Wrote the seeded (%d) random init of %s to %s", REPO_SEED, stem, target)
    return target


def _download(url: str, root: Optional[str] = None) -> str:
    """A torch-readable weight file for ``url`` (one of ``_MODELS``' values); see the module docstring."""
    root = osp.expanduser(root or DEFAULT_ROOT)
    filename = osp.basename(url)
    cached = osp.join(root, filename)
    if osp.isfile(cached):
        if not _sha_ok(cached, url):
            logger.warning("%s does not match the SHA-256 in its URL: not used", cached)
        elif not url.startswith(REPO_SCHEME) or _own_file_intact(cached):
            return cached
    name = _name_of_url(url)
    if name in OPEN_CLIP_NAMES:
        found = _from_open_clip(name, root)
        if found:
            return found
    found = _from_env(filename)
    if found:
        return found
    if url.startswith(REPO_SCHEME):
        found = _repo_weights(url[len(REPO_SCHEME):].split("/", 1)[0], cached)
        if found:
            return found
    raise BackboneNotFoundError(
        f"no weights for CLIP {name or url!r}: not in {root}/, not in open_clip's cache (offline?), and "
        f"{WEIGHTS_ENV} is unset; put {filename} in {root}/ or set {WEIGHTS_ENV} to the weight file"
    )


def load_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The state dict of a JIT archive, else of a plain (``weights_only``) torch file."""
    try:
        return torch.jit.load(str(path), map_location="cpu").eval().state_dict()
    except RuntimeError:
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _transform(n_px: int) -> Callable:
    """OpenAI's preprocessing: bicubic resize of the short side, centre crop, CLIP normalisation."""
    return image_transform(n_px, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)


@WEIGHTS_RESOLVERS.register()
def openai_weights_identity(cfg: Any) -> Optional[Dict[str, Any]]:
    """What the OpenAI CLIP of ``cfg`` *is*, for the run fingerprint of a trainer that loads it by name
    (``clip._download(clip._MODELS[MODEL.BACKBONE.NAME])``, as CoOp's files do): the content of the
    file that call resolves -- the same file the trainer loads -- so a replaced ``~/.cache/clip`` file
    or another ``CLIP_WEIGHTS`` is another run. None for a name that is not an OpenAI CLIP name.
    Raises :class:`BackboneNotFoundError` (one line) when no weight file can be found, and
    :class:`BackboneError` when the file found does not read as weights."""
    name = str(cfg.MODEL.BACKBONE.NAME)
    if name not in _MODELS:
        return None
    path = _download(_MODELS[name])
    if not _readable(path):  # asked before any run starts: a user's truncated file was a torch.load traceback
        raise BackboneError(f"the weights of CLIP {name!r}, {path}, cannot be read (truncated, or not a weights "
                            f"file); replace it with intact weights (or point {WEIGHTS_ENV} at them)")
    return {"kind": "file", "model": name, **content_identity(path)}


def load(name: str, device: Union[str, torch.device] = "cuda" if torch.cuda.is_available() else "cpu",
         jit: bool = False, download_root: Optional[str] = None) -> Tuple[CLIP, Callable]:
    """``(model, preprocess)`` for a ``_MODELS`` name or a weight file path (OpenAI's ``clip.load``).

    ``jit=True`` is accepted but gives the eager model (its outputs are the same); on CPU the model
    is fp32, as OpenAI's ``load`` does.
    """
    if name in _MODELS:
        path = _download(_MODELS[name], download_root)
    elif osp.isfile(osp.expanduser(str(name))):
        path = osp.expanduser(str(name))
    else:
        raise BackboneNotFoundError(f"CLIP model {name!r} not found; available models: {available_models()}")
    if jit:
        logger.warning("clip.load(jit=True): this clip package builds eager models; returning one")
    model = build_model(load_state_dict(path)).to(device)
    if torch.device(device).type == "cpu":
        model.float()
    return model, _transform(model.visual.input_resolution)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def tokenize(texts: Union[str, List[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """``[N, context_length]`` int64 ids: SOT, BPE ids, EOT, zero padding (OpenAI's ``clip.tokenize``).

    A text longer than the context raises ``RuntimeError`` unless ``truncate`` (then the last id
    kept is EOT), as in OpenAI's package.
    """
    tok = _tokenizer()
    if isinstance(texts, str):
        texts = [texts]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
        if len(ids) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            ids = ids[:context_length]
            ids[-1] = tok.eot_token_id
        result[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
