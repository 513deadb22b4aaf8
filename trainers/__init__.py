"""Project trainers. Importing this package registers every trainer in ``TRAINER_REGISTRY``.

Discovery: every module of this folder is imported in sorted name order (private ``_*`` modules
skipped), so adding a method is dropping one file here -- there is no list to edit.

Config hook: a trainer module may define ``add_config(cfg)`` (or ``extend_cfg(cfg)``, the name of
CoOp's ``train.py`` function, so its body can be pasted as is) to declare its ``TRAINER.<METHOD>.*``
keys. :func:`add_trainer_configs` (called by ``configs.extend_cfg`` before any yaml is merged) runs
each hook on a *copy* of the config and adds only the keys the copy gained: declarations are
additive, so a hook that re-creates a block CoOp-style (``cfg.TRAINER.COOP = CN()``) can neither
drop keys another module declared nor change their defaults.

The keys of CoOp's own trainers (``TRAINER.COOP.*``, ``TRAINER.COCOOP.*``) are declared by the
project's ``coop_openclip.py`` / ``cocoop_openclip.py``, never only by ``coop.py`` / ``cocoop.py``:
copying CoOp's trainer files over those two keeps the keys. Like ``datasets/``, this folder is run
from the repository root and never installed.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import pkgutil
from types import ModuleType
from typing import Any, Callable, List, Optional, Tuple

from yacs.config import CfgNode as CN

from dassl.utils.registry import DuplicateNameError

__all__ = ["CONFIG_HOOKS", "add_trainer_configs", "broken_modules", "other_type_declarations",
           "trainer_module_names", "trainer_modules"]

logger = logging.getLogger(__name__)

#: Module-level function names that declare a trainer's config keys (first one found is used).
CONFIG_HOOKS = ("add_config", "extend_cfg")


def trainer_module_names() -> List[str]:
    """The public modules of this package, sorted (``_private`` ones are helpers, not trainers)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


@functools.lru_cache(maxsize=8)
def _discover(names: Tuple[str, ...]) -> Tuple[Tuple[ModuleType, ...], Tuple[str, ...]]:
    """Import the trainer modules ``names`` once per list: ``(modules, problems)``.

    A module that fails to import (a syntax error, a missing dependency, a second registration of a
    trainer name) is skipped with one warning naming its file, so one broken drop-in does not stop
    every other trainer from running; asking for a trainer it would have registered then fails with
    the registry's error, which :func:`broken_modules` lets ``train.py`` extend with the cause.
    """
    modules, problems = [], []
    for name in names:
        try:
            modules.append(importlib.import_module(f"{__name__}.{name}"))
        except DuplicateNameError as e:  # two files register one name: the first imported (sorted) owns it
            first, second = _module_file(e.first_module), _module_file(e.second_module or f"{__name__}.{name}")
            via = "" if second == f"trainers/{name}.py" else f" (imported by trainers/{name}.py)"
            problem = (f"trainers/{name}.py not loaded: {second}{via} registers {e.name!r}, which {first} registered "
                       f"first, so --trainer {e.name} runs {first}'s class; rename the class in one of the two "
                       "files, or put your file in place of the other")
        except Exception as e:  # noqa: BLE001 -- any failure of a user's file is reported, not raised
            problem = (f"trainers/{name}.py not loaded: {type(e).__name__}: {e} "
                       "(fix the file, install what it imports, or move it out of trainers/)")
        else:
            continue
        logger.warning("%s", problem)
        problems.append(problem)
    return tuple(modules), tuple(problems)


def _module_file(module: str) -> str:
    """``trainers/<name>.py`` for a module of this package, else the module's dotted name."""
    head, _, leaf = module.rpartition(".")
    return f"trainers/{leaf}.py" if head == __name__ else module


def trainer_modules() -> List[ModuleType]:
    """Every trainer module that imported, in :func:`trainer_module_names` order."""
    return list(_discover(tuple(trainer_module_names()))[0])


def broken_modules() -> List[str]:
    """One line per trainer module that failed to import (see :func:`_discover`)."""
    return list(_discover(tuple(trainer_module_names()))[1])


def _add_new_keys(dst: CN, src: CN, prefix: str = "") -> List[str]:
    """Copy into ``dst`` the keys of ``src`` that ``dst`` lacks (recursively); return them."""
    added = []
    for key, value in src.items():
        full = f"{prefix}{key}"
        if key not in dst:
            dst[key] = value.clone() if isinstance(value, CN) else value
            added.append(full)
        elif isinstance(value, CN) and isinstance(dst[key], CN):
            added += _add_new_keys(dst[key], value, full + ".")
        elif isinstance(value, CN) != isinstance(dst[key], CN):
            raise ValueError(f"config key {full} is declared both as a group and as a value")
    return added


def _config_hook(module: ModuleType) -> Optional[Callable[[CN], None]]:
    return next((getattr(module, n) for n in CONFIG_HOOKS if callable(getattr(module, n, None))), None)


def add_trainer_configs(cfg: CN) -> None:
    """Let every trainer module declare its config keys (see the module docstring)."""
    for module in trainer_modules():
        hook = _config_hook(module)
        if hook is None:
            continue
        scratch = cfg.clone()
        hook(scratch)
        added = _add_new_keys(cfg, scratch)
        logger.debug("%s declares %d config key(s)", module.__name__, len(added))


def _shown_path(module: ModuleType) -> str:
    """``trainers/<name>.py`` for the project's folder (as the other messages here), else the full path."""
    path = os.path.abspath(module.__file__ or module.__name__)
    here = os.path.dirname(os.path.abspath(__file__))
    return f"trainers/{os.path.basename(path)}" if os.path.dirname(path) == here else path


def _leaf(cfg: CN, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def other_type_declarations(cfg: CN, key: str) -> List[str]:
    """The trainer files whose config hook gives ``key`` a default of another type than ``cfg`` has.

    Declarations only add keys, so such a default is not used: a dropped-in descendant's yaml that
    relies on it (KgCoOp declares ``TRAINER.COOP.CTX_INIT = False`` and its yamls write ``True``,
    where the project declares a string) then fails yacs' type check. The error names the file that
    declared the other type, so the fix is plain; computed only on that error path (each hook runs
    again on a copy of ``cfg``).
    """
    try:
        current = _leaf(cfg, key)
    except KeyError:
        return []
    found = []
    for module in trainer_modules():
        hook = _config_hook(module)
        if hook is None:
            continue
        scratch = cfg.clone()
        try:
            hook(scratch)
            value = _leaf(scratch, key)
        except Exception:  # noqa: BLE001 -- a hook that fails here failed the same way at declaration
            continue
        if type(value) is not type(current):
            found.append(f"{_shown_path(module)} declares it as {type(value).__name__} {value!r}")
    return found


trainer_modules()
