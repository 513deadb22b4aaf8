"""Checkpoint I/O.

Checkpoints hold only tensors, numbers, strings and containers of them, so they load with
``torch.load(weights_only=True)`` (the reference pickled a scheduler object: bug B15). Files are
written atomically, and the ``checkpoint`` pointer names the latest *regular* checkpoint only:
writing ``model-best`` never moves it (bug B14), so resuming continues from where training stopped.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn

from .tools import atomic_write, atomic_write_text, mkdir_if_missing

__all__ = [
    "CheckpointError",
    "BEST_NAME",
    "POINTER_NAME",
    "regular_name",
    "save_checkpoint",
    "load_checkpoint",
    "resume_from_checkpoint",
    "load_pretrained_weights",
    "count_num_param",
    "strip_module_prefix",
    "nonfinite_tensors",
    "list_checkpoints",
    "atomic_torch_save",
    "requested_device",
]

logger = logging.getLogger(__name__)

BEST_NAME = "model-best.pth.tar"
POINTER_NAME = "checkpoint"
_REGULAR_RE = re.compile(r"^model\.pth\.tar-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run (none there, unreadable, another trainer or label
    space); reported by ``train.py`` as one ``error:`` line."""


def requested_device(requested: str, flag: str = "--device") -> Optional[torch.device]:
    """The torch device a ``--device`` option names (None for ""), or a ValueError in one line: a name
    torch does not parse, a device type other than cpu / cuda, or cuda where torch sees none. Checked
    before any model or data is loaded (a bad name used to be a traceback after the backbone loaded)."""
    if not requested:
        return None
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"{flag} {requested!r} is not a torch device name; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag} {requested}: only cpu and cuda devices run these tools")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {requested}: torch sees no CUDA device; leave {flag} out to use the CPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {requested}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def regular_name(epoch: int) -> str:
    """File name of the regular checkpoint written after ``epoch`` (1-based) epochs."""
    return f"model.pth.tar-{epoch}"


def strip_module_prefix(state_dict: Dict[str, Any]) -> OrderedDict[str, Any]:
    """Drop a leading ``module.`` (left by DataParallel/DDP) from every key."""
    out: OrderedDict[str, Any] = OrderedDict()
    for k, v in state_dict.items():
        out[k[7:] if k.startswith("module.") else k] = v
    return out


def nonfinite_tensors(state: Mapping[str, Any]) -> List[str]:
    """The names of the floating-point tensors of ``state`` that hold a NaN or an infinity (a diverged
    run's weights, a damaged file). Such weights raise no error anywhere: they evaluate at chance level,
    and results.json files the chance accuracy as the model's."""
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def atomic_torch_save(obj: Any, fpath: str) -> None:
    """``torch.save`` through :func:`dassl.utils.tools.atomic_write` (fsync, rename, umask)."""
    atomic_write(fpath, lambda f: torch.save(obj, f), mode="wb")


def save_checkpoint(
    state: Dict[str, Any],
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Write ``state`` into ``save_dir`` and return the file path.

    Regular checkpoints go to ``model_name`` (default ``model.pth.tar-<state["epoch"]>``) and
    update the ``checkpoint`` pointer. With ``is_best`` the state goes to ``model-best.pth.tar``
    (or ``model_name`` when given) and the pointer is left alone.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys and "state_dict" in state:
        state = dict(state)
        state["state_dict"] = strip_module_prefix(state["state_dict"])
    if is_best:
        fpath = osp.join(save_dir, model_name or BEST_NAME)
        atomic_torch_save(state, fpath)
        logger.info("Best checkpoint saved to %s", fpath)
        return fpath
    fpath = osp.join(save_dir, model_name or regular_name(int(state["epoch"])))
    atomic_torch_save(state, fpath)
    atomic_write_text(osp.join(save_dir, POINTER_NAME), osp.basename(fpath) + "\n")
    logger.info("Checkpoint saved to %s", fpath)
    return fpath


class _LegacyObject:
    """Stand-in for a pickled object of another code base (e.g. the reference's LR scheduler).

    It swallows whatever the pickle stream feeds it: constructor arguments, state, and the items a
    dict- or list-like object is rebuilt from (``SETITEMS``/``APPENDS``), so nested objects such as
    the optimizer inside the reference's pickled scheduler unpickle to inert stand-ins.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _plain_dict(*args: Any, **kwargs: Any) -> Dict[Any, Any]:
    """``collections.defaultdict`` rebuilt as a plain dict (its default factory is never called)."""
    return {}


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickles tensors and plain containers; every other class becomes an inert stand-in.

    Nothing outside torch's tensor/storage rebuilders and a few builtin containers is ever imported
    or called, so an old checkpoint cannot run code through its pickled objects.
    """

    _ALLOWED = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                ("builtins", "slice"), ("torch", "Size"), ("torch", "device"), ("torch.nn.parameter", "Parameter")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "defaultdict"):
            # the reference's optimizer state (keyed by parameters) after >= 1 momentum step
            return _plain_dict
        if module in ("torch._utils", "torch._tensor") and name.startswith("_rebuild"):
            return super().find_class(module, name)
        if (module, name) in self._ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return _LegacyObject


class _LegacyPickleModule:
    Unpickler = _LegacyUnpickler
    load = staticmethod(lambda f, **kw: _LegacyUnpickler(f, **kw).load())


def _plain(value: Any) -> Any:
    """``value`` with every stand-in object replaced by None (so the result is weights_only-safe)."""
    if isinstance(value, _LegacyObject):
        return None
    if isinstance(value, dict):
        items = [(k, _plain(v)) for k, v in value.items() if not isinstance(k, _LegacyObject)]
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def load_checkpoint(fpath: str, allow_legacy: bool = True) -> Dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True`` (no arbitrary unpickling).

    Checkpoints written by the reference code also pickle a scheduler object, which
    ``weights_only`` refuses; with ``allow_legacy`` such a file is read with an unpickler that only
    rebuilds tensors and containers and drops every other object (logged), so its weights load.
    """
    if not fpath:
        raise ValueError("File path is None or empty")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'Checkpoint not found: "{fpath}"')
    try:
        return torch.load(fpath, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not allow_legacy:
            raise
    checkpoint = _plain(torch.load(fpath, map_location="cpu", weights_only=False, pickle_module=_LegacyPickleModule))
    # said only once the file did load: a garbage file fails above, with the caller's one error line
    logger.warning("%s holds pickled objects (a reference-code checkpoint?): loaded its tensors and "
                   "numbers only", fpath)
    return checkpoint


def list_checkpoints(fdir: str) -> Dict[int, str]:
    """Regular checkpoints in ``fdir`` as ``{epoch: file name}``."""
    if not osp.isdir(fdir):
        return {}
    found = {}
    for name in os.listdir(fdir):
        m = _REGULAR_RE.match(name)
        if m:
            found[int(m.group(1))] = name
    return dict(sorted(found.items()))


def resume_from_checkpoint(
    fdir: str,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
) -> int:
    """Restore model/optimizer/scheduler from the checkpoint the pointer in ``fdir`` names.

    Returns the number of completed epochs, i.e. the 0-based epoch to continue with.
    """
    pointer = osp.join(fdir, POINTER_NAME)
    if not osp.exists(pointer):
        raise FileNotFoundError(f'No "{POINTER_NAME}" pointer file in "{fdir}"')
    with open(pointer, encoding="utf-8") as f:
        fname = f.readline().strip("\n")
    fpath = osp.join(fdir, fname)
    logger.info('Loading checkpoint from "%s"', fpath)
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    logger.info("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        logger.info("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        logger.info("Loaded scheduler")
    start_epoch = int(checkpoint["epoch"])
    logger.info("Previous epoch: %d", start_epoch)
    return start_epoch


def load_pretrained_weights(model: nn.Module, weight_path: str) -> None:
    """Load the entries of ``weight_path`` whose name and shape match ``model``; report the rest."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state_dict = strip_module_prefix(state_dict)
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for k, v in state_dict.items():
        if k in model_dict and torch.is_tensor(v) and model_dict[k].size() == v.size():
            matched[k] = v
        else:
            discarded.append(k)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        logger.warning(
            'Cannot load "%s": no layer matches the model by name and shape', weight_path
        )
        return
    logger.info('Loaded pretrained weights from "%s"', weight_path)
    if discarded:
        logger.info("Layers discarded due to unmatched keys or size: %s", discarded)


def count_num_param(model: Optional[nn.Module] = None, params: Optional[Any] = None) -> int:
    """Number of parameters of ``model`` (or of an iterable ``params``)."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for p in params:
            if isinstance(p, dict):
                total += sum(q.numel() for q in p["params"])
            else:
                total += p.numel()
        return total
    raise ValueError("count_num_param() needs a model or params")


