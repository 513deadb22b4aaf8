"""Linear probe (C search, sampling, file layout) and the feature extractor on the tiny model."""
from __future__ import annotations

import csv
import json
import math
import os
import os.path as osp

import numpy as np
import pytest

import configs
from lpclip import linear_probe as lp
from tests.helpers import dataset_config, trainer_config

# ---------------------------------------------------------------------------- C search


def counting(fn):
    calls = []

    def evaluate(c):
        calls.append(c)
        return fn(math.log10(c)), f"model@{c:g}"

    return evaluate, calls


def test_search_follows_the_reference_rule_on_a_known_curve():
    # val accuracy peaks at log10 C = 1.3. Coarse grid: best is log C = 2 (|2-1.3| = 0.7).
    # Round 1 on [1, 3]: f(1) = -0.3 > f(3) = -1.7 -> keep 1, interval [1, 2].
    # Round 2 on [1, 2]: f(1) = -0.3 > f(2) = -0.7 -> keep 1, interval [1, 1.5].
    # Round 3 on [1, 1.5]: f(1) = -0.3 < f(1.5) = -0.2 -> keep 1.5.
    evaluate, calls = counting(lambda lc: -abs(lc - 1.3))
    res = lp.search_c(evaluate, num_step=3)
    assert res.c == pytest.approx(10 ** 1.5)
    assert res.val_accuracy == pytest.approx(-0.2)
    assert res.model == f"model@{10 ** 1.5:g}"
    # every C is fitted once: 7 coarse + {1, 3, 1.5} (2 and 1 of later rounds are cached)
    assert len(calls) == len(set(calls)) == 10


def test_search_converges_to_the_best_val_c():
    evaluate, _ = counting(lambda lc: -abs(lc - 1.3))
    res = lp.search_c(evaluate, num_step=8)
    # the optimum stays on the kept half, so the kept end is within half the last interval (2 / 2^8)
    assert abs(math.log10(res.c) - 1.3) <= 2.0 ** -7 + 1e-12


def test_search_ties_go_left():
    evaluate, calls = counting(lambda lc: 50.0)
    res = lp.search_c(evaluate, num_step=4)
    # coarse tie -> first grid value 1e6; every round keeps the left end 1e5
    assert res.c == pytest.approx(1e5)
    assert len(calls) == len(set(calls))


# ---------------------------------------------------------------------------- sampling


def make_split(counts, dim=4, views=1, seed=0, spread=0.05):
    """Class c sits at 3·e_c (+ noise); ``counts[c]`` images, ``views`` rows per image."""
    rng = np.random.default_rng(seed)
    xs, ys, ids = [], [], []
    image = 0
    for label, n in enumerate(counts):
        for _ in range(n):
            for _ in range(views):
                center = np.zeros(dim)
                center[label] = 3.0
                xs.append(center + spread * rng.standard_normal(dim))
                ys.append(label)
                ids.append(image)
            image += 1
    order = np.argsort(np.tile(np.arange(views), image), kind="stable") if views > 1 else np.arange(len(ys))
    x = np.asarray(xs, dtype=np.float32)[order]
    return lp.FeatureSplit(x, np.asarray(ys)[order], np.asarray(ids)[order], [f"c{i}" for i in range(len(counts))])


def test_sampling_takes_all_images_of_small_classes():
    split = make_split([10, 2, 7])
    rows = lp.sample_per_class(split, 4, np.random.default_rng(1))
    per_class = np.bincount(split.y[rows], minlength=3)
    assert per_class.tolist() == [4, 2, 4]
    assert len(set(rows.tolist())) == len(rows)


def test_sampling_counts_images_not_views():
    split = make_split([5, 3], views=3)
    rows = lp.sample_per_class(split, 2, np.random.default_rng(0))
    for label in (0, 1):
        chosen = split.image_ids[rows][split.y[rows] == label]
        assert len(np.unique(chosen)) == 2
        assert len(chosen) == 2 * 3  # every view of the chosen images


def test_sampling_is_reproducible_per_run():
    split = make_split([8, 8, 8])
    a = lp.sample_per_class(split, 2, np.random.default_rng(3))
    b = lp.sample_per_class(split, 2, np.random.default_rng(3))
    c = lp.sample_per_class(split, 2, np.random.default_rng(4))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


# ---------------------------------------------------------------------------- probe on a known problem


def separable_features(train_counts=(8, 2, 8)):
    return {
        "train": make_split(list(train_counts), seed=1),
        "val": make_split([5, 5, 5], seed=2),
        "test": make_split([6, 6, 6], seed=3),
    }


def test_probe_picks_the_c_with_the_best_val_accuracy():
    from sklearn.linear_model import LogisticRegression

    feats = separable_features()
    run = lp.probe_run(feats, shots=4, run=1, num_step=2)
    # Independent computation with the same sample: strong regularisation (C = 1e-6) lets the
    # intercepts beat the rare class 1, weak regularisation separates all three clusters, so the best
    # val accuracy is 100 and the chosen C reaches it.
    rng = np.random.default_rng(1)
    tr = lp.sample_per_class(feats["train"], 4, rng)
    va = lp.sample_per_class(feats["val"], 4, rng)
    assert run["n_train"] == len(tr) == 4 + 2 + 4  # class 1 has only 2 images
    assert run["n_val"] == len(va) == 12

    def val_acc(c):
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=1000).fit(feats["train"].x[tr], feats["train"].y[tr])
        return 100.0 * np.mean(clf.predict(feats["val"].x[va]) == feats["val"].y[va])

    assert val_acc(1e-6) < 100.0  # the rare class 1 loses to the intercepts
    best = max(val_acc(c) for c in lp.COARSE_GRID)
    assert best == 100.0
    assert run["val_accuracy"] == pytest.approx(val_acc(run["c"])) == best
    assert run["accuracy"] == 100.0
    # ties go left from the coarse peak 1e6: 1e5 after any number of rounds
    assert run["c"] == pytest.approx(1e5)


def write_features(root, dataset="Toy9_9", sub="IP", train_counts=(8, 2, 8), drop=()):
    feats = separable_features(train_counts)
    for split, fs in feats.items():
        if split in drop:
            continue
        path = osp.join(root, dataset, sub, f"{split}.npz")
        os.makedirs(osp.dirname(path), exist_ok=True)
        norm = fs.x / np.linalg.norm(fs.x, axis=1, keepdims=True)
        np.savez(path, features=norm, features_raw=fs.x, labels=fs.y, image_ids=fs.image_ids,
                 classnames=np.array(fs.classnames))
    return feats


def test_cli_writes_results_and_named_csv_columns(tmp_path, capsys):
    write_features(str(tmp_path))
    out = tmp_path / "probe"
    rc = lp.main(["--feature-dir", str(tmp_path), "--dataset", "Toy9_9", "--sub-classes", "IP",
                  "--shots", "1", "4", "--num-run", "2", "--num-step", "1", "--output-dir", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sub_classes"] == "IP" and res["seeds"] == [1, 2] and res["features"] == "raw"
    assert sorted(res["shots"]) == ["1", "4"]
    k4 = res["shots"]["4"]
    assert len(k4["accuracies"]) == 2 and len(k4["c"]) == 2
    assert k4["accuracy_mean"] == pytest.approx(np.mean(k4["accuracies"]))
    assert k4["accuracy_std"] == pytest.approx(np.std(k4["accuracies"], ddof=1))  # the project's one convention
    assert res["schema"] == 1 and res["kind"] == "linear_probe" and res["fingerprint"]["trainer"] == "linear_probe"
    with open(out / "linear_probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(lp.CSV_COLUMNS)
    assert [r["shots"] for r in rows] == ["1", "4"]
    assert {r["sub_classes"] for r in rows} == {"IP"}
    assert rows[1]["seeds"] == "1 2"
    assert float(rows[1]["accuracy_mean"]) == pytest.approx(k4["accuracy_mean"], abs=1e-3)
    assert float(rows[1]["accuracy_std"]) == pytest.approx(k4["accuracy_std"], abs=1e-3)


def test_missing_files_fail_fast_with_their_names(tmp_path, capsys):
    write_features(str(tmp_path), drop=("val", "test"))
    with pytest.raises(lp.MissingFeaturesError) as err:
        lp.check_features(str(tmp_path), "Toy9_9", "IP")
    msg = str(err.value)
    assert osp.join("Toy9_9", "IP", "val.npz") in msg and osp.join("Toy9_9", "IP", "test.npz") in msg
    assert "train.npz" not in msg
    # the layout without the SUB_CLASSES level (B31) is not silently accepted either
    rc = lp.main(["--feature-dir", str(tmp_path), "--dataset", "Toy9_9", "--sub-classes", "OOP"])
    assert rc == 2
    assert osp.join("Toy9_9", "OOP", "train.npz") in capsys.readouterr().err


# ---------------------------------------------------------------------------- feature extractor

SMOKE_CFG = str(trainer_config("CLIP_Adapter"))
DATASET_CFG = str(dataset_config("Animals92_42"))


@pytest.fixture
def extractor_env(toy_root, toy_info, tmp_path):
    """The shared toy root (only read) and a private output folder for the features."""
    return str(toy_root), toy_info["Animals92_42"], tmp_path / "feat"


def extractor_argv(root, out, split, *extra):
    return ["--root", root, "--output-dir", str(out), "--config-file", SMOKE_CFG,
            "--dataset-config-file", DATASET_CFG, "--split", split, *extra]


def test_extractor_writes_the_probe_layout_with_encode_image_features(extractor_env):
    import torch
    import torch.nn.functional as F

    from clip import load_clip
    from dassl.data.transforms import build_transform
    from dassl.utils import read_image
    from lpclip import feat_extractor as fe

    root, info, out = extractor_env
    assert fe.main(extractor_argv(root, out, "test", "--seed", "1", "DATASET.SUB_CLASSES", "IP")) == 0
    path = out / "Animals92_42" / "IP" / "test.npz"
    assert path.is_file() and (out / "Animals92_42" / "log.txt").is_file()
    assert lp.feature_paths(str(out), "Animals92_42", "IP")["test"] == str(path)
    data = np.load(path, allow_pickle=False)
    assert data["classnames"].tolist() == info["IP"]["classnames"]

    # independent computation: the split file's test images, the test transform, encode_image
    split = json.loads(open(info["IP"]["split_file"]).read())["test"]
    items = list(split.values())
    cfg = configs.build_cfg(dataset=DATASET_CFG, config=SMOKE_CFG, opts=["DATASET.SUB_CLASSES", "IP"], root=root,
                            seed=1)
    tfm = build_transform(cfg, is_train=False)
    images = torch.stack([tfm(read_image(osp.join(info["IP"]["dir"], "images", it["classname"], it["image_name"])))
                          for it in items])
    model = load_clip(cfg, torch.device("cpu"), "fp32").model
    with torch.no_grad():
        raw = model.encode_image(images).float()
    assert data["labels"].tolist() == [it["label"] for it in items]
    assert data["image_ids"].tolist() == list(range(len(items)))
    np.testing.assert_allclose(data["features_raw"], raw.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data["features"], F.normalize(raw, dim=-1).numpy(), rtol=1e-5, atol=1e-5)
    assert data["features"].dtype == np.float32 and data["labels"].dtype == np.int64


def test_extractor_views_are_augmented_copies(extractor_env):
    from lpclip import feat_extractor as fe

    root, info, out = extractor_env
    assert fe.main(extractor_argv(root, out, "train", "--seed", "2", "--views", "2")) == 0
    data = np.load(out / "Animals92_42" / "OOP" / "train.npz", allow_pickle=False)
    n = sum(1 for _ in json.loads(open(info["OOP"]["split_file"]).read())["train"])
    assert data["features"].shape[0] == 2 * n and str(data["transform"]) == "train"
    assert data["image_ids"].tolist() == list(range(n)) * 2
    assert data["labels"][:n].tolist() == data["labels"][n:].tolist()
    assert not np.allclose(data["features_raw"][:n], data["features_raw"][n:])  # different augmentations
    # and the probe reads exactly this layout
    feats = lp.load_split(str(out / "Animals92_42" / "OOP" / "train.npz"), normalized=True)
    np.testing.assert_array_equal(feats.x, data["features"])
