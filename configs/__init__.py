"""Building a run's config: one library call for ``train.py``, the sweeps, the grid engine, lpclip and tests.

:func:`build_cfg` is the only place a config is assembled; nothing fakes a command line to get one.
Merge order (spec §1.2, plus the preset rule below):

1. Dassl defaults (:func:`dassl.config.get_cfg_default`);
2. project keys (:func:`extend_cfg`: datasets, CLIP, every trainer's ``add_config``);
3. the trainer's preset (``preset_cfg`` of backbone variants such as ``FSNL_openclip_2B``);
4. the dataset yaml, then the trainer yaml -- a value the user's file sets wins over the preset, and
   the log names every preset value a file overrode (the preset used to be applied after the files
   and silently replaced, e.g., the file's backbone). A preset group the file touches (such as
   ``MODEL.BACKBONE``) is dropped whole, so a file's weights never run with a preset's activation;
5. plain fields (``root``, ``output_dir``, ``seed``, ...: what ``train.py``'s options set);
6. ``KEY VALUE`` overrides (``opts``).

Friendly names: ``dataset="MiniAnimals"`` means ``configs/datasets/MiniAnimals.yaml`` and
``config="mini_cpu"`` means ``configs/trainers/<trainer>/mini_cpu.yaml``; paths work as well.
Every mistake raises :class:`ConfigError` with one line that names the file or key and the fix.
"""
from __future__ import annotations

import logging
import math
import os
import os.path as osp
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

import clip
import datasets
import trainers
from dassl.config import get_cfg_default
from dassl.data.samplers import AVAI_SAMPLERS
from dassl.data.transforms import AVAI_CHOICES, INTERPOLATION_MODES
from dassl.engine import TRAINER_REGISTRY
from dassl.optim import check_optimizer_cfg, check_scheduler_cfg
from dassl.utils import closest_name, load_yaml
from datasets.laion_beyond import SUB_CLASSES_CHOICES, DatasetError

logger = logging.getLogger(__name__)

CONFIG_ROOT = osp.dirname(osp.abspath(__file__))
DATASET_CONFIG_DIR = osp.join(CONFIG_ROOT, "datasets")
TRAINER_CONFIG_DIR = osp.join(CONFIG_ROOT, "trainers")

#: ``build_cfg`` keyword fields and the config key each one sets (``train.py``'s options).
#: The fields that name a folder (compared as folders, not as strings).
PATH_FIELDS = ("root", "output_dir", "resume")

FIELDS: Mapping[str, str] = {
    "root": "DATASET.ROOT",
    "output_dir": "OUTPUT_DIR",
    "resume": "RESUME",
    "seed": "SEED",
    "source_domains": "DATASET.SOURCE_DOMAINS",
    "target_domains": "DATASET.TARGET_DOMAINS",
    "transforms": "INPUT.TRANSFORMS",
    "backbone": "MODEL.BACKBONE.NAME",
    "head": "MODEL.HEAD.NAME",
    "enhanced_base": "TRAINER.TaskRes.ENHANCED_BASE",
}

__all__ = ["ConfigError", "FIELDS", "build_cfg", "check_cfg", "extend_cfg", "resolve_config_file", "flat_keys"]


class ConfigError(ValueError):
    """A user-facing configuration mistake, reported as one line without a traceback."""


def flat_keys(node: Any, prefix: str = "") -> List[str]:
    """Every leaf key of a (nested) mapping as ``A.B.C``."""
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict):
            keys.extend(flat_keys(v, full + "."))
        else:
            keys.append(full)
    return keys


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _unknown_key_error(cfg: Any, full_key: str, source: str) -> ConfigError:
    hint = closest_name(full_key, flat_keys(cfg))
    suggestion = f' Did you mean "{hint}"?' if hint else ""
    return ConfigError(f'unknown config key "{full_key}" in {source}.{suggestion}')


def _file_keys(path: str) -> List[str]:
    """The leaf keys a yaml file sets (for the preset rule); empty for an unreadable file, which
    :func:`_merge_file` then reports."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return []
    return flat_keys(data) if isinstance(data, dict) else []


def _yaml_problem(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _merge_file(cfg: Any, path: str, what: str) -> None:
    if osp.isdir(path):
        raise ConfigError(f'{what} "{path}" is a directory, not a YAML file')
    if not osp.isfile(path):
        raise ConfigError(f'{what} "{path}" does not exist')
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f)  # a SafeLoader refusing duplicate keys
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of config keys (KEY: value), "
                          f"not a {type(data).__name__}")
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        msg = str(e.args[0]) if e.args else str(e)
        key = msg.split("Non-existent config key:")[-1].strip()
        raise _unknown_key_error(cfg, key, f"{what} {path}") from None
    except ValueError as e:
        raise ConfigError(f"{what} {path}: {_value_problem(e, cfg)}") from None


#: yacs' message for a value of the wrong type (``_check_and_coerce_cfg_value_type``).
_TYPE_MISMATCH = re.compile(r"Type mismatch \(<class '([\w.]+)'> vs\. <class '([\w.]+)'>\) with values "
                            r"\((.*) vs\. (.*)\) for config key: (\S+)\s*$", re.S)


def _value_problem(e: Exception, cfg: Any) -> str:
    """yacs' merge error on one line: a type mismatch where the default is a section (``OPTIM: 5``)
    printed the whole default section over 20 lines. A key a trainer file declares with another type
    (a dropped-in descendant's ``extend_cfg``, not used since declarations only add keys) is named."""
    msg = str(e)
    m = _TYPE_MISMATCH.search(msg)
    if m is None:
        return " ".join(msg.split())
    want, got, _, value, key = m.groups()
    if want.endswith("CfgNode"):
        return f"{key} is a section of keys, not a value (got {got} {' '.join(value.split())[:80]}); write its keys below it"
    want = want.rsplit(".", 1)[-1]
    problem = f"{key} must be of type {want}, got {got} {' '.join(value.split())[:80]}"
    others = trainers.other_type_declarations(cfg, key)
    if others:
        problem += (f" ({'; '.join(others)}, but the first declaration, a {want}, is the one used: "
                    f"write a {want} value)")
    return problem


def merge_opts(cfg: Any, opts: Optional[Sequence[Any]]) -> None:
    """Merge ``KEY VALUE`` pairs with friendly errors; an int for a float key is promoted
    (``OPTIM.LR 1``) and a single word for a tuple key becomes a 1-tuple (``TEST.CROSS_EVAL IP``)."""
    opts = list(opts or [])
    if len(opts) % 2 != 0:
        raise ConfigError(f"config overrides must be KEY VALUE pairs, got an odd list: {opts}")
    fixed: List[Any] = []
    for key, value in zip(opts[0::2], opts[1::2]):
        key = str(key)
        if key.startswith("-"):
            raise ConfigError(f'option "{key}" comes after the first KEY VALUE override; put options first')
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise _unknown_key_error(cfg, key, "the command-line overrides")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise _unknown_key_error(cfg, key, "the command-line overrides")
        decoded = cfg._decode_cfg_value(value) if isinstance(value, str) else value
        original = node[parts[-1]]
        if isinstance(original, float) and isinstance(decoded, int) and not isinstance(decoded, bool):
            decoded = float(decoded)
        elif isinstance(original, (tuple, list)) and isinstance(decoded, str):
            decoded = (decoded,)  # TEST.CROSS_EVAL IP → ("IP",)
        fixed += [key, decoded]
    try:
        cfg.merge_from_list(fixed)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"command-line overrides: {_value_problem(e, cfg)}") from None


def _int_at_least(cfg: Any, key: str, low: int, why: str) -> None:
    """``key`` must be an integer >= ``low`` (a missing node, e.g. a trainer's own section, is not checked)."""
    try:
        value = _get(cfg, key)
    except KeyError:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low} ({why}), got {value!r}")


def _positive_int(cfg: Any, key: str, why: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer ({why}), got {value!r}")


def _check_sampler(cfg: Any, key: str) -> None:
    value = _get(cfg, key)
    if value not in AVAI_SAMPLERS:
        hint = closest_name(str(value), list(AVAI_SAMPLERS))
        raise ConfigError(f"{key}: unknown sampler {value!r}" + (f'; did you mean "{hint}"?' if hint else "")
                          + f" Available: {', '.join(AVAI_SAMPLERS)}")


def check_cfg(cfg: Any, training: bool = True) -> None:
    """Reject, before any data or model is built, a config that cannot run (one :class:`ConfigError`).

    Covers what only used to fail deep inside a run: batch sizes <= 0 (a DataLoader ValueError),
    ``OPTIM.MAX_EPOCH <= 0`` (silently trained nothing, then wrote results), the optimizer's and the
    schedule's keys (:func:`dassl.optim.check_optimizer_cfg`, ``check_scheduler_cfg``: torch's checks
    were tracebacks after the backbone loaded, a negative decay factor trained uphill), samplers and
    ``DATALOADER.K_TRANSFORMS`` (tracebacks while building the loaders), unknown
    ``INPUT.TRANSFORMS``, ``TEST.CROSS_EVAL`` values that are no ``DATASET.SUB_CLASSES`` (failed
    *after* training, naming the wrong key), and the trainer's own ``check_cfg`` (precision, loss,
    backbone and INPUT.SIZE against the backbone), called on an uninitialised instance.
    ``training=False`` (``--eval-only``, ``--no-train``) skips the training-only checks.
    """
    _positive_int(cfg, "DATALOADER.TEST.BATCH_SIZE", "evaluation batches")
    if training:
        _positive_int(cfg, "DATALOADER.TRAIN_X.BATCH_SIZE", "training batches")
        _positive_int(cfg, "OPTIM.MAX_EPOCH", "a run with no epoch trains nothing; use --eval-only to evaluate")
    if training:
        try:
            check_optimizer_cfg(cfg.OPTIM)
            check_scheduler_cfg(cfg.OPTIM)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check_sampler(cfg, "DATALOADER.TRAIN_X.SAMPLER")
        _int_at_least(cfg, "DATALOADER.K_TRANSFORMS", 1, "augmented copies of each training image per batch")
    _check_sampler(cfg, "DATALOADER.TEST.SAMPLER")
    shots = cfg.DATASET.get("NUM_SHOTS", -1)
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < -1 or shots == 0:
        raise ConfigError(f"DATASET.NUM_SHOTS must be an integer: K >= 1 images per class, or -1 for all, got {shots!r}")
    _int_at_least(cfg, "DATALOADER.FEATURE_CACHE.VIEWS", 0, "K cached augmented views per image; 0: online augmentation")
    _int_at_least(cfg, "DATALOADER.NUM_WORKERS", 0, "0: load in the main process")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        hint = closest_name(str(cfg.INPUT.INTERPOLATION), list(INTERPOLATION_MODES))
        raise ConfigError(f"INPUT.INTERPOLATION: unknown mode {cfg.INPUT.INTERPOLATION!r}"
                          + (f'; did you mean "{hint}"?' if hint else "")
                          + f" Available: {', '.join(sorted(INTERPOLATION_MODES))}")
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        values = list(cfg.INPUT[key])
        if len(values) not in (1, 3) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ConfigError(f"INPUT.{key} must be 1 or 3 finite numbers (one per RGB channel), got {values!r}")
    if any(v <= 0 for v in cfg.INPUT.PIXEL_STD):
        raise ConfigError(f"INPUT.PIXEL_STD must be > 0 (images are divided by it), got {list(cfg.INPUT.PIXEL_STD)!r}")
    size = tuple(cfg.INPUT.SIZE)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ConfigError(f"INPUT.SIZE must be two positive integers (height, width), got {cfg.INPUT.SIZE!r}")
    for name in cfg.INPUT.TRANSFORMS:
        if name not in AVAI_CHOICES:
            hint = closest_name(str(name), list(AVAI_CHOICES))
            raise ConfigError(f"INPUT.TRANSFORMS: unknown transform {name!r}"
                              + (f'; did you mean "{hint}"?' if hint else "")
                              + f" Available: {', '.join(sorted(AVAI_CHOICES))}")
    cross = cfg.TEST.get("CROSS_EVAL", ())
    for item in (cross,) if isinstance(cross, str) else cross:
        valid = ("auto", *SUB_CLASSES_CHOICES)
        if item not in valid:
            hint = closest_name(str(item), list(valid))
            raise ConfigError(f"TEST.CROSS_EVAL: {item!r} is not a subset to evaluate; use one of "
                              f"{', '.join(valid)} (or an empty tuple for none)"
                              + (f'; did you mean "{hint}"?' if hint else ""))
    name = str(cfg.TRAINER.NAME)
    if name not in TRAINER_REGISTRY:
        return
    cls = TRAINER_REGISTRY.get(name)
    if training and cfg.DATALOADER.K_TRANSFORMS != 1 and not getattr(cls, "TAKES_VIEW_LISTS", True):
        raise ConfigError(f"DATALOADER.K_TRANSFORMS must be 1 for {name} (one augmented view per image and batch; "
                          f"DATALOADER.FEATURE_CACHE.VIEWS K caches K views), got {cfg.DATALOADER.K_TRANSFORMS}")
    try:
        cls.check_cfg(cls.__new__(cls), cfg)
    except (ConfigError, clip.BackboneError, DatasetError):
        raise  # already one-line project errors
    except (ValueError, AssertionError) as e:
        raise ConfigError(str(e) or f"{name} rejects this config ({type(e).__name__})") from None
    except AttributeError:
        # a check_cfg that needs the constructed trainer: it runs again inside the constructor
        logger.debug("%s.check_cfg needs a constructed trainer; checked at construction", name)


def extend_cfg(cfg: Any) -> None:
    """Add the project keys (datasets, CLIP, every trainer) to ``cfg``."""
    datasets.add_dataset_config(cfg)
    clip.add_clip_config(cfg)
    trainers.add_trainer_configs(cfg)


def resolve_config_file(name: str, kind: str, trainer: str = "") -> str:
    """A config given by path, or by stem: ``kind`` ``"dataset"`` looks in ``configs/datasets/``,
    ``"trainer"`` in ``configs/trainers/<trainer>/``. Empty stays empty."""
    if not name or osp.isfile(name) or name.endswith((".yaml", ".yml")):
        return name
    folder = DATASET_CONFIG_DIR if kind == "dataset" else osp.join(TRAINER_CONFIG_DIR, trainer)
    path = osp.join(folder, f"{name}.yaml")
    if osp.isfile(path):
        return path
    if osp.isdir(name):
        raise ConfigError(f'{kind} config "{name}" is a directory, not a YAML file')
    stems = sorted(f[:-5] for f in _listdir(folder) if f.endswith(".yaml"))
    hint = closest_name(name, stems)
    raise ConfigError(
        f'{kind} config "{name}" not found in {osp.relpath(folder)}/'
        + (f'; did you mean "{hint}"?' if hint else "")
        + (f" Available: {', '.join(stems)}." if stems else " Give a yaml path instead.")
    )


def _listdir(folder: str) -> List[str]:
    return sorted(os.listdir(folder)) if osp.isdir(folder) else []


def _set(cfg: Any, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _apply_preset(cfg: Any, trainer: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Apply the trainer's ``preset_cfg``; return ``({key: preset value}, {key: value before})``."""
    if not trainer or trainer not in TRAINER_REGISTRY:
        return {}, {}
    preset = getattr(TRAINER_REGISTRY.get(trainer), "preset_cfg", None)
    if not callable(preset):
        return {}, {}
    before = {k: _get(cfg, k) for k in flat_keys(cfg)}
    preset(cfg)
    changed = {k: _get(cfg, k) for k in flat_keys(cfg) if _get(cfg, k) != before.get(k)}
    return changed, {k: before.get(k) for k in changed}


def _parent(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _yield_preset_groups(cfg: Any, trainer: str, preset: Dict[str, Any], before: Dict[str, Any],
                         file_keys: Dict[str, str]) -> None:
    """A user's file wins over the preset, group by group: a preset sets coupled values (a backbone's
    name, weights tag and activation), so when a file sets one key of a group (``MODEL.BACKBONE``),
    the preset's other keys of that group go back to their defaults instead of mixing with it."""
    won = {k for k in preset if k in file_keys}
    groups = {_parent(k) for k in won}
    for key in sorted(won):
        logger.info("%s sets %s = %r: it wins over %s's preset %r", file_keys[key], key, _get(cfg, key),
                    trainer, preset[key])
    for key in sorted(k for k in preset if k not in won and _parent(k) in groups):
        if _get(cfg, key) == preset[key]:
            _set(cfg, key, before[key])
            logger.info("%s's preset %s = %r dropped with the rest of %s (the config file sets that group)",
                        trainer, key, preset[key], _parent(key))


def _check_fields_kept(cfg: Any, given: Mapping[str, Any]) -> None:
    """A field given as an option (``--output-dir A``) and again as an override of its key to another
    value (``OUTPUT_DIR B``) is one line: the override won silently (the reference's order), so a run
    asked for in folder A went to B. The same value twice is no conflict."""
    for name, value in given.items():
        key = FIELDS[name]
        final = _get(cfg, key)
        if name in PATH_FIELDS and isinstance(value, str) and isinstance(final, str) and value and final:
            # one folder written two ways (a trailing slash, ./out) is the same value
            value_abs = osp.normpath(osp.abspath(osp.expanduser(value)))
            if value_abs == osp.normpath(osp.abspath(osp.expanduser(final))):
                continue
        if final != value:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value} and the override {key} {final!r} set {key} twice, to different "
                              f"values; give it once")


def build_cfg(
    trainer: str = "",
    dataset: str = "",
    config: str = "",
    opts: Optional[Sequence[Any]] = None,
    freeze: bool = True,
    **fields: Any,
) -> Any:
    """The resolved run config.

    Args:
        trainer: registered trainer name (``TRAINER.NAME``); empty keeps the files' value.
        dataset: dataset config, a stem under ``configs/datasets/`` or a yaml path.
        config: trainer config, a stem under ``configs/trainers/<trainer>/`` or a yaml path.
        opts: ``KEY VALUE`` overrides, strings as on a command line or already-typed values.
        freeze: return a frozen node (the default; a run must not change its config).
        **fields: plain fields named in :data:`FIELDS` (``root``, ``output_dir``, ``seed``, ...);
            ``None`` or empty leaves a field alone, ``seed=0`` is honoured (B18).
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ConfigError(f"build_cfg: unknown field(s) {unknown}; known: {sorted(FIELDS)}")
    cfg = get_cfg_default()
    extend_cfg(cfg)
    preset, before = _apply_preset(cfg, trainer)
    files = [
        (resolve_config_file(dataset, "dataset"), "dataset config file"),
        (resolve_config_file(config, "trainer", trainer), "trainer config file"),
    ]
    file_keys: Dict[str, str] = {}
    for path, what in files:
        if path:
            _merge_file(cfg, path, what)
            file_keys.update({k: f"{what} {path}" for k in _file_keys(path)})
    _yield_preset_groups(cfg, trainer, preset, before, file_keys)
    if trainer:
        cfg.TRAINER.NAME = trainer
    given: Dict[str, Any] = {}
    for name, value in fields.items():
        if value is None or (value == "" or value == [] or value == ()) and name != "seed":
            continue
        key = FIELDS[name]
        if name == "enhanced_base" and "TaskRes" not in cfg.TRAINER:
            continue
        merge_opts(cfg, [key, list(value) if isinstance(value, tuple) else value])
        given[name] = _get(cfg, key)
    merge_opts(cfg, opts)
    _check_fields_kept(cfg, given)
    if freeze:
        cfg.freeze()
    return cfg
