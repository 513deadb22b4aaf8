"""Frozen-feature cache: exact features, reuse only on a full key match, cached evaluation."""
from __future__ import annotations

import json

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
