"""Evaluation integrity (issue 11 item 6, issue 14 item 4): what ``--eval-only`` loads, and when it refuses.

Every refusal is one ``error:`` line on stderr, exit code 2, and no results.json.
"""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

import train
from dassl import results
from dassl.utils import save_checkpoint
from tests.helpers import snapshot_tree, train_argv

TRAINER = "FSNL_openclip"
TRAINABLE = ("FSNL_openclip", "CoOp_openclip", "CoCoOp_openclip", "CLIP_Adapter", "TaskRes")


@pytest.fixture(autouse=True)
def _drop_log_handlers(drop_new_log_handlers):
    """``train.main`` tees the log into each output dir (conftest's ``drop_new_log_handlers``)."""


@pytest.fixture(scope="module")
def oop_run(toy_root, tmp_path_factory):
    """A finished FSNL training run on the toy Animals OOP subset (no model-best: last_step)."""
    out = tmp_path_factory.mktemp("oop_run") / "run"
    assert train.cli(train_argv(toy_root, out, TRAINER)) == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("trainer", TRAINABLE)
def test_eval_only_of_a_trainable_method_needs_a_model_dir(toy_root, tmp_path, capsys, trainer):
    out = tmp_path / "ev"
    assert train.cli(train_argv(toy_root, out, trainer, extra=("--eval-only",))) == 2
    err = one_error_line(capsys)
    assert "--model-dir" in err and "TEST.ALLOW_UNTRAINED True" in err and trainer in err
    assert not (out / "results.json").exists()


def test_allow_untrained_evaluates_the_initial_model_and_says_so(toy_root, tmp_path):
    out = tmp_path / "ev"
    assert train.cli(train_argv(toy_root, out, TRAINER, "TEST.ALLOW_UNTRAINED", "True", extra=("--eval-only",))) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["loaded"] == {"model_dir": None, "epoch": 0, "untrained": True} and res["epoch"] == 0
    # FSNL's initial names are CLIP's own tokens: the untrained model is zero-shot CLIP.
    zs = tmp_path / "zs"
    assert train.cli(train_argv(toy_root, zs, "ZeroshotCLIP_openclip", extra=("--eval-only",))) == 0
    assert res["oop"] == pytest.approx(json.loads((zs / "results.json").read_text())["oop"], abs=1e-9)


def test_model_dir_of_another_dataset_is_an_error(toy_root, oop_run, tmp_path, capsys):
    out = tmp_path / "food"
    argv = train_argv(toy_root, out, TRAINER, dataset="Food53_27", extra=("--eval-only", "--model-dir", str(oop_run)))
    assert train.cli(argv) == 2
    err = one_error_line(capsys)
    assert str(oop_run) in err and "shares none of this run's 4 classes" in err and "Animals92_42" in err
    assert not (out / "results.json").exists()


def test_reference_checkpoint_without_meta_sharing_no_name_is_an_error(toy_root, tmp_path, capsys):
    mdir = tmp_path / "ref"
    save_checkpoint({"state_dict": {"name_embeddings.not_a_toy_class": torch.zeros(2, 32)}, "epoch": 200},
                    str(mdir / "name_learner"))
    out = tmp_path / "ev"
    assert train.cli(train_argv(toy_root, out, TRAINER, extra=("--eval-only", "--model-dir", str(mdir)))) == 2
    assert "none of its 1 learned names" in one_error_line(capsys)
    assert not (out / "results.json").exists()


def test_partial_match_is_recorded_and_last_epoch_is_the_fallback(toy_root, oop_run, tmp_path, caplog):
    out = tmp_path / "all"
    with caplog.at_level(logging.INFO):
        assert train.cli(train_argv(toy_root, out, TRAINER, "DATASET.SUB_CLASSES", "All",
                                    extra=("--eval-only", "--model-dir", str(oop_run)))) == 0
    res = json.loads((out / "results.json").read_text())
    loaded = res["loaded"]
    assert loaded["names_loaded"] == "5/8" and loaded["classes_shared"] == "5/8"
    assert loaded["model_dir"] == str(oop_run) and loaded["epoch"] == 3 == res["epoch"]
    assert loaded["checkpoints"] == {"name_learner": "name_learner/model.pth.tar-3"}
    assert "shares 5 of this run's 8 classes" in caplog.text
    assert "No model-best.pth.tar" in caplog.text and "loading the last-epoch checkpoint model.pth.tar-3" in caplog.text


def test_an_evaluation_under_other_training_keys_says_which_and_is_filed_under_the_training_run(
        toy_root, oop_run, tmp_path, caplog):
    """OPTIM.* / TRAIN.* do not change an evaluation, so they are no mistake; but the results.json's
    config then names a schedule that never trained the model: a warning names the keys, and
    ``evaluation_config`` (what parse_test_res groups by) takes the training run's values."""
    out = tmp_path / "ev"
    with caplog.at_level(logging.WARNING):
        assert train.cli(train_argv(toy_root, out, TRAINER, "OPTIM.LR", "0.9", "OPTIM.MAX_EPOCH", "2",
                                    extra=("--eval-only", "--model-dir", str(oop_run)))) == 0
    trained = results.read_results(str(oop_run)).fingerprint["config"]
    warning = next(r.getMessage() for r in caplog.records if "was trained with" in r.getMessage())
    assert f"OPTIM.LR {trained['OPTIM.LR']} (this command: 0.9)" in warning
    assert f"OPTIM.MAX_EPOCH {trained['OPTIM.MAX_EPOCH']} (this command: 2)" in warning
    fp = results.read_results(str(out)).fingerprint
    assert fp["config"]["OPTIM.LR"] == 0.9
    grouped = results.evaluation_config(fp)
    assert grouped["OPTIM.LR"] == trained["OPTIM.LR"] and grouped["OPTIM.MAX_EPOCH"] == trained["OPTIM.MAX_EPOCH"]

    caplog.clear()
    same = tmp_path / "same"
    with caplog.at_level(logging.WARNING):
        assert train.cli(train_argv(toy_root, same, TRAINER, extra=("--eval-only", "--model-dir", str(oop_run)))) == 0
    assert "was trained with" not in caplog.text


def test_model_best_is_preferred_when_present(toy_root, oop_run, tmp_path, caplog):
    mdir = tmp_path / "with_best"
    shutil.copytree(oop_run, mdir)
    ckpt = torch.load(mdir / "name_learner" / "model.pth.tar-3", weights_only=True)
    save_checkpoint(dict(ckpt, epoch=2), str(mdir / "name_learner"), is_best=True, model_name="model-best.pth.tar")
    out = tmp_path / "ev"
    with caplog.at_level(logging.INFO):
        assert train.cli(train_argv(toy_root, out, TRAINER, extra=("--eval-only", "--model-dir", str(mdir)))) == 0
    loaded = json.loads((out / "results.json").read_text())["loaded"]
    assert loaded["epoch"] == 2 and loaded["checkpoints"] == {"name_learner": "name_learner/model-best.pth.tar"}
    assert loaded["names_loaded"] == "5/5" and "No model-best.pth.tar" not in caplog.text


@pytest.fixture
def same_name_root(toy_root, tmp_path):
    """The toy Animals domain with the IP class "zebra" renamed to the OOP class "ant"."""
    root = tmp_path / "same"
    for name in ("Animals5_OOP", "Animals3_IP"):
        shutil.copytree(toy_root / name, root / name, ignore=shutil.ignore_patterns("split_fewshot"))
    ip = root / "Animals3_IP"
    (ip / "images" / "zebra").rename(ip / "images" / "ant")
    split = ip / "split_Xin_Animals3_IP.json"
    data = json.loads(split.read_text())
    for records in data.values():
        for item in records.values():
            if item["classname"] == "zebra":
                item["classname"] = "ant"
    split.write_text(json.dumps(data))
    return root


def test_same_class_name_in_oop_and_ip_is_an_error_with_cross_eval(same_name_root, tmp_path, capsys):
    out = tmp_path / "train"
    assert train.cli(train_argv(same_name_root, out, TRAINER)) == 2  # TEST.CROSS_EVAL auto: OOP then IP
    err = one_error_line(capsys)
    assert "appear in both OOP and IP" in err and "'ant'" in err
    assert not (out / "name_learner").exists() and not (out / "results.json").exists()  # before training

    all_out = tmp_path / "all"
    assert train.cli(train_argv(same_name_root, all_out, TRAINER, "DATASET.SUB_CLASSES", "All")) == 2
    assert "appear in both OOP and IP" in one_error_line(capsys)

    # Without the cross-evaluation OOP trains; evaluating that model on IP is the cross-evaluation.
    oop = tmp_path / "oop"
    assert train.cli(train_argv(same_name_root, oop, TRAINER, "TEST.CROSS_EVAL", "()")) == 0
    capsys.readouterr()
    ip = tmp_path / "ip"
    assert train.cli(train_argv(same_name_root, ip, TRAINER, "DATASET.SUB_CLASSES", "IP",
                                extra=("--eval-only", "--model-dir", str(oop)))) == 2
    err = one_error_line(capsys)
    assert "in both OOP and IP" in err and "['ant']" in err
    assert not (ip / "results.json").exists()


@pytest.fixture(scope="module")
def killed_run(toy_root, tmp_path_factory):
    """What a run killed during epoch 2 of 2 leaves: config.yaml (with its fingerprint), model.pth.tar-1
    and the pointer naming it, no results.json. Made from a finished run with a checkpoint per epoch."""
    out = tmp_path_factory.mktemp("killed") / "run"
    assert train.cli(train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1")) == 0
    (out / "results.json").unlink()
    (out / "name_learner" / "model.pth.tar-2").unlink()
    (out / "name_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    return out


def test_eval_of_an_unfinished_run_is_refused_unless_the_epoch_is_asked_for(toy_root, killed_run, tmp_path, capsys):
    """``--eval-only --model-dir`` of a killed run loaded its last checkpoint (epoch 1 of 2) and filed
    it like the finished run's model. Now one line before any work; ``--load-epoch 1`` evaluates that
    checkpoint on purpose, and is recorded as such."""
    before = snapshot_tree(killed_run)
    out = tmp_path / "eval"
    base = train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "2", extra=("--eval-only", "--model-dir", str(killed_run)))
    capsys.readouterr()
    assert train.cli(base) == 2
    line = one_error_line(capsys)
    assert line == (f"error: --model-dir {killed_run}: its training has not finished (the last checkpoint is epoch 1 "
                    "of OPTIM.MAX_EPOCH 2, and it has no results.json); finish it (rerun its train.py command: it "
                    "resumes), or evaluate that checkpoint on purpose with --load-epoch 1")
    assert not out.exists() and snapshot_tree(killed_run) == before
    assert train.cli(train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "2",
                                extra=("--eval-only", "--model-dir", str(killed_run), "--load-epoch", "1"))) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["loaded"]["epoch"] == 1 and res["fingerprint"]["source"]["load_epoch"] == 1


def test_eval_of_a_finished_run_without_results_or_of_other_code_is_not_refused(toy_root, killed_run, oop_run, tmp_path):
    """No false alarm: a finished run that wrote no results.json (``TEST.NO_TEST``: its last checkpoint
    is its final epoch), and a folder of other code (CoOp's outputs: no config.yaml of ours), evaluate
    their last checkpoint as before."""
    no_test = tmp_path / "no_test"
    shutil.copytree(oop_run, no_test)
    (no_test / "results.json").unlink()
    assert train.cli(train_argv(toy_root, tmp_path / "a", TRAINER, extra=("--eval-only", "--model-dir", str(no_test)))) == 0
    coop_style = tmp_path / "coop_style"
    shutil.copytree(killed_run, coop_style)
    (coop_style / "config.yaml").unlink()
    for path in (coop_style / "name_learner").glob("model.pth.tar-*"):  # other code records no fingerprint
        ckpt = torch.load(path, weights_only=True)
        del ckpt["meta"]["fingerprint"]
        torch.save(ckpt, path)
    assert train.cli(train_argv(toy_root, tmp_path / "b", TRAINER, "OPTIM.MAX_EPOCH", "2",
                                extra=("--eval-only", "--model-dir", str(coop_style)))) == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text())["loaded"]["epoch"] == 1


@pytest.mark.parametrize("config", ["removed", "edited"])
def test_eval_of_an_unfinished_run_reads_the_checkpoints_record(toy_root, killed_run, tmp_path, capsys, config):
    """The planned epochs come from the checkpoint's own fingerprint, written with the weights. With
    config.yaml gone, or edited to ``MAX_EPOCH: 1``, the killed run's epoch-1 checkpoint passed as the
    final model (exit 0, filed as the 2-epoch model)."""
    run = tmp_path / "killed"
    shutil.copytree(killed_run, run)
    path = run / "config.yaml"
    if config == "removed":
        path.unlink()
    else:
        text = path.read_text()
        assert "  MAX_EPOCH: 2\n" in text
        path.write_text(text.replace("  MAX_EPOCH: 2\n", "  MAX_EPOCH: 1\n"))
    out = tmp_path / "eval"
    capsys.readouterr()
    assert train.cli(train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "2",
                                extra=("--eval-only", "--model-dir", str(run)))) == 2
    line = one_error_line(capsys)
    assert "its training has not finished" in line and "epoch 1 of OPTIM.MAX_EPOCH 2" in line
    assert not out.exists()


def test_eval_of_a_checkpoint_with_a_damaged_epoch_is_one_line(toy_root, killed_run, tmp_path, capsys):
    """``"epoch": "two"`` in the checkpoint was an int() traceback."""
    run = tmp_path / "damaged"
    shutil.copytree(killed_run, run)
    path = run / "name_learner" / "model.pth.tar-1"
    ckpt = torch.load(path, weights_only=True)
    ckpt["epoch"] = "two"
    torch.save(ckpt, path)
    capsys.readouterr()
    assert train.cli(train_argv(toy_root, tmp_path / "eval", TRAINER, "OPTIM.MAX_EPOCH", "2",
                                extra=("--eval-only", "--model-dir", str(run), "--load-epoch", "1"))) == 2
    line = one_error_line(capsys)
    assert str(path) in line and "'two', not a whole number" in line


def test_eval_of_a_checkpoint_missing_a_name_of_its_own_label_space_is_one_line(toy_root, killed_run, tmp_path, capsys):
    """A name deleted from a checkpoint of this very label space was loaded partially (4/5), the missing
    one at its initial value, noted only in log.txt, and the evaluation filed."""
    run = tmp_path / "edited"
    shutil.copytree(killed_run, run)
    path = run / "name_learner" / "model.pth.tar-1"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"][sorted(k for k in ckpt["state_dict"] if k.startswith("name_embeddings."))[0]]
    torch.save(ckpt, path)
    out = tmp_path / "eval"
    capsys.readouterr()
    assert train.cli(train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "2",
                                extra=("--eval-only", "--model-dir", str(run), "--load-epoch", "1"))) == 2
    line = one_error_line(capsys)
    assert str(path) in line and "1 of the 5 learned names of its own label space are missing" in line
    assert not (out / "results.json").exists()


def test_the_logged_learning_rate_is_the_one_the_step_used(toy_root, tmp_path):
    """The schedule steps inside the last batch's update, and the log read the rate after it: the
    constant warm-up epoch showed the next epoch's rate (Dassl's log did the same)."""
    out = tmp_path / "run"
    assert train.cli(train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.05",
                                "OPTIM.WARMUP_EPOCH", "1", "OPTIM.WARMUP_TYPE", "constant",
                                "OPTIM.WARMUP_CONS_LR", "1e-5", "TRAIN.PRINT_FREQ", "1")) == 0
    logged = {}
    for line in (out / "log.txt").read_text().splitlines():
        if line.startswith("epoch [") and " lr " in line:
            logged.setdefault(line.split("]")[0] + "]", set()).add(float(line.split(" lr ")[1].split()[0]))
    assert logged["epoch [1/2]"] == {1e-5}  # the warm-up epoch
    assert logged["epoch [2/2]"] == {0.05}  # cosine over 2 epochs: the base rate at the start of the second
