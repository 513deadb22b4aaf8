"""Frozen CLIP image features for the linear probe (spec §9.1).

The original README's command, verbatim::

    python lpclip/feat_extractor.py --dataset Animals92_42 --root DATA

extracts every split the probe needs (train, val, test of ``DATASET.SUB_CLASSES``, default OOP) in one
call, into ``clip_feat/`` of the current directory (the reference ran it from inside ``lpclip/`` and
the probe reads ``--feature_dir clip_feat`` there), with the reference's lpclip config
(``configs/trainers/CoOp_openclip/vit_b16_ep200_ctxv1_lpclip.yaml``: OpenCLIP ViT-B-16,
``laion400m_e32``). Everything else is optional::

    python lpclip/feat_extractor.py --root DATA [--dataset NAME | --dataset-config-file FILE] \\
        [--output-dir clip_feat] [--split train val test] [--config-file CFG] [--views V] \\
        [--seed S] [--num-shot K] [--precision fp32|amp] [KEY VALUE ...]

Trailing ``KEY VALUE`` overrides work as for ``train.py`` (the config is built by
``configs.build_cfg``), e.g. ``MODEL.BACKBONE.NAME test-tiny MODEL.BACKBONE.WEIGHTS none``. Writes
``<output-dir>/<DATASET.NAME>/<SUB_CLASSES>/<split>.npz`` with

* ``features`` ``[N, D]`` float32, L2-normalised; ``features_raw`` the projected, unnormalised features
  (what the reference saved and probed);
* ``labels`` ``[N]`` int64, ``image_ids`` ``[N]`` (index of the source image in the split; the V views of
  one image share it), ``classnames`` (label order), and 0-d ``backbone``, ``weights``, ``transform``,
  ``views``;
* ``fingerprint``: the backbone's identity as a JSON string (``clip.weights_identity`` -- for unseeded
  random weights, a digest of the initialised parameters -- plus model, activation, precision and
  the ``INPUT`` transform config). The probe refuses splits whose fingerprints differ.
* ``job``: the file's job identity as a JSON string (:func:`job_identity`: the weights, precision,
  transform, dataset and split-file digests, subset, split, views, shots and seed, all from the
  config). ``scripts.sweep`` skips an extraction job only when the file on disk carries the identity
  the job would write; a file of another configuration is never taken for it.

Differences from the reference, all deliberate (B32, B33, P9):

* ``--dataset NAME`` (the reference README's flag, which its extractor lacked) and no required
  ``--split``/``--output-dir``; the backbone is loaded once for all splits of a call;
* ``DATASET.SUB_CLASSES`` defaults to OOP and any config key can be overridden on the command line;
  ``--seed`` and ``--num-shot`` are applied; the device and precision are not hard-coded;
* the train split uses the deterministic test transform unless ``--views V`` asks for V augmented views
  (train transform) per image, instead of one random augmentation;
* features are gathered batch-wise into one tensor under ``torch.inference_mode`` (no per-sample
  ``.tolist()``) and each file is written atomically;
* mistakes (unknown dataset, bad config key, backbone that cannot be loaded, INPUT.SIZE that does not
  fit the backbone) end in one ``error:`` line and exit code 2 before anything is written.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import argparse
import contextlib
import hashlib
import json
import logging
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clip import BackboneError, LoadedCLIP, autocast, drawn_anew, load_clip, weights_identity
from clip.loader import check_backbone
from configs import ConfigError, build_cfg, check_cfg
from dassl import results
from dassl.cli import ArgumentParser
from dassl.ctrl_c import exit_with
from dassl.data import build_data_loader
from dassl.data.datasets import build_dataset, data_dirs, data_identity
from dassl.data.transforms import build_transform
from dassl.utils import (
    READ_IMAGE_VERSION,
    WriteError,
    atomic_write,
    check_outside,
    check_writable_dir,
    hold_output_dir,
    missing_dirs,
    requested_device,
    set_random_seed,
    setup_logger,
)
from dassl.utils.registry import RegistryKeyError
from datasets.laion_beyond import DatasetError
from lpclip.files import (
    FINGERPRINT_KEY,
    JOB_KEY,
    SPLITS,
    FeatureError,
    feature_file,
    job_differences,
    read_job,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXTRACT_PRECISIONS = ("fp32", "amp")
#: The reference's lpclip config (spec §5.4); a relative --config-file is read from the cwd as usual.
DEFAULT_CONFIG_FILE = str(REPO_ROOT / "configs" / "trainers" / "CoOp_openclip" / "vit_b16_ep200_ctxv1_lpclip.yaml")
#: Relative to the current directory, as the reference (run from ``lpclip/``) and its probe expect.
DEFAULT_OUTPUT_DIR = "clip_feat"

USER_ERRORS = (ConfigError, RegistryKeyError, BackboneError, DatasetError, FeatureError, WriteError)


def _split_first(argv: List[str]) -> List[str]:
    """Move ``--split NAME...`` to the front: its ``nargs="+"`` would otherwise swallow the trailing
    ``KEY VALUE`` overrides (``--split train DATASET.SUB_CLASSES IP``). Several ``--split`` options are
    merged into one (the last one used to win silently: ``--split train --split val`` wrote val only)."""
    names: List[str] = []
    rest: List[str] = []
    i, found, bare = 0, False, False
    while i < len(argv):
        if argv[i].startswith("--split="):  # the one-token form names one split
            found = True
            names.append(argv[i].split("=", 1)[1])
            i += 1
        elif argv[i] == "--split":
            found = True
            j = i + 1
            while j < len(argv) and argv[j] in SPLITS:
                j += 1
            names += argv[i + 1:j]
            bare = bare or j == i + 1  # no split name: argparse reports it (at the front, not among the overrides)
            i = j
        else:
            rest.append(argv[i])
            i += 1
    if not found:
        return argv
    return (["--split"] if bare else ["--split", *names]) + rest


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python lpclip/feat_extractor.py", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="dataset root (DATASET.ROOT)")
    p.add_argument("--dataset", default="", help="dataset name: reads configs/datasets/<NAME>.yaml")
    p.add_argument("--dataset-config-file", default="", help="dataset yaml (instead of --dataset)")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                   help="features go to <output-dir>/<DATASET.NAME>/<SUB_CLASSES>/ (default: ./clip_feat)")
    p.add_argument("--config-file", default=DEFAULT_CONFIG_FILE,
                   help="trainer yaml: input size, backbone, batch size (default: the reference's lpclip config)")
    p.add_argument("--split", nargs="+", choices=SPLITS, default=list(SPLITS),
                   help="split(s) to extract (default: all three, what the probe needs)")
    p.add_argument("--seed", type=int, default=None,
                   help="SEED: seeds random weights, the augmentation of --views and few-shot sampling")
    p.add_argument("--num-shot", type=int, default=-1,
                   help="DATASET.NUM_SHOTS (default -1: the full split; the probe samples its own shots)")
    p.add_argument("--views", type=int, default=0,
                   help="train split only: V augmented views per image (train transform); 0 = test transform")
    p.add_argument("--backbone", default="", help="MODEL.BACKBONE.NAME")
    p.add_argument("--trainer", default="", help="TRAINER.NAME (only for trainer backbone presets)")
    p.add_argument("--precision", default="fp32", choices=EXTRACT_PRECISIONS,
                   help="fp32, or amp (fp16 autocast) on a GPU; CPU always runs fp32")
    p.add_argument("--batch-size", type=int, default=0, help="default: DATALOADER.TEST.BATCH_SIZE")
    p.add_argument("--device", default="", help="torch device; default: the GPU when available, else CPU")
    p.add_argument("--overwrite", action="store_true",
                   help="replace feature files of another extraction (other backbone, transform, views, ...)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, as for train.py")
    args = p.parse_args(_split_first(sys.argv[1:] if argv is None else list(argv)))
    args.split = list(dict.fromkeys(args.split))
    if args.views < 0:
        p.error("--views must be >= 0")
    if args.batch_size < 0:
        p.error(f"--batch-size {args.batch_size}: must be >= 1 (0: DATALOADER.TEST.BATCH_SIZE)")
    if not args.output_dir:
        p.error("--output-dir is empty; name the folder the features go to (default: clip_feat)")
    if args.views and "train" not in args.split:
        p.error("--views only applies to the train split (val/test always use the test transform)")
    if args.dataset and args.dataset_config_file:
        p.error("give --dataset NAME or --dataset-config-file FILE, not both")
    if not (args.dataset or args.dataset_config_file):
        p.error("name the dataset: --dataset NAME (e.g. Animals92_42) or --dataset-config-file FILE")
    return args


def config_from_args(args: argparse.Namespace) -> Any:
    """The run config: the same library call ``train.py`` makes (``configs.build_cfg``)."""
    opts = list(args.opts or [])
    if args.num_shot != -1:
        opts += ["DATASET.NUM_SHOTS", str(args.num_shot)]
    return build_cfg(trainer=args.trainer, dataset=args.dataset or args.dataset_config_file,
                     config=args.config_file, opts=opts, root=args.root, output_dir=args.output_dir,
                     seed=args.seed, backbone=args.backbone)


def pick_device(cfg: Any) -> torch.device:
    """The GPU when ``USE_CUDA`` and one is visible, else the CPU (``--device`` goes through
    :func:`dassl.utils.requested_device` first)."""
    if cfg.USE_CUDA and torch.cuda.is_available():
        return torch.device(torch.cuda.current_device())
    return torch.device("cpu")


@torch.inference_mode()
def encode_loader(loaded: Any, loader: Any, device: torch.device, precision: Any, views: int = 1) -> Dict[str, torch.Tensor]:
    """Raw projected features, labels and image ids for ``views`` passes over ``loader``.

    Rows are view-major (view v of image i is row ``v·N + i``); the loader's ``index`` places each batch,
    so nothing depends on batch order or size.
    """
    n = len(loader.dataset)
    dim = int(loaded.embed_dim)
    raw = torch.empty(views * n, dim, dtype=torch.float32)
    labels = torch.full((views * n,), -1, dtype=torch.int64)
    model = loaded.model
    for v in range(views):
        for batch in loader:
            rows = batch["index"].long() + v * n
            images = batch["img"].to(device, dtype=loaded.dtype, non_blocking=True)
            with autocast(precision, device):
                feats = model.encode_image(images)
            raw[rows] = feats.float().cpu()
            labels[rows] = torch.as_tensor(batch["label"]).long()
    if bool((labels < 0).any()):
        raise RuntimeError("Some images were not visited by the loader")
    image_ids = torch.arange(n, dtype=torch.int64).repeat(views)
    return {"features_raw": raw, "labels": labels, "image_ids": image_ids}


def save_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (a crash never leaves a half-written file behind)."""
    atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb")


def parameters_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes, in state-dict order: what an unseeded random
    init *is* (its seed is not known, so nothing else identifies it)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode("utf-8"))
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def backbone_fingerprint(cfg: Any, loaded: LoadedCLIP) -> Dict[str, Any]:
    """What makes two feature files comparable: weights identity, model, activation, precision and the
    input transform config. Unseeded random weights (``WEIGHTS none`` without ``--seed``) differ on
    every load, so their identity is the digest of the parameters this call drew."""
    weights = dict(weights_identity(cfg))
    if drawn_anew(weights):
        weights["parameters_sha256"] = parameters_digest(loaded.model)
    return {
        "weights": weights,
        "model": str(loaded.name),
        "quick_gelu": bool(loaded.quick_gelu),
        "precision": loaded.precision.name,
        "transform": {k: cfg.INPUT[k] for k in sorted(cfg.INPUT)},
    }


def fingerprint_string(cfg: Any, loaded: LoadedCLIP) -> str:
    """:func:`backbone_fingerprint` as the JSON string stored in every npz."""
    return json.dumps(backbone_fingerprint(cfg, loaded), sort_keys=True, default=str)


def job_identity(cfg: Any, split: str, views: int = 0, precision: str = "fp32") -> Optional[Dict[str, Any]]:
    """What the feature file of ``split`` written by ``extract(cfg, ..., views, precision=...)`` is a
    function of, from the config alone (no model loaded, no image read); None when that cannot be
    known in advance -- unseeded random weights (``WEIGHTS none`` with a negative ``SEED``) draw new
    parameters on every load, so no file on disk is ever that job's output."""
    weights = weights_identity(cfg)
    if drawn_anew(weights):
        return None
    augment = split == "train" and views > 0
    shots = int(cfg.DATASET.NUM_SHOTS)
    ident = {
        "weights": weights,
        "precision": str(precision),
        "transform": {k: cfg.INPUT[k] for k in sorted(cfg.INPUT)},
        # the pixels read_image gives: a file extracted by an older decoder holds other features
        "decoder": READ_IMAGE_VERSION,
        "dataset": str(cfg.DATASET.NAME),
        "sub_classes": str(cfg.DATASET.SUB_CLASSES),
        "data": data_identity(cfg),
        "split": str(split),
        "views": int(views) if augment else 0,
        "num_shots": shots,
        # the seed draws the views' augmentations and the few-shot sample; otherwise it changes nothing
        "seed": int(cfg.SEED) if augment or shots >= 1 else None,
    }
    return json.loads(json.dumps(ident, sort_keys=True, default=str))  # as stored: tuples become lists


def job_string(cfg: Any, split: str, views: int = 0, precision: str = "fp32") -> str:
    """:func:`job_identity` as the JSON string stored in the npz (``null`` when it cannot be known)."""
    return json.dumps(job_identity(cfg, split, views, precision), sort_keys=True, default=str)


def feature_file_state(path: str, cfg: Any, split: str, views: int = 0, precision: str = "fp32") -> results.Finished:
    """Whether ``path`` is the file ``extract(cfg, [split], views, precision=...)`` would write:
    ``match`` (same job identity: reuse it), ``missing`` (absent, or its identity cannot be known in
    advance), ``mismatch`` (another job's file: the differing keys) or ``unreadable``."""
    if not osp.isfile(path):
        return results.Finished("missing", path)
    expected = job_identity(cfg, split, views, precision)
    if expected is None:
        return results.Finished("missing", path)
    try:
        differences = job_differences(read_job(path), expected)
    except FeatureError as err:
        return results.Finished("unreadable", path, [str(err)])
    return results.Finished("mismatch", path, [f"job {d}" for d in differences]) if differences \
        else results.Finished("match", path)


def feature_arrays(raw: torch.Tensor, labels: torch.Tensor, image_ids: torch.Tensor, classnames: Sequence[str],
                   loaded: LoadedCLIP, augment: bool, views: int, fingerprint: str, job: str) -> Dict[str, np.ndarray]:
    """The arrays of one split's npz (the grid engine writes the same ones from its feature store);
    ``job`` is :func:`job_string` of the call that writes it."""
    return {
        "features": F.normalize(raw, dim=-1).numpy(),
        "features_raw": raw.numpy(),
        "labels": labels.numpy(),
        "image_ids": image_ids.numpy(),
        "classnames": np.array(list(classnames), dtype=str),
        "backbone": np.array(str(loaded.name)),
        "weights": np.array(str(loaded.weights)),
        "transform": np.array("train" if augment else "test"),
        "views": np.array(int(views)),
        FINGERPRINT_KEY: np.array(fingerprint),
        JOB_KEY: np.array(job),
    }


def check_input_size(cfg: Any, loaded: LoadedCLIP) -> None:
    size, expected = tuple(cfg.INPUT.SIZE), tuple(loaded.image_size)
    if size != expected:
        raise FeatureError(f"INPUT.SIZE {size} does not fit the backbone {loaded.name} (image size {expected}); "
                           f"add INPUT.SIZE \"{expected}\" to the command")


def extract(cfg: Any, splits: Sequence[str] = SPLITS, views: int = 0, device: Optional[torch.device] = None,
            precision: str = "fp32", batch_size: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """Features of ``splits`` of ``cfg``'s dataset from one backbone load: ``{split: npz arrays}``.

    ``views`` (> 0) applies to the train split only; val and test always use the test transform.
    """
    device = device if device is not None else pick_device(cfg)
    dataset = build_dataset(cfg)
    sources = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}
    empty = [s for s in splits if not sources[s]]
    if empty:
        raise FeatureError(f"{cfg.DATASET.NAME} ({cfg.DATASET.SUB_CLASSES}) has an empty {'/'.join(empty)} split "
                           f"under {cfg.DATASET.ROOT}")
    loaded = load_clip(cfg, device, precision)
    check_input_size(cfg, loaded)
    fingerprint = fingerprint_string(cfg, loaded)
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for split in splits:
        augment = split == "train" and views > 0
        n_views = views if augment else 1
        loader = build_data_loader(
            cfg, sampler_type="SequentialSampler", data_source=sources[split],
            batch_size=int(batch_size or cfg.DATALOADER.TEST.BATCH_SIZE),
            tfm=build_transform(cfg, is_train=augment), is_train=False, split=split,
        )
        enc = encode_loader(loaded, loader, device, loaded.precision, n_views)
        raw = enc["features_raw"]
        logger.info("%s/%s %s: %d images x %d view(s) -> %s features (%s transform)", cfg.DATASET.NAME,
                    cfg.DATASET.SUB_CLASSES, split, len(sources[split]), n_views, tuple(raw.shape),
                    "train" if augment else "test")
        out[split] = feature_arrays(raw, enc["labels"], enc["image_ids"], list(dataset.classnames), loaded,
                                    augment, n_views, fingerprint, job_string(cfg, split, views, precision))
    return out


def check_targets(cfg: Any, output_dir: str, splits: Sequence[str], views: int = 0, precision: str = "fp32",
                  overwrite: bool = False) -> Dict[str, str]:
    """The file each split goes to, checked before the backbone loads: the folder must be writable, and
    a file already there must be this call's own job (:func:`feature_file_state`). Another extraction's
    file -- other weights, transform, views, subset; one without a job identity; an unreadable one; or
    any file when the weights are unseeded random (a new draw each call) -- is refused with a
    :class:`FeatureError` naming it and the differing keys, unless ``overwrite``. Before, a second call
    with another backbone silently replaced e.g. test.npz, after minutes of encoding."""
    paths = {s: feature_file(output_dir, cfg.DATASET.NAME, cfg.DATASET.SUB_CLASSES, s) for s in splits}
    check_writable_dir(osp.dirname(paths[splits[0]]), "feature folder", create=False)
    conflicts = []
    for split, path in paths.items():
        if not osp.lexists(path):
            continue
        if osp.isdir(path):
            raise FeatureError(f"{path} is a directory; remove it or use another --output-dir")
        state = feature_file_state(path, cfg, split, views, precision)
        if state.state == "match":
            continue
        if not osp.exists(path):
            why = "a dangling symbolic link"
        elif state.state == "missing":
            why = "the weights are unseeded random (drawn anew on every call; --seed S makes them reproducible)"
        else:
            why = "; ".join(state.differences)
        conflicts.append(f"{path} ({why})")
    if conflicts and not overwrite:
        raise FeatureError(f"{len(conflicts)} feature file(s) of another extraction would be overwritten: "
                           f"{conflicts[0]}{f' and {len(conflicts) - 1} more' if len(conflicts) > 1 else ''}; "
                           "use another --output-dir, or --overwrite to replace them")
    for line in conflicts:
        logger.warning("overwrite: replacing %s", line)
    return paths


def run(args: argparse.Namespace) -> Dict[str, str]:
    """Build the config, check it and the targets, extract, write; returns ``{split: path}``."""
    try:
        device = requested_device(args.device)
    except ValueError as err:
        raise FeatureError(str(err)) from None
    cfg = config_from_args(args)
    check_cfg(cfg, training=False)  # the checks train.py makes (NUM_SHOTS, batch size, transforms ...)
    check_backbone(cfg)  # before the dataset loads, as in train.py
    check_outside(args.output_dir, data_dirs(cfg), "--output-dir")  # feature files among the images
    overwrite = results.overwrite_requested(args.overwrite)
    paths = check_targets(cfg, args.output_dir, args.split, args.views, args.precision, overwrite)
    folder = osp.dirname(paths[args.split[0]])  # every split's file lies in it
    created = missing_dirs(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        # no second extraction writes these files meanwhile (two of different configurations interleaved
        # their splits before, and the probe refused the mix)
        with hold_output_dir(folder):
            if not created:  # again under the lock: another extraction may have written them since
                check_targets(cfg, args.output_dir, args.split, args.views, args.precision, overwrite)
            if cfg.SEED >= 0:
                set_random_seed(cfg.SEED)
            device = device or pick_device(cfg)
            arrays = extract(cfg, args.split, args.views, device, args.precision, args.batch_size)
            setup_logger(osp.join(args.output_dir, cfg.DATASET.NAME))
            for split, data in arrays.items():
                save_npz(paths[split], data)
                logger.info("Wrote %s", paths[split])
    except BaseException:
        for d in reversed(created):  # only the empty folders this call made (rmdir refuses the others)
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger()
    try:
        run(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_with(main)
