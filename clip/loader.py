"""Loading a frozen OpenCLIP backbone: name/weight resolution, precision, QuickGELU.

Everything that can fail because of a typo (model name, pretrained tag, weight path) is checked here
before open_clip is asked to build anything, so the error names the closest valid choice instead of
open_clip's long lists. Downloads only ever happen inside open_clip's own code (pretrained tags and
``hf-hub:`` names); the ``none``/file/``local-dir:`` paths never touch the network.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Tuple, Union
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open
from torch import nn

from dassl.utils.identity import content_identity
from dassl.utils.torchtools import nonfinite_tensors

from .config import parse_quick_gelu
from .pretrained import MODEL_CONFIG_DIR, REPO_ROOT, default_weights

logger = logging.getLogger(__name__)

DeviceLike = Union[str, torch.device]

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
#: What open_clip loads from a ``local-dir:`` folder (``open_clip.factory._find_checkpoint_in_dir``):
#: files of these suffixes only, the preferred names first. A folder with none of them gives a
#: randomly initialised model and a logged warning, so :func:`check_schema_files` refuses it.
LOCAL_DIR_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
LOCAL_DIR_PREFERRED = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                       "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                       "pytorch_model.bin", "pytorch_model.pth", "model.pth")
#: The files an ``hf-hub:`` model's weights come from (``open_clip.pretrained.download_pretrained_from_hf``).
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: The model-config keys every open_clip CLIP class takes without a default.
REQUIRED_MODEL_CFG = ("embed_dim", "vision_cfg", "text_cfg")
PRECISIONS = ("fp32", "fp16", "amp", "bf16")


# ---------------------------------------------------------------------------------------- precision
@dataclass(frozen=True)
class Precision:
    """How the backbone is stored and run.

    ``weight_dtype`` is the dtype open_clip builds the weights in (fp16 means open_clip's "manual mixed
    precision": Linear/Conv/attention weights in half, LayerNorm and embeddings fp32);
    ``autocast_dtype`` is the autocast dtype for forward passes (None: no autocast);
    ``use_scaler`` says whether a GradScaler is needed for the learned parameters.
    """

    name: str
    weight_dtype: torch.dtype
    autocast_dtype: Optional[torch.dtype]
    use_scaler: bool

    @property
    def open_clip_precision(self) -> str:
        return "fp16" if self.weight_dtype == torch.float16 else "fp32"


_PRECISION_TABLE: Dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32, None, False),
    "fp16": Precision("fp16", torch.float16, None, False),
    "amp": Precision("amp", torch.float32, torch.float16, True),
    "bf16": Precision("bf16", torch.float32, torch.bfloat16, False),
}


def resolve_precision(prec: Union[str, Precision], device: DeviceLike) -> Precision:
    """Map a precision name to what is actually used on ``device``.

    B30: the reference asked for fp16 weights on CPU. Half-precision convolutions are unsupported or
    very slow there and fp16 autocast is not a CPU thing, so fp16/amp requests fall back to fp32 on
    CPU with a warning. ``bf16`` (fp32 weights, bfloat16 autocast, losses in fp32) is an opt-in on CPUs
    with native bfloat16 support (:func:`cpu_supports_bf16`; about 1.7x faster text tower on
    AVX512-BF16/AMX machines, accuracy parity in the README); elsewhere it falls back to fp32 too.
    """
    name = prec.name if isinstance(prec, Precision) else str(prec).strip().lower()
    if name not in _PRECISION_TABLE:
        raise ValueError(f"Unknown precision {prec!r}; choose one of {PRECISIONS}")
    if torch.device(device).type == "cpu" and name != "fp32":
        if name == "bf16" and cpu_supports_bf16():
            return _PRECISION_TABLE[name]
        logger.warning("Precision %r requested on CPU; using fp32 instead (B30)", name)
        name = "fp32"
    return _PRECISION_TABLE[name]


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (oneDNN's AVX512-BF16 / AMX check)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(precision: Precision, device: DeviceLike) -> ContextManager:
    """An autocast context for ``precision`` on ``device`` (a no-op when no autocast is wanted)."""
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=precision.autocast_dtype)


def make_grad_scaler(precision: Precision, device: DeviceLike) -> torch.amp.GradScaler:
    """A GradScaler that is a pass-through unless the precision needs loss scaling (amp)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision.use_scaler)


# ---------------------------------------------------------------------------------------- configs
def register_repo_configs(directory: Union[str, Path] = MODEL_CONFIG_DIR) -> List[str]:
    """Make every ``*.json`` model config of ``directory`` known to open_clip under its file stem.

    Files are added one by one and only when their stem is not listed yet, so the call is cheap and
    idempotent and also picks up configs written after the first call. Returns the stems.
    """
    directory = Path(directory)
    stems = []
    known = set(open_clip.list_models())
    for path in sorted(directory.glob("*.json")):
        stems.append(path.stem)
        if path.stem in known:
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in data]
        if missing:
            raise ValueError(f"Model config {path} lacks {missing}")
        open_clip.add_model_config(path)
        logger.debug("Registered model config %s", path)
    return stems


def normalize_model_name(name: str) -> str:
    """OpenAI spelling (``ViT-B/16``) to open_clip's (``ViT-B-16``); schema names are left alone."""
    name = str(name).strip()
    if name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        return name
    return name.replace("/", "-")


def _closest(word: str, choices: List[str], n: int = 3) -> List[str]:
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def _resolve_path(path: str) -> Optional[Path]:
    """An existing file/dir: absolute as given, relative against the cwd and then the repo root."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    return None


def _looks_like_path(weights: str) -> bool:
    return (os.sep in weights or "/" in weights or weights.lower().endswith(WEIGHT_FILE_SUFFIXES)
            or weights.startswith("."))


# ---------------------------------------------------------------------------------------- resolution
class BackboneError(ValueError):
    """A backbone the config names cannot be resolved (unknown model, tag or file)."""


class BackboneNotFoundError(BackboneError, FileNotFoundError):
    """A weight file or ``local-dir:`` folder the config names does not exist."""


@dataclass(frozen=True)
class BackboneSpec:
    """What ``MODEL.BACKBONE`` asks for, checked and resolved (no model built yet).

    ``weights_kind`` is ``tag``, ``file``, ``none`` or ``schema`` (``hf-hub:``/``local-dir:`` names
    bring their own weights, and ``weights`` is then the name itself); ``pretrained`` is what
    open_clip's ``pretrained`` argument receives. ``quick_gelu`` is the resolved activation flag; it is
    None only for schema names left on "auto", whose own config decides.
    """

    name: str
    weights: str
    weights_kind: str
    pretrained: Optional[str]
    quick_gelu: Optional[bool]


def resolve_backbone(cfg: Any) -> BackboneSpec:
    """Resolve ``cfg.MODEL.BACKBONE`` into a :class:`BackboneSpec`, with friendly errors."""
    backbone = cfg.MODEL.BACKBONE
    raw_name = str(backbone.NAME)
    weights = str(backbone.get("WEIGHTS", "default")).strip()
    try:
        quick = parse_quick_gelu(backbone.get("QUICK_GELU", "auto"))
    except ValueError as err:  # a traceback in the feature extractor, which has no config check of its own
        raise BackboneError(str(err)) from None
    name = normalize_model_name(raw_name)
    for prefix, what in ((HF_HUB_PREFIX, "<org>/<repo>"), (LOCAL_DIR_PREFIX, "<folder>")):
        if name.startswith(prefix) and not name[len(prefix):].strip():
            raise BackboneError(f"MODEL.BACKBONE.NAME {raw_name!r} names no model; write {prefix}{what}")
    if name.startswith(HF_HUB_PREFIX):
        try:  # hf-hub:a/b/c reached the hub client's own traceback (or a line naming no key)
            validate_repo_id(name[len(HF_HUB_PREFIX):])
        except HFValidationError as err:
            raise BackboneError(f"MODEL.BACKBONE.NAME {raw_name!r} is not a hub model id ({str(err).split(':')[0]}); "
                                f"write {HF_HUB_PREFIX}<org>/<repo>") from None

    if name.startswith(LOCAL_DIR_PREFIX):
        target = name[len(LOCAL_DIR_PREFIX):]
        found = _resolve_path(target)
        if found is not None and not found.is_dir():  # said "not found" of a file that exists
            raise BackboneError(
                f"MODEL.BACKBONE.NAME {raw_name!r}: {str(found)!r} is a file, not an open_clip model folder; for a "
                "weights file set MODEL.BACKBONE.NAME to its architecture and MODEL.BACKBONE.WEIGHTS to the file"
            )
        if found is None:
            places = " and ".join(dict.fromkeys(str(p) for p in (Path.cwd(), REPO_ROOT)))
            raise BackboneNotFoundError(
                f"MODEL.BACKBONE.NAME {raw_name!r}: directory {target!r} not found (looked in {places})"
            )
        name = LOCAL_DIR_PREFIX + str(found)
    if name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        if weights.lower() not in ("", "none", "default"):
            logger.info("MODEL.BACKBONE.WEIGHTS %r ignored: %r brings its own weights", weights, name)
        return BackboneSpec(name, name, "schema", None, quick)

    register_repo_configs()
    models = open_clip.list_models()
    if name not in models:
        hint = _closest(name, models)
        raise BackboneError(
            f"Unknown MODEL.BACKBONE.NAME {raw_name!r}"
            + (f"; did you mean {hint}?" if hint else "")
            + f" (open_clip built-ins or a config stem in {MODEL_CONFIG_DIR.relative_to(REPO_ROOT)}/)"
        )

    requested = weights
    if weights.lower() == "default":
        weights = default_weights(name)
        logger.info("MODEL.BACKBONE.WEIGHTS default -> %r for %s", weights, name)

    model_quick = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    if weights.lower() in ("none", ""):
        return BackboneSpec(name, "none", "none", None, model_quick if quick is None else quick)

    if open_clip.is_pretrained_cfg(name, weights):
        tag_cfg = open_clip.get_pretrained_cfg(name, weights)
        if quick is None:
            quick = bool(tag_cfg.get("quick_gelu", False)) or model_quick
        return BackboneSpec(name, weights, "tag", weights, quick)

    found = _resolve_path(weights)
    if found is not None and found.is_file():
        return BackboneSpec(name, str(found), "file", str(found), model_quick if quick is None else quick)
    if found is not None and found.is_dir():
        raise BackboneError(
            f"MODEL.BACKBONE.WEIGHTS {requested!r} is a folder, not a weights file; give the file, or for an "
            f"open_clip model folder (open_clip_config.json and its weights) MODEL.BACKBONE.NAME local-dir:{weights}"
        )
    if _looks_like_path(weights):
        places = " and ".join(dict.fromkeys(str(p) for p in (Path.cwd(), REPO_ROOT)))
        raise BackboneNotFoundError(
            f"MODEL.BACKBONE.WEIGHTS {requested!r}: file {weights!r} not found (looked in {places})"
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    hint = _closest(weights, tags)
    local_default = None
    with contextlib.suppress(ValueError):
        local_default = default_weights(name)
    raise BackboneError(
        f"Unknown MODEL.BACKBONE.WEIGHTS {weights!r} for model {name!r}"
        + (f"; did you mean {hint}?" if hint else ".")
        + (f" Known tags: {tags}." if tags else " This model has no open_clip pretrained tags.")
        + (f" Its registered default is {local_default!r} (WEIGHTS default)." if local_default else "")
        + " A weight file path or 'none' also works."
    )


def weights_identity(cfg: Any) -> Dict[str, Any]:
    """What the frozen backbone's weights *are*, for run fingerprints and cache keys.

    * an open_clip tag: ``{"kind": "tag", "model", "tag"}`` (tags name immutable releases);
    * a local file: ``{"kind": "file", "model", "size", "sha256"}`` -- content, not path, so a file
      rewritten in place changes the identity and a copy elsewhere keeps it (hash memoised per file
      version, see :func:`dassl.utils.identity.file_identity`);
    * ``none``: ``{"kind": "random", "model", "seed"}`` (the seeded random init of :func:`load_clip`);
    * ``hf-hub:``: ``{"kind": "hub", "model", "files"}``, the content of the config and weights file the
      local hub cache holds for it (:func:`hub_cached_files`; ``{}`` before the first download);
      ``local-dir:``: the content of every file in the folder.

    ``quick_gelu`` (the resolved activation) is part of every identity: it changes the features.
    """
    spec = resolve_backbone(cfg)
    ident: Dict[str, Any] = {"kind": spec.weights_kind, "model": spec.name, "quick_gelu": spec.quick_gelu}
    if spec.weights_kind == "tag":
        ident["tag"] = spec.weights
    elif spec.weights_kind == "file":
        ident.update(content_identity(spec.weights))
    elif spec.weights_kind == "none":
        ident.update(kind="random", seed=_seed_value(cfg))
    elif spec.name.startswith(LOCAL_DIR_PREFIX):
        folder = Path(spec.name[len(LOCAL_DIR_PREFIX):])
        ident.update(kind="local-dir", files={
            p.name: content_identity(str(p)) for p in sorted(folder.iterdir()) if p.is_file()
        })
    else:
        # The name alone identified a repository whose "main" moves: features cached and runs skipped
        # under an older snapshot were reused for a newer one. The content of the files the cache
        # holds says which snapshot; a run loads through that cache, so it records what it loaded.
        cached = hub_cached_files(spec.name[len(HF_HUB_PREFIX):])
        ident.update(kind="hub", files={name: content_identity(path) for name, path in cached.items()})
    return ident


def drawn_anew(ident: Dict[str, Any]) -> bool:
    """Whether a :func:`weights_identity` is of unseeded random weights (``WEIGHTS none`` with a negative
    ``SEED``): every load draws other parameters, yet the identity can only say ``random, seed -1``, the
    same for every such model. So nothing stored under it can be known to be this model's: the feature
    caches skip such models (a second run read the first run's model's features) and lpclip gives their
    files no job identity."""
    return ident.get("kind") == "random" and int(ident.get("seed", -1)) < 0


# ---------------------------------------------------------------------------------------- checks
_LOCAL_ADVICE = (
    "download the weights on a machine with network access, then set MODEL.BACKBONE.WEIGHTS to the "
    "local .pt/.bin/.safetensors file, or MODEL.BACKBONE.NAME local-dir:<folder with open_clip_config.json "
    "and the weights>"
)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network (huggingface_hub's own truthy spellings)."""
    return str(os.environ.get("HF_HUB_OFFLINE", "")).strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_file_cached(repo_id: str, filenames: List[str]) -> bool:
    for filename in filenames:
        if isinstance(try_to_load_from_cache(repo_id, filename), str):
            return True
    return False


def _weights_cached(spec: BackboneSpec) -> bool:
    """Whether open_clip would find ``spec``'s tag or ``hf-hub:`` weights without the network."""
    if spec.weights_kind == "schema":
        if not spec.name.startswith(HF_HUB_PREFIX):
            return True
        # the weights too: without them open_clip builds a random model, with only a logged warning
        repo_id = spec.name[len(HF_HUB_PREFIX):]
        return _hub_file_cached(repo_id, ["open_clip_config.json"]) and _hub_file_cached(repo_id, list(HUB_WEIGHT_FILES))
    tag = open_clip.get_pretrained_cfg(spec.name, spec.weights)
    return "file" in tag or cached_tag_file(spec) is not None


def cached_tag_file(spec: BackboneSpec) -> Optional[str]:
    """The local file holding a tag's weights, where open_clip looks for it without the network: its
    hub file (safetensors first, open_clip's order) or its URL's file in ``~/.cache/clip``; None when
    neither is there."""
    tag = open_clip.get_pretrained_cfg(spec.name, spec.weights)
    hub = tag.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/file" or "org/repo/" (open_clip's rule)
        filename = filename or "open_clip_pytorch_model.bin"
        for name in ("open_clip_model.safetensors", os.path.splitext(filename)[0] + ".safetensors", filename):
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str):
                return found
    url = tag.get("url", "")
    path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""
    return path if path and os.path.isfile(path) else None


def _tag_owner(spec: BackboneSpec) -> str:
    return f"MODEL.BACKBONE.WEIGHTS {spec.weights!r} of {spec.name}: the cached file"


def _damaged_cache_advice(path: str) -> str:
    return f"; delete {path} and download the weights again (or copy intact ones there)"


def _download_hosts(spec: BackboneSpec) -> List[str]:
    """The hosts open_clip would fetch ``spec``'s weights from: the hub endpoint (``HF_ENDPOINT``
    included), and a tag's URL host when it has one."""
    urls = [hf_constants.ENDPOINT]
    if spec.weights_kind == "tag":
        urls.append(open_clip.get_pretrained_cfg(spec.name, spec.weights).get("url", ""))
    hosts = [urlparse(url).hostname for url in urls if url]
    return [h for h in dict.fromkeys(hosts) if h]


def _unresolvable(hosts: List[str]) -> List[str]:
    """The ``hosts`` whose name does not resolve: on a compute node without network the lookup fails at
    once, while the hub's client then retried for ~50 s, printing ~50 warning lines."""
    bad = []
    for host in hosts:
        try:
            socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            bad.append(host)
    return bad


def check_backbone(cfg: Any) -> BackboneSpec:
    """Every check of ``cfg.MODEL.BACKBONE`` that needs no data and no model: the name resolves, tag or
    hub weights are reachable, a ``local-dir:`` / hub schema is complete, a weights file can be a
    checkpoint. ``train.py`` (through the trainers' ``check_cfg``) and the feature extractor run it
    before anything is loaded; the extractor ran them only after the dataset had loaded."""
    spec = resolve_backbone(cfg)
    check_weights_available(spec)
    check_schema_files(spec)
    if spec.weights_kind == "file":
        check_weights_file(spec.weights)
    elif spec.weights_kind == "tag":  # a truncated download in the cache was a traceback after the data loaded
        cached = cached_tag_file(spec)
        if cached is not None:
            try:
                check_weights_file(cached, owner=_tag_owner(spec))
            except BackboneError as err:
                raise BackboneError(f"{err}{_damaged_cache_advice(cached)}") from None
    return spec


def check_weights_available(spec: BackboneSpec) -> None:
    """Fail fast, in one line, when tag or ``hf-hub:`` weights are not cached and cannot be fetched:
    ``HF_HUB_OFFLINE`` is set, or no download host's name resolves (a node without network).

    Without this check open_clip tried the hub and then the URL, and ended after 30-50 s in a traceback
    whose advice named the wrong key. A host that resolves but does not answer (a firewall) is left to
    the download, which reports it.
    """
    if spec.weights_kind not in ("tag", "schema") or _weights_cached(spec):
        return
    what = (f"MODEL.BACKBONE.NAME {spec.name!r}" if spec.weights_kind == "schema"
            else f"MODEL.BACKBONE.WEIGHTS {spec.weights!r} of {spec.name}")
    if spec.name.startswith(HF_HUB_PREFIX) and _hub_file_cached(spec.name[len(HF_HUB_PREFIX):], ["open_clip_config.json"]):
        what += f" (its config is cached, not its weights: {' or '.join(HUB_WEIGHT_FILES)})"
    if hub_offline():
        raise BackboneError(f"{what} is not in the local cache and HF_HUB_OFFLINE is set: {_LOCAL_ADVICE}")
    hosts = _download_hosts(spec)
    if hosts and len(_unresolvable(hosts)) == len(hosts):
        raise BackboneError(f"{what} is not in the local cache and {' / '.join(hosts)} cannot be resolved "
                            f"(no network here?): {_LOCAL_ADVICE}")


def check_weights_file(path: str, owner: str = "MODEL.BACKBONE.WEIGHTS") -> None:
    """A cheap up-front test that a local weights file can be a checkpoint at all (no tensor is read).

    Empty files, safetensors with a broken header or no tensor and files that are neither a zip
    archive (torch's format, TorchScript) nor a pickle (torch's legacy format) are rejected in one line
    naming ``owner`` (the config key that led to the file) before any data or model is built; anything
    subtler is diagnosed when open_clip loads it (see ``load_clip``).
    """
    named = f'{owner} "{path}"'
    if os.path.getsize(path) == 0:
        raise BackboneError(f"{named} is not a readable weights file (the file is empty)")
    if path.endswith(".npz"):
        return
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # the header is the whole check: any failure means unreadable
            raise BackboneError(f"{named} is not a readable weights file "
                                f"({type(e).__name__}: {_first_sentence(e)})") from None
        if not keys:
            raise BackboneError(f"{named} holds no tensors; give the state dict of a model")
        return
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise BackboneError(f"{named} is not a readable weights file (neither a torch zip archive nor a "
                            "pickle); give a .pt/.bin/.safetensors state dict saved by torch or open_clip")


def local_dir_weights(folder: Path) -> Optional[Path]:
    """The weights file open_clip loads from the ``local-dir:`` ``folder`` (its own rule, see
    :data:`LOCAL_DIR_WEIGHT_SUFFIXES`), or None when it would build a random model."""
    found = sorted(p for p in folder.iterdir() if p.suffix in LOCAL_DIR_WEIGHT_SUFFIXES and p.is_file())
    for name in LOCAL_DIR_PREFERRED:
        for p in found:
            if p.name == name:
                return p
    found.sort(key=lambda p: p.suffix != ".safetensors")  # stable: safetensors first, each by name
    return found[0] if found else None


def _check_open_clip_config(path: Path, owner: str) -> None:
    """``open_clip_config.json`` of a ``local-dir:``/``hf-hub:`` model: JSON holding a ``model_cfg``
    with the keys open_clip needs (a malformed file was a ValueError or KeyError traceback)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BackboneError(f'{owner}: "{path}" is not readable JSON ({_first_sentence(e)})') from None
    model_cfg = data.get("model_cfg") if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict):
        raise BackboneError(f'{owner}: "{path}" holds no "model_cfg" object (open_clip\'s model config)')
    missing = [k for k in REQUIRED_MODEL_CFG if k not in model_cfg]
    if missing:
        raise BackboneError(f'{owner}: the "model_cfg" of "{path}" lacks {missing} (open_clip needs '
                            f"{list(REQUIRED_MODEL_CFG)})")


def check_schema_files(spec: BackboneSpec) -> None:
    """Up-front checks of what a ``local-dir:`` folder (or an ``hf-hub:`` model already in the cache)
    brings: a valid ``open_clip_config.json`` and a weights file open_clip loads and can read. A folder
    whose only weights open_clip does not look for (``model.pt``) trained a random model silently."""
    if spec.weights_kind != "schema":
        return
    owner = f"MODEL.BACKBONE.NAME {spec.name!r}"
    if spec.name.startswith(LOCAL_DIR_PREFIX):
        folder = Path(spec.name[len(LOCAL_DIR_PREFIX):])
        config = folder / "open_clip_config.json"
        if not config.is_file():
            raise BackboneError(f"{owner}: the folder holds no open_clip_config.json (open_clip's model config)")
        _check_open_clip_config(config, owner)
        weights = local_dir_weights(folder)
        if weights is None:
            others = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_FILE_SUFFIXES)
            raise BackboneError(
                f"{owner}: the folder holds no weights file open_clip loads (*.safetensors, *.bin or *.pth), so "
                "the model would be random" + (f"; rename {others[0]} to {Path(others[0]).stem}.pth" if others else "")
            )
        check_weights_file(str(weights), owner=f"{owner}: weights")
        return
    cached = hub_cached_files(spec.name[len(HF_HUB_PREFIX):])
    if "open_clip_config.json" in cached:
        _check_open_clip_config(Path(cached["open_clip_config.json"]), owner)
    weights = [path for name, path in cached.items() if name in HUB_WEIGHT_FILES]
    if weights:
        check_weights_file(weights[0], owner=f"{owner}: weights")


def hub_cached_files(repo_id: str) -> Dict[str, str]:
    """The files of an ``hf-hub:`` model that open_clip would load from the local hub cache, by name:
    ``open_clip_config.json`` and the first cached weights file in open_clip's order
    (:data:`HUB_WEIGHT_FILES`); what is not cached is absent."""
    found: Dict[str, str] = {}
    config_file = try_to_load_from_cache(repo_id, "open_clip_config.json")
    if isinstance(config_file, str):
        found["open_clip_config.json"] = config_file
    for name in HUB_WEIGHT_FILES:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str):
            found[name] = cached
            break
    return found


def declared_model_cfg(cfg: Any) -> Dict[str, Any]:
    """The backbone's open_clip model config, read without building the model ({} when only the model
    itself knows, e.g. an ``hf-hub:`` name, or a ``local-dir:`` without a readable config)."""
    spec = resolve_backbone(cfg)
    if spec.name.startswith(HF_HUB_PREFIX):
        return {}
    if spec.name.startswith(LOCAL_DIR_PREFIX):
        path = Path(spec.name[len(LOCAL_DIR_PREFIX):]) / "open_clip_config.json"
        try:
            with open(path, encoding="utf-8") as f:
                model_cfg = json.load(f).get("model_cfg", {})
        except (OSError, ValueError):
            return {}
        return model_cfg if isinstance(model_cfg, dict) else {}
    return open_clip.get_model_config(spec.name) or {}


def expected_image_size(cfg: Any) -> Optional[Tuple[int, int]]:
    """The input size the backbone's config declares (None when it is not known before building)."""
    size = (declared_model_cfg(cfg).get("vision_cfg") or {}).get("image_size")
    return _two_tuple(size) if size else None


def expected_embed_dim(cfg: Any) -> Optional[int]:
    """The joint embedding width the backbone's config declares (None when not known before building)."""
    dim = declared_model_cfg(cfg).get("embed_dim")
    return int(dim) if isinstance(dim, int) and not isinstance(dim, bool) else None


def _first_sentence(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    if not text:
        return type(e).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_logit_scale(value: Optional[float], owner: str) -> None:
    """A ``logit_scale`` whose exponential overflows (``exp(89)`` is inf in float32) turns every logit
    into inf or NaN: a zero-shot run reported accuracies of NaN argmaxes with exit 0, and FSNL's
    divergence was blamed on the learning rate. CLIP's is ln 100 = 4.61 at most, where open_clip's
    training clamps it. ``owner`` names the weights."""
    if value is not None and not torch.isfinite(torch.tensor(float(value), dtype=torch.float32).exp()):
        raise BackboneError(f"{owner}: logit_scale {value:g} overflows its exponential (CLIP's is at most ln 100 "
                            "= 4.61); these are not intact CLIP weights")


def _diagnose_weights_file(path: str, build_random: Any, owner: str = "MODEL.BACKBONE.WEIGHTS",
                           fix: str = "") -> Optional[BackboneError]:
    """Why open_clip could not load the weights file ``path``: unreadable, or of another architecture
    (the keys of a random-init model of the requested one are compared). None when neither holds.
    ``owner`` names what led to the file; ``fix`` replaces the advice (for a cached download, whose
    fix is to download it again, not to give another file or architecture)."""
    named = f'{owner} "{path}"'
    try:
        state = open_clip.factory.load_state_dict(path)
    except StopIteration:  # open_clip peeks at the first key: an empty state dict
        return BackboneError(f"{named} holds no state dict of tensors{fix}")
    except Exception as e:  # any reader failure (pickle, zip, safetensors header, EOF) means unreadable
        reason = _first_sentence(e)
        if os.path.getsize(path) == 0:
            reason = "the file is empty"
        return BackboneError(
            f"{named} is not a readable weights file ({type(e).__name__}: {reason})"
            + (fix or "; give a .pt/.bin/.safetensors state dict saved by torch or open_clip")
        )
    if not isinstance(state, dict) or not state:
        return BackboneError(f"{named} holds no state dict of tensors{fix}")
    model = build_random()
    expected = model.state_dict()
    state = open_clip.factory.convert_state_dict(model, state)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if torch.is_tensor(state[k])
                    and tuple(state[k].shape) != tuple(expected[k].shape))
    arch = getattr(build_random, "arch", "this model")
    advice = fix or "; set MODEL.BACKBONE.NAME to the architecture they were saved from"
    if missing or unexpected:
        example = (missing or unexpected)[:3]
        return BackboneError(
            f'these weights do not fit {arch}: {len(missing)} missing / {len(unexpected)} unexpected keys '
            f'(e.g. {example}) in {named}{advice}'
        )
    if shapes:
        return BackboneError(
            f'these weights do not fit {arch}: {len(shapes)} tensors of another shape (e.g. {shapes[:3]}) in '
            f'{named}{advice}'
        )
    return None


# ---------------------------------------------------------------------------------------- loading
@dataclass
class LoadedCLIP:
    """A frozen open_clip model plus the facts other modules need about it."""

    model: nn.Module
    tokenizer: Any
    context_length: int
    dtype: torch.dtype
    precision: Precision
    name: str
    weights: str
    quick_gelu: bool
    embed_dim: int
    text_width: int
    vision_width: Optional[int]
    image_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    num_params: int


def _text_tower(model: nn.Module) -> nn.Module:
    """The module holding transformer/ln_final/...: the model itself (CLIP) or ``model.text``."""
    return model if hasattr(model, "transformer") and hasattr(model, "token_embedding") else model.text


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs should be cast to (the reference uses ``visual.conv1.weight.dtype``)."""
    conv1 = getattr(model.visual, "conv1", None)
    if conv1 is not None:
        return conv1.weight.dtype
    tower = _text_tower(model)
    transformer = getattr(tower, "transformer", None)
    if transformer is not None and hasattr(transformer, "get_cast_dtype"):
        return transformer.get_cast_dtype()
    for module in model.visual.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return module.weight.dtype
    return next(model.parameters()).dtype


def _embed_dim(model: nn.Module) -> int:
    out = getattr(model.visual, "output_dim", None)
    if out:
        return int(out)
    proj = getattr(_text_tower(model), "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if proj is not None:
        return int(proj.shape[1])
    return int(_text_tower(model).output_dim)


def _text_width(tower: nn.Module) -> int:
    for owner in (tower, getattr(tower, "transformer", None)):
        width = getattr(owner, "width", None)
        if isinstance(width, int):
            return width
    embedding = getattr(tower, "token_embedding", None)
    if isinstance(embedding, nn.Embedding):
        return int(embedding.embedding_dim)
    return int(getattr(getattr(tower, "config", None), "hidden_size", 0))  # HF text towers


def _two_tuple(size: Any) -> Tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def _has_quick_gelu(model: nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def _seed_value(cfg: Any) -> int:
    try:
        return int(cfg.get("SEED", -1))
    except (TypeError, ValueError):
        return -1


def _weights_source(spec: BackboneSpec) -> str:
    """The file the weights came from, as far as it is known here (a ``local-dir:`` folder's own file)."""
    if spec.name.startswith(LOCAL_DIR_PREFIX):
        found = local_dir_weights(Path(spec.name[len(LOCAL_DIR_PREFIX):]))
        return f'"{found}"' if found is not None else spec.weights
    return f'"{spec.weights}"' if spec.weights_kind == "file" else spec.weights


def load_clip(cfg: Any, device: DeviceLike, precision: Union[str, Precision] = "fp32") -> LoadedCLIP:
    """Build the frozen backbone named by ``cfg.MODEL.BACKBONE`` on ``device``.

    ``WEIGHTS none`` gives a random init; with ``cfg.SEED >= 0`` it is seeded and two loads are
    identical. Every load runs inside a forked RNG, so the caller's random stream is untouched.
    """
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    spec = resolve_backbone(cfg)
    kwargs: Dict[str, Any] = {}
    if spec.quick_gelu:
        kwargs["force_quick_gelu"] = True
    elif spec.quick_gelu is False:
        # force_quick_gelu can only switch it on; a model kwarg beats the config's own flag
        kwargs["quick_gelu"] = False

    def build(pretrained: Optional[str] = spec.pretrained) -> nn.Module:
        return open_clip.create_model(
            spec.name,
            pretrained=pretrained,
            precision=prec.open_clip_precision,
            device=device,
            # never fetch tower-only base weights (timm/HF) behind the user's back
            pretrained_image=False,
            pretrained_text=spec.weights_kind == "schema",
            **kwargs,
        )

    def build_random() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            return build(None)

    build_random.arch = spec.name  # type: ignore[attr-defined]
    check_weights_available(spec)
    check_schema_files(spec)
    seed = _seed_value(cfg)
    logger.info("Loading CLIP %s (weights %s, %s, quick_gelu=%s) on %s", spec.name, spec.weights,
                prec.name, spec.quick_gelu if spec.quick_gelu is not None else "config", device)
    try:
        # Always inside a forked RNG: building the model draws its initial weights, and a caller's
        # random stream must not depend on whether the model was built or reused (the grid engine
        # shares one load across runs, so a standalone run must not consume the stream either).
        with torch.random.fork_rng(devices=[]):
            if spec.weights_kind == "none" and seed >= 0:
                torch.manual_seed(seed)
            model = build()
    except Exception as e:
        if spec.weights_kind == "file":
            problem = _diagnose_weights_file(spec.weights, build_random)
            if problem is not None:
                raise problem from e
        elif spec.name.startswith(LOCAL_DIR_PREFIX):  # the folder passed check_schema_files: its content disagrees
            raise BackboneError(
                f"MODEL.BACKBONE.NAME {spec.name!r} could not be built ({type(e).__name__}: {_first_sentence(e)}); "
                "its weights file must be a state dict of the model its open_clip_config.json describes"
            ) from e
        elif spec.weights_kind == "tag" and (cached := cached_tag_file(spec)) is not None and (
                problem := _diagnose_weights_file(cached, build_random, _tag_owner(spec),
                                                  _damaged_cache_advice(cached))) is not None:
            # the cached download is damaged or of another model (open_clip's own AssertionError or
            # safetensors error was a traceback, or read as "could not fetch": nothing was fetched)
            raise problem from e
        elif spec.weights_kind in ("tag", "schema") and isinstance(e, (RuntimeError, OSError)):
            reason = _first_sentence(e)
            raise BackboneError(
                f"could not fetch the weights of {spec.name} / {spec.weights} ({reason}): {_LOCAL_ADVICE}"
            ) from e
        raise
    if spec.weights_kind != "none":
        # the saved state: parameters and persistent buffers (a ResNet's BatchNorm statistics); open_clip's
        # -inf attention masks are non-persistent buffers, so a real model never trips this
        bad = nonfinite_tensors(model.state_dict())
        if bad:
            raise BackboneError(
                f"the weights {_weights_source(spec)} of {spec.name} hold NaN or infinite values ({len(bad)} tensors, "
                f"e.g. {bad[:3]}): every result would be chance level; give intact weights"
            )
        scale = getattr(model, "logit_scale", None)
        if torch.is_tensor(scale) and scale.numel() == 1:
            check_logit_scale(float(scale.float()), f"the weights {_weights_source(spec)} of {spec.name}")

    model.eval()
    model.requires_grad_(False)
    context_length = int(model.context_length)
    tokenizer = open_clip.get_tokenizer(spec.name, context_length=context_length)
    tower = _text_tower(model)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    image_size = getattr(model.visual, "image_size", None) or pp.get("size")
    vision_transformer = getattr(model.visual, "transformer", None)
    loaded = LoadedCLIP(
        model=model,
        tokenizer=tokenizer,
        context_length=context_length,
        dtype=_model_dtype(model),
        precision=prec,
        name=spec.name,
        weights=spec.weights,
        quick_gelu=_has_quick_gelu(model),
        embed_dim=_embed_dim(model),
        text_width=_text_width(tower),
        vision_width=int(vision_transformer.width) if hasattr(vision_transformer, "width") else None,
        image_size=_two_tuple(image_size),
        mean=tuple(float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD)),
        num_params=sum(p.numel() for p in model.parameters()),
    )
    logger.info("Loaded %s: %.1fM parameters, embed_dim %d, context %d, image %s", spec.name,
                loaded.num_params / 1e6, loaded.embed_dim, context_length, loaded.image_size)
    return loaded
