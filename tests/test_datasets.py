"""Datum / DatasetBase, LAION-Beyond discovery, split validation, subsets, toy generator, checker."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
from yacs.config import CfgNode as CN

import datasets
from dassl.data.datasets.base_dataset import DatasetBase, Datum
from dassl.data.datasets.build import DATASET_REGISTRY, build_dataset
from datasets import check as checker
from datasets.laion_beyond import DatasetError, LaionBeyond
from datasets.make_toy import TOY_CLASSES, make_toy
from tests.helpers import dataset_cfg

REPO = Path(__file__).resolve().parents[1]
NINE = {
    "Pokemon89_39": ("Pokemon", "pokemon"),
    "Animals92_42": ("Animals", "animal"),
    "Architecture50_23": ("Architecture", "architecture"),
    "Attire54_28": ("Attire", "attire"),
    "FolkArt59_27": ("FolkArt", "folk art"),
    "Food53_27": ("Food", "food"),
    "Insects_Spiders106_52": ("Insects_Spiders", "insect or spider"),
    "Landmark59_30": ("Landmark", "landmark"),
    "Plants_Fugi113_56": ("Plants_Fugi", "plant or fungus"),
}


@pytest.fixture(scope="module")
def toy_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_master")
    info = make_toy(str(root), domains=["Animals92_42", "FolkArt59_27", "Pokemon89_39"], image_size=8)
    return root, info


@pytest.fixture
def toy(toy_master, tmp_path):
    """A private copy of the toy root (tests corrupt or write into it)."""
    src, info = toy_master
    dst = tmp_path / "root"
    shutil.copytree(src, dst)
    return dst


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def split_path(root, dirname):
    return Path(root) / dirname / f"split_Xin_{dirname}.json"


# --------------------------------------------------------------------------------------------
# Datum / DatasetBase


def test_datum_is_read_only_slotted_and_does_not_stat():
    d = Datum("/definitely/not/here.jpg", 3, 0, "ant", "an ant")
    assert (d.impath, d.label, d.domain, d.classname, d.caption) == ("/definitely/not/here.jpg", 3, 0, "ant", "an ant")
    with pytest.raises(AttributeError):
        d.label = 4
    assert not hasattr(d, "__dict__")
    assert pickle.loads(pickle.dumps(d)) == d
    assert copy.copy(d) == d
    assert Datum().caption == "" and Datum().impath == ""
    with pytest.raises(TypeError):
        Datum(123)


def _items(spec):
    return [Datum(f"/x/{lab}_{i}.jpg", lab, 0, name) for lab, name, n in spec for i in range(n)]


def test_datasetbase_classnames_authoritative_b25():
    train = _items([(0, "a", 2), (2, "c", 2)])  # class 1 has no train image
    test = _items([(0, "a", 1), (1, "b", 1), (2, "c", 1)])
    ds = DatasetBase(train_x=train, test=test, classnames=["a", "b", "c"])
    assert ds.num_classes == 3
    assert ds.classnames == ["a", "b", "c"]
    assert ds.lab2cname == {0: "a", 1: "b", 2: "c"}
    # Dassl's derivation (no classnames given) loses "b": kept for compatibility, documented.
    legacy = DatasetBase(train_x=train, test=test)
    assert legacy.num_classes == 3 and legacy.classnames == ["a", "c"]


def test_datasetbase_rejects_inconsistent_labels():
    with pytest.raises(ValueError, match="outside 0..1"):
        DatasetBase(train_x=_items([(2, "c", 1)]), classnames=["a", "b"])
    with pytest.raises(ValueError, match="named 'a'"):
        DatasetBase(train_x=_items([(0, "zzz", 1)]), classnames=["a", "b"])


def test_static_helpers():
    data = _items([(1, "b", 2), (0, "a", 1)])
    assert DatasetBase.get_num_classes(data) == 2
    assert DatasetBase.get_lab2cname(data) == ({0: "a", 1: "b"}, ["a", "b"])
    groups = DatasetBase.split_dataset_by_label(data)
    assert list(groups) == [1, 0] and len(groups[1]) == 2
    assert list(DatasetBase.split_dataset_by_domain(data)) == [0]


def test_generate_fewshot_dataset_matches_dassl_algorithm():
    data = _items([(0, "a", 7), (1, "b", 2), (2, "c", 5)])
    got = DatasetBase.generate_fewshot_dataset(data, num_shots=3, rng=random.Random(5))
    # Independent reference: Dassl's loop on the global RNG after seeding.
    random.seed(5)
    expected = []
    for lab in (0, 1, 2):
        items = [d for d in data if d.label == lab]
        expected += random.sample(items, 3) if len(items) >= 3 else items
    assert got == expected
    both = DatasetBase.generate_fewshot_dataset(data, data, num_shots=1, rng=random.Random(0))
    assert isinstance(both, list) and len(both) == 2 and len(both[0]) == 3
    rep = DatasetBase.generate_fewshot_dataset(data, num_shots=4, repeat=True, rng=random.Random(0))
    assert [d.label for d in rep].count(1) == 4
    assert DatasetBase.generate_fewshot_dataset(data, num_shots=-1) is data


def test_build_dataset_unknown_name_suggests_closest(toy):
    cfg = dataset_cfg(toy, name="Animal92_42")
    with pytest.raises(KeyError) as err:
        build_dataset(cfg)
    assert 'Did you mean "Animals92_42"' in str(err.value)
    ds = build_dataset(dataset_cfg(toy))
    assert type(ds).__name__ == "Animals92_42"


# --------------------------------------------------------------------------------------------
# Registry, config, yaml


def test_registry_and_class_attributes():
    for name, (prefix, hint) in NINE.items():
        cls = DATASET_REGISTRY.get(name)
        assert issubclass(cls, LaionBeyond)
        assert (cls.prefix, cls.hint, cls.supports_subsets) == (prefix, hint, True)
        yaml_file = REPO / "configs" / "datasets" / f"{name}.yaml"
        content = CN.load_cfg(yaml_file.read_text())
        assert content == CN({"DATASET": {"NAME": name}})
    assert "LaionBeyond" not in DATASET_REGISTRY


def test_add_dataset_config():
    cfg = CN({"DATASET": CN({"ROOT": ""})})
    datasets.add_dataset_config(cfg)
    assert cfg.DATASET.SUB_CLASSES == "OOP"
    assert cfg.DATASET.USE_SUPERCLASS_F_ZS_TEST is False
    assert cfg.DATASET.SUBFIELD == "Pokemon"
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.DATASET.FEWSHOT_CACHE_DIR == ""


# --------------------------------------------------------------------------------------------
# Reading


def test_reading_matches_split_file(toy):
    ds = build_dataset(dataset_cfg(toy))
    raw = load_json(split_path(toy, "Animals5_OOP"))
    names = {}
    for item in raw["train"].values():
        names[item["label"]] = item["classname"]
    assert ds.classnames == [names[i] for i in range(len(names))] == [c for c, _ in TOY_CLASSES["Animals92_42"]["OOP"]]
    assert ds.num_classes == 5 and ds.hint == "animal" and ds.sub_classes == "OOP"
    assert ds.dataset_dirs == {"OOP": str(toy / "Animals5_OOP")}
    assert ds.split_files == {"OOP": str(split_path(toy, "Animals5_OOP"))}
    for split, data in (("train", ds.train_x), ("val", ds.val), ("test", ds.test)):
        items = list(raw[split].values())
        assert len(data) == len(items)
        for d, item in zip(data, items):
            assert d.impath == str(toy / "Animals5_OOP" / "images" / item["classname"] / item["image_name"])
            assert (d.label, d.classname) == (item["label"], item["classname"])
            assert d.caption == (item.get("INFO") or {}).get("Refined_caption3", "")
    captions = [d.caption for d in ds.train_x + ds.val]
    assert "" in captions and any("giant anteater" in c for c in captions)


def test_superclass_mode(toy):
    ds = build_dataset(dataset_cfg(toy, superclass=True))
    raw = load_json(split_path(toy, "Animals5_OOP"))
    items = list(raw["test"].values())
    assert [d.label for d in ds.test] == [i["s_label"] for i in items]
    assert [d.classname for d in ds.test] == [i["superclass"] for i in items]
    assert ds.classnames == ["insect", "mammal", "primate"]
    assert all(d.caption == "" for d in ds.train_x + ds.test)
    assert ds.test[0].impath.endswith(os.path.join("images", items[0]["classname"], items[0]["image_name"]))


def test_sub_classes_ip_and_invalid(toy):
    ds = build_dataset(dataset_cfg(toy, sub="IP"))
    assert ds.classnames == ["zebra", "red panda", "antlion"] and ds.sub_classes == "IP"
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy, sub="oop"))
    assert "'OOP', 'IP', 'All'" in str(err.value)


def test_all_relabels_sorted_union_oop_then_ip(toy):
    oop = build_dataset(dataset_cfg(toy, sub="OOP"))
    ip = build_dataset(dataset_cfg(toy, sub="IP"))
    both = build_dataset(dataset_cfg(toy, sub="All"))
    expected_names = sorted(oop.classnames + ip.classnames)
    assert both.classnames == expected_names and both.num_classes == 8
    for split in ("train_x", "val", "test"):
        a, b, m = getattr(oop, split), getattr(ip, split), getattr(both, split)
        assert len(m) == len(a) + len(b)
        for orig, new in zip(a + b, m):
            assert (new.impath, new.classname, new.caption) == (orig.impath, orig.classname, orig.caption)
            assert new.label == expected_names.index(orig.classname)
    assert both.dataset_dirs == {"OOP": str(toy / "Animals5_OOP"), "IP": str(toy / "Animals3_IP")}


def test_all_with_shared_name_is_an_error_b24(toy):
    path = split_path(toy, "Animals3_IP")
    raw = load_json(path)
    for split in raw.values():
        for item in split.values():
            if item["classname"] == "zebra":
                item["classname"] = "ant"
    write_json(path, raw)
    os.rename(toy / "Animals3_IP" / "images" / "zebra", toy / "Animals3_IP" / "images" / "ant")
    build_dataset(dataset_cfg(toy, sub="IP"))  # fine on its own
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy, sub="All"))
    assert "'ant'" in str(err.value) and "both OOP and IP" in str(err.value)


def test_all_superclass_mode_merges_shared_superclasses(toy):
    both = build_dataset(dataset_cfg(toy, sub="All", superclass=True))
    assert both.classnames == ["insect", "mammal", "primate"]


def test_class_without_train_image_keeps_its_name_b25(toy):
    path = split_path(toy, "Animals5_OOP")
    raw = load_json(path)
    raw["train"] = {k: v for k, v in raw["train"].items() if v["label"] != 4}
    write_json(path, raw)
    ds = build_dataset(dataset_cfg(toy, shots=-1))
    assert ds.num_classes == 5 and ds.classnames[4] == "aye-aye"
    assert 4 not in {d.label for d in ds.train_x}
    # A K-shot run would learn that class from nothing while filed as K-shot: refused, naming both.
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy, shots=2))
    assert str(path) in str(err.value) and "'aye-aye' (label 4)" in str(err.value)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# Discovery


def test_discovery_zero_hits_names_root_pattern_and_fix(tmp_path):
    (tmp_path / "Animals5_OOP").mkdir()
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(tmp_path, name="Food53_27"))
    msg = str(err.value)
    assert str(tmp_path) in msg and "Food<digits>_OOP" in msg and "Fix" in msg
    with pytest.raises(DatasetError, match="is not a directory"):
        build_dataset(dataset_cfg(tmp_path / "nope"))
    cfg = dataset_cfg(tmp_path)
    cfg.DATASET.ROOT = ""
    with pytest.raises(DatasetError, match="DATASET.ROOT is empty"):
        build_dataset(cfg)


def test_discovery_several_hits_lists_candidates(toy):
    shutil.copytree(toy / "Animals5_OOP", toy / "Animals92_OOP")
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    msg = str(err.value)
    assert str(toy / "Animals5_OOP") in msg and str(toy / "Animals92_OOP") in msg
    build_dataset(dataset_cfg(toy, sub="IP"))  # only the needed subset must be unambiguous


def test_discovery_requires_digits_after_prefix(toy):
    shutil.copytree(toy / "FolkArt4_OOP", toy / "FolkArtExtra12_OOP")
    ds = build_dataset(dataset_cfg(toy, name="FolkArt59_27"))
    assert ds.dataset_dirs["OOP"] == str(toy / "FolkArt4_OOP")
    shutil.rmtree(toy / "FolkArt4_OOP")
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy, name="FolkArt59_27"))
    assert "FolkArtExtra12_OOP" in str(err.value) and "Ignored" in str(err.value)


def test_only_needed_subset_must_exist(toy):
    shutil.rmtree(toy / "Animals5_OOP")
    assert build_dataset(dataset_cfg(toy, sub="IP")).num_classes == 3
    for sub in ("OOP", "All"):
        with pytest.raises(DatasetError, match="No OOP folder"):
            build_dataset(dataset_cfg(toy, sub=sub))


def test_split_file_zero_and_several(toy):
    path = split_path(toy, "Animals5_OOP")
    shutil.copy(path, toy / "Animals5_OOP" / "split_Xin_old.json")
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    assert "split_Xin_old.json" in str(err.value) and path.name in str(err.value)
    os.remove(toy / "Animals5_OOP" / "split_Xin_old.json")
    os.remove(path)
    with pytest.raises(DatasetError, match="No split file"):
        build_dataset(dataset_cfg(toy))


# --------------------------------------------------------------------------------------------
# Validation messages


def test_malformed_json_names_file_and_line(toy):
    path = split_path(toy, "Animals5_OOP")
    path.write_text('{\n "train": {},\n "val": {,\n}')
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_missing_split_key(toy):
    path = split_path(toy, "Animals5_OOP")
    raw = load_json(path)
    del raw["val"]
    write_json(path, raw)
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    assert str(path) in str(err.value) and "['val']" in str(err.value)


def test_item_missing_field(toy):
    path = split_path(toy, "Animals5_OOP")
    raw = load_json(path)
    del raw["test"]["3"]["image_name"]
    write_json(path, raw)
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    msg = str(err.value)
    assert str(path) in msg and "test['3']" in msg and "image_name" in msg


def test_label_gap_reports_missing_labels(toy):
    path = split_path(toy, "Animals5_OOP")
    raw = load_json(path)
    for split in raw.values():
        for item in split.values():
            if item["label"] >= 2:
                item["label"] += 2  # labels 0,1,4,5,6: 2 and 3 missing
    write_json(path, raw)
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    msg = str(err.value)
    assert str(path) in msg and "contiguous" in msg and "missing: 2..3" in msg


def test_label_with_two_classnames(toy):
    path = split_path(toy, "Animals5_OOP")
    raw = load_json(path)
    raw["val"]["0"]["label"] = 1  # a "giant anteater" record labelled like "ant"
    write_json(path, raw)
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    msg = str(err.value)
    assert str(path) in msg and "label 1 is mapped to 2 names" in msg
    assert "'ant'" in msg and "'giant anteater'" in msg


def test_missing_images_reported_once_with_count(toy):
    removed = sorted((toy / "Animals5_OOP" / "images" / "ant").iterdir())[:3]
    for p in removed:
        p.unlink()
    with pytest.raises(DatasetError) as err:
        build_dataset(dataset_cfg(toy))
    msg = str(err.value)
    assert msg.startswith("3 missing image(s): 3 image(s) referenced by ") and "\n" not in msg
    assert str(split_path(toy, "Animals5_OOP")) in msg and str(removed[0]) in msg and "and 2 more" in msg


# --------------------------------------------------------------------------------------------
# Toy generator


def test_make_toy_layout_and_content(toy_master):
    root, info = toy_master
    assert set(info) == {"Animals92_42", "FolkArt59_27", "Pokemon89_39"}
    expected_dirs = {"Animals5_OOP", "Animals3_IP", "FolkArt4_OOP", "FolkArt3_IP", "Pokemon4_OOP", "Pokemon3_IP"}
    assert {p.name for p in Path(root).iterdir()} == expected_dirs
    for domain, subsets in info.items():
        for subset, sub in subsets.items():
            d = Path(sub["dir"])
            assert sorted(p.name for p in d.iterdir()) == ["images", f"split_Xin_{d.name}.json"]
            raw = load_json(sub["split_file"])
            assert set(raw) == {"train", "val", "test"}
            for split in raw.values():
                for item in split.values():
                    assert {"classname", "image_name", "label", "s_label", "superclass"} <= set(item)
                    assert (d / "images" / item["classname"] / item["image_name"]).is_file()
                    assert sub["classnames"][item["label"]] == item["classname"]
            assert sub["classnames"] == [c for c, _ in TOY_CLASSES[domain][subset]]
    names = [c for s in info["Animals92_42"].values() for c in s["classnames"]]
    assert "ant" in names and "giant anteater" in names
    assert "art" in info["FolkArt59_27"]["OOP"]["classnames"]
    assert "Mr._Mime" in info["Pokemon89_39"]["OOP"]["classnames"]
    caps = [i["INFO"]["Refined_caption3"] for i in load_json(info["Animals92_42"]["OOP"]["split_file"])["train"].values()]
    assert caps.count("") == 1
    assert any("giant anteater" in c and "ant " in c.replace("giant anteater", "") for c in caps)
    assert any(not any(n in c.lower() for n in names) for c in caps if c)


def test_make_toy_is_deterministic(tmp_path):
    def digest(root):
        h = hashlib.sha1()
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
        return h.hexdigest()

    make_toy(str(tmp_path / "a"), domains=["Food53_27"], image_size=8)
    make_toy(str(tmp_path / "b"), domains=["Food53_27"], image_size=8)
    make_toy(str(tmp_path / "c"), domains=["Food53_27"], image_size=8, seed=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_toy_images_depend_on_class(toy_master):
    from PIL import Image

    root, info = toy_master
    images = Path(info["Animals92_42"]["OOP"]["dir"]) / "images"

    def mean_colours(name):
        return [Image.open(f).convert("RGB").resize((1, 1)).getpixel((0, 0)) for f in sorted((images / name).iterdir())]

    def dist(x, y):
        return max(abs(x[c] - y[c]) for c in range(3))

    a, b = mean_colours("giant anteater"), mean_colours("sun_bear")
    spread = max(dist(x, y) for x in a for y in a)
    gap = min(dist(x, y) for x in a for y in b)
    assert gap > spread


# --------------------------------------------------------------------------------------------
# Checker


def test_checker_ok_table(toy):
    out = io.StringIO()
    rc = checker.main(["--root", str(toy)], stream=out)
    text = out.getvalue()
    assert rc == 0, text
    row = next(line for line in text.splitlines() if line.startswith("Animals92_42") and " OOP " in line)
    raw = load_json(split_path(toy, "Animals5_OOP"))
    assert row.split()[2:8] == ["Animals5_OOP", "5", str(len(raw["train"])), str(len(raw["val"])),
                                str(len(raw["test"])), "0"]
    assert "Food53_27" not in text  # not present under this root: skipped, not an error
    # the status is the domain's: a clean IP row of a domain with a bad OOP image read "PROBLEMS" under "Status"
    assert text.splitlines()[0].split("  ")[-1].strip() == "Domain status"


def test_checker_reports_problems(toy):
    next((toy / "FolkArt3_IP" / "images" / "quilt").iterdir()).unlink()
    path = split_path(toy, "Pokemon4_OOP")
    path.write_text("{ not json")
    out = io.StringIO()
    rc = checker.main(["--root", str(toy)], stream=out)
    text = out.getvalue()
    assert rc == 1
    assert "2 problem(s)" in text and "malformed JSON" in text and str(path) in text
    assert "1 image(s) referenced by" in text
    out = io.StringIO()
    assert checker.main(["--root", str(toy), "--domains", "Animals92_42"], stream=out) == 0
    assert checker.main(["--root", str(toy), "--domains", "Food53_27"], stream=io.StringIO()) == 1


def test_checker_empty_root(tmp_path, capsys):
    out = io.StringIO()
    assert checker.main(["--root", str(tmp_path)], stream=out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert out.getvalue() == "" and len(err) == 1 and err[0].startswith("error: no LAION-Beyond domain found")
