"""Zero-shot baselines: logits against encode_text/encode_image by hand, the template ensemble,
superclass names, and the --eval-only run with OOP→IP results."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import build, clip_logits, clip_text_features, run_train, train_argv

ZS = "ZeroshotCLIP_openclip"
ZS2 = "ZeroshotCLIP2_openclip"
RUN = {"seed": 3, "shots": None}  # every zero-shot run here: all train images, seed 3
IMAGENET7 = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]


def test_zero_shot_logits_match_hand_computation(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, ZS, **RUN)
    assert trainer.get_model_names() == []
    names = [c.replace("_", " ") for c in trainer.dm.dataset.classnames]
    assert "sun bear" in names
    prompts = [f"a photo of {n}, a type of animal." for n in names]
    images = next(iter(trainer.test_loader))["img"]
    expected = clip_logits(trainer, images, clip_text_features(trainer, prompts))
    with torch.no_grad():
        trainer.before_test()
        got = trainer.model_inference(images)
        trainer.after_test()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ensemble_is_mean_of_normalised_template_features(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path / "a", ZS2, **RUN)
    names = [c.replace("_", " ") for c in trainer.dm.dataset.classnames]
    templates = IMAGENET7 + ["a photo of {}, a type of animal."]
    assert trainer.templates() == templates
    per_template = torch.stack([clip_text_features(trainer, [t.format(n) for n in names]) for t in templates])
    expected_text = F.normalize(per_template.mean(0), dim=-1)
    torch.testing.assert_close(trainer.compute_text_features(), expected_text, atol=1e-5, rtol=1e-5)
    # Small chunks give the same features (several tower calls instead of one).
    trainer.TEXT_CHUNK = 7
    torch.testing.assert_close(trainer.compute_text_features(), expected_text, atol=1e-5, rtol=1e-5)
    images = next(iter(trainer.test_loader))["img"]
    with torch.no_grad():
        trainer.before_test()
        got = trainer.model_inference(images)
    torch.testing.assert_close(got, clip_logits(trainer, images, expected_text), atol=1e-5, rtol=1e-5)
    # B26: a second trainer does not see a grown template list.
    again = build(toy_root, tmp_path / "b", ZS2, **RUN)
    assert again.templates() == templates


def test_superclass_names(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, ZS, "DATASET.USE_SUPERCLASS_F_ZS_TEST", "True", **RUN)
    assert list(trainer.dm.dataset.classnames) == ["insect", "mammal", "primate"]
    prompts = [f"a photo of {n}, a type of animal." for n in ("insect", "mammal", "primate")]
    torch.testing.assert_close(trainer.compute_text_features(), clip_text_features(trainer, prompts),
                               atol=1e-5, rtol=1e-5)
    assert 0.0 <= trainer.test() <= 100.0


@pytest.mark.parametrize("trainer_name", ["ZeroshotCLIP_openclip", "ZeroshotCLIP2_openclip"])
def test_eval_only_writes_oop_ip_hmean(toy_root, tmp_path, trainer_name):
    out = tmp_path / "run"
    run_train(train_argv(toy_root, out, trainer_name, extra=("--eval-only",), **RUN))
    res = json.loads((out / "results.json").read_text())
    assert res["trainer"] == trainer_name and res["sub_classes"] == "OOP"
    # IP accuracy equals a separate zero-shot evaluation on the IP label space.
    ip = build(toy_root, tmp_path / "ip", trainer_name, "DATASET.SUB_CLASSES", "IP", **RUN)
    assert res["ip"] == pytest.approx(ip.test())
    oop, ipv = res["oop"], res["ip"]
    expected = 0.0 if oop + ipv == 0 else 2 * oop * ipv / (oop + ipv)
    assert res["hmean"] == pytest.approx(expected)
    assert not (out / "prompt_learner").exists()


def test_train_without_eval_only_just_evaluates(toy_root, tmp_path):
    trainer = run_train(train_argv(toy_root, tmp_path, ZS, **RUN))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["accuracy"] == pytest.approx(trainer.last_results["accuracy"])
    assert "ip" in res and trainer.model_epoch == 0
    assert res["oop"] == pytest.approx(build(toy_root, tmp_path / "b", ZS, **RUN).test())
