"""Hostile inputs to the GCD path (tools.cluster_names), the paper's analysis scripts and evaluation of
saved checkpoints: each mistake is one ``error:`` line (exit 2) before the heavy work, and nothing on
disk that the command did not write is lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import train
from dassl.results import evaluation_config
from datasets.gcd import clustering_results_path, read_clustering_results
from datasets.make_toy import make_toy
from scripts import cluster_eval, plot_tsne
from tests.helpers import snapshot_tree, train_argv, trainer_config
from tools import cluster_names

SMOKE = trainer_config("FSNL_openclip")
#: what a reference CMS file looks like: the authors' absolute paths, another clustering
REFERENCE = [{"image_path": "/data/authors/Animals92_OOP/images/aardvark/1.jpg", "pseudo_label": 0,
              "pseudo_classname": "aardvark"}]


@pytest.fixture(scope="module")
def animals_root(tmp_path_factory):
    """A private toy root with the Animals domain only (tests here add and remove clustering files)."""
    root = tmp_path_factory.mktemp("hostile_gcd")
    make_toy(str(root), domains=("Animals92_42",))
    return root


def _cluster_argv(root, *extra):
    return ["--root", str(root), "--domain", "Animals", "--config", str(SMOKE), "--min-size", "1",
            "--n-init", "1", *extra]


def _no_backbone(*_args, **_kwargs):
    raise AssertionError("the backbone was loaded before the mistake was reported")


def _exit_code(main, argv) -> int:
    """``main(argv)``'s return value, or the code of the ``SystemExit`` its argument parser raised."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cluster_names_refuses_an_existing_clustering_file(animals_root, monkeypatch, capsys):
    """The reference's own file at <ROOT>/<SUBFIELD>_clustering_results.json was replaced without asking."""
    target = Path(clustering_results_path(str(animals_root), "Animals"))
    target.write_text(json.dumps(REFERENCE))
    try:
        before = snapshot_tree(animals_root)
        monkeypatch.setattr(cluster_names, "load_backbone", _no_backbone)
        rc = cluster_names.main(_cluster_argv(animals_root))
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2
        assert str(target) in line and "--overwrite" in line
        assert snapshot_tree(animals_root) == before
    finally:
        target.unlink()


@pytest.mark.parametrize("kind", ["directory", "file_in_path", "link"])
def test_cluster_names_unwritable_output_is_refused_before_the_backbone(animals_root, tmp_path, monkeypatch,
                                                                        capsys, kind):
    """An --out that cannot be written ended in a WriteError traceback after the clustering work."""
    if kind == "directory":
        out = tmp_path / "out.json"
        out.mkdir()
    elif kind == "file_in_path":
        (tmp_path / "plain").write_text("keep")
        out = tmp_path / "plain" / "out.json"
    else:
        (tmp_path / "elsewhere.json").write_text(json.dumps(REFERENCE))
        out = tmp_path / "out.json"
        out.symlink_to(tmp_path / "elsewhere.json")
    before = snapshot_tree(tmp_path)
    monkeypatch.setattr(cluster_names, "load_backbone", _no_backbone)
    rc = cluster_names.main(_cluster_argv(animals_root, "--out", str(out), "--overwrite"))
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(out.parent) in line
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("args, words", [
    (("--root", "{missing}"), "is not a directory"),
    (("--n-init", "0"), "--n-init"),
    (("--splits", "bogus"), "--splits"),
    (("--config", "{missing}.yaml"), "does not exist"),
])
def test_cluster_names_mistakes_are_one_line(animals_root, tmp_path, monkeypatch, capsys, args, words):
    """A wrong root, config, split or restart count was a traceback (some after the backbone loaded)."""
    missing = str(tmp_path / "missing")
    argv = _cluster_argv(animals_root, "--out", str(tmp_path / "c.json"))
    for flag, value in zip(args[0::2], args[1::2]):
        value = value.format(missing=missing)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    monkeypatch.setattr(cluster_names, "load_backbone", _no_backbone)
    rc = _exit_code(cluster_names.main, argv)
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and words in line
    assert not (tmp_path / "c.json").exists()


def test_cluster_names_overwrite_and_a_split_named_twice(animals_root, capsys):
    """``--overwrite`` replaces the file; ``--splits train train test`` listed the train images twice,
    and the GCD dataset then refused the file it had just written ("repeats record")."""
    target = Path(clustering_results_path(str(animals_root), "Animals"))
    target.write_text(json.dumps(REFERENCE))
    try:
        rc = cluster_names.main(_cluster_argv(animals_root, "--overwrite", "--splits", "train", "train", "test"))
        assert rc == 0, capsys.readouterr().err
        records = read_clustering_results(str(target), str(animals_root))  # refuses a repeated image
        oop = next(animals_root.glob("Animals*_OOP"))
        split = json.loads(next(oop.glob("split_Xin*.json")).read_text())
        assert len(records) == len(split["train"]) + len(split["test"])
    finally:
        target.unlink()


def test_cluster_eval_counts_a_split_named_twice_once(animals_root, tmp_path, capsys):
    """``--splits test test`` clustered every test image twice and reported twice the image count."""
    out = tmp_path / "table"
    rc = cluster_eval.main(["--root", str(animals_root), "--domains", "Animals", "--subsets", "OOP", "--splits",
                            "test", "test", "--config", str(SMOKE), "--n-init", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    (row,) = json.loads((tmp_path / "table.json").read_text())["rows"]
    oop = next(animals_root.glob("Animals*_OOP"))
    split = json.loads(next(oop.glob("split_Xin*.json")).read_text())
    assert row["splits"] == ["test"] and row["num_images"] == len(split["test"])


# ------------------------------------------------------------------------- evaluating saved checkpoints
@pytest.fixture(scope="module")
def two_epoch_run(toy_root, tmp_path_factory):
    """A finished FSNL run with a checkpoint per epoch (model.pth.tar-1 and -2, the pointer naming -2)."""
    out = tmp_path_factory.mktemp("hostile_eval") / "trained"
    argv = train_argv(toy_root, out, "FSNL_openclip", "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1")
    assert train.cli(argv) == 0
    return out


def test_eval_of_a_model_dir_missing_its_last_checkpoint_is_refused(toy_root, two_epoch_run, tmp_path, capsys,
                                                                    drop_new_log_handlers):
    """The pointer names model.pth.tar-2, which a partial copy lacks: the evaluation loaded epoch 1 and
    filed it as the training run's final model (source_run = the run, no load_epoch)."""
    model_dir = tmp_path / "partial"
    shutil.copytree(two_epoch_run, model_dir)
    (model_dir / "name_learner" / "model.pth.tar-2").unlink()
    before = snapshot_tree(model_dir)
    out = tmp_path / "eval"
    eval_argv = train_argv(toy_root, out, "FSNL_openclip", "OPTIM.MAX_EPOCH", "2",
                           extra=("--eval-only", "--model-dir", str(model_dir)))
    assert train.cli(eval_argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "model.pth.tar-2" in line and "--load-epoch" in line
    assert not out.exists() and snapshot_tree(model_dir) == before

    # The epoch that is there can still be evaluated, and is recorded as that epoch.
    assert train.cli(train_argv(toy_root, out, "FSNL_openclip", "OPTIM.MAX_EPOCH", "2",
                                extra=("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "1"))) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["loaded"]["epoch"] == 1 and res["fingerprint"]["source"]["load_epoch"] == 1
    trained = json.loads((two_epoch_run / "results.json").read_text())
    assert res["fingerprint"]["source_run"]["id"] == trained["fingerprint"]["id"]
    assert evaluation_config(res["fingerprint"])["source.load_epoch"] == 1


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_plot_tsne_refuses_a_perplexity_t_sne_cannot_use(animals_root, tmp_path, monkeypatch, capsys, value):
    """``--perplexity 0`` was an sklearn traceback after the backbone had encoded every image."""
    monkeypatch.setattr(plot_tsne, "load_backbone", _no_backbone)
    before = snapshot_tree(tmp_path)
    rc = _exit_code(plot_tsne.main, ["--root", str(animals_root), "--domain", "Animals", "--config", str(SMOKE),
                                     "--perplexity", value, "--out", str(tmp_path / "tsne")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--perplexity" in line
    assert snapshot_tree(tmp_path) == before


def test_cluster_eval_refuses_no_k_means_restart(animals_root, tmp_path, monkeypatch, capsys):
    """``--n-init 0`` was an sklearn traceback after the features of every domain were computed."""
    monkeypatch.setattr(cluster_eval, "load_backbone", _no_backbone)
    rc = _exit_code(cluster_eval.main, ["--root", str(animals_root), "--domains", "Animals", "--config", str(SMOKE),
                                        "--n-init", "0", "--out", str(tmp_path / "table")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--n-init" in line and not list(tmp_path.iterdir())


@pytest.mark.parametrize("tool", ["cluster_names", "cluster_eval", "plot_tsne"])
def test_no_analysis_writes_into_another_domains_folder(toy_root, monkeypatch, capsys, tool):
    """``tools.cluster_names --out <another domain's split file> --overwrite`` replaced that split file (exit 0)
    and the domain was broken for every tool: only the clustered domain's folders were refused. The
    analysis scripts wrote their tables and figures among any domain's images too."""
    food = next(toy_root.glob("Food*_OOP"))
    target = next(food.glob("split_Xin*.json"))
    main, argv = {
        "cluster_names": (cluster_names.main, [*_cluster_argv(toy_root), "--out", str(target), "--overwrite"]),
        "cluster_eval": (cluster_eval.main, ["--root", str(toy_root), "--domains", "Animals", "--config", str(SMOKE),
                                             "--out", str(food / "images" / "table")]),
        "plot_tsne": (plot_tsne.main, ["--root", str(toy_root), "--domain", "Animals", "--config", str(SMOKE),
                                       "--out", str(food / "tsne")]),
    }[tool]
    for module in (cluster_names, cluster_eval, plot_tsne):
        monkeypatch.setattr(module, "load_backbone", _no_backbone)
    before = snapshot_tree(food)
    rc = _exit_code(main, argv)
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "lies inside the dataset folder" in line and str(food) in line, line
    assert snapshot_tree(food) == before


@pytest.mark.parametrize("tool", ["cluster_names", "cluster_eval", "plot_tsne"])
@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_numpy_cannot_take_is_one_line_before_any_work(animals_root, tmp_path, monkeypatch, capsys, tool, seed):
    """``--seed -1`` was scikit-learn's ``InvalidParameterError`` traceback after the features were computed."""
    main, argv = {
        "cluster_names": (cluster_names.main, _cluster_argv(animals_root, "--out", str(tmp_path / "c.json"))),
        "cluster_eval": (cluster_eval.main, ["--root", str(animals_root), "--domains", "Animals", "--config",
                                             str(SMOKE), "--out", str(tmp_path / "table")]),
        "plot_tsne": (plot_tsne.main, ["--root", str(animals_root), "--domain", "Animals", "--config", str(SMOKE),
                                       "--out", str(tmp_path / "tsne")]),
    }[tool]
    for module in (cluster_names, cluster_eval, plot_tsne):
        monkeypatch.setattr(module, "load_backbone", _no_backbone)
    rc = _exit_code(main, [*argv[:2], "--seed", seed, *argv[2:]])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and f"argument --seed: {seed}: must be in 0..4294967295" in line, line
    assert not list(tmp_path.iterdir())


def test_cluster_eval_counts_a_subset_named_twice_once(animals_root, tmp_path, capsys):
    """``--subsets OOP OOP`` encoded the subset twice and wrote two identical rows."""
    rc = cluster_eval.main(["--root", str(animals_root), "--domains", "Animals", "--subsets", "OOP", "OOP",
                            "--config", str(SMOKE), "--n-init", "1", "--out", str(tmp_path / "table")])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert [r["subset"] for r in rows] == ["OOP"]
