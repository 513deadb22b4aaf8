"""What ``--eval-only --model-dir`` may load (issue: hostile evaluation inputs).

An evaluation is filed under its own config and records the model dir it loaded, so the checkpoint it
reads must be the model dir's own (its pointer confined to its folder, its fingerprint the folder's
run), of this trainer, and trained under the evaluation's identity (backbone weights, shots, seed,
the method's settings). Every refusal is one ``error:`` line on stderr, exit code 2, before anything
is written: the evaluation's output folder is not even created and the model dir is left as it was.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from yacs.config import CfgNode as CN

import train
from dassl.engine import TRAINER_REGISTRY
from dassl.engine.trainer import check_model_checkpoint
from dassl.utils import save_checkpoint
from dassl.utils.torchtools import CheckpointError
from tests.helpers import train_argv

TRAINER = "FSNL_openclip"
CKPT = "name_learner/model.pth.tar-3"


@pytest.fixture(autouse=True)
def _drop_log_handlers(drop_new_log_handlers):
    """``train.main`` tees the log into each output dir (conftest's ``drop_new_log_handlers``)."""


@pytest.fixture(scope="module")
def runs(toy_root, tmp_path_factory):
    """Finished toy runs: FSNL 2-shot (``two``) and 1-shot (``one``), seed 1; CoOp 2-shot (``coop``)."""
    base = tmp_path_factory.mktemp("identity_runs")
    made = {"two": (TRAINER, 2), "one": (TRAINER, 1), "coop": ("CoOp_openclip", 2)}
    for name, (trainer, shots) in made.items():
        assert train.cli(train_argv(toy_root, base / name, trainer, shots=shots)) == 0
    return {name: base / name for name in made}


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv, out, model_dir) -> str:
    """Run ``argv``; assert exit 2, one ``error:`` line, no output folder and an untouched model dir."""
    before = snapshot(model_dir)
    assert train.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert snapshot(model_dir) == before
    return err


def evaluate(toy_root, out, model_dir, *opts, trainer=TRAINER, extra=(), **kw):
    return train_argv(toy_root, out, trainer, *opts, extra=("--eval-only", "--model-dir", str(model_dir), *extra), **kw)


@pytest.mark.parametrize("target", ["../../other/" + CKPT, "/etc/passwd", ".."])
def test_pointer_that_leaves_its_folder_is_refused(toy_root, runs, tmp_path, capsys, target):
    """The pointer used to be followed anywhere: ``../../other/...`` evaluated the other run's weights
    under this folder's name (rc 0), ``/etc/passwd`` was a 20-line IndexError traceback."""
    shutil.copytree(runs["one"], tmp_path / "other")
    model = tmp_path / "m"
    shutil.copytree(runs["two"], model)
    (model / CKPT).unlink()
    (model / "name_learner" / "checkpoint").write_text(target + "\n")
    out = tmp_path / "ev"
    err = refused(capsys, evaluate(toy_root, out, model), out, model)
    assert f'"{model / "name_learner" / "checkpoint"}"' in err and repr(target) in err
    assert "fix or delete the pointer" in err


def test_checkpoint_copied_from_another_run_is_refused(toy_root, runs, tmp_path, capsys):
    """A 1-shot run's checkpoint dropped into the 2-shot folder as epoch 5 was evaluated and filed as
    the 2-shot run's model; its embedded fingerprint tells it apart from the folder's results.json."""
    model = tmp_path / "m"
    shutil.copytree(runs["two"], model)
    shutil.copy(runs["one"] / CKPT, model / "name_learner" / "model.pth.tar-5")
    theirs = torch.load(runs["one"] / CKPT, weights_only=True)["meta"]["fingerprint"]["id"]
    ours = (model / "results.json").read_text().split('"id": "')[1][:12]
    out = tmp_path / "ev"
    err = refused(capsys, evaluate(toy_root, out, model, extra=("--load-epoch", "5")), out, model)
    assert "model.pth.tar-5" in err and theirs[:12] in err and ours in err
    assert "DATASET.NUM_SHOTS 2 -> 1" in err


@pytest.mark.parametrize("opts, seed, expected, fix", [
    (("DATASET.NUM_SHOTS", "1"), 1, "DATASET.NUM_SHOTS 2 -> 1", "DATASET.NUM_SHOTS 2"),
    ((), 3, "SEED 1 -> 3", "SEED 1"),
    (("TRAINER.FSNL.N_CTX", "2"), 1, "TRAINER.FSNL.N_CTX 4 -> 2", "TRAINER.FSNL.N_CTX 4"),
])
def test_evaluation_must_share_the_models_training_identity(toy_root, runs, tmp_path, capsys, opts, seed,
                                                             expected, fix):
    """The 2-shot seed-1 model evaluated under other shots or seed was filed as a result of those (its
    results.json said ``shots: 1`` / ``seed: 3``). Under ``WEIGHTS none`` (a seeded random backbone)
    another seed is also another backbone, and is named as such."""
    out = tmp_path / "ev"
    argv = evaluate(toy_root, out, runs["two"], *opts, seed=seed, shots=None if "DATASET.NUM_SHOTS" in opts else 2)
    err = refused(capsys, argv, out, runs["two"])
    assert expected in err and f"set {fix}" in err, err
    if seed != 1:
        assert "weights (backbone weights identity)" in err


def test_evaluation_side_keys_may_differ(toy_root, runs, tmp_path):
    """Cross-evaluation stays legitimate: another subset and another precision are the evaluation's."""
    out = tmp_path / "ip"
    assert train.cli(evaluate(toy_root, out, runs["two"], "DATASET.SUB_CLASSES", "IP", "TEST.CROSS_EVAL", "()")) == 0
    assert (out / "results.json").is_file()


def test_checkpoint_of_another_trainer_is_one_line(toy_root, runs, tmp_path, capsys):
    """CoOp on an FSNL model dir, TaskRes on a CoOp model dir: a KeyError traceback, or TaskRes'
    "the checkpoint has 0 classes"; the checkpoint says which trainer wrote it."""
    out = tmp_path / "ev"
    err = refused(capsys, evaluate(toy_root, out, runs["two"], trainer="CoOp_openclip"), out, runs["two"])
    assert "is a checkpoint of trainer FSNL_openclip, not CoOp_openclip" in err and "--trainer FSNL_openclip" in err
    err = refused(capsys, evaluate(toy_root, out, runs["coop"], trainer="TaskRes"), out, runs["coop"])
    assert "is a checkpoint of trainer CoOp_openclip, not TaskRes" in err


def test_checkpoint_that_does_not_fit_is_one_line(toy_root, runs, tmp_path, capsys):
    """A checkpoint without a fingerprint (older code) is compared by its weights only: a context of
    another length was a ValueError traceback (rc 1); now its message is the one line, naming the file."""
    model = tmp_path / "m"
    shutil.copytree(runs["coop"], model, ignore=shutil.ignore_patterns("results.json"))
    path = model / "prompt_learner" / "model.pth.tar-2"
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"].pop("fingerprint")
    path.unlink()
    save_checkpoint(ckpt, str(path.parent))
    out = tmp_path / "ev"
    assert train.cli(evaluate(toy_root, out, model, "TRAINER.COOP.N_CTX", "2", "TRAINER.COOP.CTX_INIT", '""',
                              trainer="CoOp_openclip")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert f'"{path}" does not fit this model' in err and "N_CTX" in err
    assert not (out / "results.json").exists()


def test_truncated_checkpoint_is_one_line_naming_it(toy_root, runs, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(runs["two"], model)
    path = model / CKPT
    path.write_bytes(path.read_bytes()[:3000])
    out = tmp_path / "ev"
    err = refused(capsys, evaluate(toy_root, out, model), out, model)
    assert f'"{path}" is unreadable' in err and "PytorchStreamReader" in err and "--load-epoch" in err


@pytest.mark.parametrize("trainer", ["ZeroshotCLIP_openclip", "ZeroshotCLIP2_openclip"])
def test_zero_shot_trainers_refuse_a_model_dir(toy_root, runs, tmp_path, capsys, trainer):
    """It was ignored, yet recorded as ``loaded`` and hashed into the fingerprint (another group)."""
    out = tmp_path / "zs"
    argv = train_argv(toy_root, out, trainer, extra=("--eval-only", "--model-dir", str(runs["two"])))
    err = refused(capsys, argv, out, runs["two"])
    assert f"{trainer} has no trained weights to load" in err and "drop --model-dir" in err
    assert train.cli(train_argv(toy_root, out, trainer, extra=("--eval-only",))) == 0  # without it: fine


def test_weights_are_compared_by_content_not_by_how_the_path_is_written(tmp_path):
    """Hostile: a model trained with ``MODEL.BACKBONE.WEIGHTS assets/x.safetensors`` (relative) was refused
    when evaluated with the absolute path (or ``default``, which resolves to the same file), with a fix
    that only worked from the training run's directory. The weights are one model when their identity
    (tag, or size + SHA-256) is; another identity is still refused."""
    cfg = CN()
    cfg.TRAINER = CN()
    cfg.TRAINER.NAME = TRAINER
    cfg.OUTPUT_DIR = str(tmp_path / "eval")
    file_id = {"file": "mini_clip.safetensors", "sha256": "ab" * 32, "size": 123}

    def fp(weights_opt, weights):
        return {"id": "x", "config": {"MODEL.BACKBONE.WEIGHTS": weights_opt, "SEED": 1}, "weights": weights}

    meta = {"trainer": TRAINER, "fingerprint": fp("assets/mini_clip.safetensors", file_id)}
    cls = TRAINER_REGISTRY.get(TRAINER)
    for written in ("/abs/assets/mini_clip.safetensors", "default"):
        check_model_checkpoint(cfg, str(tmp_path), "ckpt", meta, cls, fp(written, file_id))
    with pytest.raises(CheckpointError, match=r"weights \(backbone weights identity\)"):
        check_model_checkpoint(cfg, str(tmp_path), "ckpt", meta, cls, fp("none", {"random": True}))
