"""Linear probe (C search, sampling, file layout) and the feature extractor on the tiny model."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import os.path as osp
import shlex
import shutil

import numpy as np
import pytest

import configs
from benchmarks import linear_probe as probe_bench
from dassl import results as results_contract
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


FINGERPRINT = json.dumps({"weights": {"kind": "tag", "model": "toy", "tag": "t"}, "model": "toy"})


def write_features(root, dataset="Toy9_9", sub="IP", train_counts=(8, 2, 8), drop=()):
    feats = separable_features(train_counts)
    for split, fs in feats.items():
        if split in drop:
            continue
        path = osp.join(root, dataset, sub, f"{split}.npz")
        os.makedirs(osp.dirname(path), exist_ok=True)
        norm = fs.x / np.linalg.norm(fs.x, axis=1, keepdims=True)
        np.savez(path, features=norm, features_raw=fs.x, labels=fs.y, image_ids=fs.image_ids,
                 classnames=np.array(fs.classnames), fingerprint=np.array(FINGERPRINT))
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
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert f"no features for --sub-classes OOP in {tmp_path / 'Toy9_9'} (it holds: IP)" in err[0]


def test_a_mistyped_dataset_or_subset_is_named_with_what_is_there(tmp_path, capsys):
    """A typo is likelier than features never extracted: the line says what the folder holds, suggests a
    close name, and only otherwise the extraction command (which, for a typo, would extract nothing)."""
    write_features(str(tmp_path))
    cases = [
        (["--dataset", "Toy9_8"], f"in {tmp_path} (it holds: Toy9_9); did you mean --dataset Toy9_9?"),
        (["--dataset", "Plants"], "(it holds: Toy9_9); check --dataset, or extract them with: "
                                  "python lpclip/feat_extractor.py --dataset Plants"),
        (["--dataset", "Toy9_9", "--sub-classes", "Ip"], "(it holds: IP); did you mean --sub-classes IP?"),
    ]
    for extra, expected in cases:
        rc = lp.main(["--feature-dir", str(tmp_path), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: no features for ") and expected in err[0], err


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
    feats, _ = lp.load_split(str(out / "Animals92_42" / "OOP" / "train.npz"), normalized=True)
    np.testing.assert_array_equal(feats.x, data["features"])


# ---------------------------------------------------------------------------- hostile feature files


def probe_cli(root, capsys, *extra):
    rc = lp.main(["--feature-dir", str(root), "--dataset", "Toy9_9", "--sub-classes", "IP", "--shots", "1",
                  "--num-run", "2", "--num-step", "1", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_truncated_feature_file_is_one_error_line_naming_it(tmp_path, capsys):
    write_features(str(tmp_path))
    path = tmp_path / "Toy9_9" / "IP" / "val.npz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    rc, err = probe_cli(tmp_path, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]
    assert "Traceback" not in err[0]
    assert path.read_bytes() == blob[: len(blob) // 2]  # nothing deleted or rewritten
    assert not (tmp_path / "Toy9_9" / "IP" / "linear_probe").exists()


@pytest.mark.parametrize("dropped", ["features_raw", "fingerprint"])
def test_feature_file_without_a_needed_array_is_one_error_line(tmp_path, capsys, dropped):
    write_features(str(tmp_path))
    path = tmp_path / "Toy9_9" / "IP" / "test.npz"
    with np.load(path, allow_pickle=False) as data:
        kept = {k: data[k] for k in data.files if k != dropped}
    np.savez(path, **kept)
    rc, err = probe_cli(tmp_path, capsys)
    assert rc == 2 and len(err) == 1 and str(path) in err[0] and repr(dropped) in err[0]


def test_splits_of_different_backbones_are_refused(tmp_path, capsys):
    write_features(str(tmp_path))
    path = tmp_path / "Toy9_9" / "IP" / "val.npz"
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    other = json.loads(FINGERPRINT)
    other["weights"]["tag"] = "other"
    arrays["fingerprint"] = np.array(json.dumps(other))
    np.savez(path, **arrays)
    rc, err = probe_cli(tmp_path, capsys)
    assert rc == 2 and len(err) == 1 and "different backbones" in err[0] and str(path) in err[0]
    assert '"tag": "other"' in err[0]  # the differing field is named


def rewrite(path, **changes):
    """Rewrite the npz ``path`` with ``changes`` applied (a value of None drops that array)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    np.savez(path, **arrays)


def toy_job(split, **changes):
    """A job identity as ``lpclip.feat_extractor.job_identity`` stores it, for the toy features."""
    job = {"dataset": "Toy9_9", "sub_classes": "IP", "data": {"IP": "a" * 64, "OOP": "b" * 64}, "split": split,
           "views": 0, "num_shots": -1, "seed": None, "precision": "fp32", "weights": json.loads(FINGERPRINT)["weights"],
           "transform": {"SIZE": [224, 224]}}
    job.update(changes)
    return np.array(json.dumps(job, sort_keys=True))


def add_jobs(root):
    for split in lp.SPLITS:
        rewrite(root / "Toy9_9" / "IP" / f"{split}.npz", job=toy_job(split))


def refused_before_fitting(tmp_path, capsys, monkeypatch, *extra):
    """Run the probe on ``tmp_path``'s toy features; it must not fit (the refusal comes first)."""
    out = tmp_path / "probe"
    monkeypatch.setattr(lp, "linear_probe", lambda *a, **k: pytest.fail("the probe fitted"))
    rc, err = probe_cli(tmp_path, capsys, "--output-dir", str(out), *extra)
    assert not out.exists()  # nothing written: not even the folder
    return rc, err


def _rows(path, fn):
    """The arrays of ``path`` that have one entry per row, each passed through ``fn``."""
    with np.load(path, allow_pickle=False) as data:
        return {k: fn(data[k]) for k in ("features", "features_raw", "labels", "image_ids")}


@pytest.mark.parametrize("case", ["nan_train_class", "inf_train_all", "nan_val", "nan_test", "nan_train_sklearn",
                                  "empty_test", "empty_val", "float_labels", "whole_float_labels",
                                  "complex_features", "int_features", "number_fingerprint", "val_label_not_in_train",
                                  "test_label_not_in_train", "unreadable_job"])
def test_bad_feature_values_are_one_error_line_naming_the_file(tmp_path, capsys, monkeypatch, case):
    """Hostile values that used to skew the probe without failing it: NaN/inf features (torch: a
    chance-level result, exit 0; sklearn: a traceback; val only: a normal-looking one), an empty split
    (a bare NaN in results.json, or C "chosen" on no image), float labels (truncated to int), complex
    or integer features (cast), a fingerprint that is no string, val/test labels no training image has
    (never predicted: C chosen on a validation set the probe cannot get right). Each is one line naming
    the file, exit 2, before any fit; nothing is written."""
    write_features(str(tmp_path))
    folder = tmp_path / "Toy9_9" / "IP"
    split, extra = {"nan_train_class": "train", "inf_train_all": "train", "nan_train_sklearn": "train",
                    "complex_features": "train", "int_features": "train", "empty_test": "test", "nan_test": "test",
                    "test_label_not_in_train": "test", "float_labels": "test", "whole_float_labels": "test"
                    }.get(case, "val"), ["--solver", "sklearn"] if case == "nan_train_sklearn" else []
    path = folder / f"{split}.npz"
    with np.load(path, allow_pickle=False) as data:
        x, y = data["features_raw"].copy(), data["labels"].copy()
    expected = {
        "nan_train_class": "2 of 18 rows of 'features_raw' hold NaN or infinite values",
        "inf_train_all": "18 of 18 rows of 'features_raw' hold NaN or infinite values (row(s) 0, 1, 2 and 15 more)",
        "nan_val": "1 of 15 rows of 'features_raw' hold NaN or infinite values (row(s) 4)",
        "nan_test": "18 of 18 rows of 'features_raw' hold NaN",
        "nan_train_sklearn": "1 of 18 rows of 'features_raw' hold NaN",
        "empty_test": "holds no images ('features_raw' has shape (0, 4))",
        "empty_val": "holds no images ('features_raw' has shape (0, 4))",
        "float_labels": "'labels' is float64, not integers (the probe does not round them; first values [0.5,",
        "whole_float_labels": "'labels' is float64, not integers",
        "complex_features": "'features_raw' is complex128, not real floating-point features",
        "int_features": "'features_raw' is int64, not real floating-point features",
        "number_fingerprint": "its 'fingerprint' (dtype int64, shape ()) is not the backbone fingerprint string",
        "val_label_not_in_train": "has label(s) 7, 9 that no image of",
        "test_label_not_in_train": "has label(s) 5 that no image of",
        "unreadable_job": "its 'job' (dtype <U7, shape ()) is not the job identity the extractor writes",
    }[case]
    if case == "nan_train_class":
        x[y == 1] = np.nan  # the rare class: both its images
        rewrite(path, features_raw=x)
    elif case in ("inf_train_all", "nan_test"):
        rewrite(path, features_raw=np.full_like(x, np.inf if case == "inf_train_all" else np.nan))
    elif case in ("nan_val", "nan_train_sklearn"):
        x[4 if case == "nan_val" else 0, 1] = np.nan
        rewrite(path, features_raw=x)
    elif case in ("empty_test", "empty_val"):
        rewrite(path, **_rows(path, lambda a: a[:0]))
    elif case == "float_labels":
        rewrite(path, labels=y + 0.5)
    elif case == "whole_float_labels":  # the values are whole numbers, but a float file is not what was written
        rewrite(path, labels=y.astype(np.float64))
    elif case == "complex_features":
        rewrite(path, features_raw=x.astype(np.complex128) + 1j)
    elif case == "int_features":
        rewrite(path, features_raw=np.round(x * 100).astype(np.int64))
    elif case == "number_fingerprint":
        rewrite(path, fingerprint=np.array(7))
    elif case == "val_label_not_in_train":
        y[:2] = (9, 7)
        rewrite(path, labels=y)
    elif case == "test_label_not_in_train":
        y[0] = 5
        rewrite(path, labels=y)
    elif case == "unreadable_job":
        rewrite(path, job=np.array("{broken"))
    rc, err = refused_before_fitting(tmp_path, capsys, monkeypatch, *extra)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {path}"), err
    assert expected in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize("case", ["test_narrower", "train_width_0", "labels_2d", "labels_short", "ids_short",
                                  "features_1d", "npy_named_npz"])
def test_feature_shape_mistakes_are_one_error_line_naming_the_file(tmp_path, capsys, monkeypatch, case):
    """Hostile shapes that ended in a traceback (exit 1) deep in the fit: val/test features of another
    width than train's, a width of 0, 2-D or short labels, short image ids, 1-D features, and a bare
    .npy array saved as test.npz (np.load returns an array, which is no context manager)."""
    write_features(str(tmp_path))
    folder = tmp_path / "Toy9_9" / "IP"
    split = "train" if case == "train_width_0" else "val" if case in ("labels_2d", "ids_short") else "test"
    path = folder / f"{split}.npz"
    with np.load(path, allow_pickle=False) as data:
        x, y = data["features_raw"].copy(), data["labels"].copy()
    expected = {
        "test_narrower": f"{path} has features of width 3, {folder / 'train.npz'} of width 4",
        "train_width_0": "'features_raw' has shape (18, 0), not [images, feature width >= 1]",
        "labels_2d": "'labels' has shape (15, 1), but 'features_raw' has 15 rows",
        "labels_short": "'labels' has shape (17,), but 'features_raw' has 18 rows",
        "ids_short": "'image_ids' has shape (14,), but 'features_raw' has 15 rows",
        "features_1d": "'features_raw' has shape (72,), not [images, feature width >= 1]",
        "npy_named_npz": "is a single float32 array of shape (18, 4) (a .npy file), not a feature file",
    }[case]
    if case in ("test_narrower", "train_width_0"):
        rewrite(path, features_raw=x[:, :3] if case == "test_narrower" else x[:, :0])
    elif case == "labels_2d":
        rewrite(path, labels=y[:, None])
    elif case == "labels_short":
        rewrite(path, labels=y[:-1])
    elif case == "ids_short":
        rewrite(path, image_ids=np.arange(len(y) - 1))
    elif case == "features_1d":
        rewrite(path, features_raw=x.reshape(-1))
    elif case == "npy_named_npz":
        with open(path, "wb") as f:
            np.save(f, x)
    rc, err = refused_before_fitting(tmp_path, capsys, monkeypatch)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {path}"), err
    assert expected in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize("case", ["train_copied_to_test", "train_copied_to_test_no_jobs", "other_split_files",
                                  "other_dataset", "job_of_another_split", "all_of_another_dataset",
                                  "all_of_another_subset"])
def test_splits_of_other_data_or_another_split_are_refused(tmp_path, capsys, monkeypatch, case):
    """Hostile: ``cp train.npz test.npz`` (exit 0: the probe scored its training images) and a train
    split extracted from another build of the data (another split-file digest) than val/test (exit 0:
    overlapping images). The job identity each file carries names its split and its data; files
    without one (older extractions) are caught by their identical content."""
    write_features(str(tmp_path))
    folder = tmp_path / "Toy9_9" / "IP"
    if case != "train_copied_to_test_no_jobs":
        add_jobs(tmp_path)
    if case.startswith("train_copied_to_test"):
        shutil.copy(folder / "train.npz", folder / "test.npz")
        named, expected = folder / "test.npz", ("holds the \"train\" split by its job identity, not test"
                                                 if case == "train_copied_to_test" else
                                                 f"holds the same features and labels as {folder / 'train.npz'}")
    elif case == "other_split_files":
        rewrite(folder / "train.npz", job=toy_job("train", data={"IP": "c" * 64, "OOP": "b" * 64}))
        named, expected = folder / "val.npz", "were extracted from different data (data.IP (split-file digest))"
    elif case == "other_dataset":
        rewrite(folder / "test.npz", job=toy_job("test", dataset="Toy8_8", sub_classes="OOP"))
        named, expected = folder / "test.npz", 'holds features of dataset "Toy8_8" by its job identity, not "Toy9_9"'
    elif case.startswith("all_of_another"):
        # another domain's (or subset's) three files copied into this folder agree with each other: they
        # were probed (exit 0) and their numbers filed under --dataset Toy9_9 --sub-classes IP
        key, value = ("dataset", "Toy8_8") if case.endswith("dataset") else ("sub_classes", "OOP")
        for split in ("train", "val", "test"):
            rewrite(folder / f"{split}.npz", job=toy_job(split, **{key: value}))
        named, expected = folder / "train.npz", f'holds features of {key} "{value}" by its job identity, not'
    else:
        rewrite(folder / "val.npz", job=toy_job("test"))
        named, expected = folder / "val.npz", 'holds the "test" split by its job identity, not val'
    rc, err = refused_before_fitting(tmp_path, capsys, monkeypatch)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {named}"), err
    assert expected in err[0] and "feat_extractor.py --dataset Toy9_9" in err[0], err


def test_per_split_job_keys_and_files_without_a_job_still_probe(tmp_path, capsys):
    """What may legitimately differ between the splits is not refused: train's augmented views and
    their seed, the few-shot setting, the requested precision; files without a job identity (older
    extractions) or with a null one (unseeded random weights) load as before."""
    write_features(str(tmp_path))
    add_jobs(tmp_path)
    folder = tmp_path / "Toy9_9" / "IP"
    rewrite(folder / "train.npz", job=toy_job("train", views=4, seed=3, num_shots=16, precision="amp"))
    assert probe_cli(tmp_path, capsys, "--output-dir", str(tmp_path / "a"))[0] == 0
    rewrite(folder / "val.npz", job=None)
    rewrite(folder / "test.npz", job=np.array("null"))
    assert probe_cli(tmp_path, capsys, "--output-dir", str(tmp_path / "b"))[0] == 0
    feats = lp.load_features(str(tmp_path), "Toy9_9", "IP", normalized=False)
    assert feats["train"].job["views"] == 4 and feats["val"].job is None and feats["test"].job is None
    # a dataset without a val split uses its test split (LAION_Beyond_GCD, spec §4.7): val equal to test loads
    shutil.copy(folder / "test.npz", folder / "val.npz")
    assert probe_cli(tmp_path, capsys, "--output-dir", str(tmp_path / "c"))[0] == 0


def test_output_dir_of_a_train_run_is_refused_in_one_short_line(tmp_path, capsys):
    """Hostile: --output-dir at a train.py run's folder was refused with ~8,000 characters (every config
    key "-> (absent)") calling it "another probe configuration". Now the line says what it is; the
    differences of another probe configuration are cut to a few keys plus "and N more"."""
    write_features(str(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {f"OPTIM.KEY_{i:03d}": i for i in range(200)}
    config["TRAINER.NAME"] = "CLIP_Adapter"
    fp = results_contract.fingerprint(config, trainer="CLIP_Adapter", data={"OOP": "a" * 64})
    results_contract.write_results(str(run_dir), {"trainer": "CLIP_Adapter", "dataset": "Toy9_9", "seed": 1,
                                                  "accuracy": 50.0}, fp, kind="run")
    before = _snapshot(run_dir)
    rc, err = probe_cli(tmp_path, capsys, "--output-dir", str(run_dir))
    assert rc == 2 and len(err) == 1, err
    assert err[0] == (f'error: --output-dir "{run_dir}" holds the results of a train.py run (trainer CLIP_Adapter), '
                      "not of a linear probe; this probe would overwrite it. Use another --output-dir, or "
                      "--overwrite to replace it")
    assert _snapshot(run_dir) == before

    out = tmp_path / "probe"
    assert probe_cli(tmp_path, capsys, "--output-dir", str(out))[0] == 0
    before = _snapshot(out)
    rc, err = probe_cli(tmp_path, capsys, "--output-dir", str(out), "--shots", "2", "--num-run", "3",
                        "--num-step", "2", "--solver", "sklearn", "--normalized")
    assert rc == 2 and len(err) == 1 and "another probe configuration (differs in: " in err[0], err
    assert err[0].count(" -> ") == lp.SHOWN and "and 2 more)" in err[0] and len(err[0]) < 400, err
    assert _snapshot(out) == before


def test_separate_unseeded_random_extractions_are_refused_seeded_ones_agree(extractor_env, capsys):
    """The reported case (issue 12): three calls with random weights and no --seed drew three backbones."""
    from lpclip import feat_extractor as fe

    root, _, out = extractor_env
    tiny = ["--dataset", "Animals92_42", "--root", root, "--config-file", SMOKE_CFG]
    for split in lp.SPLITS:
        assert fe.main([*tiny, "--output-dir", str(out / "unseeded"), "--split", split]) == 0
    rc = lp.main(["--feature-dir", str(out / "unseeded"), "--dataset", "Animals92_42", "--shots", "1",
                  "--num-run", "1", "--num-step", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "different backbones" in err[0] and "parameters_sha256" in err[0]

    # with --seed the random init is reproducible: separate calls give the features of one call
    for split in lp.SPLITS:
        assert fe.main([*tiny, "--output-dir", str(out / "seeded"), "--split", split, "--seed", "3"]) == 0
    assert fe.main([*tiny, "--output-dir", str(out / "joint"), "--seed", "3"]) == 0
    for split in lp.SPLITS:
        a = np.load(out / "seeded" / "Animals92_42" / "OOP" / f"{split}.npz", allow_pickle=False)
        b = np.load(out / "joint" / "Animals92_42" / "OOP" / f"{split}.npz", allow_pickle=False)
        np.testing.assert_array_equal(a["features_raw"], b["features_raw"])
        assert str(a["fingerprint"]) == str(b["fingerprint"])
    assert lp.main(["--feature-dir", str(out / "seeded"), "--dataset", "Animals92_42", "--shots", "1",
                    "--num-run", "2", "--num-step", "1"]) == 0


def test_extraction_jobs_skip_only_files_with_their_own_job_identity(extractor_env, capsys):
    """"It exists on disk" is not identity (issue 13): the sweep skips an extractor job only when its
    file carries the job's identity; another seed's backbone, another transform, a file without an
    identity or a broken file is a different run in the way (one error line, exit 2, file untouched);
    unseeded random weights can never be matched, so their job always runs."""
    from lpclip import feat_extractor as fe
    from scripts import run_identity

    root, _, out = extractor_env
    args = extractor_argv(root, out, "test", "--seed", "1")
    cmd = ["python", "-m", "lpclip.feat_extractor", *args]
    path = out / "Animals92_42" / "OOP" / "test.npz"
    assert run_identity.command_state(cmd, str(path)).state == "missing"
    assert fe.main(args) == 0
    assert run_identity.command_state(cmd, str(path)).done

    def state(*changed):
        return run_identity.command_state(["python", "-m", "lpclip.feat_extractor", *changed], str(path))

    other_seed = state(*extractor_argv(root, out, "test", "--seed", "2"))
    assert other_seed.state == "mismatch" and other_seed.differences == ["job weights"]
    other_tfm = state(*args, "INPUT.INTERPOLATION", "bilinear")
    assert other_tfm.state == "mismatch" and other_tfm.differences == ["job transform"]
    assert state(*extractor_argv(root, out, "test")).state == "missing"  # unseeded: always re-extracted
    # a file extracted before read_image's decoding changed (READ_IMAGE_VERSION) holds other pixels' features
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "READ_IMAGE_VERSION", fe.READ_IMAGE_VERSION + 1)
        newer = state(*args)
    assert newer.state == "mismatch" and newer.differences == ["job decoder"]

    seed2 = ["python", "-m", "lpclip.feat_extractor", *extractor_argv(root, out, "test", "--seed", "2")]
    before = path.read_bytes()
    capsys.readouterr()
    assert run_identity.main(["--done", str(path), "--cmd", shlex.join(seed2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 job(s) would overwrite a different finished run")
    assert str(path) in err[0] and "job weights" in err[0] and path.read_bytes() == before

    with np.load(path, allow_pickle=False) as z:  # a file of an extractor that recorded no job identity
        old = {k: z[k] for k in z.files if k != "job"}
    fe.save_npz(str(path), old)
    missing = run_identity.command_state(cmd, str(path))
    assert missing.state == "mismatch" and "job identity missing" in missing.differences[0]
    path.write_bytes(before[: len(before) // 2])  # truncated
    broken = run_identity.command_state(cmd, str(path))
    assert broken.state == "unreadable" and "not a readable feature file" in broken.differences[0]


def test_extractor_mistakes_are_one_line_before_writing(extractor_env, capsys):
    from lpclip import feat_extractor as fe

    root, _, out = extractor_env
    cases = [
        (["--dataset", "Animals92_43"], "Animals92_43"),
        (["--dataset", "Animals92_42", "DATASET.NOPE", "1"], "DATASET.NOPE"),
        (["--dataset", "Animals92_42", "INPUT.SIZE", "(64, 64)"], "INPUT.SIZE"),
    ]
    for extra, named in cases:
        rc = fe.main(["--root", root, "--output-dir", str(out), "--config-file", SMOKE_CFG, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not out.exists()


def test_extractor_refuses_another_extractions_files_before_loading(extractor_env, capsys, monkeypatch):
    """Hostile: a second extraction with another backbone (here: another seed) into the same folder
    silently replaced test.npz after the whole encoding. Now it is one line naming the file and the key,
    before the backbone loads; nothing changes. The same job again re-extracts in place, --overwrite
    replaces, unseeded random weights (a new draw each call) never pass as the file on disk, and an
    --output-dir that is a file is one line before any work."""
    from lpclip import feat_extractor as fe

    root, _, out = extractor_env
    assert fe.main(extractor_argv(root, out, "test", "--seed", "1")) == 0
    path = out / "Animals92_42" / "OOP" / "test.npz"
    before = path.read_bytes()
    capsys.readouterr()

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the targets were checked")

    with monkeypatch.context() as m:
        m.setattr(fe, "load_clip", no_backbone)
        for extra, named in ((["--seed", "2"], "job weights"),
                             (["--seed", "1", "INPUT.INTERPOLATION", "bilinear"], "job transform"),
                             ([], "unseeded random")):
            rc = fe.main(extractor_argv(root, out, "test", *extra))
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1, err
            assert err[0].startswith("error: 1 feature file(s) of another extraction would be overwritten: ")
            assert str(path) in err[0] and named in err[0] and "--overwrite" in err[0]
            assert path.read_bytes() == before
        afile = out / "afile"
        afile.write_text("mine")
        rc = fe.main(extractor_argv(root, afile, "test", "--seed", "1"))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "is a file, not a directory" in err[0] and str(afile) in err[0]
        assert "Errno" not in err[0] and afile.read_text() == "mine"

    assert fe.main(extractor_argv(root, out, "test", "--seed", "1")) == 0  # its own job: re-extracted
    np.testing.assert_array_equal(np.load(path)["features_raw"], np.load(io.BytesIO(before))["features_raw"])
    assert fe.main(extractor_argv(root, out, "test", "--seed", "2", "--overwrite")) == 0
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["job"]))["weights"]["seed"] == 2


def test_probe_refuses_the_results_of_another_configuration(tmp_path, capsys):
    """Hostile: a rerun with other settings (shots, runs, solver ...) silently replaced results.json and
    the CSV. Now the line names the differing key, exit 2, both files untouched; the same settings
    recompute in place; --overwrite replaces; an --output-dir that is a file is one line before any fit."""
    write_features(str(tmp_path))
    out = tmp_path / "probe"
    assert probe_cli(tmp_path, capsys, "--output-dir", str(out))[0] == 0
    files = {name: (out / name).read_bytes() for name in ("results.json", "linear_probe.csv")}
    for extra, key in ((["--shots", "2"], "shots"), (["--solver", "sklearn"], "solver"),
                       (["--normalized"], "features")):
        rc, err = probe_cli(tmp_path, capsys, "--output-dir", str(out), *extra)
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith(f'error: --output-dir "{out}" holds the results of another probe configuration')
        assert key in err[0] and "--overwrite" in err[0]
        assert {name: (out / name).read_bytes() for name in files} == files
    assert probe_cli(tmp_path, capsys, "--output-dir", str(out))[0] == 0
    assert (out / "results.json").read_bytes() == files["results.json"]  # deterministic: the same numbers
    assert probe_cli(tmp_path, capsys, "--output-dir", str(out), "--shots", "2", "--overwrite")[0] == 0
    assert sorted(json.loads((out / "results.json").read_text())["shots"]) == ["2"]

    afile = tmp_path / "afile"
    afile.write_text("mine")
    for target in (afile, afile / "sub"):
        rc, err = probe_cli(tmp_path, capsys, "--output-dir", str(target))
        assert rc == 2 and len(err) == 1 and "is a file, not a directory" in err[0] and "Errno" not in err[0], err
        assert afile.read_text() == "mine"


@pytest.mark.parametrize("case", ["results_dir", "csv_dir", "lone_csv", "no_fingerprint", "empty_json",
                                  "dangling_link", "too_many_shots", "feature_dir_file", "dataset_path",
                                  "empty_subset", "zero_runs", "huge_runs"])
def test_probe_hostile_outputs_and_options_are_one_line_before_fitting(tmp_path, capsys, monkeypatch, case):
    """Hostile variants: a directory where results.json or the CSV goes (failed after every fit, the
    CSV case with results.json already written), a CSV or results.json of other code (silently
    replaced), a dangling link as --output-dir ("is a file"), --shots above every class's image count
    (an all-images run filed as K=1000), a file as --feature-dir, a path as --dataset (recorded as the
    dataset's name), an empty --sub-classes. One line, exit 2, nothing fitted or changed."""
    write_features(str(tmp_path / "feat"))
    out = tmp_path / "out"
    argv = ["--feature-dir", str(tmp_path / "feat"), "--dataset", "Toy9_9", "--sub-classes", "IP", "--shots", "1",
            "--num-run", "2", "--num-step", "1", "--output-dir", str(out)]
    expected = {
        "results_dir": "results.json is not a regular file", "csv_dir": "linear_probe.csv is not a regular file",
        "lone_csv": "holds a linear_probe.csv without the results.json",
        "no_fingerprint": "holds a results.json without a fingerprint",
        "empty_json": "holds a results.json without a fingerprint", "dangling_link": "is a dangling symbolic link",
        "too_many_shots": "--shots 9: no class of Toy9_9/IP has that many training images (at most 8)",
        "feature_dir_file": "is not a directory", "dataset_path": "--dataset '../feat/Toy9_9': give a name",
        "empty_subset": "--sub-classes '': give a name", "zero_runs": "--num-run 0: must be in 1..1000",
        # every run is a batch row of the solver: 10**8 runs grew past 4.5 GB before any fit
        "huge_runs": "--num-run 100000000: must be in 1..1000",
    }[case]
    if case in ("results_dir", "csv_dir"):
        (out / ("results.json" if case == "results_dir" else "linear_probe.csv")).mkdir(parents=True)
    elif case == "lone_csv":
        out.mkdir()
        (out / "linear_probe.csv").write_text("precious")
    elif case in ("no_fingerprint", "empty_json"):
        out.mkdir()
        (out / "results.json").write_text('{"fingerprint": "x"}' if case == "no_fingerprint" else "{}")
    elif case == "dangling_link":
        out.symlink_to(tmp_path / "nowhere")
    elif case == "too_many_shots":
        argv[argv.index("--shots") + 1] = "9"
    elif case == "feature_dir_file":
        (tmp_path / "ffile").write_text("x")
        argv[1] = str(tmp_path / "ffile")
    elif case == "dataset_path":
        argv[3] = "../feat/Toy9_9"
    elif case == "empty_subset":
        argv[5] = ""
    elif case in ("zero_runs", "huge_runs"):
        argv[argv.index("--num-run") + 1] = "0" if case == "zero_runs" else "100000000"
    before = _snapshot(tmp_path)
    monkeypatch.setattr(lp, "linear_probe", lambda *a, **k: pytest.fail("the probe fitted"))
    try:
        rc = lp.main(argv)
    except SystemExit as stop:
        rc = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert _snapshot(tmp_path) == before


def test_shot_counts_no_class_has_are_left_out_not_mislabelled(tmp_path, capsys, caplog):
    """K above every class's image count was the all-images run filed as K; with other counts beside it
    (the default 1..16 on a small benchmark) it is left out with a warning naming it."""
    write_features(str(tmp_path / "feat"))
    out = tmp_path / "out"
    rc = lp.main(["--feature-dir", str(tmp_path / "feat"), "--dataset", "Toy9_9", "--sub-classes", "IP",
                  "--shots", "1", "9", "16", "--num-run", "2", "--num-step", "1", "--output-dir", str(out)])
    assert rc == 0 and sorted(json.loads((out / "results.json").read_text())["shots"]) == ["1"]
    assert "--shots 9 16 left out: no class of Toy9_9/IP has that many training images (at most 8)" in caplog.text


def _snapshot(root):
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------- the batched solver


def gaussian_problem(classes=8, dim=12, per_class=(16, 4, 10), spread=1.5, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)) * 3.0
    out = {}
    for split, n in zip(lp.SPLITS, per_class):
        y = np.repeat(np.arange(classes), n)
        x = means[y] + spread * rng.standard_normal((len(y), dim))
        out[split] = lp.FeatureSplit(x.astype(np.float32), y, np.arange(len(y)), [f"c{i}" for i in range(classes)])
    return out


@pytest.mark.parametrize("c", [1e2, 1.0, 1e-2])
def test_batched_fit_reaches_sklearns_optimum(c):
    """Independent computation: scikit-learn's fit of the same data and C; same objective value
    (sklearn's scaling: mean cross-entropy + |W|²/(2Cn)), same predictions."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from lpclip import logreg

    feats = gaussian_problem()
    x, y = feats["train"].x, feats["train"].y
    ref = LogisticRegression(C=c, solver="lbfgs", max_iter=1000, tol=1e-8).fit(x.astype(np.float64), y)
    problems = logreg.Problems(torch.from_numpy(x)[None], torch.from_numpy(y)[None], torch.ones(1, len(y)), 8)
    theta, n_iter = logreg.fit(problems, torch.tensor([c]), tol=1e-6)
    ref_theta = torch.tensor(np.vstack([ref.coef_.T, ref.intercept_[None]]), dtype=torch.float32)[None]
    inv_reg = torch.tensor([1.0 / (c * len(y))])
    ours, _ = logreg.loss_and_grad(problems, theta, inv_reg)
    theirs, _ = logreg.loss_and_grad(problems, ref_theta, inv_reg)
    # sklearn's own objective at its solution (float64), recomputed independently of loss_and_grad
    z = x.astype(np.float64) @ ref.coef_.T + ref.intercept_
    z -= z.max(axis=1, keepdims=True)
    nll = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))
    objective = nll.mean() + (ref.coef_ ** 2).sum() / (2 * c * len(y))
    assert float(theirs) == pytest.approx(objective, rel=1e-5)
    assert float(ours) <= objective * (1 + 1e-5) + 1e-6
    xt = feats["test"].x
    pred = logreg.predict(torch.from_numpy(xt)[None], theta)[0].numpy()
    assert np.mean(pred == ref.predict(xt)) >= 0.99
    assert int(n_iter) > 0


def test_float64_fits_are_the_converged_optimum():
    """The benchmark's ``--converged`` reference: in float64 with a tight tolerance every fit of a
    search is the optimum (independent computation: scikit-learn in float64 at tol 1e-10, coefficients
    equal to 1e-4 and the same val predictions), also for the warm-started bisection fits."""
    import torch
    from sklearn.linear_model import LogisticRegression

    feats = gaussian_problem()
    samples = [lp._samples(feats, 4, 1)]
    fits = lp.BatchedFits(feats, samples, torch.device("cpu"), dtype=torch.float64, tol=1e-9, max_iter=20000)
    (best_log, _), = lp.search_c_many(fits.evaluate_many, 1, num_step=3)
    tr, va = samples[0]
    x, y = feats["train"].x[tr].astype(np.float64), feats["train"].y[tr]
    assert len(fits.thetas) > len(lp.COARSE_GRID)  # bisection fits (warm-started) are checked too
    for (_, log_c), theta in fits.thetas.items():
        assert theta.dtype == torch.float64
        if log_c > 2:  # nearly unregularised: sklearn itself needs far more than 1000s of iterations
            continue
        ref = LogisticRegression(C=10.0 ** log_c, max_iter=100000, tol=1e-10).fit(x, y)
        # the intercepts are unpenalised, so a constant added to all of them changes nothing: compare centred
        want = np.vstack([ref.coef_.T, ref.intercept_[None] - ref.intercept_.mean()])
        got = theta.numpy().copy()
        got[-1] -= got[-1].mean()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5, err_msg=f"log10 C = {log_c}")
        xv = feats["val"].x[va]
        assert (fits.predict(theta, xv) == ref.predict(xv.astype(np.float64))).all()
    assert best_log in {lc for _, lc in fits.thetas}


def test_batched_problems_are_independent_and_padding_is_inert():
    """Fitting problems together (with zero-weight padding rows) equals fitting each alone."""
    import torch

    from lpclip import logreg

    feats = gaussian_problem()
    x, y = torch.from_numpy(feats["train"].x), torch.from_numpy(feats["train"].y)
    rows = [torch.arange(0, 128, 2), torch.arange(0, 40)]
    n = max(len(r) for r in rows)
    xb = torch.zeros(2, n, x.shape[1])
    yb = torch.zeros(2, n, dtype=torch.long)
    wb = torch.zeros(2, n)
    for i, r in enumerate(rows):
        xb[i, :len(r)], yb[i, :len(r)], wb[i, :len(r)] = x[r], y[r], 1.0
    xb[1, 40:] = 1e3  # garbage in the padding must not matter
    together, _ = logreg.fit(logreg.Problems(xb, yb, wb, 8), torch.tensor([1.0, 0.1]))
    for i, r in enumerate(rows):
        alone, _ = logreg.fit(logreg.Problems(x[r][None], y[r][None], torch.ones(1, len(r)), 8),
                              torch.tensor([[1.0, 0.1][i]]))
        torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-4)


def test_fit_stats_count_every_loss_evaluation_and_change_nothing():
    """``FitStats`` (the benchmark's FLOP floor) counts what ``fit`` evaluates: with ``tol=0`` no problem
    leaves the batch, so every evaluation covers all ``B·n`` padded rows, and there is one per
    line-search trial plus the start; the fitted weights are the same with and without it."""
    import torch

    from lpclip import logreg

    feats = gaussian_problem()
    x, y = torch.from_numpy(feats["train"].x)[None].repeat(3, 1, 1), torch.from_numpy(feats["train"].y)[None].repeat(3, 1)
    problems = logreg.Problems(x, y, torch.ones(3, x.shape[1]), 8)
    c = torch.tensor([0.01, 1.0, 100.0])
    counted = []
    real = logreg.loss_and_grad

    def counting(p, th, inv):
        counted.append(p.x.shape[0] * p.x.shape[1])
        return real(p, th, inv)

    stats = logreg.FitStats()
    plain, _ = logreg.fit(problems, c, max_iter=5, tol=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logreg, "loss_and_grad", counting)
        with_stats, n_iter = logreg.fit(problems, c, max_iter=5, tol=0.0, stats=stats)
    torch.testing.assert_close(with_stats, plain, rtol=0, atol=0)
    assert stats.evaluations == len(counted) >= int(n_iter.max()) + 1 and stats.rows == sum(counted)
    assert stats.rows == stats.evaluations * 3 * x.shape[1] and stats.seconds > 0
    assert stats.gflop(x.shape[2], 8) == pytest.approx(stats.rows * x.shape[2] * 8 * 4 / 1e9)


def test_torch_probe_agrees_with_sklearn_probe():
    """The whole protocol (grid, bisection, 10 runs) with both solvers on one problem: same samples,
    test accuracy within ±0.3 pt on the mean."""
    import warnings

    feats = gaussian_problem(classes=10, dim=16, spread=2.5)
    seeds = list(range(1, 11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for shots in (2, 8):
            sk = lp.probe_runs(feats, shots, seeds, 8, "sklearn")
            to = lp.probe_runs(feats, shots, seeds, 8, "torch")
            assert [r["n_train"] for r in sk] == [r["n_train"] for r in to]
            mean_sk = np.mean([r["accuracy"] for r in sk])
            mean_to = np.mean([r["accuracy"] for r in to])
            assert abs(mean_sk - mean_to) <= 0.3, (shots, mean_sk, mean_to)
            assert 30.0 < mean_sk < 100.0  # a problem where C matters, not a trivial one


def test_search_many_equals_the_single_run_search():
    """The lockstep search of many runs takes the same decisions as each run searched alone."""
    curves = [lambda lc: -abs(lc - 1.3), lambda lc: 50.0, lambda lc: -abs(lc + 3.7)]

    def evaluate_many(pairs):
        return [curves[r](lc) for r, lc in pairs]

    many = lp.search_c_many(evaluate_many, 3, num_step=5)
    for r, curve in enumerate(curves):
        alone = lp.search_c(lambda c, f=curve: (f(math.log10(c)), None), num_step=5)
        assert 10.0 ** many[r][0] == pytest.approx(alone.c) and many[r][1] == pytest.approx(alone.val_accuracy)


def test_runs_with_the_same_training_rows_share_their_fits(monkeypatch):
    """At shots >= images per class every run draws all rows: each (rows, C) is fitted once, and each
    run's result is what it would be alone."""
    from lpclip import logreg

    feats = gaussian_problem(classes=6, dim=8, per_class=(4, 4, 6))
    sizes = []
    real_fit = logreg.fit

    def counting_fit(problems, c, *args, **kwargs):
        sizes.append(len(c))
        return real_fit(problems, c, *args, **kwargs)

    monkeypatch.setattr(logreg, "fit", counting_fit)
    runs = lp.probe_runs(feats, 4, [1, 2, 3], 3, "torch")
    assert sizes[0] == len(lp.COARSE_GRID)  # one training set, not three
    alone = [lp.probe_runs(feats, 4, [r], 3, "torch")[0] for r in (1, 2, 3)]
    for got, want in zip(runs, alone):
        assert got["c"] == pytest.approx(want["c"]) and got["accuracy"] == pytest.approx(want["accuracy"])


def test_unusable_device_is_one_error_line_before_loading(tmp_path, capsys):
    import torch

    write_features(str(tmp_path))
    bad = ["nope", "meta"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])
    for device in bad:
        rc, err = probe_cli(tmp_path, capsys, "--device", device)
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: --device")
    assert not (tmp_path / "Toy9_9" / "IP" / "linear_probe").exists()


@pytest.mark.parametrize("extra,expected", [
    (["--device", "nope"], "--device 'nope' is not a torch device name"),
    (["--device", "meta"], "--device meta: only cpu and cuda"),
    (["--num-shot", "0"], "DATASET.NUM_SHOTS must be an integer"),
    (["--num-shot", "-5"], "got -5"),
    (["--batch-size", "-1"], "--batch-size -1: must be >= 1"),
    (["DATALOADER.TEST.BATCH_SIZE", "0"], "DATALOADER.TEST.BATCH_SIZE must be a positive integer"),
    (["--output-dir", ""], "--output-dir is empty"),
    # a traceback (the first two) or a line only after the dataset had loaded
    (["MODEL.BACKBONE.QUICK_GELU", "maybe"], "MODEL.BACKBONE.QUICK_GELU must be one of"),
    (["MODEL.BACKBONE.NAME", "hf-hub:a/b/c"], "MODEL.BACKBONE.NAME 'hf-hub:a/b/c' is not a hub model id"),
    (["MODEL.BACKBONE.NAME", "ViT-B-17"], "Unknown MODEL.BACKBONE.NAME 'ViT-B-17'"),
    (["MODEL.BACKBONE.WEIGHTS", "no/such/file.pt"], "no/such/file.pt"),
])
def test_extractor_option_mistakes_are_one_line_before_loading(extractor_env, capsys, monkeypatch, extra, expected):
    """Hostile: these were tracebacks after the backbone loaded (a bad --device, a negative batch size),
    silently accepted and recorded in the job identity (--num-shot 0 / -5: the full split), or wrote
    into the current directory (--output-dir ""); the backbone's, tracebacks or lines after the dataset
    had loaded."""
    from lpclip import feat_extractor as fe

    root, _, out = extractor_env
    monkeypatch.setattr(fe, "load_clip", lambda *a, **k: pytest.fail("the backbone was loaded"))
    monkeypatch.setattr(fe, "build_dataset", lambda *a, **k: pytest.fail("the dataset was loaded"))
    argv = ["--root", root, "--config-file", SMOKE_CFG, "--dataset-config-file", DATASET_CFG, "--output-dir", str(out)]
    with pytest.raises(SystemExit) if extra[0] in ("--batch-size", "--output-dir") else contextlib.nullcontext():
        rc = fe.main(argv + extra)
        assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not out.exists()


def test_repeated_split_options_are_merged(capsys):
    """``--split train --split val`` extracted val only (the last option won silently)."""
    from lpclip import feat_extractor as fe

    args = fe.parse_args(["--root", "r", "--dataset", "Food53_27", "--split", "train", "--split", "val",
                          "--split=test", "DATASET.SUB_CLASSES", "IP"])
    assert args.split == ["train", "val", "test"] and args.opts == ["DATASET.SUB_CLASSES", "IP"]
    # a --split without a name is argparse's complaint, not an odd list of overrides
    with pytest.raises(SystemExit):
        fe.parse_args(["--root", "r", "--dataset", "Food53_27", "DATASET.SUB_CLASSES", "IP", "--split"])
    assert capsys.readouterr().err.startswith("error: argument --split: expected at least one argument")


def test_split_list_stops_before_the_config_overrides():
    """``--split`` takes several names but must not swallow the trailing KEY VALUE overrides."""
    from lpclip import feat_extractor

    args = feat_extractor.parse_args(["--root", "r", "--dataset", "Food53_27", "--split", "train", "val",
                                      "DATASET.SUB_CLASSES", "IP"])
    assert args.split == ["train", "val"] and args.opts == ["DATASET.SUB_CLASSES", "IP"]


def test_probe_benchmark_refuses_a_missing_feature_folder(tmp_path, capsys):
    """``benchmarks.linear_probe --features`` on a folder without the domain's files: exit 2, one
    ``error:`` line naming the missing file, before any timing."""
    with pytest.raises(SystemExit) as exit_info:
        probe_bench.main(["--features", str(tmp_path), "--dataset", "MiniFood"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --features:") and "MiniFood/OOP/train.npz" in err[0]


# ---------------------------------------------------------------------------- image ids


def _multi_view_train(views):
    """The toy train split with ``views`` rows per image, laid out as the extractor writes it (view-major)."""
    fs = make_split([8, 2, 8], views=views, seed=1)
    norm = fs.x / np.linalg.norm(fs.x, axis=1, keepdims=True)
    return {"features": norm, "features_raw": fs.x, "labels": fs.y, "image_ids": fs.image_ids,
            "views": np.array(views)}


@pytest.mark.parametrize("case", ["ids_are_labels", "ids_are_labels_no_views", "all_ids_zero", "id_of_two_labels",
                                  "duplicate_id", "views_2_one_row_each", "view_missing", "views_negative",
                                  "views_float", "views_without_ids"])
def test_impossible_image_ids_are_one_error_line_naming_the_file(tmp_path, capsys, monkeypatch, case):
    """Hostile: K-shot sampling draws K image *ids* per class and takes every row of each, so ids that no
    extractor writes changed what "K-shot" means without failing anything: ``image_ids`` set to the
    labels (one "image" per class) or all 0 made the 1-shot probe train on every image (100 %, exit 0)
    and dropped ``--shots 2`` as "at most 1 training image". An id must be one label and have as many
    rows as the file's ``views`` (one without ``views``); each mistake is one line naming the file, exit
    2, before any fit, nothing written."""
    write_features(str(tmp_path))
    folder = tmp_path / "Toy9_9" / "IP"
    split = {"id_of_two_labels": "val", "duplicate_id": "test"}.get(case, "train")
    path = folder / f"{split}.npz"
    with np.load(path, allow_pickle=False) as data:
        y, ids = data["labels"].copy(), data["image_ids"].copy()
    expected = {
        "ids_are_labels": "3 of 3 image id(s) do not have 1 row(s) each, one per view (its 'views' is 1): id(s) "
                          "0 (8 rows), 1 (2 rows), 2 (8 rows)",
        "ids_are_labels_no_views": "3 of 3 image id(s) do not have one row each, one per image (it has no 'views' "
                                   "array)",
        "all_ids_zero": "1 image id(s) (0) are shared by rows of different labels (id 0: labels 0, 1, 2)",
        "id_of_two_labels": "1 image id(s) (0) are shared by rows of different labels (id 0: labels 0, 1)",
        "duplicate_id": "1 of 17 image id(s) do not have 1 row(s) each, one per view (its 'views' is 1): id(s) 0 "
                        "(2 rows);",
        "views_2_one_row_each": "18 of 18 image id(s) do not have 2 row(s) each, one per view (its 'views' is 2): "
                                "id(s) 0 (1 row), 1 (1 row), 2 (1 row) and 15 more;",
        "view_missing": "1 of 18 image id(s) do not have 2 row(s) each, one per view (its 'views' is 2): id(s) 17 "
                        "(1 row);",
        "views_negative": "its 'views' (int64, value -1) is not the number of rows per image",
        "views_float": "its 'views' (float64, value 2.0) is not the number of rows per image",
        "views_without_ids": "records 2 views per image but has no 'image_ids'",
    }[case]
    if case == "ids_are_labels":  # the tester's reproduction: the extractor's file, ids replaced
        rewrite(path, image_ids=y.copy(), views=np.array(1))
    elif case == "ids_are_labels_no_views":
        rewrite(path, image_ids=y.copy())
    elif case == "all_ids_zero":
        rewrite(path, image_ids=np.zeros_like(ids), views=np.array(1))
    elif case == "id_of_two_labels":
        assert y[0] == 0 and y[5] == 1
        ids[5] = ids[0]
        rewrite(path, image_ids=ids, views=np.array(1))
    elif case == "duplicate_id":  # two images of one class under one id: "1-shot" trains on both
        assert y[0] == y[1]
        ids[1] = ids[0]
        rewrite(path, image_ids=ids, views=np.array(1))
    elif case == "views_2_one_row_each":
        rewrite(path, views=np.array(2))
    elif case == "view_missing":  # a two-view file that lost the last row
        rewrite(path, **{k: v[:-1] if v.ndim else v for k, v in _multi_view_train(2).items()})
    elif case in ("views_negative", "views_float"):
        rewrite(path, views=np.array(-1) if case == "views_negative" else np.array(2.0))
    elif case == "views_without_ids":
        rewrite(path, image_ids=None, views=np.array(2))
    rc, err = refused_before_fitting(tmp_path, capsys, monkeypatch, "--shots", "1", "2")
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {path}"), err
    assert expected in err[0] and "Traceback" not in err[0], err
    assert "re-extract it with python lpclip/feat_extractor.py" in err[0]
    assert not (folder / "linear_probe").exists()


def test_image_ids_of_the_extractors_layouts_are_accepted(tmp_path, capsys):
    """What the extractor writes passes the image-id check: two augmented views per train image under
    one id (view-major rows), ``views`` 1 for val, 0 (``--views 0``) for test, and none at all (older or
    hand-made files); a K-shot run then trains on K images, i.e. all their views."""
    write_features(str(tmp_path))
    folder = tmp_path / "Toy9_9" / "IP"
    rewrite(folder / "train.npz", **_multi_view_train(2))
    rewrite(folder / "val.npz", views=np.array(1))
    rewrite(folder / "test.npz", views=np.array(0))
    feats = lp.load_features(str(tmp_path), "Toy9_9", "IP", normalized=False)
    assert np.bincount(feats["train"].image_ids).tolist() == [2] * 18
    out = tmp_path / "probe"
    rc = lp.main(["--feature-dir", str(tmp_path), "--dataset", "Toy9_9", "--sub-classes", "IP", "--shots", "1", "2",
                  "--num-run", "2", "--num-step", "1", "--output-dir", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["shots"]["1"]["n_train"] == [3 * 2, 3 * 2]  # one image per class, both its views
    assert res["shots"]["2"]["n_train"] == [3 * 2 * 2, 3 * 2 * 2]


def test_the_order_of_the_shot_counts_is_not_another_configuration(tmp_path, capsys):
    """``--shots 2 1`` then ``--shots 1 2`` into one folder was refused as another configuration."""
    write_features(str(tmp_path))
    base = ["--feature-dir", str(tmp_path), "--dataset", "Toy9_9", "--sub-classes", "IP", "--num-run", "2",
            "--num-step", "1"]
    assert lp.main([*base, "--shots", "2", "1"]) == 0
    first = json.loads((tmp_path / "Toy9_9" / "IP" / "linear_probe" / "results.json").read_text())
    assert lp.main([*base, "--shots", "1", "2", "1"]) == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "Toy9_9" / "IP" / "linear_probe" / "results.json").read_text())
    assert list(first["shots"]) == ["1", "2"] and again["fingerprint"]["id"] == first["fingerprint"]["id"]


def test_an_extraction_into_a_folder_in_use_is_refused(extractor_env, capsys, monkeypatch):
    """Two extractions of different configurations into one folder interleaved their splits (the probe
    then refused the mix); the folder is held like a run's, and one refused leaves no empty folder."""
    from dassl.utils import hold_output_dir
    from lpclip import feat_extractor as fe

    root, _, out = extractor_env
    monkeypatch.setattr(fe, "load_clip", lambda *a, **k: pytest.fail("the backbone was loaded"))
    folder = out / "Animals92_42" / "OOP"
    folder.mkdir(parents=True)
    with hold_output_dir(str(folder)):
        assert fe.main(extractor_argv(root, out, "train", "--seed", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use" in err[0] and str(folder) in err[0], err
    assert list(folder.iterdir()) == []
    folder.rmdir()
    (out / "Animals92_42").rmdir()
    monkeypatch.setattr(fe, "extract", lambda *a, **k: (_ for _ in ()).throw(fe.FeatureError("stop")))
    assert fe.main(extractor_argv(root, out, "train", "--seed", "1")) == 2
    assert not (out / "Animals92_42").exists()  # the folders this call made are gone again


def test_an_extraction_into_a_dataset_folder_is_refused(toy_root, tmp_path, capsys, monkeypatch):
    """``--output-dir <root>/Animals5_OOP/feat`` wrote the feature files among the subset's images."""
    import shutil

    from lpclip import feat_extractor as fe
    from tests.helpers import snapshot_tree

    root = tmp_path / "data"
    shutil.copytree(toy_root, root, ignore=shutil.ignore_patterns("split_fewshot"))
    (subset,) = root.glob("Animals*_OOP")
    before = snapshot_tree(root)
    monkeypatch.setattr(fe, "load_clip", lambda *a, **k: pytest.fail("the backbone was loaded"))
    assert fe.main(extractor_argv(str(root), subset / "feat", "train", "--seed", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'--output-dir "{subset / "feat"}" lies inside the dataset folder' in err[0], err
    assert snapshot_tree(root) == before
