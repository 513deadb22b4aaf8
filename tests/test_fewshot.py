"""Few-shot sampling and its JSON cache for the LAION-Beyond loaders (spec §4.5, B22)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from dassl.data.datasets.build import build_dataset
from datasets import laion_beyond
from datasets.laion_beyond import LaionBeyond
from datasets.make_toy import make_toy
from tests.helpers import dataset_cfg

OOP = "Animals5_OOP"
IP = "Animals3_IP"


def make_cfg(root, shots=4, output_dir="", **kwargs):
    """The loader cfg of these tests: outputs go beside the private root, not into it."""
    return dataset_cfg(root, shots=shots, output_dir=output_dir or Path(root).parent / "out", **kwargs)


@pytest.fixture(scope="module")
def toy_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot_master") / "root"
    # 8 train / 6 val per class (label 1 has 8 // 3 = 2 train images), so K and min(K, 4) both bite.
    make_toy(str(root), domains=["Animals92_42"], image_size=8, num_train=8, num_val=6, num_test=2)
    return root


@pytest.fixture
def toy(toy_master, tmp_path):
    dst = tmp_path / "root"
    shutil.copytree(toy_master, dst)
    return dst


def split_file(root, dirname=OOP):
    return Path(root) / dirname / f"split_Xin_{dirname}.json"


def expected_name(root, shots, seed, superclass=False, dirname=OOP):
    raw = split_file(root, dirname).read_bytes()
    digest = hashlib.sha1(raw + b"\nsuperclass=" + (b"1" if superclass else b"0")).hexdigest()[:12]
    return f"shot_{shots}-seed_{seed}-{digest}.json"


def reference_sample(root, shots, seed, dirname=OOP):
    """Dassl's algorithm on the global RNG seeded just before, as the reference code does."""
    with open(split_file(root, dirname), encoding="utf-8") as f:
        raw = json.load(f)
    random.seed(seed)
    out = []
    for split, k in (("train", shots), ("val", min(shots, 4))):
        groups = {}
        for item in raw[split].values():
            groups.setdefault(item["label"], []).append(item["image_name"])
        picked = []
        for names in groups.values():
            picked += random.sample(names, k) if len(names) >= k else names
        out.append(picked)
    return out


def names(data):
    return [os.path.basename(d.impath) for d in data]


def test_counts_follow_k_and_val_min_k_4(toy):
    with open(split_file(toy), encoding="utf-8") as f:
        raw = json.load(f)
    n_train = Counter(i["label"] for i in raw["train"].values())
    n_val = Counter(i["label"] for i in raw["val"].values())
    assert n_train[1] == 2 and n_train[0] == 8 and n_val[0] == 6
    for shots in (1, 3, 5):
        ds = build_dataset(make_cfg(toy, shots=shots))
        got_train = Counter(d.label for d in ds.train_x)
        got_val = Counter(d.label for d in ds.val)
        assert got_train == {c: min(shots, n) for c, n in n_train.items()}
        assert got_val == {c: min(shots, 4, n) for c, n in n_val.items()}
        assert len(ds.test) == len(raw["test"])  # test is always the full split
        assert len(set(names(ds.train_x))) == len(ds.train_x)


def test_classes_below_k_are_named_in_a_warning(toy, caplog):
    """A class with fewer than K training images trains on all of them (Dassl's rule, kept), but the run
    is filed as K-shot: that was silent. The warning names each such class of the trained subset with
    its count, computed here from the split file."""
    with open(split_file(toy), encoding="utf-8") as f:
        raw = json.load(f)
    counts = Counter(i["classname"] for i in raw["train"].values())
    expected = sorted(f"{name} ({n})" for name, n in counts.items() if n < 3)
    assert expected  # the toy's label 1 has 2 training images
    with caplog.at_level(logging.WARNING, logger=laion_beyond.logger.name):
        build_dataset(make_cfg(toy, shots=3))
    lines = [r.getMessage() for r in caplog.records if "have fewer training images" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"DATASET.NUM_SHOTS 3: {len(expected)} class(es) of {OOP} "), lines
    assert sorted(lines[0].split("train on all of them: ")[1].split(", ")) == expected, lines
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=laion_beyond.logger.name):
        build_dataset(make_cfg(toy, shots=2))
    assert not [r for r in caplog.records if "have fewer training images" in r.getMessage()]


def test_sample_equals_reference_and_depends_on_seed(toy):
    a = build_dataset(make_cfg(toy, shots=3, seed=1))
    assert [names(a.train_x), names(a.val)] == reference_sample(toy, 3, 1)
    b = build_dataset(make_cfg(toy, shots=3, seed=1, cache_dir=toy.parent / "other_cache"))
    assert (names(b.train_x), names(b.val)) == (names(a.train_x), names(a.val))
    c = build_dataset(make_cfg(toy, shots=3, seed=2))
    assert names(c.train_x) != names(a.train_x)
    assert [names(c.train_x), names(c.val)] == reference_sample(toy, 3, 2)


def test_independent_of_global_rng(toy):
    random.seed(12345)
    for _ in range(17):
        random.random()
    a = build_dataset(make_cfg(toy, shots=3, seed=7, cache_dir=toy.parent / "c1"))
    random.seed(999)
    b = build_dataset(make_cfg(toy, shots=3, seed=7, cache_dir=toy.parent / "c2"))
    assert names(a.train_x) == names(b.train_x) and names(a.val) == names(b.val)


def test_cache_written_as_json_and_reused(toy, monkeypatch):
    first = build_dataset(make_cfg(toy, shots=4, seed=3))
    path = toy / OOP / "split_fewshot" / expected_name(toy, 4, 3)
    assert first.fewshot_cache_files == {"OOP": str(path)}
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    assert [r["impath"] for r in payload["train"]] == [
        f"images/{d.classname}/{os.path.basename(d.impath)}" for d in first.train_x
    ]
    assert [r["caption"] for r in payload["val"]] == [d.caption for d in first.val]

    def boom(*args, **kwargs):
        raise AssertionError("a valid cache must not be rewritten")

    monkeypatch.setattr(laion_beyond, "write_json", boom)
    second = build_dataset(make_cfg(toy, shots=4, seed=3))
    assert second.fewshot_cache_files == {"OOP": str(path)}
    assert second.train_x == first.train_x and second.val == first.val
    assert second.classnames == first.classnames


def test_cache_invalidated_when_json_changes(toy, monkeypatch, caplog):
    build_dataset(make_cfg(toy, shots=2, seed=1))
    old = toy / OOP / "split_fewshot" / expected_name(toy, 2, 1)
    path = split_file(toy)
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    raw["train"]["0"]["INFO"]["Refined_caption3"] = "An edited caption about a giant anteater."
    with open(path, "w", encoding="utf-8") as f:
        json.dump(raw, f)

    calls = []
    original = LaionBeyond.generate_fewshot_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs["num_shots"])
        return original(*args, **kwargs)

    monkeypatch.setattr(LaionBeyond, "generate_fewshot_dataset", staticmethod(counting))
    with caplog.at_level(logging.INFO, logger="datasets.laion_beyond"):
        ds = build_dataset(make_cfg(toy, shots=2, seed=1))
    assert f"{old.name} was drawn from another version" in caplog.text and "split file changed" in caplog.text
    new = toy / OOP / "split_fewshot" / expected_name(toy, 2, 1)
    assert calls == [2, 2] and new != old and new.is_file() and old.is_file()
    assert ds.fewshot_cache_files["OOP"] == str(new)
    captions = {os.path.basename(d.impath): d.caption for d in ds.train_x}
    if "giant_anteater_000.jpg" in captions:
        assert captions["giant_anteater_000.jpg"] == "An edited caption about a giant anteater."


def test_mismatched_cache_content_is_not_read(toy):
    good = build_dataset(make_cfg(toy, shots=2, seed=1))
    path = Path(good.fewshot_cache_files["OOP"])
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    payload["split_digest"] = "000000000000"
    payload["train"] = payload["train"][:1]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    again = build_dataset(make_cfg(toy, shots=2, seed=1))
    assert again.train_x == good.train_x
    path.write_text("{ truncated")
    assert build_dataset(make_cfg(toy, shots=2, seed=1)).train_x == good.train_x


def test_superclass_flag_is_part_of_the_key(toy):
    plain = build_dataset(make_cfg(toy, shots=2, seed=1))
    sup = build_dataset(make_cfg(toy, shots=2, seed=1, superclass=True))
    assert Path(sup.fewshot_cache_files["OOP"]).name == expected_name(toy, 2, 1, superclass=True)
    assert sup.fewshot_cache_files["OOP"] != plain.fewshot_cache_files["OOP"]
    assert set(sup.classnames) == {"insect", "mammal", "primate"}
    cached = build_dataset(make_cfg(toy, shots=2, seed=1, superclass=True))
    assert cached.train_x == sup.train_x


def test_read_only_dataset_dir_falls_back_to_output_dir(toy, monkeypatch):
    real_write = laion_beyond.write_json

    def guarded(payload, path, **kwargs):
        if str(path).startswith(str(toy)):
            raise PermissionError(13, "Permission denied", path)
        real_write(payload, path, **kwargs)

    monkeypatch.setattr(laion_beyond, "write_json", guarded)
    out = toy.parent / "run_out"
    first = build_dataset(make_cfg(toy, shots=2, seed=1, output_dir=out))
    fallback = out / "split_fewshot" / OOP / expected_name(toy, 2, 1)
    assert first.fewshot_cache_files == {"OOP": str(fallback)} and fallback.is_file()
    assert not (toy / OOP / "split_fewshot").exists()

    monkeypatch.setattr(laion_beyond, "write_json", lambda *a, **k: 1 / 0)  # the fallback cache is read, not rewritten
    second = build_dataset(make_cfg(toy, shots=2, seed=1, output_dir=out))
    assert second.train_x == first.train_x and second.fewshot_cache_files == {"OOP": str(fallback)}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_dataset_dir_real_permissions(toy):
    os.chmod(toy / OOP, 0o555)
    try:
        out = toy.parent / "run_out"
        ds = build_dataset(make_cfg(toy, shots=2, seed=1, output_dir=out))
        assert ds.fewshot_cache_files["OOP"] == str(out / "split_fewshot" / OOP / expected_name(toy, 2, 1))
    finally:
        os.chmod(toy / OOP, 0o755)


def test_cache_dir_override(toy):
    cache = toy.parent / "my_cache"
    ds = build_dataset(make_cfg(toy, shots=2, seed=1, cache_dir=cache))
    assert ds.fewshot_cache_files["OOP"] == str(cache / OOP / expected_name(toy, 2, 1))
    assert not (toy / OOP / "split_fewshot").exists()


def test_no_shots_means_full_splits_and_no_cache(toy):
    ds = build_dataset(make_cfg(toy, shots=-1))
    with open(split_file(toy), encoding="utf-8") as f:
        raw = json.load(f)
    assert names(ds.train_x) == [i["image_name"] for i in raw["train"].values()]
    assert len(ds.val) == len(raw["val"]) and ds.fewshot_cache_files == {}
    assert not (toy / OOP / "split_fewshot").exists()


def test_negative_seed_uses_documented_default(toy, caplog):
    with caplog.at_level(logging.WARNING, logger="datasets.laion_beyond"):
        ds = build_dataset(make_cfg(toy, shots=2, seed=-1))
    assert ds.seed == laion_beyond.DEFAULT_SEED == 0
    assert any("SEED=-1" in r.getMessage() for r in caplog.records)
    assert Path(ds.fewshot_cache_files["OOP"]).name == expected_name(toy, 2, 0)
    assert [names(ds.train_x), names(ds.val)] == reference_sample(toy, 2, 0)


def test_all_reuses_the_single_subset_samples(toy):
    oop = build_dataset(make_cfg(toy, shots=2, seed=5, sub="OOP"))
    ip = build_dataset(make_cfg(toy, shots=2, seed=5, sub="IP"))
    both = build_dataset(make_cfg(toy, shots=2, seed=5, sub="All", cache_dir=toy.parent / "fresh"))
    assert [d.impath for d in both.train_x] == [d.impath for d in oop.train_x + ip.train_x]
    assert [d.impath for d in both.val] == [d.impath for d in oop.val + ip.val]
    assert [d.caption for d in both.train_x] == [d.caption for d in oop.train_x + ip.train_x]
    assert set(both.fewshot_cache_files) == {"OOP", "IP"}


def _edit_cache(path, fn):
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    fn(payload, json.loads(split_file(path.parents[2]).read_text(encoding="utf-8")))
    Path(path).write_text(json.dumps(payload), encoding="utf-8")


def _record(item):
    """A split-file record as the cache writes it."""
    return {"impath": f"images/{item['classname']}/{item['image_name']}", "label": item["label"],
            "classname": item["classname"], "caption": item["INFO"]["Refined_caption3"]}


def _second_of_class(payload, raw):
    """Another train image of train[0]'s class: one class gets two records in a 1-shot cache."""
    first = payload["train"][0]
    taken = {r["impath"] for r in payload["train"]}
    other = next(_record(i) for i in raw["train"].values()
                 if i["label"] == first["label"] and _record(i)["impath"] not in taken)
    payload["train"].append(other)


def _test_image_as_train(payload, raw):
    """A test image of train[0]'s class, with that class's label and the test record's caption."""
    first = payload["train"][0]
    payload["train"][0] = next(_record(i) for i in raw["test"].values() if i["label"] == first["label"])


def _relabel(payload, raw):
    """train[0] relabelled as another class (label and name consistent with each other)."""
    other = payload["train"][1]
    payload["train"][0].update(label=other["label"], classname=other["classname"])


# Each edit of a valid cache that a 1-shot run used to take as its sample (issue: hostile tester).
EDITED_CACHES = {
    "test_image_in_train": (_test_image_as_train, "is not a train image of the split file"),
    "second_record_for_a_class": (_second_of_class, "has 2 record(s)"),
    "record_dropped": (lambda p, r: p["train"].pop(0), "has 0 record(s)"),
    "record_duplicated": (lambda p, r: p["train"].append(p["train"][0]), "repeats"),
    "image_not_in_split": (lambda p, r: p["train"][0].update(impath="images/ant/not_listed.jpg"),
                           "is not a train image of the split file"),
    "relabelled": (_relabel, "differ from the split file's"),
    "val_image_in_train": (lambda p, r: p["train"].__setitem__(0, p["val"][0]), "is not a train image"),
    "train_image_in_val": (lambda p, r: p["val"].__setitem__(0, p["train"][0]), "is not a val image"),
    "caption_edited": (lambda p, r: p["train"][0].update(caption="a forged caption"), "its caption differs"),
}


@pytest.mark.parametrize("edit", sorted(EDITED_CACHES))
def test_edited_cache_is_resampled_as_fresh(toy, edit, caplog):
    """A cache that is not min(K, n) distinct records per class of the same split, each equal to the
    split file's record, is stale: a warning names it and why, and the run gets exactly the fresh
    sample (records, captions and the fingerprint's few-shot digest); the file is rewritten with it."""
    fresh = build_dataset(make_cfg(toy, shots=1, seed=1, cache_dir=toy.parent / "fresh"))
    good = build_dataset(make_cfg(toy, shots=1, seed=1))
    path = Path(good.fewshot_cache_files["OOP"])
    written = path.read_bytes()
    mutate, reason = EDITED_CACHES[edit]
    _edit_cache(path, mutate)
    assert path.read_bytes() != written
    with caplog.at_level(logging.WARNING, logger="datasets.laion_beyond"):
        again = build_dataset(make_cfg(toy, shots=1, seed=1))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0] and reason in warned[0], warned
    assert "sampling again" in warned[0]
    assert again.train_x == fresh.train_x and again.val == fresh.val
    assert again.fewshot_digest == fresh.fewshot_digest == good.fewshot_digest
    assert Counter(d.label for d in again.train_x) == {c: 1 for c in range(len(again.classnames))}
    assert path.read_bytes() == written  # our own cache file, rewritten with the fresh sample


def test_valid_cache_is_used_as_written(toy, monkeypatch):
    """The validation refuses nothing a fresh sampling writes (K above a class's count included):
    the cache is read, not rewritten, and the Datums are the split file's."""
    first = build_dataset(make_cfg(toy, shots=5, seed=2))
    monkeypatch.setattr(laion_beyond, "write_json", lambda *a, **k: 1 / 0)
    second = build_dataset(make_cfg(toy, shots=5, seed=2))
    assert second.train_x == first.train_x and second.val == first.val
    assert second.fewshot_digest == first.fewshot_digest
    assert Counter(d.label for d in second.train_x)[1] == 2  # label 1 has only 2 train images


def test_a_cache_edited_into_another_valid_sample_is_redrawn(toy, caplog):
    """Hostile: a cache record swapped for another train image of the same class is still a valid
    1-shot sample, and it was used silently, under the fingerprint id of the seed's own sample. The
    cache is used only if it is the seed's draw: otherwise a warning, the seed's own sample, and the
    cache rewritten with it."""
    first = build_dataset(make_cfg(toy, shots=1, seed=1))
    path = toy / OOP / "split_fewshot" / expected_name(toy, 1, 1)
    original = path.read_bytes()
    payload = json.loads(original)
    used = {os.path.basename(d.impath) for d in first.train_x}
    full = build_dataset(make_cfg(toy, shots=-1, seed=1))
    twin = next(d for d in full.train_x
                if d.label == first.train_x[0].label and os.path.basename(d.impath) not in used)
    payload["train"][0] = laion_beyond._to_record(twin, str(toy / OOP))
    path.write_text(json.dumps(payload), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        second = build_dataset(make_cfg(toy, shots=1, seed=1))
    assert "not the one seed 1 draws" in caplog.text and str(path) in caplog.text
    assert second.train_x == first.train_x and second.fewshot_digest == first.fewshot_digest
    assert path.read_bytes() == original


def test_fewshot_digest_follows_the_sample(toy):
    """The fingerprint's few-shot digest is computed from what the run uses: another seed's sample
    has another digest, the same sample (from the cache or drawn again) the same one."""
    a = build_dataset(make_cfg(toy, shots=2, seed=1))
    b = build_dataset(make_cfg(toy, shots=2, seed=2))
    c = build_dataset(make_cfg(toy, shots=2, seed=1, cache_dir=toy.parent / "elsewhere"))
    assert a.fewshot_digest != b.fewshot_digest and a.fewshot_digest == c.fewshot_digest
