"""OpenAI CLIP's ``clip.clip`` API on open_clip, so CoOp-family trainers run unchanged.

``from clip import clip`` then gives ``clip.load``, ``clip.tokenize``, ``clip.available_models``,
``clip._MODELS``, ``clip._download`` and ``clip.build_model`` with OpenAI's signatures. Models are
:class:`clip.model.CLIP` (OpenAI's attribute layout over open_clip modules); the tokenizer is
open_clip's BPE.

Where the weights come from (:func:`_download`, first hit wins; nothing else is ever read):

1. the local file named by the environment variable ``CLIP_WEIGHTS``: the user's explicit choice, so
   it comes first (it lost silently to a cached file). A weight file must hold the architecture of
   the name asked for (a ViT-B/32 file ran as "ViT-B/16"); a folder is asked for ``<file>``, and
   the sources below when it lacks it;
2. ``<root>/<file>`` (``root`` defaults to ``~/.cache/clip``, CoOp's and OpenAI's download root),
   accepted only if its SHA-256 equals the digest OpenAI's URL carries;
3. open_clip's ``openai`` weights of the model, from its cache or its hub (offline: only what is
   cached); a ``.safetensors`` file is converted once to ``<root>/<stem>-open_clip-<sha>.pt``;
4. repository models (``_MODELS`` entries of ``clip/model_configs/`` whose registered default is
   ``none``, e.g. ``openai-tiny``): a seeded (0) random init written to ``<root>``, named by the
   digest of the model config, so a changed config never reuses stale weights.

A file of 3. or 4. that this module wrote is reused only while it still reads as weights; a truncated
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
import warnings
from dataclasses import dataclass
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

from .loader import BackboneError, BackboneNotFoundError, check_logit_scale, register_repo_configs
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


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})


def state_architecture(state: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """The architecture an OpenAI-format state dict holds, read off its tensor shapes as
    :func:`build_model` does, in the terms of open_clip's model configs (``embed_dim``, ``image_size``,
    ``vision_layers``, ``vision_width``, ``patch_size``, ``context_length``, ``vocab_size``,
    ``text_width``, ``text_layers``). Raises ``KeyError`` for a dict that is no OpenAI CLIP."""
    arch: Dict[str, Any] = {
        "embed_dim": int(state["text_projection"].shape[1]),
        "context_length": int(state["positional_embedding"].shape[0]),
        "vocab_size": int(state["token_embedding.weight"].shape[0]),
        "text_width": int(state["ln_final.weight"].shape[0]),
        "text_layers": _count_blocks(state, "transformer.resblocks."),
    }
    if "visual.proj" in state:  # a vision transformer
        patch = int(state["visual.conv1.weight"].shape[-1])
        grid = round((int(state["visual.positional_embedding"].shape[0]) - 1) ** 0.5)
        arch.update(image_size=patch * grid, vision_layers=_count_blocks(state, "visual.transformer.resblocks."),
                    vision_width=int(state["visual.conv1.weight"].shape[0]), patch_size=patch)
    else:  # a modified ResNet: output grid x 32 pixels
        grid = round((int(state["visual.attnpool.positional_embedding"].shape[0]) - 1) ** 0.5)
        arch.update(image_size=grid * 32, vision_layers=[_count_blocks(state, f"visual.layer{b}.") for b in range(1, 5)],
                    vision_width=int(state["visual.layer1.0.conv1.weight"].shape[0]), patch_size=None)
    return arch


def config_architecture(model_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """:func:`state_architecture`'s terms for an open_clip model config."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    layers = vision["layers"]
    size = vision["image_size"]
    return {
        "embed_dim": int(model_cfg["embed_dim"]),
        "context_length": int(text.get("context_length", 77)),
        "vocab_size": int(text.get("vocab_size", 49408)),
        "text_width": int(text["width"]),
        "text_layers": int(text["layers"]),
        "image_size": int(size[0] if isinstance(size, (list, tuple)) else size),
        "vision_layers": [int(n) for n in layers] if isinstance(layers, (list, tuple)) else int(layers),
        "vision_width": int(vision["width"]),
        "patch_size": None if isinstance(layers, (list, tuple)) else int(vision["patch_size"]),
    }


@dataclass(frozen=True)
class _FileFacts:
    """What one weights file version holds, as far as the checks before a run need it."""

    readable: bool
    architecture: Optional[Dict[str, Any]] = None  # None: not an OpenAI-format CLIP state dict
    logit_scale: Optional[float] = None


@functools.lru_cache(maxsize=64)
def _facts_version(real_path: str, size: int, mtime_ns: int) -> _FileFacts:
    """:class:`_FileFacts` of one file version (``size``/``mtime_ns``: part of the memo key only)."""
    try:
        state = load_state_dict(real_path)
    except Exception:  # noqa: BLE001  (a damaged zip, pickle or JIT archive fails in many ways)
        return _FileFacts(False)
    try:
        arch = state_architecture(state)
    except (KeyError, IndexError, AttributeError, TypeError):
        arch = None
    scale = state.get("logit_scale") if isinstance(state, Mapping) else None
    return _FileFacts(True, arch, float(scale.float()) if torch.is_tensor(scale) and scale.numel() == 1 else None)


def _facts(path: str) -> _FileFacts:
    ident = file_identity(path, content_hash=False)
    return _facts_version(ident["path"], ident["size"], ident["mtime_ns"])


def _readable(path: str) -> bool:
    """Whether ``path`` reads as weights, checked once per file version."""
    return _facts(path).readable


def _expected_architecture(url: str) -> Optional[Dict[str, Any]]:
    """The architecture the ``_MODELS`` entry ``url`` names, from open_clip's (or the repository's)
    model config; None when it has none."""
    name = _name_of_url(url)
    if name in OPEN_CLIP_NAMES:
        stem = OPEN_CLIP_NAMES[name]
    elif url.startswith(REPO_SCHEME):
        stem = url[len(REPO_SCHEME):].split("/", 1)[0]
        register_repo_configs()
    else:
        return None
    model_cfg = open_clip.get_model_config(stem)
    return config_architecture(model_cfg) if model_cfg else None


def _check_user_file(path: str, url: str, value: str) -> None:
    """The ``CLIP_WEIGHTS`` file ``path`` (the user's, given as ``value``) must hold the architecture
    the run names, with a usable logit scale: a ViT-B/32 file ran as "ViT-B/16" with exit 0 (the model
    is built from the file's shapes) and the results named ViT-B/16; another image size ended in a
    traceback after the data was built. Unreadable files are left to :func:`openai_weights_identity`."""
    facts = _facts(path)
    if not facts.readable:
        return
    name = _name_of_url(url) or url
    if facts.architecture is None:
        raise BackboneError(f"{WEIGHTS_ENV}={value!r}: {path} is not an OpenAI-format CLIP state dict (it lacks "
                            f"text_projection, positional_embedding or the visual tower); give {name}'s weights")
    expected = _expected_architecture(url)
    if expected is not None and facts.architecture != expected:
        diff = [f"{k} {facts.architecture.get(k)} (not {expected[k]})" for k in expected
                if facts.architecture.get(k) != expected[k]]
        raise BackboneError(f"{WEIGHTS_ENV}={value!r}: {path} holds another architecture than CLIP {name!r}: "
                            f"{', '.join(diff)}; point {WEIGHTS_ENV} at {name}'s weights, or set "
                            "MODEL.BACKBONE.NAME to the model the file holds")
    check_logit_scale(facts.logit_scale, f"{WEIGHTS_ENV}={value!r} ({path})")



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


def _from_env(url: str) -> Optional[str]:
    """The file ``CLIP_WEIGHTS`` names for ``url``: the file itself (checked to hold the architecture of
    ``url``'s model), or ``<folder>/<file>`` of a folder (None when the folder lacks it: the other
    sources are asked next). A file that does not exist is one line."""
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    if not value:
        return None
    path = osp.expanduser(value)
    if osp.isdir(path):
        path = osp.join(path, osp.basename(url))
        if not osp.isfile(path):
            return None
    elif not osp.isfile(path):
        raise BackboneNotFoundError(f"{WEIGHTS_ENV}={value!r}: no weight file {path!r}; point it at a weights file "
                                    "or a folder holding them, or unset it")
    _check_user_file(path, url, value)
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
    # the user's explicit choice first: a set CLIP_WEIGHTS lost silently to a file in ~/.cache/clip,
    # and the run recorded the cached file's identity while the user believed it ran on theirs
    found = _from_env(url)
    if found:
        return found
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
    if url.startswith(REPO_SCHEME):
        found = _repo_weights(url[len(REPO_SCHEME):].split("/", 1)[0], cached)
        if found:
            return found
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    raise BackboneNotFoundError(
        f"no weights for CLIP {name or url!r}: not in {root}/, not in open_clip's cache (offline?), and "
        + (f"not in the folder {WEIGHTS_ENV}={env!r}" if env else f"{WEIGHTS_ENV} is unset")
        + f"; put {filename} in {root}/ or set {WEIGHTS_ENV} to the weight file"
    )


def load_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The state dict of a JIT archive, else of a plain (``weights_only``) torch file."""
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates the format OpenAI's weights ship in: every
            # OpenAI-CLIP run printed that FutureWarning twice, about a file the user cannot change
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
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
