"""train.py end to end: a toy trainer and dataset registered here, the real CLI, results on disk."""
from __future__ import annotations

import json

import pytest
import torch
from yacs.config import CfgNode as CN

import train
from dassl.data.datasets import DATASET_REGISTRY
from dassl.engine import TRAINER_REGISTRY
from tests.helpers import (
    COLOR_SUBSETS,
    ToyColors,
    ToyLinear,
    colour_accuracy,
    make_colour_images,
    stub_project_modules,
)

TRAIN_TEST = {"train": 4, "test": 3}


@DATASET_REGISTRY.register(force=True)
class ToyColorsCLI(ToyColors):
    with_val = False


@TRAINER_REGISTRY.register(force=True)
class ToyLinearCLI(ToyLinear):
    """The shared linear trainer under this file's registered name."""


@pytest.fixture(autouse=True)
def fake_project(monkeypatch, drop_new_log_handlers):
    """Stand-ins for datasets/, clip/ and trainers/ (this file tests train.py and dassl only)."""

    def add_trainer_configs(cfg):
        cfg.TRAINER.TOY = CN()
        cfg.TRAINER.TOY.PREC = "fp32"

    stub_project_modules(monkeypatch, add_trainer_configs)
    yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_cli")
    make_colour_images(root, TRAIN_TEST)
    (root / "ds.yaml").write_text("DATASET:\n  NAME: ToyColorsCLI\n")
    (root / "tr.yaml").write_text(
        "INPUT:\n  SIZE: (8, 8)\n  TRANSFORMS: ['random_flip']\n  INTERPOLATION: bicubic\n"
        "DATALOADER:\n  NUM_WORKERS: 0\n  TRAIN_X:\n    BATCH_SIZE: 4\n"
        "OPTIM:\n  NAME: sgd\n  LR: 0.05\n  MAX_EPOCH: 5\n  LR_SCHEDULER: cosine\n"
        "  WARMUP_EPOCH: 1\n  WARMUP_TYPE: constant\n"
        "TRAINER:\n  TOY:\n    PREC: fp32\n"
    )
    return root


def _args(data_root, out, *extra, opts=()):
    return train.parse_args([
        "--root", str(data_root), "--seed", "0", "--trainer", "ToyLinearCLI",
        "--dataset-config-file", str(data_root / "ds.yaml"), "--config-file", str(data_root / "tr.yaml"),
        "--output-dir", str(out), *extra, "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "2", *opts,
    ])


def test_train_end_to_end_writes_results_config_and_log(data_root, tmp_path):
    out = tmp_path / "train"
    trainer = train.main(_args(data_root, out))
    res = json.loads((out / "results.json").read_text())
    ckpt = torch.load(out / "linear" / "model.pth.tar-2", weights_only=True)
    w, b = ckpt["state_dict"]["weight"], ckpt["state_dict"]["bias"]
    assert torch.equal(w, trainer.model.weight.detach())

    oop = colour_accuracy(data_root, COLOR_SUBSETS["OOP"], w, b)
    ip = colour_accuracy(data_root, COLOR_SUBSETS["IP"], torch.zeros(2, w.shape[1]), torch.zeros(2))
    assert res["trainer"] == "ToyLinearCLI" and res["dataset"] == "ToyColorsCLI"
    assert res["seed"] == 0 and res["shots"] == -1 and res["epoch"] == 2
    assert res["backbone"] == "" and res["weights"] == "laion400m_e32"
    assert res["sub_classes"] == "OOP" and list(res["subsets"]) == ["OOP", "IP"]  # CROSS_EVAL auto
    assert res["accuracy"] == pytest.approx(oop) and res["oop"] == pytest.approx(oop)
    assert res["ip"] == pytest.approx(ip) == 50.0
    assert res["hmean"] == pytest.approx(2 * oop * ip / (oop + ip))

    saved = CN.load_cfg((out / "config.yaml").read_text())
    assert saved.SEED == 0 and saved.OPTIM.MAX_EPOCH == 2 and saved.OPTIM.LR == pytest.approx(0.05)
    assert saved.INPUT.INTERPOLATION == "bicubic" and saved.DATASET.NAME == "ToyColorsCLI"
    log = (out / "log.txt").read_text()
    assert f"* accuracy: {oop:.2f}%" in log and "epoch [2/2] batch [3/3]" in log
    assert "** Config **" in log


def test_eval_only_on_another_subset_and_epoch(data_root, tmp_path):
    train_out = tmp_path / "train"
    train.main(_args(data_root, train_out, opts=("TRAIN.CHECKPOINT_FREQ", "1")))
    w1 = torch.load(train_out / "linear" / "model.pth.tar-1", weights_only=True)["state_dict"]

    out = tmp_path / "eval_all"
    train.main(_args(data_root, out, "--eval-only", "--model-dir", str(train_out), "--load-epoch", "1",
                     opts=("DATASET.SUB_CLASSES", "All")))
    res = json.loads((out / "results.json").read_text())
    weight = torch.cat([w1["weight"], torch.zeros(2, w1["weight"].shape[1])])
    bias = torch.cat([w1["bias"], torch.zeros(2)])
    assert res["sub_classes"] == "All" and res["epoch"] == 1 and list(res["subsets"]) == ["All"]
    assert res["accuracy"] == pytest.approx(colour_accuracy(data_root, COLOR_SUBSETS["All"], weight, bias))
    assert "hmean" not in res
    assert not (out / "linear").exists()  # evaluation writes no checkpoint

    assert res["loaded"]["model_dir"] == str(train_out) and res["loaded"]["epoch"] == 1
    assert res["loaded"]["classes_shared"] == "3/5"  # OOP weights, All label space: a partial match

    zs = tmp_path / "untrained"
    trainer = train.main(_args(data_root, zs, "--eval-only", opts=("TEST.ALLOW_UNTRAINED", "True")))
    res = json.loads((zs / "results.json").read_text())
    assert res["epoch"] == 0 and res["loaded"]["untrained"] is True
    assert trainer.last_results is not None


def test_no_train_builds_only(data_root, tmp_path, capsys):
    out = tmp_path / "nt"
    train.main(_args(data_root, out, "--no-train"))
    assert (out / "config.yaml").exists() and not (out / "results.json").exists()
    assert not (out / "linear").exists()
    # one line on the console, as every other path ends with (it said nothing)
    console = capsys.readouterr()
    assert f"(--no-train: nothing trained or evaluated); config.yaml and log.txt in {out}" in console.out + console.err


@pytest.mark.parametrize("argv_change,expected", [
    (("--trainer", "ToyLinearCLl"), 'Did you mean "ToyLinearCLI"'),
    (("OPTIM.LRR", "0.1"), 'Did you mean "OPTIM.LR"'),
    (("DATASET.NAME", "ToyColorCLI"), 'Did you mean "ToyColorsCLI"'),
    (("TEST.EVALUATOR", "Clasification"), 'Did you mean "Classification"'),
])
def test_cli_config_mistakes_are_one_line_errors(data_root, tmp_path, capsys, argv_change, expected):
    argv = ["--root", str(data_root), "--trainer", "ToyLinearCLI",
            "--dataset-config-file", str(data_root / "ds.yaml"), "--config-file", str(data_root / "tr.yaml"),
            "--output-dir", str(tmp_path / "o")]
    if argv_change[0] == "--trainer":
        argv[3] = argv_change[1]
    else:
        argv += list(argv_change)
    rc = train.cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_model_dir_is_reported(data_root, tmp_path, capsys):
    argv = ["--root", str(data_root), "--trainer", "ToyLinearCLI", "--dataset-config-file",
            str(data_root / "ds.yaml"), "--config-file", str(data_root / "tr.yaml"), "--output-dir",
            str(tmp_path / "o"), "--eval-only", "--model-dir", str(tmp_path / "nothing"), "USE_CUDA", "False"]
    assert train.cli(argv) == 2
    err = capsys.readouterr().err
    assert "--model-dir" in err and "nothing" in err



def test_console_gets_one_line_per_run_and_log_txt_everything(data_root, tmp_path, capsys):
    """Issue 13 item 7: the console shows the run's one summary line; the config dump and per-batch
    lines go to log.txt only, unless --verbose asks for the old console."""
    out = tmp_path / "quiet"
    assert train.cli(_cli_argv(data_root, out)) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    res = json.loads((out / "results.json").read_text())
    expected = (f"done ToyLinearCLI ToyColorsCLI seed0: OOP {res['oop']:.1f} IP {res['ip']:.1f} "
                f"H {res['hmean']:.1f}")
    assert len(printed) == 1 and printed[0].startswith(expected) and printed[0].endswith(f"-> {out}")
    log = (out / "log.txt").read_text()
    assert "** Config **" in log and "* accuracy:" in log and printed[0] in log

    loud = tmp_path / "loud"
    assert train.cli(_cli_argv(data_root, loud, "--verbose")) == 0
    printed = capsys.readouterr().out
    assert "** Config **" in printed and "* accuracy:" in printed and "done ToyLinearCLI" in printed


def _cli_argv(data_root, out, *extra):
    return ["--root", str(data_root), "--seed", "0", "--trainer", "ToyLinearCLI",
            "--dataset-config-file", str(data_root / "ds.yaml"), "--config-file", str(data_root / "tr.yaml"),
            "--output-dir", str(out), "--quiet", *extra, "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "2"]


def test_ctrl_c_is_one_line_and_the_rerun_resumes(data_root, tmp_path, capsys, monkeypatch):
    """Ctrl-C during training printed a 62-line KeyboardInterrupt traceback (rc 130). Now one line says
    where it stopped and how to go on; what is on disk is whole (atomic writes: no temporary file, no
    results.json), and the same command resumes from the last checkpoint."""
    out = tmp_path / "run"
    argv = _cli_argv(data_root, out, "TRAIN.CHECKPOINT_FREQ", "1")  # 2 epochs
    original = ToyLinearCLI.run_epoch

    def interrupted(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(ToyLinearCLI, "run_epoch", interrupted)
    assert train.cli(argv) == 130
    captured = capsys.readouterr()
    assert captured.err == "interrupted at epoch 2/2; rerun the same command to resume from the checkpoint of epoch 1\n"
    assert "Traceback" not in captured.out
    assert sorted(p.name for p in (out / "linear").iterdir()) == ["checkpoint", "model.pth.tar-1"]
    assert not (out / "results.json").exists() and not list(out.rglob("*.tmp"))

    monkeypatch.setattr(ToyLinearCLI, "run_epoch", original)
    assert train.cli(argv) == 0
    assert "Resumed" in "".join(p.read_text() for p in out.glob("log.txt*"))
    assert json.loads((out / "results.json").read_text())["epoch"] == 2


def test_ctrl_c_before_any_checkpoint_says_it_starts_over(data_root, tmp_path, capsys, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ToyLinearCLI, "run_epoch", interrupted)
    assert train.cli(_cli_argv(data_root, tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted at epoch 1/2 before any checkpoint was saved")
    assert "start over" in err
