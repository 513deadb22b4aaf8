"""The results contract: what a run *is* (its fingerprint), where it lives and what it writes.

Every producer (the engine's ``finalize()``, ``lpclip.linear_probe``) writes ``results.json`` through
:func:`write_results`; every consumer (``scripts.sweep`` and ``scripts.launch`` skip decisions,
``scripts.parse_test_res``, the plots) reads it through :func:`read_results` / :func:`iter_results`.
Nothing here knows a dataset or a backbone: the parts that do (split digests, weights identity) are
handed in by hooks (``DatasetBase.data_identity``, ``SimpleTrainer.identity_parts``).

Fingerprint (stored in ``results.json`` under ``"fingerprint"`` and as a comment header of
``config.yaml``)::

    {"id":      hash of (trainer, semantic config, data, weights[, source]) -- "the same run"
     "group":   the same hash without the seed                      -- what parse_test_res groups by
     "trainer": "FSNL_openclip",
     "config_digest": hash of the semantic config, "config": {flat KEY: value},
     "data":    {"OOP": "<sha256 of the split file>", ...}          -- DatasetBase.data_identity(cfg)
     "weights": clip.weights_identity(cfg) or null,
     "source":  what an evaluation loaded (source_identity) or null,
     "source_run": the training run an evaluation loaded, {"id", "group", "config"} (source_run), or null,
     "fewshot": digest of the sampled train/val records or null,
     "code":    {"commit", "dirty", "packages"}}

The *semantic config* is every resolved key except :data:`EXCLUDED_KEYS` (where files go, how often
the log prints, how many loader workers, throughput-only batch sizes, the dataset root -- the split
digest identifies the data, not the folder it lies in). ``TRAIN.CHECKPOINT_FREQ`` is excluded only
under ``TEST.FINAL_MODEL last_step``: with ``best_val``/``best_test`` it decides which epochs are
candidates, so it changes the result.

``source_run`` is recorded but not hashed (``source.run`` already names that run): it is how
``parse_test_res`` groups and labels an evaluation by the model it scored (:func:`evaluation_config`),
not by the training keys its own command happened to leave at their defaults.

``fewshot`` and ``code`` are recorded but not hashed into ``id``: the few-shot sample is a
deterministic function of the split file (in ``data``), the shots and the seed (in ``config``) and the
code, so it adds nothing a sweep could check without sampling; and a commit that only touches the
README must not invalidate every finished run. :func:`diff_fingerprints` compares them on request
(``match_code=True``, ``scripts.sweep --match-code``) and always reports them.

``results.json`` schema (``"schema": 1``)::

    {"schema": 1, "kind": "run" | "linear_probe", "fingerprint": {...},
     "trainer", "dataset", "sub_classes", "shots", "seed", "backbone", "weights", "epoch",
     "final_model", "split", "accuracy", "metrics": {...}, "subsets": {"OOP": {...}, "IP": {...}},
     "oop", "ip", "hmean",                       (when the subsets were evaluated)
     "loaded": {"model_dir", "epoch", "names_loaded": "3/5", ...} or null,
     "versions": {...}}

A file without ``"schema"`` (written before this contract) reads as schema 0 with no fingerprint:
consumers may aggregate it (``parse_test_res`` labels it ``legacy``) but no sweep ever counts it as
a finished run of a given fingerprint (the sweep says so in one line; ``--force`` reruns it).

Spread: one convention project-wide, the sample standard deviation (ddof 1, :func:`sample_std`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import yaml

from .utils import Registry, WriteError, atomic_write_text, write_json
from .utils.identity import code_version, json_digest, stat_identity

__all__ = [
    "SCHEMA",
    "RESULTS_FILE",
    "DIGEST_FIELD",
    "content_digest",
    "CONFIG_FILE",
    "KINDS",
    "EXCLUDED_KEYS",
    "STD_CONVENTION",
    "ResultsError",
    "RunResults",
    "Finished",
    "semantic_config",
    "fingerprint",
    "WEIGHTS_RESOLVERS",
    "default_weights_identity",
    "source_identity",
    "diff_fingerprints",
    "fingerprint_header",
    "read_header_fingerprint",
    "recorded_max_epoch",
    "config_differences",
    "clear_run",
    "write_config",
    "write_results",
    "read_results",
    "iter_results",
    "find_finished",
    "seed_dir",
    "hparam_dir",
    "short_id",
    "sample_std",
    "mean_std",
    "jsonable",
    "OVERWRITE_ENV",
    "overwrite_requested",
]

logger = logging.getLogger(__name__)

SCHEMA = 1
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
KINDS = ("run", "linear_probe")
HEADER_PREFIX = "# fingerprint: "

#: Config keys that are not part of a run's identity, and why (README "Run fingerprint").
EXCLUDED_KEYS: Mapping[str, str] = {
    "OUTPUT_DIR": "where the run writes, not what it computes",
    "RESUME": "where a run resumes from",
    "DATASET.ROOT": "where the data lies; the split-file digest (data) identifies it",
    "DATASET.FEWSHOT_CACHE_DIR": "where the few-shot sample is cached",
    "DATALOADER.FEATURE_CACHE.DIR": "where the feature cache lives",
    "DATALOADER.NUM_WORKERS": "loader processes",
    "DATALOADER.TEST.BATCH_SIZE": "evaluation throughput only (frozen model in eval mode)",
    "TRAIN.PRINT_FREQ": "log frequency",
    "TRAIN.CHECKPOINT_FREQ": "checkpoint frequency (excluded under TEST.FINAL_MODEL last_step only)",
    "TEST.CACHE_FEATURES": "evaluation speed only (same features, computed once)",
    "TEST.FEATURE_CACHE_DIR": "where the evaluation feature cache lives (its entries are keyed by content)",
    "USE_CUDA": "a request, not the device; the device is recorded in results.json",
    "VERBOSE": "log verbosity",
}
_CONDITIONAL = {"TRAIN.CHECKPOINT_FREQ"}
STD_CONVENTION = "sample std over seeds (ddof 1)"
#: Set to 1 by ``scripts.sweep --force`` and ``scripts.launch --force`` (local and SLURM) for the jobs
#: they start: the jobs' ``--overwrite`` (train.py, lpclip) without rewriting the user's command lines,
#: which may be any shell line.
OVERWRITE_ENV = "FSNL_OVERWRITE"


def overwrite_value(value: Optional[str]) -> bool:
    """Whether a value of :data:`OVERWRITE_ENV` asks for overwriting: 1/true/yes/on (any case) is on;
    unset, empty, 0/false/no/off is off, as the shell wrappers read their switches. Anything else raises
    :class:`~dassl.utils.WriteError` (one line): ``FSNL_OVERWRITE=2`` or ``=y`` read as off, and the run
    then refused a folder the user had asked to replace, naming a fix they believed they had applied."""
    text = "" if value is None else value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise WriteError(errno.EINVAL, f"{OVERWRITE_ENV}={value!r} is not an on/off switch; set {OVERWRITE_ENV}=1 to "
                                   "replace a run of another configuration, or unset it")


def overwrite_requested(flag: bool = False) -> bool:
    """``--overwrite`` given, or :data:`OVERWRITE_ENV` set to 1/true/yes/on by a ``--force`` launcher."""
    return bool(flag) or overwrite_value(os.environ.get(OVERWRITE_ENV))


class ResultsError(ValueError):
    """A results.json that cannot be read as the contract says (one line naming the file)."""


# ---------------------------------------------------------------------------------------- config
def jsonable(value: Any) -> Any:
    """Plain JSON data: mappings → dicts with str keys, tuples → lists, numpy/torch values → numbers."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = jsonable(value)
    return out


def semantic_config(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The flat ``{KEY: value}`` of every key that can change a result (``cfg`` or a plain dict)."""
    flat = _flatten(cfg)
    final_model = flat.get("TEST.FINAL_MODEL", "last_step")
    out = {}
    for key in sorted(flat):
        if key in EXCLUDED_KEYS and not (key in _CONDITIONAL and final_model in ("best_val", "best_test")):
            continue
        out[key] = flat[key]
    return out


# ----------------------------------------------------------------------------------- fingerprint
def _without_seed(weights: Any) -> Any:
    if isinstance(weights, Mapping) and "seed" in weights:
        return {k: v for k, v in weights.items() if k != "seed"}
    return weights


#: How to tell what a config's frozen weights *are*, for trainers without their own ``identity_parts``
#: (e.g. a CoOp-family file dropped into ``trainers/``, which loads OpenAI CLIP by name). Each resolver
#: takes the config and returns an identity dict, or None when the config's backbone is not its kind;
#: the packages that load weights register theirs (``clip.clip`` for OpenAI names), so this module
#: still knows no backbone.
WEIGHTS_RESOLVERS = Registry("WEIGHTS_RESOLVER")


def default_weights_identity(cfg: Any) -> Optional[Dict[str, Any]]:
    """The first registered resolver's identity of ``cfg``'s weights (registration order), else None."""
    for name in WEIGHTS_RESOLVERS.registered_names():
        ident = WEIGHTS_RESOLVERS.get(name)(cfg)
        if ident is not None:
            return dict(ident)
    return None


_CHECKPOINT_NAME = re.compile(r"model\.pth\.tar-\d+|model-best\.pth\.tar|checkpoint")


def _model_dir_fingerprint(model_dir: str, output_dir: str = "") -> Optional[Dict[str, Any]]:
    """The fingerprint in ``model_dir``'s results.json (the training run that wrote it); None without
    one, when it is unreadable, or when ``model_dir`` is this run's own folder."""
    if not model_dir or (output_dir and osp.realpath(model_dir) == osp.realpath(output_dir)):
        return None
    if not (Path(model_dir) / RESULTS_FILE).is_file():
        return None
    try:
        return read_results(model_dir).fingerprint
    except ResultsError:
        return None


def source_identity(model_dir: str, load_epoch: Optional[int] = None, output_dir: str = "") -> Optional[Dict[str, Any]]:
    """What an evaluation loads (``--model-dir`` / ``--load-epoch``), for its fingerprint: the fingerprint
    id of the run that wrote ``model_dir`` (its results.json, unless it is this run's own folder) and a
    digest of its checkpoint files' relative paths, sizes and mtimes -- so retraining the model dir, or
    pointing at another one, is another evaluation. None without a model dir (a run that trains)."""
    if not model_dir:
        return None
    root = Path(model_dir)
    files = sorted(p for p in root.glob("*/*") if p.is_file() and _CHECKPOINT_NAME.fullmatch(p.name))
    stats = [[p.relative_to(root).as_posix(), *stat_identity(str(p))] for p in files]
    run = (_model_dir_fingerprint(model_dir, output_dir) or {}).get("id")
    return {"run": run, "checkpoints": json_digest(stats), "load_epoch": load_epoch}


def source_run(model_dir: str, output_dir: str = "") -> Optional[Dict[str, Any]]:
    """The training run an evaluation loads: ``{"id", "group", "config"}`` of the fingerprint in
    ``model_dir``'s results.json (None without one). Recorded beside ``source`` so that consumers group
    an evaluation by the model it scored (:func:`evaluation_config`): two models trained at different
    learning rates and evaluated by one command line are two results, not one seed twice."""
    fp = _model_dir_fingerprint(model_dir, output_dir)
    if not fp or not isinstance(fp.get("config"), dict):
        return None
    return {"id": fp.get("id"), "group": fp.get("group"), "config": fp["config"]}


#: Config keys that only shape training (the schedule, the training batches and their feature views):
#: an evaluation's own values of them are whatever its command left, so :func:`evaluation_config`
#: takes them from the run that trained the model.
TRAINING_ONLY_PREFIXES = ("OPTIM.", "TRAIN.", "DATALOADER.TRAIN_X.", "DATALOADER.TRAIN_U.", "DATALOADER.FEATURE_CACHE.")


def evaluation_config(fp: Mapping[str, Any]) -> Dict[str, Any]:
    """The flat config a run is grouped and labelled by: its own ``config``, except for an evaluation of
    a trained model (``source_run`` recorded), whose training-only keys (:data:`TRAINING_ONLY_PREFIXES`)
    come from the run that trained the model, plus ``source.load_epoch`` when it picked an epoch.
    Before, an evaluation was grouped by its command's defaults: models trained at two learning rates
    and scored by one eval command were "the same configuration", and one of them was dropped as a
    duplicate seed (or their seeds were averaged together). An evaluation of the final model under the
    training run's other keys is that run's configuration, so its IP accuracy joins the run's OOP one
    (the reference's train-on-OOP, evaluate-on-IP workflow)."""
    own = dict(fp.get("config") or {})
    trained = fp.get("source_run")
    if not isinstance(trained, Mapping) or not isinstance(trained.get("config"), Mapping):
        return own
    flat = {k: v for k, v in own.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    flat.update({k: v for k, v in trained["config"].items() if k.startswith(TRAINING_ONLY_PREFIXES)})
    source = fp.get("source")
    if isinstance(source, Mapping) and source.get("load_epoch") is not None:
        flat["source.load_epoch"] = source.get("load_epoch")
    return flat


def fingerprint(
    config: Mapping[str, Any],
    trainer: str = "",
    data: Optional[Mapping[str, Any]] = None,
    weights: Optional[Mapping[str, Any]] = None,
    fewshot: Optional[str] = None,
    code: Optional[Mapping[str, Any]] = None,
    source: Optional[Mapping[str, Any]] = None,
    source_run: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """A run's fingerprint from its resolved config (a yacs node or a plain, possibly nested, dict)
    and the identity parts the hooks computed. ``code`` defaults to :func:`code_version`; ``source``
    is :func:`source_identity` of an evaluation's model dir, ``source_run`` its :func:`source_run`
    (recorded, not hashed)."""
    semantic = semantic_config(config)
    trainer = str(trainer or semantic.get("TRAINER.NAME", ""))
    data = jsonable(dict(data or {}))
    weights = jsonable(weights) if weights is not None else None
    source = jsonable(dict(source)) if source else None
    unseeded = {k: v for k, v in semantic.items() if k != "SEED"}
    hashed = {"trainer": trainer, "config": semantic, "data": data, "weights": weights}
    grouped = {"trainer": trainer, "config": unseeded, "data": data, "weights": _without_seed(weights)}
    if source is not None:  # keeps the ids of training runs independent of this optional part
        hashed["source"] = grouped["source"] = source
    return {
        "id": json_digest(hashed),
        "group": json_digest(grouped),
        "trainer": trainer,
        "config_digest": json_digest(semantic),
        "config": semantic,
        "data": data,
        "weights": weights,
        "source": source,
        "source_run": jsonable(dict(source_run)) if source_run else None,
        "fewshot": fewshot,
        "code": jsonable(dict(code)) if code is not None else code_version(),
    }


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ABSENT = object()


def diff_fingerprints(old: Optional[Mapping[str, Any]], new: Mapping[str, Any], match_code: bool = False,
                      seed: bool = True) -> List[str]:
    """What differs between two fingerprints, one readable item per key (empty: the same run).

    Config keys are named one by one (``OPTIM.LR 0.002 -> 0.001``); ``trainer``, ``data.<subset>``
    and ``weights`` as a whole. ``code`` counts only with ``match_code``; ``seed=False`` ignores
    ``SEED`` (and the seed of a random init), which is how runs are grouped.
    """
    if not old:
        return ["no fingerprint (results.json written before schema 1)"]
    out: List[str] = []
    if old.get("trainer") != new.get("trainer"):
        out.append(f"trainer {old.get('trainer')!r} -> {new.get('trainer')!r}")
    a, b = old.get("config") or {}, new.get("config") or {}
    for key in sorted(set(a) | set(b)):
        if not seed and key == "SEED":
            continue
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            shown_a = "(absent)" if va is _ABSENT else _short(va)
            shown_b = "(absent)" if vb is _ABSENT else _short(vb)
            out.append(f"{key} {shown_a} -> {shown_b}")
    da, db = old.get("data") or {}, new.get("data") or {}
    # a probe's data are the feature files it reads (named "split file content" before: the split files
    # had not changed)
    content = "feature file content" if new.get("trainer") == "linear_probe" else "split file content"
    for key in sorted(set(da) | set(db)):
        if da.get(key) != db.get(key):
            out.append(f"data.{key} ({content})")
    wa, wb = old.get("weights"), new.get("weights")
    if (wa if seed else _without_seed(wa)) != (wb if seed else _without_seed(wb)):
        out.append("weights (backbone weights identity)")
    if old.get("source") != new.get("source"):
        out.append("source (the evaluated --model-dir / --load-epoch)")
    if not out and old.get("id") != new.get("id") and seed:
        out.append("fingerprint id (same parts, different hash: written by another code version)")
    if match_code and (old.get("code") or {}).get("commit") != (new.get("code") or {}).get("commit"):
        out.append(f"code {(old.get('code') or {}).get('commit')} -> {(new.get('code') or {}).get('commit')}")
    return out


def short_id(fp: Mapping[str, Any], length: int = 8) -> str:
    return str(fp["id"])[:length]


# ------------------------------------------------------------------------------------ run naming
def seed_dir(seed: Any) -> str:
    """The last folder of every run directory (the reference's ``seed<S>``)."""
    return f"seed{seed}"


#: A value part that reads like the start of another ``KEY.NAME_value`` pair of :func:`hparam_dir`.
_PAIR_LIKE = re.compile(r"_[A-Z][A-Z0-9_]*\.")


def _fmt_value(value: Any) -> str:
    """``value`` as a folder-name part: letters, digits and ``._-+``, others as ``-``. A value that loses
    characters so, or that could read as a further ``_KEY.NAME_value`` pair of :func:`hparam_dir`, gets
    ``~`` and 6 hex of its digest (``~`` is no character a value keeps, so no value spells it): two values
    never share a folder (``"a  photo/of"`` and ``"a--photo-of"`` were one, and ``--force`` for one would
    have replaced the other's run)."""
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "-".join(_fmt_value(v) for v in value) or "none"
    else:
        text = str(value)
    safe = "".join(c if c.isalnum() or c in "._-+~" else "-" for c in text)
    if safe == text and "~" not in text and not _PAIR_LIKE.search(text):
        return safe
    return f"{safe.replace('~', '-')}~{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def hparam_dir(pairs: Sequence[Tuple[str, Any]], fp: Optional[Mapping[str, Any]] = None) -> str:
    """A readable, complete folder name for hyper-parameters: ``KEY_value`` joined by ``_`` with the
    full key (``OPTIM.LR_0.002``, so two keys never share a name), plus ``_h<8 hex>`` of the
    fingerprint when one is given (for what a name cannot show)."""
    parts = [f"{key}_{_fmt_value(value)}" for key, value in pairs]
    if fp is not None:
        parts.append(f"h{short_id(fp)}")
    return "_".join(parts)


# ----------------------------------------------------------------------------------- config.yaml
def fingerprint_header(fp: Mapping[str, Any]) -> str:
    """Comment lines for the top of ``config.yaml`` (yaml ignores them; :func:`read_header_fingerprint`
    reads them back)."""
    lines = [
        f"{HEADER_PREFIX}{fp['id']}",
        f"# fingerprint group (without seed): {fp['group']}",
        f"# trainer: {fp['trainer']}  config digest: {fp['config_digest']}",
        f"# data: {json.dumps(fp.get('data') or {}, sort_keys=True)}",
        f"# weights: {json.dumps(fp.get('weights'), sort_keys=True, default=str)}",
        f"# code: {(fp.get('code') or {}).get('commit')}{' (dirty)' if (fp.get('code') or {}).get('dirty') else ''}",
    ]
    return "\n".join(lines) + "\n"


def read_header_fingerprint(path: str) -> Optional[str]:
    """The fingerprint id in a ``config.yaml`` header, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                if line.startswith(HEADER_PREFIX):
                    return line[len(HEADER_PREFIX):].strip()
    except OSError:
        return None
    return None


def recorded_max_epoch(directory: str) -> Optional[int]:
    """``OPTIM.MAX_EPOCH`` of the run whose ``config.yaml`` (written by this code: it has a fingerprint
    header) lies in ``directory``; None for any other folder (CoOp's own outputs) or an unreadable file."""
    path = osp.join(directory, CONFIG_FILE)
    if read_header_fingerprint(path) is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            body = yaml.safe_load(f)
        value = body["OPTIM"]["MAX_EPOCH"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _header_json(line: str, prefix: str) -> Any:
    try:
        return json.loads(line[len(prefix):])
    except ValueError:
        return None


def config_differences(path: str, fp: Mapping[str, Any]) -> Optional[List[str]]:
    """What differs between the run recorded in the ``config.yaml`` at ``path`` and fingerprint ``fp``,
    one item per key as :func:`diff_fingerprints` names them; [] when the header's id is ``fp``'s;
    None when there is no readable fingerprint header. The config keys come from the file's body
    (the resolved config), trainer, data and weights from its header, so the refusal of a folder
    that holds another run names e.g. ``OPTIM.LR 0.002 -> 0.3`` rather than two hashes."""
    header = read_header_fingerprint(path)
    if header is None:
        return None
    if header == fp.get("id"):
        return []
    data: Any = None
    weights: Any = None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("# data: "):
                data = _header_json(line, "# data: ")
            elif line.startswith("# weights: "):
                weights = _header_json(line, "# weights: ")
        body = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        body = None
    if not isinstance(body, dict):
        return [f"fingerprint {header[:12]} -> {str(fp.get('id'))[:12]}"]
    config = semantic_config(body)
    old = {"id": header, "trainer": config.get("TRAINER.NAME"), "config": config, "data": data,
           "weights": weights, "source": fp.get("source")}
    return diff_fingerprints(old, fp) or [f"fingerprint {header[:12]} -> {str(fp.get('id'))[:12]}"]


def clear_run(output_dir: str, checkpoints: bool = True) -> List[str]:
    """Remove what a run of this code wrote into ``output_dir`` that a new run of another configuration
    would otherwise resume or be mistaken for: ``results.json`` and the checkpoint files in the model
    folders (``<model>/model.pth.tar-<E>``, ``model-best.pth.tar``, ``checkpoint``). Nothing else is
    touched (config.yaml is rewritten by the new run, logs rotate, a user's files stay). Returns the
    removed paths; ``checkpoints=False`` removes only results.json (an evaluation's overwrite). Used only
    where the user asked to overwrite (``train.py --overwrite``, ``--force``)."""
    removed: List[str] = []
    results = osp.join(output_dir, RESULTS_FILE)
    if osp.isfile(results):
        os.remove(results)
        removed.append(results)
    if not checkpoints or not osp.isdir(output_dir):
        return removed
    for entry in sorted(os.listdir(output_dir)):
        sub = osp.join(output_dir, entry)
        if not osp.isdir(sub) or osp.islink(sub):
            continue
        for name in sorted(os.listdir(sub)):
            path = osp.join(sub, name)
            if _CHECKPOINT_NAME.fullmatch(name) and osp.isfile(path) and not osp.islink(path) and _written_by_us(path):
                os.remove(path)
                removed.append(path)
    return removed


#: How a file ``torch.save`` wrote begins: a zip archive (torch >= 1.6), or a pickle (older torch).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _written_by_us(path: str) -> bool:
    """Whether a file of a checkpoint's name is what the trainers write there: a ``torch.save`` file, or a
    ``checkpoint`` pointer naming a checkpoint file. A user's note of that name in some subfolder was
    deleted by ``--overwrite`` (never delete what this code did not write)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    if osp.basename(path) == "checkpoint":
        name = head.decode("utf-8", "replace").strip()
        return len(head) < 256 and bool(_CHECKPOINT_NAME.fullmatch(name)) and name != "checkpoint"
    return head.startswith(_TORCH_MAGIC)


def write_config(output_dir: str, cfg_text: str, fp: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``config.yaml`` (atomically), with the fingerprint header when ``fp`` is given."""
    path = osp.join(output_dir, CONFIG_FILE)
    atomic_write_text(path, (fingerprint_header(fp) if fp else "") + cfg_text)
    return path


# ---------------------------------------------------------------------------------- results.json
@dataclass
class RunResults:
    """One ``results.json`` as read: ``schema`` 0 means an unversioned (pre-contract) file."""

    path: str
    data: Dict[str, Any]
    schema: int
    kind: str
    fingerprint: Optional[Dict[str, Any]] = None

    @property
    def run_dir(self) -> str:
        return osp.dirname(self.path)

    @property
    def legacy(self) -> bool:
        return self.schema == 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


_REQUIRED = {"run": ("trainer", "dataset", "seed", "accuracy"), "linear_probe": ("dataset", "shots")}


def write_results(output_dir: str, payload: Mapping[str, Any], fp: Mapping[str, Any], kind: str = "run",
                  loaded: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``<output_dir>/results.json`` (atomically) in the current schema; returns the path.

    ``payload`` holds the metrics and descriptive fields; ``fp`` the fingerprint; ``loaded`` what an
    evaluation loaded (model dir, epoch, ``names_loaded`` ...), or None for a run that trained.
    """
    if kind not in KINDS:
        raise ValueError(f"results kind must be one of {KINDS}, got {kind!r}")
    missing = [k for k in _REQUIRED[kind] if k not in payload]
    if missing:
        raise ValueError(f"results.json of kind {kind!r} lacks field(s) {missing}")
    if not fp or "id" not in fp:
        raise ValueError("results.json needs a fingerprint (dassl.results.fingerprint)")
    out: Dict[str, Any] = {"schema": SCHEMA, "kind": kind}
    out.update({k: v for k, v in payload.items() if k not in ("schema", "kind", "fingerprint", "loaded")})
    out["loaded"] = dict(loaded) if loaded else None
    out["fingerprint"] = dict(fp)
    out = jsonable(out)
    out[DIGEST_FIELD] = content_digest(out)
    path = osp.join(output_dir, RESULTS_FILE)
    write_json(out, path)
    return path


#: The field of a results.json holding the SHA-256 of the rest of its content (:func:`content_digest`).
DIGEST_FIELD = "digest"


def content_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of ``data`` without :data:`DIGEST_FIELD`, as canonical JSON: a results.json edited by hand
    after it was written (an accuracy changed, a field dropped) no longer matches it. The tables, the
    sweep's skip check and every other reader went on trusting such a file: ``accuracy`` 99 beside an
    ``error_rate`` of 60 was tabulated as 99."""
    rest = {k: v for k, v in data.items() if k != DIGEST_FIELD}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_results(path: str) -> RunResults:
    """Read ``results.json`` (or the one in a run directory); raises :class:`ResultsError` naming the file.

    An unversioned file is accepted as schema 0 (no fingerprint); a newer schema than this code knows
    is refused, as is a file that is not a JSON object.
    """
    if osp.isdir(path):
        path = osp.join(path, RESULTS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise ResultsError(f"{path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); delete the run or rerun it") from None
    except UnicodeDecodeError as err:  # a byte no UTF-8 text has: a traceback in the sweep's skip check before
        raise ResultsError(f"{path}: not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                           "delete the run or rerun it") from None
    except RecursionError:
        raise ResultsError(f"{path}: JSON nested too deeply to be a results.json; delete the run or rerun it") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema", 0)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 0:
        raise ResultsError(f"{path}: invalid schema {schema!r}")
    if schema > SCHEMA:
        raise ResultsError(f"{path}: schema {schema} is newer than this code's {SCHEMA}; update the code")
    if schema == 0:
        kind = "linear_probe" if isinstance(data.get("shots"), dict) else "run"
        return RunResults(str(path), data, 0, kind, None)
    kind = data.get("kind", "run")
    if kind not in KINDS:
        raise ResultsError(f"{path}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    fp = data.get("fingerprint")
    if not isinstance(fp, dict) or "id" not in fp:
        raise ResultsError(f"{path}: schema {schema} file without a fingerprint")
    problem = _fingerprint_problem(fp) or _fields_problem(data, str(kind))
    if problem:  # a hand-edited file: each consumer's comparison was a traceback, or counted it finished
        raise ResultsError(f"{path}: {problem}; delete the run or rerun it")
    recorded = data.get(DIGEST_FIELD)  # files of older code have none
    if recorded is not None and recorded != content_digest(data):
        raise ResultsError(f"{path}: its content no longer matches the digest written with it (edited after the "
                           "run?); delete the run or rerun it")
    return RunResults(str(path), data, int(schema), str(kind), fp)


#: The type of each fingerprint part as :func:`fingerprint` writes it; all but ``id`` and ``config``
#: may be null (or absent, in files of older code).
_FINGERPRINT_TYPES: Mapping[str, type] = {
    "id": str, "config": dict, "group": str, "trainer": str, "data": dict, "weights": dict, "source": dict,
    "source_run": dict, "fewshot": str, "code": dict,
}


def _fingerprint_problem(fp: Mapping[str, Any]) -> Optional[str]:
    """What makes a stored fingerprint unlike any :func:`fingerprint` writes (None: nothing)."""
    for key, kind in _FINGERPRINT_TYPES.items():
        value = fp.get(key)
        if value is None and key not in ("id", "config"):
            continue
        if not isinstance(value, kind):
            return f'fingerprint field "{key}" is {type(value).__name__}, not {kind.__name__}'
    return None


def _fields_problem(data: Mapping[str, Any], kind: str) -> Optional[str]:
    """A results field the contract requires that is absent (a run without its accuracy is not finished)."""
    missing = [k for k in _REQUIRED[kind] if k not in data]
    if missing:
        return f"lacks the field(s) {missing} every {kind!r} results.json has"
    accuracy = data.get("accuracy")
    if kind == "run" and (not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool)):
        return f'field "accuracy" is {type(accuracy).__name__}, not a number'
    return None


def iter_results(root: str) -> Iterator[RunResults]:
    """Every readable ``results.json`` below ``root`` in sorted path order; unreadable ones are
    skipped with a warning that names them.

    Folder links are followed, each real folder once (a link loop ends there): a run linked in from
    another disk was left out without a word. A file is read at the path it was found under, so its
    place in the layout names it (a linked results.json was read at its target, and its run filed
    under a raw trainer name); the same file reached twice counts once."""
    found: List[str] = []
    seen_dirs, seen_files = set(), set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = osp.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()  # a folder reached twice is read under its first path in sorted order
        if RESULTS_FILE in dirnames:
            logger.warning("Skipping %s: a directory, not a run's results file", osp.join(dirpath, RESULTS_FILE))
        if RESULTS_FILE in filenames:
            path = osp.join(osp.abspath(dirpath), RESULTS_FILE)
            if osp.realpath(path) not in seen_files:
                seen_files.add(osp.realpath(path))
                found.append(path)
    for path in sorted(found, key=lambda p: Path(p).parts):
        res = read_results_or_warn(path)
        if res is not None:
            yield res


def read_results_or_warn(path: str) -> Optional[RunResults]:
    """:func:`read_results`, or None after a warning naming the file when it cannot be read as the
    contract says (what a scan over many runs does with one broken file)."""
    try:
        return read_results(path)
    except ResultsError as err:
        logger.warning("Skipping %s", err)
        return None


@dataclass
class Finished:
    """Outcome of :func:`find_finished` for one run directory."""

    state: str  #: "missing" | "match" | "mismatch" | "unreadable"
    path: str
    differences: List[str] = field(default_factory=list)
    results: Optional[RunResults] = None
    #: what ``path`` holds, for messages ("finished run"; the grid's "unfinished run" of checkpoints)
    what: str = "finished run"

    @property
    def done(self) -> bool:
        return self.state == "match"

    def line(self) -> str:
        if self.state == "match":
            return f"{self.path}: finished run with the same fingerprint"
        if self.state == "missing":
            return f"{self.path}: no results"
        return f"{self.path} holds a different run: {'; '.join(self.differences)}"


def find_finished(output_dir: str, fp: Mapping[str, Any], match_code: bool = False) -> Finished:
    """Whether ``output_dir`` holds a finished run with fingerprint ``fp`` (the only reason to skip)."""
    path = osp.join(output_dir, RESULTS_FILE)
    if not osp.isfile(path):
        return Finished("missing", path)
    try:
        res = read_results(path)
    except ResultsError as err:
        return Finished("unreadable", path, [str(err)])
    diff = diff_fingerprints(res.fingerprint, fp, match_code=match_code)
    return Finished("mismatch" if diff else "match", path, diff, res)


# ---------------------------------------------------------------------------------------- spread
def _values(values: Iterable[Any]) -> List[float]:
    out = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if not math.isnan(f):
            out.append(f)
    return out


def sample_std(values: Iterable[Any]) -> float:
    """Sample standard deviation (ddof 1) -- the project's one spread convention; nan below 2 values."""
    vals = _values(values)
    n = len(vals)
    if n < 2:
        return math.nan
    mean = sum(vals) / n
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))


def mean_std(values: Iterable[Any]) -> Tuple[float, float, int]:
    """``(mean, sample std, n)`` of the non-missing values (nan where undefined)."""
    vals = _values(values)
    if not vals:
        return math.nan, math.nan, 0
    return sum(vals) / len(vals), sample_std(vals), len(vals)

