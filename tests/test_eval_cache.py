"""Caches keyed by content (issue 11 item 5) and the evaluation-only cross-evaluation (issue 15 item 3).

* the training-view and evaluation feature caches are rebuilt after the weights file is rewritten
  at the same path and after the images are regenerated under an unchanged split file, the log says
  why, and the rebuilt features equal a fresh computation;
* the OOP->IP cross-evaluation equals a standalone IP eval-only run, samples no IP few-shot set and
  preprocesses no IP caption;
* a second run (another method, another subset's cross-evaluation) encodes no evaluation image.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.laion_beyond import LaionBeyond
from tests.helpers import build, run_train, save_tiny_weights, train_argv
from trainers import fsnl
from trainers.base import ClipTrainer

TRAINER = "FSNL_openclip"


def eval_features(trainer, split="test"):
    return torch.cat([b["feat"] for b in trainer.eval_loader(split)])


def fresh_eval_features(trainer, split="test"):
    """The split's features encoded image by image, bypassing every cache."""
    from dassl.utils import read_image

    items = trainer.dm.dataset.test if split == "test" else trainer.dm.dataset.val
    images = torch.stack([trainer.dm.tfm_test(read_image(d.impath)) for d in items])
    return trainer.encode_images(images, normalize=False)


@pytest.fixture
def private_root(toy_root, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(toy_root, dst, ignore=shutil.ignore_patterns("split_fewshot"))
    return dst


def cache_opts(tmp_path):
    return ("TEST.FEATURE_CACHE_DIR", str(tmp_path / "eval_cache"),
            "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "train_cache"), "DATALOADER.FEATURE_CACHE.VIEWS", "2")


def test_caches_rebuilt_after_weights_rewritten_in_place(toy_root, tmp_path, caplog):
    weights = tmp_path / "tiny.pt"
    save_tiny_weights(weights, seed=7)
    opts = (*cache_opts(tmp_path), "MODEL.BACKBONE.WEIGHTS", str(weights))
    first = build(toy_root, tmp_path / "a", TRAINER, *opts)
    train_1, eval_1 = first._cached_train.features.clone(), eval_features(first)
    torch.testing.assert_close(eval_1, fresh_eval_features(first), atol=1e-5, rtol=1e-5)

    size = weights.stat().st_size
    save_tiny_weights(weights, seed=8)  # rewritten in place: same path, same size, other values
    assert weights.stat().st_size == size
    with caplog.at_level(logging.INFO):
        second = build(toy_root, tmp_path / "b", TRAINER, *opts)
        eval_2 = eval_features(second)
    assert caplog.text.count("weights changed") == 2  # the training views and the test features
    assert not torch.allclose(eval_2, eval_1) and not torch.allclose(second._cached_train.features, train_1)
    torch.testing.assert_close(eval_2, fresh_eval_features(second), atol=1e-5, rtol=1e-5)

    # The rebuilt training views equal those of a run that never saw the old cache.
    fresh = build(toy_root, tmp_path / "c", TRAINER, *opts, "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "new"))
    torch.testing.assert_close(second._cached_train.features, fresh._cached_train.features)


def test_caches_rebuilt_after_images_regenerated(private_root, tmp_path, caplog):
    opts = cache_opts(tmp_path)
    first = build(private_root, tmp_path / "a", TRAINER, *opts)
    train_1, eval_1 = first._cached_train.features.clone(), eval_features(first)
    split_files = {p: p.read_bytes() for p in private_root.glob("*/split_Xin_*.json")}

    rng = np.random.default_rng(5)
    for d in [*first.dm.dataset.train_x, *first.dm.dataset.test]:  # regenerate, same names
        shape = np.asarray(Image.open(d.impath)).shape
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(d.impath)
        st = os.stat(d.impath)  # a later regeneration: a newer mtime even on coarse-mtime file systems
        os.utime(d.impath, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert {p: p.read_bytes() for p in split_files} == split_files  # the split files are unchanged

    with caplog.at_level(logging.INFO):
        second = build(private_root, tmp_path / "b", TRAINER, *opts)
        eval_2 = eval_features(second)
    assert caplog.text.count("images changed") == 2
    assert [d.impath for d in second.dm.dataset.train_x] == [d.impath for d in first.dm.dataset.train_x]
    assert not torch.allclose(eval_2, eval_1) and not torch.allclose(second._cached_train.features, train_1)
    torch.testing.assert_close(eval_2, fresh_eval_features(second), atol=1e-5, rtol=1e-5)
    fresh = build(private_root, tmp_path / "c", TRAINER, *opts, "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "new"))
    torch.testing.assert_close(second._cached_train.features, fresh._cached_train.features)


def test_caches_rebuilt_after_images_swapped_with_size_and_mtime_kept(private_root, tmp_path, caplog):
    """Test images padded to one size, one mtime (as after ``tar x`` / ``rsync -a``), then rotated by
    ``rename``: every path keeps its size and mtime but holds another image. Keyed on (path, size,
    mtime) the cache served the old features; the inode and ctime in the key notice the swap."""
    opts = ("TEST.FEATURE_CACHE_DIR", str(tmp_path / "eval_cache"))
    items = build(private_root, tmp_path / "probe", TRAINER).dm.dataset.test
    paths = sorted({d.impath for d in items})
    size = max(os.path.getsize(p) for p in paths)
    for p in paths:  # JPEG decoders ignore bytes after the end-of-image marker
        with open(p, "ab") as f:
            f.write(b"\0" * (size - os.path.getsize(p)))
        os.utime(p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    first = build(private_root, tmp_path / "a", TRAINER, *opts)
    eval_1 = eval_features(first)

    parked = [p + ".swap" for p in paths]
    for p, q in zip(paths, parked):
        os.rename(p, q)
    for i, p in enumerate(paths):  # path i now holds the image of path i+1
        os.rename(parked[(i + 1) % len(paths)], p)
    assert {(os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths} == {(size, 1_600_000_000 * 10**9)}

    with caplog.at_level(logging.INFO):
        second = build(private_root, tmp_path / "b", TRAINER, *opts)
        eval_2 = eval_features(second)
    assert "images changed" in caplog.text
    assert not torch.allclose(eval_2, eval_1)
    torch.testing.assert_close(eval_2, fresh_eval_features(second), atol=1e-5, rtol=1e-5)


def test_cross_eval_builds_only_evaluation_and_equals_standalone_ip(toy_root, tmp_path, monkeypatch):
    sampled, captions = [], []
    original_fewshot, original_caption = LaionBeyond._fewshot, fsnl.FSNLModel.caption_template

    def counting_fewshot(self, part, cfg):
        sampled.append(part.subset)
        return original_fewshot(self, part, cfg)

    def counting_caption(self, caption, label):
        captions.append(tuple(self.classnames))
        return original_caption(self, caption, label)

    monkeypatch.setattr(LaionBeyond, "_fewshot", counting_fewshot)
    monkeypatch.setattr(fsnl.FSNLModel, "caption_template", counting_caption)
    out = tmp_path / "run"
    views = ("DATALOADER.FEATURE_CACHE.VIEWS", "2", "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "views"))
    trainer = run_train(train_argv(toy_root, out, TRAINER, "TEST.FEATURE_CACHE_DIR", str(tmp_path / "c"), *views))
    res = json.loads((out / "results.json").read_text())
    assert list(res["subsets"]) == ["OOP", "IP"]
    assert sampled == ["OOP"]  # the IP few-shot set is never drawn for the cross-evaluation
    assert len(list((tmp_path / "views").glob("*.pt"))) == 1  # OOP training views only
    oop_names = tuple(trainer.model.classnames)
    assert captions and set(captions) == {oop_names}  # no IP caption is preprocessed
    assert len(captions) == len(trainer.dm.dataset.train_x)

    ip = tmp_path / "ip"
    run_train(train_argv(toy_root, ip, TRAINER, "DATASET.SUB_CLASSES", "IP", "TEST.FEATURE_CACHE_DIR", "none",
                         "DATALOADER.FEATURE_CACHE.VIEWS", "2", "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "v2"),
                         extra=("--eval-only", "--model-dir", str(out))))
    assert not (tmp_path / "v2").exists()  # an evaluation builds no training views
    standalone = json.loads((ip / "results.json").read_text())
    assert standalone["subsets"]["IP"] == pytest.approx(res["subsets"]["IP"], abs=1e-9)
    assert standalone["accuracy"] == pytest.approx(res["ip"], abs=1e-9)


def test_second_run_reuses_evaluation_features(toy_root, tmp_path, monkeypatch):
    encoded = []
    original = ClipTrainer.encode_images

    def counting(self, images, normalize=True):
        encoded.append(int(images.shape[0]))
        return original(self, images, normalize=normalize)

    monkeypatch.setattr(ClipTrainer, "encode_images", counting)
    cache = ("TEST.FEATURE_CACHE_DIR", str(tmp_path / "cache"))
    zs = "ZeroshotCLIP_openclip"
    first = run_train(train_argv(toy_root, tmp_path / "zs1", zs, *cache, config="cpu_smoke", extra=("--eval-only",)))
    n_oop = len(first.dm.dataset.test)
    assert sum(encoded) > n_oop  # OOP test + IP test (cross-evaluation)
    res_1 = json.loads((tmp_path / "zs1" / "results.json").read_text())

    encoded.clear()
    run_train(train_argv(toy_root, tmp_path / "zs2", zs, *cache, config="cpu_smoke", extra=("--eval-only",)))
    assert encoded == []  # both subsets' test features come from the cache
    res_2 = json.loads((tmp_path / "zs2" / "results.json").read_text())
    assert res_2["oop"] == res_1["oop"] and res_2["ip"] == res_1["ip"]

    # Another method on the IP subset reuses them too (the features do not depend on the method).
    run_train(train_argv(toy_root, tmp_path / "fsnl_ip", TRAINER, *cache, "DATASET.SUB_CLASSES", "IP",
                         "TEST.ALLOW_UNTRAINED", "True", extra=("--eval-only",)))
    assert encoded == []


def test_seeded_random_models_keep_their_own_evaluation_slots(toy_root, tmp_path, caplog):
    """``WEIGHTS none`` is one model per seed. The evaluation slot did not name the seed, so seeds 1
    and 2 replaced each other's test features in turn; each now has its own file, and going back to
    seed 1 reads its features instead of encoding them again."""
    opts = ("TEST.FEATURE_CACHE_DIR", str(tmp_path / "eval_cache"))
    first = build(toy_root, tmp_path / "a", TRAINER, *opts, seed=1)
    eval_1 = eval_features(first)
    second = build(toy_root, tmp_path / "b", TRAINER, *opts, seed=2)
    eval_2 = eval_features(second)
    assert not torch.allclose(eval_1, eval_2)  # two models
    files = sorted(p.name for p in (tmp_path / "eval_cache").iterdir() if p.name.startswith("eval_test_"))
    assert len(files) == 2, files
    with caplog.at_level(logging.INFO):
        again = build(toy_root, tmp_path / "c", TRAINER, *opts, seed=1)
        eval_3 = eval_features(again)
    assert "stale" not in caplog.text and "weights changed" not in caplog.text
    torch.testing.assert_close(eval_3, eval_1)
    torch.testing.assert_close(eval_3, fresh_eval_features(again), atol=1e-5, rtol=1e-5)
