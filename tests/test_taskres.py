"""TaskRes on the tiny random OpenCLIP model and the toy benchmark."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import build, run_train, train_argv

TRAINER = "TaskRes"


def test_zero_residual_is_zero_shot_and_alpha_scales_the_residual(toy_root, toy_info, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER, "TRAINER.TaskRes.RESIDUAL_SCALE", "0.5")
    names = toy_info["Animals92_42"]["OOP"]["classnames"]
    batch = next(iter(trainer.test_loader))
    images = batch["img"].to(trainer.device)
    model, tok = trainer.clip.model, trainer.clip.tokenizer
    prompts = [f"a photo of {c.replace('_', ' ').lower()}, a type of animal." for c in names]
    with torch.no_grad():
        base = model.encode_text(tok(prompts)).float()
        img = F.normalize(model.encode_image(images).float(), dim=-1)
    scale = model.logit_scale.exp()
    assert torch.count_nonzero(trainer.model.text_feature_residuals) == 0
    torch.testing.assert_close(trainer.model_inference(images), scale * img @ F.normalize(base, dim=-1).t(),
                               rtol=1e-5, atol=1e-5)

    x = torch.randn_like(base)
    with torch.no_grad():
        trainer.model.text_feature_residuals.copy_(x)
    expected = scale * img @ F.normalize(base + 0.5 * x, dim=-1).t()
    torch.testing.assert_close(trainer.model_inference(images), expected, rtol=1e-5, atol=1e-5)


def test_only_the_residual_trains_and_is_saved_by_name(toy_root, toy_info, tmp_path):
    info = toy_info["Animals92_42"]
    trainer = build(toy_root, tmp_path, TRAINER)
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["text_feature_residuals"]
    assert tuple(trainer.model.text_feature_residuals.shape) == (len(info["OOP"]["classnames"]), trainer.clip.embed_dim)
    assert not any(p.requires_grad for p in trainer.clip.model.parameters())
    assert trainer.get_model_names() == ["prompt_learner"]
    state = trainer.export_state()["prompt_learner"]
    assert sorted(state) == sorted(f"residuals.{c.replace('_', ' ').lower()}" for c in info["OOP"]["classnames"])
    optimised = [p for g in trainer.optim.param_groups for p in g["params"]]
    assert len(optimised) == 1 and optimised[0] is trainer.model.text_feature_residuals


def test_loss_decreases(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    for group in trainer.optim.param_groups:
        group["lr"] = 0.05
    batch = next(iter(trainer.train_loader_x))
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0]
    assert torch.count_nonzero(trainer.model.text_feature_residuals) > 0


def test_round_trip_and_other_label_space(toy_root, tmp_path):
    run = tmp_path / "train"
    run_train(train_argv(toy_root, run, TRAINER))
    res = json.loads((run / "results.json").read_text())
    assert res["trainer"] == "TaskRes" and set(res["subsets"]) == {"OOP"} and "ip" not in res

    again = tmp_path / "eval"
    trainer = run_train(train_argv(toy_root, again, TRAINER, extra=("--eval-only", "--model-dir", str(run))))
    assert json.loads((again / "results.json").read_text())["oop"] == res["oop"]
    ckpt = torch.load(run / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=0, atol=0)
    assert torch.count_nonzero(trainer.model.text_feature_residuals) > 0

    from trainers.taskres import LabelSpaceError

    with pytest.raises(LabelSpaceError, match="class-specific|trained on"):
        run_train(train_argv(toy_root, tmp_path / "ip", TRAINER, "DATASET.SUB_CLASSES", "IP",
                             extra=("--eval-only", "--model-dir", str(run))))


def test_same_names_in_another_order_are_remapped():
    from trainers.taskres import LabelSpaceError, TaskResLearner

    base = torch.randn(3, 4)
    a = TaskResLearner(["ant", "bee", "cat"], base, 1.0)
    with torch.no_grad():
        a.text_feature_residuals.copy_(torch.arange(12.0).view(3, 4))
    b = TaskResLearner(["cat", "ant", "bee"], base[[2, 0, 1]], 1.0)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.text_feature_residuals.detach(), a.text_feature_residuals.detach()[[2, 0, 1]])
    torch.testing.assert_close(b(), a()[[2, 0, 1]])

    c = TaskResLearner(["ant", "bee", "dog"], base, 1.0)
    with pytest.raises(LabelSpaceError, match="'dog'"):
        c.load_state_dict(a.state_dict())
    # a reference checkpoint (one positional tensor) with another class count: clear error, no size crash
    with pytest.raises(LabelSpaceError, match="5 classes"):
        a.load_state_dict({"text_feature_residuals": torch.zeros(5, 4)})


def test_enhanced_base_other_than_none_is_refused(toy_root, tmp_path):
    with pytest.raises(ValueError, match="not supported"):
        build(toy_root, tmp_path, TRAINER, extra=("--enhanced-base", "weights.pth"))
