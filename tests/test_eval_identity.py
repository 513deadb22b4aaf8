"""What ``--eval-only --model-dir`` may load (issue: hostile evaluation inputs).

An evaluation is filed under its own config and records the model dir it loaded, so the checkpoint it
reads must be the model dir's own (its pointer confined to its folder, its fingerprint the folder's
run), of this trainer, and trained under the evaluation's identity (backbone weights, shots, seed,
the method's settings). Every refusal is one ``error:`` line on stderr, exit code 2, before anything
is written: the evaluation's output folder is not even created and the model dir is left as it was.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from yacs.config import CfgNode as CN

import train
from dassl.engine import TRAINER_REGISTRY
from dassl.engine.trainer import check_model_checkpoint
from dassl.utils import save_checkpoint
from dassl.utils.torchtools import CheckpointError
from tests.helpers import train_argv, trainer_config

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


@pytest.mark.parametrize("trained, evaluated", [("FSNL_openclip_Ablation1", TRAINER), (TRAINER, "FSNL_openclip_GCD")])
def test_checkpoint_of_a_variant_trainer_is_one_line(toy_root, runs, tmp_path, capsys, trained, evaluated):
    """A variant (ablation, GCD) has the same state layout, so its checkpoints loaded, and results.json
    filed the ablation's model as the full method's result (exit 0); an FSNL model evaluated by the GCD
    trainer was filed as a GCD result."""
    smoke = trainer_config(TRAINER)
    model = runs["two"]
    if trained != TRAINER:
        model = tmp_path / "ablation"
        assert train.cli(train_argv(toy_root, model, trained, config=smoke)) == 0
    out = tmp_path / "ev"
    err = refused(capsys, evaluate(toy_root, out, model, trainer=evaluated, config=smoke), out, model)
    assert f"is a checkpoint of trainer {trained}, not {evaluated}" in err and f"--trainer {trained}" in err


def test_checkpoint_without_fingerprint_beside_a_run_is_refused(toy_root, runs, tmp_path, capsys):
    """A CoOp-style file saved as the FSNL run's last epoch (no meta) was evaluated as that run's model:
    "Loaded 0 of 5 names" in log.txt, the untrained names filed as epoch 3 (exit 0). Every checkpoint
    of this code's runs records its fingerprint; one without it is not the folder's run's."""
    model = tmp_path / "m"
    shutil.copytree(runs["two"], model)
    torch.save({"state_dict": {"ctx": torch.randn(16, 32)}, "epoch": 3}, model / CKPT)
    run_id = (model / "results.json").read_text().split('"id": "')[1][:12]
    out = tmp_path / "ev"
    err = refused(capsys, evaluate(toy_root, out, model), out, model)
    assert f'"{model / CKPT}" records no run fingerprint' in err and run_id in err


def test_checkpoint_without_learned_names_is_one_line(toy_root, tmp_path, capsys):
    """The same file in a folder of its own (no results.json to compare with): it holds no name at all,
    so it is no FSNL checkpoint; "0 of 5 names loaded" evaluated the untrained names (exit 0)."""
    model = tmp_path / "m"
    (model / "name_learner").mkdir(parents=True)
    torch.save({"state_dict": {"ctx": torch.randn(16, 32)}, "epoch": 3}, model / CKPT)
    out = tmp_path / "ev"
    err = refused(capsys, evaluate(toy_root, out, model), out, model)
    assert f'"{model / CKPT}" does not fit this model: it holds no learned name (its keys: [\'ctx\'])' in err


def test_cross_evaluation_of_a_loaded_model_uses_the_checkpoint(toy_root, tmp_path):
    """An IP-trained model evaluated under the OOP config (its IP cross-evaluation on): the OOP trainer
    keeps none of its IP names, and the cross-evaluation got that trainer's state, so results.json
    recorded the zero-shot IP accuracy as the model's (exit 0). It must be the IP run's own score."""
    ip = tmp_path / "ip"
    assert train.cli(train_argv(toy_root, ip, TRAINER, "DATASET.SUB_CLASSES", "IP")) == 0
    out = tmp_path / "ev"
    assert train.cli(evaluate(toy_root, out, ip)) == 0
    trained = json.loads((ip / "results.json").read_text())
    evaluated = json.loads((out / "results.json").read_text())
    assert evaluated["loaded"]["names_loaded"].startswith("0/")  # the main (OOP) test: none of its names
    assert evaluated["ip"] == trained["ip"] and evaluated["subsets"]["IP"] == trained["subsets"]["IP"]
    zero_shot = tmp_path / "zs"  # and not what the untrained names score there
    assert train.cli(train_argv(toy_root, zero_shot, "ZeroshotCLIP_openclip", "DATASET.SUB_CLASSES", "IP",
                                "TEST.CROSS_EVAL", "()")) == 0
    assert json.loads((zero_shot / "results.json").read_text())["ip"] != trained["ip"]


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
