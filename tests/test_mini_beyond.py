"""Mini-Beyond assets: the OOP guarantee, the split, the shipped mini CLIP, and the benchmark builder."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import laion_beyond
from tools.mini_beyond import __main__ as mb_main
from tools.mini_beyond import build as mbb
from tools.mini_beyond import common as mb
from tools.mini_beyond import evaluate as mbe
from tools.mini_beyond import pretrain as mbp
from tools.mini_beyond import views as mbv

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets" / "mini_beyond"
SMALL = ["Plants", "Attire"]  # the two smallest domains keep the build tests fast


@pytest.fixture(scope="module")
def assets():
    return mb.load_assets(ASSETS)


def test_asset_files_consistent(assets):
    assert assets.rgba.dtype == np.uint8
    assert assets.rgba.shape == (len(assets.meta), 64, 64, 4)
    # premultiplied: no colour channel exceeds alpha
    assert not (assets.rgba[..., :3] > assets.rgba[..., 3:4]).any()
    for rec in assets.meta:
        assert set(rec) >= {"codepoints", "name", "group", "subgroup"}
        assert rec["group"] not in ("Flags", "Component")
        assert not any(0x1F3FB <= int(cp, 16) <= 0x1F3FF for cp in rec["codepoints"])
    total = sum(p.stat().st_size for p in ASSETS.iterdir() if p.is_file())
    assert total < 30 * 2 ** 20
    assert "OFL" in (ASSETS / "LICENSE.md").read_text(encoding="utf-8")


def _independent_captions(assets):
    """The pre-training caption set, rebuilt here from the templates and the metadata."""
    oop = {r["index"] for d in assets.split["domains"].values() for r in d["oop"]}
    caps = set()
    for i, rec in enumerate(assets.meta):
        if i in oop:
            continue
        sg = rec["subgroup"]
        hint = next((d.hint for d in mb.DOMAINS if re.fullmatch(d.subgroup_pattern, sg)), None)
        word = mb.SUBGROUP_WORDS.get(sg, sg.replace("-", " "))
        name = mb.ascii_name(rec["name"])
        for t in mb.PRETRAIN_TEMPLATES:
            caps.add(t.format(name=name, word=word, hint=hint or word))
    return caps


def test_oop_names_absent_from_every_pretraining_caption(assets):
    caps = _independent_captions(assets)
    assert caps == set(mb.pretraining_captions(assets.meta, assets.split))
    assert len(caps) > 5000
    blob = "\n".join(sorted(caps)).lower()
    oop_names = [r["classname"] for d in assets.split["domains"].values() for r in d["oop"]]
    for name in oop_names:
        assert re.search(r"\b" + re.escape(name) + r"\b", blob) is None, name
        # the split is stricter still: no plural either
        assert re.search(r"\b" + re.escape(name) + r"(s|es)?\b", blob) is None, name
    # and the IP names are all there (the guarantee is not vacuous)
    for d in assets.split["domains"].values():
        for r in d["ip"]:
            assert re.search(r"\b" + re.escape(r["classname"]) + r"\b", blob), r["classname"]
    assert mb.oop_violations(assets.meta, assets.split) == []


def test_pretraining_uses_exactly_the_checked_captions(assets):
    oop = {r["index"] for d in assets.split["domains"].values() for r in d["oop"]}
    assert set(assets.split["pretrain_indices"]) == set(range(len(assets.meta))) - oop


def test_split_structure(assets):
    split = assets.split
    assert list(split["domains"]) == [d.name for d in mb.DOMAINS]
    seen_names = set()
    for d in mb.DOMAINS:
        dom = split["domains"][d.name]
        assert dom["prefix"] == d.prefix and dom["hint"] == d.hint
        oop = [r["classname"] for r in dom["oop"]]
        ip = [r["classname"] for r in dom["ip"]]
        assert len(oop) >= 8 and len(ip) >= 8, d.name
        assert not set(oop) & set(ip)
        assert 0.25 <= len(oop) / (len(oop) + len(ip)) <= 0.4
        assert oop == sorted(oop) and ip == sorted(ip)
        for r in dom["oop"] + dom["ip"]:
            meta = assets.meta[r["index"]]
            assert r["subgroup"] == meta["subgroup"]
            assert re.fullmatch(d.subgroup_pattern, r["subgroup"])
            assert r["subgroup"] != "transport-sign"
            assert r["classname"] == r["classname"].strip().lower()
            assert r["classname"].isascii() and "/" not in r["classname"]
            assert sum(c.isalpha() for c in r["classname"]) >= 2
            assert r["classname"] not in seen_names
            seen_names.add(r["classname"])
    # every domain emoji of the metadata is a class unless dropped with a reason
    n_domain = sum(mb.domain_of(m["subgroup"]) is not None for m in assets.meta)
    assert len(seen_names) + len(split["dropped"]) == n_domain


def test_split_is_reproducible(assets):
    assert mb.make_split(assets.meta, seed=assets.split["seed"]) == assets.split
    other = mb.make_split(assets.meta, seed=assets.split["seed"] + 1)
    assert other["domains"]["Animals"]["oop"] != assets.split["domains"]["Animals"]["oop"]
    assert mb.oop_violations(assets.meta, other, plurals=True) == []


def test_greedy_never_picks_a_name_that_a_pretraining_caption_contains():
    # "cat" occurs in "cat face" (Smileys, always pre-training), so "cat" can never be OOP;
    # "shoe" occurs in the captions of "running shoe" only, so it may be OOP only together with it.
    meta = [{"name": "cat", "subgroup": "animal-mammal"}, {"name": "cat face", "subgroup": "cat-face"}]
    meta += [{"name": f"beast{i}", "subgroup": "animal-mammal"} for i in range(5)]
    meta += [{"name": "shoe", "subgroup": "clothing"}, {"name": "running shoe", "subgroup": "clothing"},
             {"name": "hat", "subgroup": "clothing"}]
    for seed in range(10):
        split = mb.make_split(meta, seed=seed, oop_fraction=0.9)
        animals = {r["classname"] for r in split["domains"]["Animals"]["oop"]}
        attire = {r["classname"] for r in split["domains"]["Attire"]["oop"]}
        assert "cat" not in animals
        assert "shoe" not in attire or "running shoe" in attire
        assert mb.oop_violations(meta, split, plurals=True) == []


def test_ascii_names():
    assert mb.ascii_name("man\u2019s shoe") == "man's shoe"
    assert mb.ascii_name("Pi\u00f1ata") == "pinata"
    assert mb.ascii_name("  T-Shirt ") == "t-shirt"


def test_composite_is_premultiplied_over():
    rgba = np.zeros((2, 8, 8, 4), np.uint8)
    rgba[0, 2:6, 2:6] = (100, 50, 0, 200)  # premultiplied colour under alpha 200
    rgba[1] = (0, 0, 0, 0)
    none = mbv.AugStrength(zoom=(1, 1), aspect=0, translate=0, rotate_deg=0, flip_p=0, brightness=0,
                          contrast=0, saturation=0, blur_p=0, noise_max=0, gradient_p=0)
    bg = torch.tensor([[0.2, 0.4, 1.0], [1.0, 0.0, 0.5]])
    out = mbv.augment(mbv.rgba_tensor(rgba), torch.Generator().manual_seed(0), none, background=bg)
    a = rgba[..., 3:4] / 255.0
    expect = rgba[..., :3] / 255.0 + (1 - a) * bg.numpy()[:, None, None, :]
    assert np.allclose(out.permute(0, 2, 3, 1).numpy(), expect, atol=1e-5)


def test_batches_have_no_repeats():
    it = mbp._batches(10, 4, np.random.default_rng(0))
    counts = np.zeros(10, int)
    for _ in range(25):
        b = next(it)
        assert len(set(b.tolist())) == 4
        counts[b] += 1
    assert counts.min() >= 8  # roughly uniform use of the corpus


def test_shipped_weights_load_into_mini_clip(assets):
    import open_clip
    from safetensors.torch import load_file

    weights = ASSETS / mb.WEIGHTS_FILE
    state = load_file(str(weights))
    open_clip.add_model_config(str(REPO / "clip" / "model_configs"))
    model = open_clip.create_model("mini-clip", pretrained=str(weights))
    assert set(state) == set(model.state_dict())
    assert all(v.dtype == torch.float16 for v in state.values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k].float()), k
    tok = open_clip.get_tokenizer("mini-clip")
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.randn(3, 3, 64, 64))
        txt = model.encode_text(tok(["a photo of a dog.", "a car", "x"]))
    assert img.shape == (3, 128) and txt.shape == (3, 128)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    assert tok(["a"]).shape == (1, 32)


def test_logged_zero_shot_numbers_reproduce(assets):
    """Zero-shot on the Plants test views with the shipped weights equals what the log reports."""
    log = json.loads((ASSETS / mb.LOG_FILE).read_text(encoding="utf-8"))
    model, tok = mbe.create_mini_clip(ASSETS / mb.WEIGHTS_FILE)
    res = mbe.evaluate(model, tok, assets, domains=["Plants"], kmeans=False)["per_domain"]["Plants"]
    ref = log["eval"]["per_domain"]["Plants"]
    assert abs(res["zs_ip"] - ref["zs_ip"]) <= 2.0
    assert abs(res["zs_oop"] - ref["zs_oop"]) <= 2.0
    mean = log["eval"]["mean"]
    assert mean["zs_ip"] > mean["zs_oop"] + 20  # the OOP concepts really are unknown to the model


def _load(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("mini")
    dirs = mbb.build(root, train=3, val=1, test=2, domains=SMALL, assets=assets)
    return root, dirs


def test_build_layout(built, assets):
    root, dirs = built
    expected = []
    for dname in SMALL:
        dom = assets.split["domains"][dname]
        for subset in ("OOP", "IP"):
            expected.append(f"{dom['prefix']}{len(dom[subset.lower()])}_{subset}")
    assert [d.name for d in dirs] == expected
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(expected)
    counts = {"train": 3, "val": 1, "test": 2}
    for d in dirs:
        dname = next(n for n in SMALL if d.name.startswith(assets.split["domains"][n]["prefix"]))
        recs = assets.split["domains"][dname][d.name.rsplit("_", 1)[1].lower()]
        split = _load(d / f"split_Xin_{d.name}.json")
        assert list(split) == ["train", "val", "test"]
        names = sorted(r["classname"] for r in recs)
        assert sorted(p.name for p in (d / "images").iterdir()) == names
        for part, items in split.items():
            assert list(items) == [str(i) for i in range(len(names) * counts[part])]
            labels = set()
            for item in items.values():
                assert set(item) == {"classname", "image_name", "label", "s_label", "superclass", "INFO"}
                assert item["label"] == names.index(item["classname"])
                labels.add(item["label"])
                cap = item["INFO"]["Refined_caption3"]
                assert re.search(r"\b" + re.escape(item["classname"]) + r"\b", cap)
                rec = next(r for r in recs if r["classname"] == item["classname"])
                assert item["superclass"] == rec["subgroup"]
                path = d / "images" / item["classname"] / item["image_name"]
                with Image.open(path) as im:
                    assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
            assert labels == set(range(len(names)))
        # the superclass ids follow the domain's sorted subgroups
        subgroups = sorted({r["subgroup"] for s in ("oop", "ip") for r in assets.split["domains"][dname][s]})
        for item in split["test"].values():
            assert subgroups[item["s_label"]] == item["superclass"]


def test_build_views_are_distinct(built):
    root, dirs = built
    d = dirs[0]
    cls = sorted((d / "images").iterdir())[0]
    imgs = {p.name: np.asarray(Image.open(p)).astype(int) for p in cls.iterdir()}
    assert len(imgs) == 3 + 1 + 2
    keys = sorted(imgs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert np.abs(imgs[a] - imgs[b]).mean() > 2, (a, b)


def test_build_is_deterministic_and_idempotent(built, assets, tmp_path):
    root, dirs = built
    other = mbb.build(tmp_path, train=3, val=1, test=2, domains=SMALL, assets=assets)
    for a, b in zip(dirs, other):
        fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert fa == fb
        for rel in fa:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    marker = other[0] / "split_fewshot"
    marker.mkdir()
    mbb.build(tmp_path, train=3, val=1, test=2, domains=SMALL, assets=assets)
    assert marker.is_dir()  # same parameters: nothing rebuilt
    again = mbb.build(tmp_path, train=2, val=1, test=2, domains=SMALL, assets=assets)
    assert not marker.exists()  # changed parameters: rebuilt from scratch
    split = _load(again[0] / f"split_Xin_{again[0].name}.json")
    assert len(split["train"]) == 2 * len(list((again[0] / "images").iterdir()))


def _tree(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_build_replaces_only_what_it_writes(assets, tmp_path):
    """Issue 12: `build --domains X` (and the demo) deleted the other domains of the shared root.
    Rebuilding one domain must leave the other byte-for-byte intact, few-shot caches included."""
    dirs = mbb.build(tmp_path, train=2, val=1, test=1, domains=SMALL, assets=assets)
    attire = [d for d in dirs if d.name.startswith("MiniAttire")]
    cache = attire[0] / "split_fewshot" / "shot_1-seed_1-abc.json"
    cache.parent.mkdir()
    cache.write_text("{}")
    mine = tmp_path / "my_notes.txt"
    mine.write_text("not Mini-Beyond")
    before = {d: _tree(d) for d in attire}
    plants = mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    assert {d: _tree(d) for d in attire} == before
    assert mine.read_text() == "not Mini-Beyond"
    split = _load(plants[0] / f"split_Xin_{plants[0].name}.json")
    assert len(split["train"]) == 3 * len(list((plants[0] / "images").iterdir()))  # Plants was rebuilt
    # A rebuild with the same parameters keeps the finished Attire folders as they are, too; the
    # registered dataset's name (what demo / compare / train.py take) names the same domain.
    mbb.build(tmp_path, train=2, val=1, test=1, domains=["MiniAttire"], assets=assets)
    assert {d: _tree(d) for d in attire} == before
    assert mb.domain_names(["MiniPlants", "Plants", "Food"]) == ["Plants", "Food"]


def test_build_refuses_folders_it_did_not_write(assets, tmp_path):
    name = mbb.subset_dirname("Plants", "OOP", assets)
    theirs = tmp_path / name / "images"
    theirs.mkdir(parents=True)
    (theirs / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match=name):
        mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    assert (theirs / "keep.txt").read_text() == "user data"


def test_rebuild_refuses_files_a_build_did_not_write_inside_its_folders(assets, tmp_path):
    """Hostile: a rebuild with new parameters replaced a recorded domain folder whole, and a file the
    user had put inside it went with it. Now anything the build did not write -- at the top, in a class
    folder, named like a build image in a class folder of its own, in the few-shot cache folder, a
    symlink, a `.tmp` sibling -- stops the rebuild, one line naming it, before anything changes (also
    for the other domains of the same call); the few-shot cache is the project's own and goes;
    --force deletes on purpose (a link is unlinked, never followed)."""
    dirs = mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants", "Food"], assets=assets)
    plants = [d for d in dirs if d.name.startswith("MiniPlants")]
    cache = plants[0] / "split_fewshot" / "shot_1-seed_1-abc.json"
    cache.parent.mkdir()
    cache.write_text("{}")
    cls = next(p for p in (plants[0] / "images").iterdir())
    elsewhere = tmp_path.parent / f"{tmp_path.name}-linked"
    elsewhere.mkdir()
    (elsewhere / "thesis.txt").write_text("mine")
    stamp = (tmp_path / mb.STAMP_FILE).read_bytes()
    cases = [plants[0] / "notes.txt", cls / "my_photo.jpg", plants[0] / "images" / "my class" / "train_123.jpg",
             cls / "train_\u0661\u0662\u0663.jpg",  # non-ASCII digits are no build image name
             plants[0] / "split_fewshot" / "my_notes.txt", plants[1] / "split_Xin_mine.json",
             tmp_path / f"{plants[0].name}.tmp" / "thesis.txt",
             # directories, empty ones too: only images/, images/<class>/ and split_fewshot/ are a build's
             ("dir", plants[0] / "my_dir"), ("dir", cls / "sub"), ("dir", plants[0] / "split_fewshot" / "mine"),
             "link"]  # last: it stays for the --force part
    for mine in cases:
        made = None
        if mine == "link":
            mine = tmp_path / f"{plants[1].name}.tmp"
            mine.symlink_to(elsewhere, target_is_directory=True)
        elif isinstance(mine, tuple):
            mine = mine[1]
            mine.mkdir()
            made = mine
        else:
            if not mine.parent.exists():
                made = mine.parent
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.write_text("user data")
        named = made if made is not None and made != tmp_path / f"{plants[0].name}.tmp" else mine
        before = {d: _tree(d) for d in dirs}
        with pytest.raises(FileExistsError) as err:  # Food first: its folders must not change either
            mbb.build(tmp_path, train=3, val=1, test=1, domains=["Food", "Plants"], assets=assets)
        assert str(err.value).startswith(f"{named}: not written by a Mini-Beyond build"), str(err.value)
        assert "--force" in str(err.value)
        assert {d: _tree(d) for d in dirs} == before and (tmp_path / mb.STAMP_FILE).read_bytes() == stamp
        assert made is None or made.is_dir()
        if mine.name != f"{plants[1].name}.tmp":
            if mine.is_dir():
                mine.rmdir()
            else:
                mine.unlink()
            if made is not None and made.exists():
                made.rmdir()
    mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets, force=True)
    assert not cache.exists() and not (tmp_path / f"{plants[1].name}.tmp").exists()
    assert (elsewhere / "thesis.txt").read_text() == "mine"  # the link went, not what it pointed to


def _everything(root: Path) -> dict:
    """Every path under ``root`` with its bytes (None for a directory): "nothing changed on disk"."""
    return {p.relative_to(root): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _assert_manifest_is_the_folder(folder: Path):
    """The manifest lists exactly the folder's files (itself aside), sizes and SHA-256 recomputed here."""
    on_disk = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
               if p.is_file() and p.name != mbb.MANIFEST_FILE}
    expected = {rel: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in on_disk.items()}
    assert _load(folder / mbb.MANIFEST_FILE) == {"version": 1, "files": expected}
    assert f"split_Xin_{folder.name}.json" in expected and len(expected) > 1


def _cli_build(root: Path, *argv: str, real_process: bool = False) -> subprocess.CompletedProcess:
    """``python -m tools.mini_beyond build --root ROOT ...``: its exit code and output, run in this process
    (a real one costs ~6 s of imports per call) unless ``real_process``; the root logger's handlers and
    level, which the build's ``logging.basicConfig`` sets, are restored."""
    args = ["build", "--root", str(root), *argv]
    if real_process:
        return subprocess.run([sys.executable, "-m", "tools.mini_beyond", *args], capture_output=True, text=True,
                              cwd=REPO)
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mb_main.main(args)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        for handler in [h for h in root_logger.handlers if h not in handlers]:
            root_logger.removeHandler(handler)
        root_logger.setLevel(level)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_build_writes_a_manifest_of_exactly_what_it_wrote(built, assets, tmp_path):
    """The manifest is what tells a build's files from a user's: it must match the files on disk, and
    a rebuild over untouched folders (new parameters) runs and writes a new, matching one."""
    _, dirs = built
    for d in dirs:
        _assert_manifest_is_the_folder(d)
    first = mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    again = mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    assert again == first
    for d in again:
        _assert_manifest_is_the_folder(d)
        assert len(_load(d / f"split_Xin_{d.name}.json")["train"]) == 3 * len(list((d / "images").iterdir()))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("case,manifest", [("listed", True), ("replaced", True), ("listed", False)])
def test_rebuild_refuses_a_users_photo_that_looks_like_a_build_image(assets, tmp_path, case, manifest):
    """Hostile: the build's files were what the split file lists under a `<split>_NNN.jpg` name, so
    a user's photo saved as `train_999.jpg` and added to a hand-edited split file ("listed"), or saved
    over a built `train_001.jpg` ("replaced"), was deleted by the next rebuild. Now a file counts as the
    build's only when the folder's manifest lists it with its size and SHA-256: the rebuild is refused,
    one `error:` line naming the photo and the fix (exit 2), and nothing on disk changes. A folder of
    an older build has no manifest: there the stamp's image counts rule out `train_999.jpg` (2 train
    images were built). A manifest a user forges to list their photo is not guarded against: it is the
    build's own record."""
    dirs = mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    folder = dirs[0]
    if not manifest:
        for d in dirs:
            (d / mbb.MANIFEST_FILE).unlink()
    split_path = folder / f"split_Xin_{folder.name}.json"
    split = _load(split_path)
    item = split["train"]["1"]
    photo = folder / "images" / item["classname"] / ("train_999.jpg" if case == "listed" else item["image_name"])
    photo.write_bytes(b"\xff\xd8 the user's own photo \xff\xd9")
    if case == "listed":
        split["train"][str(len(split["train"]))] = dict(item, image_name=photo.name)
        split_path.write_text(json.dumps(split, indent=1), encoding="utf-8")
    before = _everything(tmp_path)
    proc = _cli_build(tmp_path, "--domains", "Plants", "--train", "3", "--val", "1", "--test", "1")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith(f"error: {photo}") and "\n" not in err, err
    assert "not written by a Mini-Beyond build (or changed since)" in err and "move them away or pass --force" in err
    if case == "listed" and manifest:
        assert "and 1 more" in err  # the hand-edited split file is no longer the build's either
    assert _everything(tmp_path) == before
    assert _cli_build(tmp_path, "--domains", "Plants", "--train", "2", "--val", "1", "--test", "1").returncode == 0
    assert _everything(tmp_path) == before  # same parameters: nothing to rebuild, nothing touched


def test_a_manifest_that_is_not_one_is_the_users(assets, tmp_path):
    """A manifest a build did not write (a build writes it whole, or not at all) counts as a user's
    file: the rebuild is refused naming it, and nothing changes."""
    dirs = mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    manifest = dirs[0] / mbb.MANIFEST_FILE
    manifest.write_text("my notes")
    before = _everything(tmp_path)
    with pytest.raises(FileExistsError, match=f"^{re.escape(str(manifest))}: not written by a Mini-Beyond build"):
        mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    assert _everything(tmp_path) == before


def test_a_build_killed_while_writing_its_manifest_is_finished_by_the_next(assets, tmp_path, monkeypatch):
    """The manifest is written last, through the atomic writer: a build killed in the middle leaves a
    folder with no manifest and the writer's temporary file in `<name>.tmp`; the next build recognises
    both as its own and finishes."""
    mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    real = mbb.write_json_file

    def killed(path, obj):
        if path.name == mbb.MANIFEST_FILE:
            (path.parent / f".{path.name}.4242-0123abcd.tmp").write_text('{"version": 1, "fi')
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(mbb, "write_json_file", killed)
    with pytest.raises(KeyboardInterrupt):
        mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    assert len(list(tmp_path.glob("*.tmp/.*.tmp"))) == 1
    monkeypatch.setattr(mbb, "write_json_file", real)
    dirs = mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    assert not list(tmp_path.glob("*.tmp"))
    for d in dirs:
        _assert_manifest_is_the_folder(d)


def test_a_backup_copy_beside_a_domain_folder_is_the_users(assets, tmp_path):
    """Hostile: `cp -r MiniPlants9_OOP MiniPlants9_OOP.old` (a user's backup) matched the build's
    leftover names and was deleted by the next rebuild. A build writes only `.tmp` and `.old.tmp`
    siblings; a bare `.old` copy is not the domain's: the rebuild runs and leaves it byte for byte."""
    dirs = mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    backup = tmp_path / f"{dirs[0].name}.old"
    shutil.copytree(dirs[0], backup)
    before = _tree(backup)
    rebuilt = mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    assert _tree(backup) == before
    split = _load(rebuilt[0] / f"split_Xin_{rebuilt[0].name}.json")
    assert len(split["train"]) == 3 * len(list((rebuilt[0] / "images").iterdir()))  # it was rebuilt


def test_the_few_shot_folder_name_is_the_dataset_codes():
    """The build keeps `split_fewshot/` as the dataset code's; a rename there must not make it foreign."""
    assert mbb._FEWSHOT_DIR == laion_beyond.FEWSHOT_DIRNAME


def test_a_file_where_a_domain_folder_goes_is_refused_untouched(assets, tmp_path):
    """Hostile: a file in place of a recorded domain folder was renamed to <name>.old.tmp, the build then
    failed on it, and every later build stayed stuck. Now it is refused before anything changes."""
    dirs = mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    shutil.rmtree(dirs[0])
    dirs[0].write_text("user file")
    stamp = (tmp_path / mb.STAMP_FILE).read_bytes()
    for train in (2, 3):
        with pytest.raises(FileExistsError, match=f"^{re.escape(str(dirs[0]))}: not written by a Mini-Beyond build"):
            mbb.build(tmp_path, train=train, val=1, test=1, domains=["Plants"], assets=assets)
        assert dirs[0].read_text() == "user file" and (tmp_path / mb.STAMP_FILE).read_bytes() == stamp
        assert not list(tmp_path.glob("*.tmp"))
    mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets, force=True)  # on purpose
    assert dirs[0].is_dir() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("stamp", ["garbage", "list", "directory"])
def test_a_stamp_that_is_not_one_is_refused_untouched(assets, tmp_path, stamp):
    """A garbage or foreign mini_beyond_build.json was read as "nothing built" and replaced; a directory
    of that name gave a misleading "no entry in" line."""
    path = tmp_path / mb.STAMP_FILE
    if stamp == "directory":
        path.mkdir()
    else:
        path.write_text("not json {" if stamp == "garbage" else "[1, 2]")
    with pytest.raises(FileExistsError, match=f"^{re.escape(str(path))} is not a Mini-Beyond build stamp"):
        mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    assert path.is_dir() if stamp == "directory" else path.read_text() in ("not json {", "[1, 2]")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mb.STAMP_FILE]


def test_an_interrupted_rebuild_is_finished_by_the_next_build(assets, tmp_path, monkeypatch):
    """The stamp records a rebuild before it starts, so the folders an interrupted build leaves (the new
    subset half-written in `.tmp`, the old ones) are recognised as the build's own next time."""
    mbb.build(tmp_path, train=2, val=1, test=1, domains=["Plants"], assets=assets)
    real = mbb._write_subset
    calls = []

    def interrupted(root, dom_name, target, *args):
        calls.append(target)
        if len(calls) == 2:  # the second subset: images written, no split file yet
            subset = target.name.rsplit("_", 1)[1].lower()
            first_class = assets.split["domains"][dom_name][subset][0]["classname"]
            (root / f"{target.name}.tmp" / "images" / first_class).mkdir(parents=True)
            real_image = next((root / target.name / "images" / first_class).glob("train_*.jpg"))
            shutil.copy(real_image, root / f"{target.name}.tmp" / "images" / first_class / "train_000.jpg")
            raise KeyboardInterrupt
        return real(root, dom_name, target, *args)

    monkeypatch.setattr(mbb, "_write_subset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    monkeypatch.setattr(mbb, "_write_subset", real)
    dirs = mbb.build(tmp_path, train=3, val=1, test=1, domains=["Plants"], assets=assets)
    assert not list(tmp_path.glob("*.tmp"))
    split = _load(dirs[1] / f"split_Xin_{dirs[1].name}.json")
    assert len(split["train"]) == 3 * len(list((dirs[1] / "images").iterdir()))


def test_mini_datasets_registered_and_loadable(built, assets):
    datasets = pytest.importorskip("datasets.mini_beyond")
    import datasets as dpkg
    from dassl.config import get_cfg_default

    for d in mb.DOMAINS:
        cls = getattr(datasets, "Mini" + d.name)
        assert cls.prefix == d.prefix and cls.hint == d.hint
    root, _ = built
    cfg = get_cfg_default()
    dpkg.add_dataset_config(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_SHOTS = 2
    cfg.DATASET.SUB_CLASSES = "IP"
    cfg.SEED = 1
    cfg.OUTPUT_DIR = str(root / "_out")
    ds = datasets.MiniPlants(cfg)
    ip = sorted(r["classname"] for r in assets.split["domains"]["Plants"]["ip"])
    assert ds.classnames == ip
    assert len(ds.train_x) == 2 * len(ip) and len(ds.test) == 2 * len(ip)
    assert all(Path(x.impath).is_file() for x in ds.test)


def test_render_matches_shipped_arrays(assets):
    """Re-rendering reproduces the shipped pixels (needs the font and unicode-data packages)."""
    from tools.mini_beyond import render as r

    if not (r.EMOJI_TEST_TXT.is_file() and r.NOTO_EMOJI_TTF.is_file()):
        pytest.skip("fonts-noto-color-emoji / unicode-data not installed")
    entries = r.parse_emoji_test()
    assert [list(e.codepoints) for e in entries] == [m["codepoints"] for m in assets.meta]
    pick = [0, 500, len(entries) - 1]
    arr, kept = r.render_emoji([entries[i] for i in pick])
    assert kept == [0, 1, 2]
    assert np.array_equal(arr, assets.rgba[pick])


def test_pretraining_is_deterministic(assets):
    """Same seed -> same weights after a few (tiny) steps; another seed -> different weights."""
    small = mb.Assets(assets.rgba, assets.meta, {"pretrain_indices": assets.split["pretrain_indices"][:40]},
                      assets.directory)

    def run(seed):
        tr = mbp._Pretrainer(small, seed=seed, batch_size=8, lr=1e-3, weight_decay=0.1, warmup_frac=0.5)
        losses = [tr.step(s, 2) for s in range(2)]
        return losses, {k: v.clone() for k, v in tr.model.state_dict().items()}

    la, sa = run(0)
    lb, sb = run(0)
    lc, sc = run(1)
    assert la == lb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(np.isfinite(la)) and abs(la[0] - np.log(8)) < 1.0  # chance-level loss at init
    assert not torch.equal(sa["visual.conv1.weight"], sc["visual.conv1.weight"])


@pytest.mark.parametrize("argv,expected", [
    (["--train", "0"], "--train 0: images per class must be >= 1"),
    (["--train", "-3"], "--train -3"),
    (["--test", "0"], "--test 0"),
    (["--train", "100000"], "at most 1000"),
    (["--size", "0"], "--size 0"),
    (["--domains", "Plnts"], "--domains Plnts: not a Mini-Beyond domain; choose from Animals, Food"),
    (["--domains"], "--domains names no domain"),  # built nothing, said "already built", exit 0
    (["ROOT_IS_FILE"], "is a file"),
])
def test_build_cli_refuses_bad_input_in_one_line(tmp_path, argv, expected):
    """An empty train split used to fail only later, in train.py, with a traceback; --train 100000 tried to
    allocate ~59 GB; --size 0 was silently 64 px; a file as --root or a typo'd domain gave tracebacks."""
    root = tmp_path / "mb"
    if argv == ["ROOT_IS_FILE"]:
        root.write_text("keep")
        argv = []
    proc = _cli_build(root, *argv, real_process=expected == "is a file")  # one real process: its exit code
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "\n" not in err and expected in err, err
    assert (root.read_text() == "keep") if root.is_file() else not any(root.rglob("*"))


@pytest.mark.parametrize("where", ["subset-folder", "assets", "golden-typo"])
def test_build_root_and_golden_domain_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            where: str) -> None:
    """``build --root <root>/MiniPlants9_OOP`` built Food inside the Plants dataset folder (a later build
    then offered to delete it as foreign); ``--root assets/mini_beyond`` wrote domain folders among the
    shipped assets; ``golden --domain Plantz`` was a traceback naming --domains. One line, exit 2, nothing
    written."""
    assets = Path(mb_main.ASSETS_DIR)
    before = sorted(p.name for p in assets.iterdir())
    if where == "golden-typo":
        argv = ["golden", "--domain", "Plantz"]
        expected = "error: --domain Plantz: not a Mini-Beyond domain; choose from"
    elif where == "assets":
        argv = ["build", "--root", str(assets / "x"), "--domains", "Food"]
        expected = f'error: --root "{assets / "x"}" lies inside the shipped assets'
    else:
        (tmp_path / "MiniPlants9_OOP").mkdir()
        root = tmp_path / "MiniPlants9_OOP" / "nested"
        argv = ["build", "--root", str(root), "--domains", "Food"]
        expected = f'error: --root "{root}" lies inside the dataset folder "{tmp_path / "MiniPlants9_OOP"}"'
    with pytest.raises(SystemExit) as exit_info:
        mb_main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert sorted(p.name for p in assets.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ([] if where != "subset-folder" else ["MiniPlants9_OOP"])
    assert not list((tmp_path / "MiniPlants9_OOP").glob("*")) if where == "subset-folder" else True
