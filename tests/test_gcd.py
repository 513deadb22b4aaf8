"""GCD: the clustering evaluator against brute force, the cluster JSON loader, the FSNL_openclip_GCD
trainer and the round trip tools.cluster_names -> LAION_Beyond_GCD -> training -> results.json."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode as CN

from dassl.evaluation.clustering import (
    ClusteringAccuracy,
    clustering_accuracy,
    match_clusters,
    parent_dir_class,
)
from datasets.gcd import (
    LAION_Beyond_GCD,
    clustering_results_path,
    read_clustering_results,
    split_clusters,
    subfield_hint,
    write_clustering_results,
)
from datasets.laion_beyond import DatasetError
from datasets.make_toy import make_toy
from tests.helpers import REPO, make_cfg, run_train, snapshot_tree, train_argv, trainer_config
from tools.cluster_names import main as cluster_main

TRAINER = "FSNL_openclip_GCD"
SMOKE = trainer_config("FSNL_openclip")
GCD = {"config": SMOKE, "dataset": "LAION_Beyond_GCD", "shots": None}  # FSNL's smoke config, no shots default


def brute_force_accuracy(y_true, y_pred):
    """Best injective map cluster -> class by trying them all (independent of the Hungarian code)."""
    classes = sorted(set(y_true))
    clusters = sorted(set(y_pred))
    best = 0
    slots = classes + [None] * max(0, len(clusters) - len(classes))
    for perm in itertools.permutations(slots, len(clusters)):
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred)))
    return 100.0 * best / len(y_true)


def eval_cfg(out="", per_class=False, cmat=False):
    cfg = CN()
    cfg.OUTPUT_DIR = str(out)
    cfg.TEST = CN()
    cfg.TEST.PER_CLASS_RESULT = per_class
    cfg.TEST.COMPUTE_CMAT = cmat
    return cfg


def one_hot_logits(pred, num):
    return torch.nn.functional.one_hot(torch.tensor(pred), num).float()


# ------------------------------------------------------------------------------- evaluator
def test_known_permutation_scores_100_and_errors_are_counted(tmp_path):
    names = ["cat", "dog", "emu", "yak"]
    perm = {"cat": 2, "dog": 0, "emu": 3, "yak": 1}
    truth = ["dog", "cat", "yak", "emu", "cat", "dog", "emu", "yak", "yak", "cat"]
    pred = [perm[t] for t in truth]
    impaths = [f"/data/images/{t}/img_{i}.jpg" for i, t in enumerate(truth)]
    ev = ClusteringAccuracy(eval_cfg(tmp_path, per_class=True, cmat=True))
    ev.process(one_hot_logits(pred[:4], 4), torch.zeros(4, dtype=torch.long), impaths[:4])
    ev.process(one_hot_logits(pred[4:], 4), torch.zeros(6, dtype=torch.long), impaths[4:])
    res = ev.evaluate()
    assert list(res)[:2] == ["clustering_accuracy", "accuracy"]
    assert res["clustering_accuracy"] == pytest.approx(100.0)
    assert res["accuracy"] == res["clustering_accuracy"]
    assert res["perclass_accuracy"] == pytest.approx(100.0)
    # The saved matrix is indexed by *sorted* true names (B35): row r has its images in cluster perm[name_r].
    counts = torch.load(tmp_path / ev.cmat_filename, weights_only=True)
    assert counts.shape == (4, 4)
    for r, name in enumerate(names):
        assert counts[r, perm[name]] == truth.count(name)

    # Two wrong predictions: the best map is still the permutation, so 8/10 are right.
    wrong = list(pred)
    wrong[0], wrong[1] = perm["emu"], perm["emu"]
    ev.reset()
    ev.process(one_hot_logits(wrong, 4), torch.zeros(10, dtype=torch.long), impaths)
    assert ev.evaluate()["clustering_accuracy"] == pytest.approx(brute_force_accuracy(truth, wrong))
    assert brute_force_accuracy(truth, wrong) == pytest.approx(80.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_non_square_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    # 3 true classes, up to 5 predicted clusters; then 5 classes, 3 clusters.
    for n_true, n_pred in ((3, 5), (5, 3)):
        truth = [f"c{int(v)}" for v in torch.randint(0, n_true, (40,), generator=g)]
        pred = torch.randint(0, n_pred, (40,), generator=g).tolist()
        expected = brute_force_accuracy(truth, pred)
        assert clustering_accuracy(truth, pred) == pytest.approx(expected)
        mapping, matched, counts = match_clusters(truth, pred)
        assert len(mapping) == min(len(set(truth)), len(set(pred)))
        assert len(set(mapping.values())) == len(mapping)  # one-to-one
        assert counts.sum() == 40 and 100.0 * matched / 40 == pytest.approx(expected)


def test_labels_are_the_truth_without_impaths():
    ev = ClusteringAccuracy(eval_cfg())
    gt = torch.tensor([0, 0, 1, 1, 2, 2])
    ev.process(one_hot_logits([1, 1, 2, 2, 0, 1], 3), gt)
    assert ev.evaluate()["clustering_accuracy"] == pytest.approx(brute_force_accuracy(gt.tolist(), [1, 1, 2, 2, 0, 1]))


def test_true_class_function_can_be_swapped():
    ev = ClusteringAccuracy(eval_cfg(), true_class_fn=lambda p: p.split("__")[0])
    ev.process(one_hot_logits([0, 1], 2), torch.zeros(2, dtype=torch.long), ["a__1.jpg", "b__2.jpg"])
    assert ev.evaluate()["clustering_accuracy"] == pytest.approx(100.0)
    assert parent_dir_class(os.path.join("x", "images", "giant anteater", "1.jpg")) == "giant anteater"


# ------------------------------------------------------------------------------- dataset
def test_subfield_hint():
    assert subfield_hint("Pokemon") == "pokemon"
    assert subfield_hint("Plants_Fugi") == "plant or fungus"
    assert subfield_hint("Insects_Spiders") == "insect or spider"
    assert subfield_hint("MiniAnimals") == "animal"
    with pytest.raises(DatasetError, match="Pokemon"):
        subfield_hint("Pokemn")


def test_reader_resolves_paths_and_reports_problems(tmp_path):
    absolute = str(tmp_path / "elsewhere" / "a" / "x.jpg")
    path = tmp_path / "P_clustering_results.json"
    path.write_text(json.dumps([
        {"image_path": "Sub/images/a/1.jpg", "pseudo_label": 0, "pseudo_classname": "a"},
        {"image_path": absolute, "pseudo_label": 1, "pseudo_classname": "b"},
    ]))
    recs = read_clustering_results(str(path), str(tmp_path))
    assert recs == [(os.path.normpath(str(tmp_path / "Sub/images/a/1.jpg")), "a"), (absolute, "b")]

    path.write_text(json.dumps([
        {"image_path": "a.jpg", "pseudo_label": 0, "pseudo_classname": "a"},
        {"image_path": "a.jpg", "pseudo_label": 0, "pseudo_classname": "a"},
        {"image_path": "", "pseudo_classname": "a"},
        {"image_path": "b.jpg"},
    ]))
    with pytest.raises(DatasetError) as err:
        read_clustering_results(str(path), str(tmp_path))
    msg = err.value.report  # every problem; str() is one line: the first, and how many more
    assert "3 problem(s)" in msg and "repeats" in msg and "pseudo_classname" in msg
    assert "\n" not in str(err.value) and str(err.value).endswith("repeats record [0] (and 2 more, listed in the log)")


@pytest.mark.parametrize("impath", ["/etc/hostname", "../outside/x.jpg", "Sub/../../outside/x.jpg"])
def test_reader_refuses_images_outside_the_root(tmp_path, impath):
    """Hostile: a clustering file naming an image outside ``DATASET.ROOT`` (an absolute path elsewhere, or
    ``..`` climbing out) was read and trained on; the project reads only under its dataset root."""
    root = tmp_path / "root"
    root.mkdir()
    path = root / "P_clustering_results.json"
    path.write_text(json.dumps([{"image_path": "Sub/images/a/1.jpg", "pseudo_label": 0, "pseudo_classname": "a"},
                                {"image_path": impath, "pseudo_label": 1, "pseudo_classname": "b"}]))
    with pytest.raises(DatasetError) as err:
        read_clustering_results(str(path), str(root))
    msg = str(err.value)
    assert "1 problem(s)" in msg and f"[1]: image_path {impath!r} lies outside DATASET.ROOT" in msg, msg


def test_split_is_sorted_seeded_and_per_class():
    records = [(f"/r/{name}/{i}.jpg", name) for name in ("zeta", "alpha", "mid") for i in range(20)]
    names, train_x, test = split_clusters(records, seed=3, train_per_class=16)
    assert names == ["alpha", "mid", "zeta"]
    for label, name in enumerate(names):
        tr = [d for d in train_x if d.label == label]
        te = [d for d in test if d.label == label]
        assert len(tr) == 16 and len(te) == 4
        assert all(d.classname == name for d in tr + te)
        assert {d.impath for d in tr} | {d.impath for d in te} == {p for p, n in records if n == name}
    again = split_clusters(records, seed=3, train_per_class=16)
    other = split_clusters(records, seed=4, train_per_class=16)
    assert [d.impath for d in again[1]] == [d.impath for d in train_x]
    assert [d.impath for d in other[1]] != [d.impath for d in train_x]


def test_dataset_refuses_other_subsets_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="SUB_CLASSES OOP"):
        LAION_Beyond_GCD(make_cfg(tmp_path, tmp_path / "o", TRAINER, "DATASET.SUB_CLASSES", "IP", **GCD))
    with pytest.raises(DatasetError, match="tools.cluster_names"):
        LAION_Beyond_GCD(make_cfg(tmp_path, tmp_path / "o", TRAINER, "DATASET.SUBFIELD", "Animals", **GCD))


# ------------------------------------------------------------------------------- round trip
@pytest.fixture(scope="module")
def gcd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcd")
    make_toy(root, domains=("Animals92_42",))
    rc = cluster_main(["--root", str(root), "--domain", "Animals", "--config", str(SMOKE), "--min-size", "1",
                       "--n-init", "2"])
    assert rc == 0
    return root


def test_cluster_names_writes_the_gcd_format(gcd_root):
    path = clustering_results_path(str(gcd_root), "Animals")
    data = json.loads(Path(path).read_text())
    oop = next(gcd_root.glob("Animals*_OOP"))
    split = json.loads(next(oop.glob("split_Xin*.json")).read_text())
    expected = {os.path.join(oop.name, "images", it["classname"], it["image_name"]).replace(os.sep, "/")
                for part in ("train", "test") for it in split[part].values()}
    assert {r["image_path"] for r in data} == expected  # every train+test OOP image, relative to the root
    assert all(set(r) == {"image_path", "pseudo_label", "pseudo_classname"} for r in data)
    names = {it["classname"] for it in split["train"].values()}
    # Each cluster gets one distinct real OOP class name.
    by_cluster = {}
    for r in data:
        by_cluster.setdefault(r["pseudo_label"], set()).add(r["pseudo_classname"])
    assert all(len(v) == 1 for v in by_cluster.values())
    chosen = [next(iter(v)) for v in by_cluster.values()]
    assert len(set(chosen)) == len(chosen) and set(chosen) <= names


def test_round_trip_training_reports_clustering_accuracy(gcd_root, tmp_path):
    out = tmp_path / "run"
    trainer = run_train(train_argv(
        gcd_root, out, TRAINER,
        "DATASET.SUBFIELD", "Animals", "DATASET.NUM_SHOTS", "3", "OPTIM.MAX_EPOCH", "1",
        "TRAIN.CHECKPOINT_FREQ", "0", "TEST.EVALUATOR", "ClusteringAccuracy", "TRAINER.FSNL.USE_CAPTION", "True",
        **GCD,
    ))
    assert trainer.uses_captions is False and trainer.hint == "animal"
    ds = trainer.dm.dataset
    assert ds.hint == "animal" and ds.classnames == sorted(ds.classnames)
    results = json.loads((out / "results.json").read_text())
    assert results["trainer"] == "FSNL_openclip_GCD"
    assert results["subfield"] == "Animals" and results["num_clusters"] == len(ds.classnames)
    assert "clustering_accuracy" in results["metrics"] and list(results["subsets"]) == ["OOP"]

    # Recompute independently: predictions of the trained model vs the images' folder names.
    trainer.set_model_mode("eval")
    trainer.before_test()
    truth, pred = [], []
    with torch.no_grad():
        for batch in trainer.test_loader:
            pred += trainer.model_inference(batch["img"]).argmax(1).tolist()
            truth += [Path(p).parent.name for p in batch["impath"]]
    trainer.after_test()
    assert results["metrics"]["clustering_accuracy"] == pytest.approx(brute_force_accuracy(truth, pred))


def test_sweep_script_dry_run(gcd_root, tmp_path):
    data = json.loads(Path(clustering_results_path(str(gcd_root), "Animals")).read_text())
    c = len({r["pseudo_classname"] for r in data})
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, SEEDS="1 2")
    proc = subprocess.run(["bash", str(REPO / "scripts/gcd/gcd_fsnl.sh"), "Animals", str(gcd_root), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2
    bs = 4 * c
    lr = bs / 128 * 2e-4
    for seed, line in zip((1, 2), lines):
        toks = line.split()
        assert toks[toks.index("--trainer") + 1] == "FSNL_openclip_GCD"
        assert toks[toks.index("--seed") + 1] == str(seed)
        assert toks[toks.index("DATALOADER.TRAIN_X.BATCH_SIZE") + 1] == str(bs)
        assert float(toks[toks.index("OPTIM.LR") + 1]) == pytest.approx(lr)
        for key, value in (("OPTIM.MAX_EPOCH", "100"), ("TRAIN.CHECKPOINT_FREQ", "0"), ("DATASET.NUM_SHOTS", "16"),
                           ("TRAINER.FSNL.USE_CAPTION", "False"), ("TEST.EVALUATOR", "ClusteringAccuracy"),
                           ("DATASET.SUBFIELD", "Animals")):
            assert toks[toks.index(key) + 1] == value


def test_written_file_round_trips(tmp_path):
    path = tmp_path / "X_clustering_results.json"
    write_clustering_results(str(path), [{"image_path": "a/b.jpg", "pseudo_label": 3, "pseudo_classname": "b"}])
    assert json.loads(path.read_text()) == [{"image_path": "a/b.jpg", "pseudo_label": 3, "pseudo_classname": "b"}]
    with pytest.raises(ValueError, match="lacks"):
        write_clustering_results(str(path), [{"image_path": "a"}])


def test_cluster_names_with_every_cluster_below_min_size_is_one_line_and_writes_nothing(tmp_path, capsys):
    """``--min-size`` above every cluster's size leaves no record: one ``error:`` line with exit 2 (a
    setting to change, as the tool's other mistakes; it was exit 1), and no clustering file."""
    root = tmp_path / "data"
    make_toy(root, domains=("Animals92_42",))
    capsys.readouterr()
    rc = cluster_main(["--root", str(root), "--domain", "Animals", "--config", str(SMOKE), "--min-size", "1000",
                       "--n-init", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: every cluster has fewer than 1000 images; lower --min-size"]
    assert not os.path.exists(clustering_results_path(str(root), "Animals"))


@pytest.mark.parametrize("overwrite", [False, True])
def test_cluster_names_never_writes_into_the_domains_folders(tmp_path, capsys, overwrite):
    """``--out`` onto the domain's own split file with ``--overwrite`` replaced the file it had just read
    (exit 0; the domain was broken for every tool); without it, the refusal suggested ``--overwrite``.
    One line naming the dataset folder, exit 2, before the backbone loads; the data unchanged."""
    root = tmp_path / "data"
    make_toy(root, domains=("Animals92_42",))
    split = next(next(root.glob("Animals*_OOP")).glob("split_*.json"))
    before = snapshot_tree(root)
    capsys.readouterr()
    argv = ["--root", str(root), "--domain", "Animals", "--config", str(SMOKE), "--out", str(split)]
    rc = cluster_main(argv + (["--overwrite"] if overwrite else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == (f'error: --out "{split}" lies inside the dataset folder "{split.parent}": a run would write '
                      "among its images; use a folder outside the dataset")
    assert snapshot_tree(root) == before


def _records_of(root: Path, subset: str, limit: int = 0):
    """``(image_path relative to root, folder class)`` of one subset's split-file images."""
    folder = next(root.glob(f"Animals*_{subset}"))
    split = json.loads(next(folder.glob("split_Xin*.json")).read_text())
    items = [it for part in ("train", "val", "test") for it in split[part].values()]
    return [(f"{folder.name}/images/{it['classname']}/{it['image_name']}", it["classname"])
            for it in items[:limit or None]]


@pytest.fixture(scope="module")
def gcd_plain_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcd_plain")
    make_toy(root, domains=("Animals92_42",))
    return root


def test_clusters_of_images_outside_the_oop_subset_are_refused(gcd_plain_root, tmp_path, capsys):
    """IP images in a clustering file were trained and scored as OOP clusters (their folder names the
    truth), exit 0: ``clustering_accuracy`` of another experiment. Now one line naming the records."""
    oop, ip = _records_of(gcd_plain_root, "OOP"), _records_of(gcd_plain_root, "IP", limit=3)
    names = sorted({name for _, name in oop})
    records = [{"image_path": p, "pseudo_label": names.index(n), "pseudo_classname": n} for p, n in oop]
    records += [{"image_path": p, "pseudo_label": 0, "pseudo_classname": names[0]} for p, _ in ip]
    results = Path(clustering_results_path(str(gcd_plain_root), "Animals"))
    results.write_text(json.dumps(records))
    try:
        out = tmp_path / "run"
        argv = train_argv(gcd_plain_root, out, TRAINER, "DATASET.SUBFIELD", "Animals", "DATASET.NUM_SHOTS", "1",
                          "OPTIM.MAX_EPOCH", "1", "TEST.EVALUATOR", "ClusteringAccuracy", **GCD)
        import train

        assert train.cli(argv) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and f"{len(ip)} problem(s)" in err[0], err
        assert f"[{len(oop)}]: image_path {ip[0][0]!r} is not an image of the domain's OOP subset" in err[0], err
        assert not out.exists()
        records = records[:len(oop)]  # the OOP images alone are one clustering: it runs
        results.write_text(json.dumps(records))
        assert train.cli(argv) == 0, capsys.readouterr().err
    finally:
        results.unlink()


@pytest.mark.parametrize("case", ["label-two-names", "name-two-labels", "negative", "text", "float", "bool"])
def test_pseudo_labels_that_are_not_one_clustering_are_refused(tmp_path, case):
    """The reference groups records by ``pseudo_classname`` and never reads ``pseudo_label``: two clusters
    given one name merged into one class (another class count, batch size and LR), and labels -5, "abc"
    or 1e9 passed without a word."""
    rows = [("S/images/a/1.jpg", 0, "a"), ("S/images/a/2.jpg", 0, "a"), ("S/images/b/3.jpg", 1, "b")]
    bad = {"label-two-names": (1, "c"), "name-two-labels": (2, "a"), "negative": (-5, "c"), "text": ("abc", "c"),
           "float": (1e9, "c"), "bool": (True, "c")}[case]
    rows.append(("S/images/b/4.jpg", *bad))
    path = tmp_path / "P_clustering_results.json"
    path.write_text(json.dumps([{"image_path": p, "pseudo_label": lab, "pseudo_classname": n} for p, lab, n in rows]))
    with pytest.raises(DatasetError) as err:
        read_clustering_results(str(path), str(tmp_path))
    msg = str(err.value)
    expected = {"label-two-names": "[3]: pseudo_label 1 is named 'c' here and 'b' in record [2]",
                "name-two-labels": "[3]: pseudo_classname 'a' names cluster 2 here and cluster 0 in record [0]"}.get(
        case, f"[3]: pseudo_label must be a non-negative integer, got {bad[0]!r}")
    assert "1 problem(s)" in msg and expected in msg, msg
