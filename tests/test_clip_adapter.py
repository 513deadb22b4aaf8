"""CLIP-Adapter on the tiny random OpenCLIP model and the toy benchmark."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import build, run_train, train_argv

TRAINER = "CLIP_Adapter"


def first_test_batch(trainer):
    batch = next(iter(trainer.test_loader))
    return batch["img"].to(trainer.device), batch["label"].to(trainer.device)


def zero_shot_logits(trainer, images, classnames):
    """Independent computation: the dataset prompt through encode_text, images through encode_image."""
    model, tok = trainer.clip.model, trainer.clip.tokenizer
    prompts = [f"a photo of {c.replace('_', ' ').lower()}, a type of animal." for c in classnames]
    with torch.no_grad():
        text = F.normalize(model.encode_text(tok(prompts)).float(), dim=-1)
        img = model.encode_image(images).float()
    return model.logit_scale.exp() * F.normalize(img, dim=-1) @ text.t(), img


def test_ratio_zero_is_zero_shot_and_ratio_blends_the_adapter(toy_root, toy_info, tmp_path):
    info = toy_info["Animals92_42"]
    trainer = build(toy_root, tmp_path / "a", TRAINER, "TRAINER.CLIP_ADAPTER.RATIO", "0.0")
    assert trainer.classnames == info["OOP"]["classnames"]
    images, _ = first_test_batch(trainer)
    expected, raw = zero_shot_logits(trainer, images, info["OOP"]["classnames"])
    torch.testing.assert_close(trainer.model_inference(images), expected, rtol=1e-5, atol=1e-5)

    trainer2 = build(toy_root, tmp_path / "b", TRAINER)  # default ratio 0.2
    assert trainer2.model.ratio == pytest.approx(0.2)
    w1, w2 = (m.weight.detach() for m in trainer2.adapter.modules() if isinstance(m, torch.nn.Linear))
    adapted = 0.2 * torch.relu(torch.relu(raw @ w1.t()) @ w2.t()) + 0.8 * raw
    text = F.normalize(trainer2.model.text_features, dim=-1)
    blended = trainer2.clip.model.logit_scale.exp() * F.normalize(adapted, dim=-1) @ text.t()
    got = trainer2.model_inference(images)
    torch.testing.assert_close(got, blended, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, expected, atol=1e-3)


def test_only_the_adapter_trains_and_text_is_encoded_once(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    d = trainer.clip.embed_dim
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable == ["adapter.fc.0.weight", "adapter.fc.2.weight"]
    assert [tuple(p.shape) for p in trainer.adapter.parameters()] == [(d // 4, d), (d, d // 4)]
    assert not any(p.requires_grad for p in trainer.clip.model.parameters())
    assert trainer.get_model_names() == ["adapter"]
    assert sorted(trainer.export_state()["adapter"]) == ["fc.0.weight", "fc.2.weight"]
    optimised = {id(p) for g in trainer.optim.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in trainer.adapter.parameters()}

    def no_text(*args, **kwargs):
        raise AssertionError("text features must not be recomputed after build")

    trainer.clip.model.encode_text = no_text
    try:
        images, labels = first_test_batch(trainer)
        trainer.forward_backward({"img": images, "label": labels})
        trainer.test()
    finally:
        del trainer.clip.model.encode_text


def test_loss_decreases(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    for group in trainer.optim.param_groups:
        group["lr"] = 0.5
    batch = next(iter(trainer.train_loader_x))
    before = [p.detach().clone() for p in trainer.adapter.parameters()]
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.adapter.parameters()))


def test_train_then_eval_only_round_trip_and_ip(toy_root, tmp_path):
    run = tmp_path / "train"
    run_train(train_argv(toy_root, run, TRAINER))
    res = json.loads((run / "results.json").read_text())
    assert res["trainer"] == "CLIP_Adapter" and res["sub_classes"] == "OOP"
    assert set(res["subsets"]) == {"OOP", "IP"}
    oop, ip = res["oop"], res["ip"]
    assert res["hmean"] == pytest.approx(2 * oop * ip / (oop + ip) if oop + ip else 0.0, abs=1e-6)
    assert (run / "adapter" / "model.pth.tar-2").is_file()

    again = tmp_path / "eval"
    trainer = run_train(train_argv(toy_root, again, TRAINER, extra=("--eval-only", "--model-dir", str(run))))
    res2 = json.loads((again / "results.json").read_text())
    assert res2["oop"] == res["oop"] and res2["ip"] == res["ip"]
    ckpt = torch.load(run / "adapter" / "model.pth.tar-2", weights_only=True)
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(trainer.adapter.state_dict()[key], value, rtol=0, atol=0)

    # the trained adapter evaluated directly on the IP label space gives the cross-evaluated IP accuracy
    ip_dir = tmp_path / "ip"
    run_train(train_argv(toy_root, ip_dir, TRAINER, "DATASET.SUB_CLASSES", "IP",
                         extra=("--eval-only", "--model-dir", str(run))))
    res3 = json.loads((ip_dir / "results.json").read_text())
    assert res3["sub_classes"] == "IP" and res3["accuracy"] == res["ip"]


def test_bad_ratio_is_rejected(toy_root, tmp_path):
    with pytest.raises(ValueError, match="RATIO"):
        build(toy_root, tmp_path, TRAINER, "TRAINER.CLIP_ADAPTER.RATIO", "1.5")
