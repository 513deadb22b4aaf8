"""Frozen-feature cache: exact features, reuse only on a full key match, cached evaluation."""
from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import build

TRAINER = "FSNL_openclip"


def test_cached_features_equal_direct_encoding(toy_root, tmp_path):
    # A deterministic "augmentation" (resize + center crop) makes every view equal the test view.
    opts = ("DATALOADER.FEATURE_CACHE.VIEWS", "2", "INPUT.TRANSFORMS", "['center_crop', 'normalize']")
    trainer = build(toy_root, tmp_path, TRAINER, *opts)
    cached = trainer._cached_train.features
    n = len(trainer.dm.dataset.train_x)
    assert cached.shape[:2] == (2, n)
    from dassl.utils import read_image

    img = trainer.dm.tfm_test(read_image(trainer.dm.dataset.train_x[0].impath))[None]
    direct = trainer.encode_images(img, normalize=False)[0]
    torch.testing.assert_close(cached[0, 0], direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached[1, 0], direct, atol=1e-5, rtol=1e-5)
    batch = next(iter(trainer.train_loader_x))
    assert "feat" in batch and "img" not in batch
    torch.testing.assert_close(trainer.batch_features(batch), F.normalize(batch["feat"], dim=-1))


def test_cache_reused_only_when_key_matches(toy_root, tmp_path, caplog):
    shared_dir = tmp_path / "cache"
    base = ("DATALOADER.FEATURE_CACHE.VIEWS", "2", "DATALOADER.FEATURE_CACHE.DIR", str(shared_dir))
    first = build(toy_root, tmp_path / "a", TRAINER, *base)
    files = list(shared_dir.glob("*.pt"))
    assert len(files) == 1
    # Same key: loaded, identical tensors.
    second = build(toy_root, tmp_path / "b", TRAINER, *base)
    assert torch.equal(first._cached_train.features, second._cached_train.features)
    assert len(list(shared_dir.glob("*.pt"))) == 1
    # Different shots → a different key and file; a tampered file with the right name is not trusted.
    build(toy_root, tmp_path / "c", TRAINER, *base, "DATASET.NUM_SHOTS", "3")
    assert len(list(shared_dir.glob("*.pt"))) == 2
    payload = torch.load(files[0], weights_only=True)
    meta = json.loads(payload["meta"])
    meta["seed"] = 999
    torch.save({"meta": json.dumps(meta), "features": payload["features"] * 0}, files[0])
    third = build(toy_root, tmp_path / "d", TRAINER, *base)
    assert torch.equal(third._cached_train.features, first._cached_train.features)


def test_cached_mode_trains_and_evaluation_cache_matches_online(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER, "DATALOADER.FEATURE_CACHE.VIEWS", "2")
    trainer.train()
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"oop", "ip", "hmean"} <= set(res)
    cached_acc = trainer.test()
    # The same weights evaluated without the evaluation cache give the same accuracy.
    online = build(toy_root, tmp_path / "online", TRAINER, "TEST.CACHE_FEATURES", "False")
    online.import_state(trainer.export_state())
    assert online.test() == pytest.approx(cached_acc, abs=1e-9)


def _rewrite(path, edit):
    """Load a cache file, replace its features with ``edit(features)``, save it back (meta and the
    stored content record untouched), as a hand edit with torch.load / torch.save would."""
    payload = torch.load(path, weights_only=True)
    payload["features"] = edit(payload["features"])
    torch.save(payload, path)


# What the hostile tester wrote over a valid cache: each used to end in a traceback (or, for one view
# under VIEWS 2, be used silently).
TRAIN_EDITS = {
    "fewer_images": (lambda f: f[:, :-1], "features have shape"),
    "one_view_under_views_2": (lambda f: f[:1], "features have shape"),
    "narrower": (lambda f: f[:, :, :5], "checksum differ"),
    "not_a_tensor": (lambda f: "x", "not a tensor"),
    "integer": (lambda f: f.long(), "not a floating-point type"),
    "same_shape_other_values": (lambda f: f * 0, "checksum differ"),
}


@pytest.mark.parametrize("edit", sorted(TRAIN_EDITS))
def test_edited_training_views_are_recomputed(edit, toy_root, tmp_path, caplog):
    base = ("DATALOADER.FEATURE_CACHE.VIEWS", "2", "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "cache"))
    first = build(toy_root, tmp_path / "a", TRAINER, *base)
    (path,) = (tmp_path / "cache").glob("*.pt")
    fn, reason = TRAIN_EDITS[edit]
    _rewrite(path, fn)
    with caplog.at_level(logging.WARNING, logger="trainers.feature_cache"):
        second = build(toy_root, tmp_path / "b", TRAINER, *base)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in m and reason in m and "recomputing" in m for m in warned), warned
    assert torch.equal(second._cached_train.features, first._cached_train.features)
    # the slot file is ours: rewritten with the recomputed features, and trusted again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainers.feature_cache"):
        third = build(toy_root, tmp_path / "c", TRAINER, *base)
    assert not [r for r in caplog.records if r.name == "trainers.feature_cache" and r.levelno == logging.WARNING]
    assert torch.equal(third._cached_train.features, first._cached_train.features)


EVAL_EDITS = {
    "fewer_images": (lambda f: f[:-1], "features have shape"),
    "narrower": (lambda f: f[:, :5], "checksum differ"),
    "not_a_tensor": (lambda f: "x", "not a tensor"),
    "extra_dimension": (lambda f: f[None], "features have shape"),
}


@pytest.mark.parametrize("edit", sorted(EVAL_EDITS))
def test_edited_evaluation_features_are_recomputed(edit, toy_root, tmp_path, caplog):
    opts = ("TEST.FEATURE_CACHE_DIR", str(tmp_path / "eval"))
    first = build(toy_root, tmp_path / "a", TRAINER, *opts)
    expected = torch.cat([b["feat"] for b in first.eval_loader("test")])
    (path,) = [p for p in (tmp_path / "eval").glob("eval_test_*.pt")]
    fn, reason = EVAL_EDITS[edit]
    _rewrite(path, fn)
    with caplog.at_level(logging.WARNING, logger="trainers.feature_cache"):
        second = build(toy_root, tmp_path / "b", TRAINER, *opts)
        got = torch.cat([b["feat"] for b in second.eval_loader("test")])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in m and reason in m for m in warned), warned
    assert torch.equal(got, expected)
    again = torch.load(path, weights_only=True)
    assert torch.equal(again["features"], expected)  # the slot file holds the recomputed features again


def test_cache_without_content_record_is_recomputed(toy_root, tmp_path, caplog):
    """A file of the previous format (no shape/dtype/checksum record) is not trusted."""
    base = ("DATALOADER.FEATURE_CACHE.VIEWS", "2", "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "cache"))
    first = build(toy_root, tmp_path / "a", TRAINER, *base)
    (path,) = (tmp_path / "cache").glob("*.pt")
    payload = torch.load(path, weights_only=True)
    del payload["content"]
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING, logger="trainers.feature_cache"):
        second = build(toy_root, tmp_path / "b", TRAINER, *base)
    assert "checksum differ" in caplog.text
    assert torch.equal(second._cached_train.features, first._cached_train.features)
