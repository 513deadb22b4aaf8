"""Content identity: a rewrite in place changes it, a copy keeps it, the hash is memoised per version."""
import hashlib
import os
import shutil

from dassl.utils import identity


def test_file_identity_tracks_content_and_version(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    first = identity.file_identity(str(p))
    assert first["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert first["size"] == 3
    # same size, new bytes, new mtime: a different version, a different hash
    p.write_bytes(b"abd")
    os.utime(p, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))
    second = identity.file_identity(str(p))
    assert second["sha256"] == hashlib.sha256(b"abd").hexdigest()
    # a copy has the same content identity
    q = tmp_path / "copy.bin"
    shutil.copy(p, q)
    assert identity.content_identity(str(q)) == identity.content_identity(str(p))


def test_hash_is_memoised_per_file_version(tmp_path, monkeypatch):
    p = tmp_path / "w.bin"
    p.write_bytes(b"x" * 10)
    identity._sha256_of_version.cache_clear()
    identity.file_identity(str(p))
    identity.file_identity(str(p))
    assert identity._sha256_of_version.cache_info().misses == 1


def test_json_digest_is_order_independent():
    assert identity.json_digest({"a": 1, "b": [1, 2]}) == identity.json_digest({"b": [1, 2], "a": 1})
    assert identity.json_digest({"a": 1}) != identity.json_digest({"a": 2})


def test_weights_identity_kinds(tmp_path):
    from clip import weights_identity
    from dassl.config import get_cfg_default
    from train import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.MODEL.BACKBONE.NAME = "test-tiny"
    cfg.MODEL.BACKBONE.WEIGHTS = "none"
    cfg.SEED = 3
    assert weights_identity(cfg) == {"kind": "random", "model": "test-tiny", "quick_gelu": False, "seed": 3}
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"not really weights")
    cfg.MODEL.BACKBONE.WEIGHTS = str(f)
    ident = weights_identity(cfg)
    assert ident["kind"] == "file" and ident["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
