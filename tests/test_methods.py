"""scripts.methods: the registry's rules, config sets, labels and run-directory templates."""
from __future__ import annotations

import pytest

from scripts import methods
from scripts.fsnl_rule import fsnl_bs_lr


def test_rules_apply_only_when_asked_for() -> None:
    fsnl = methods.get_method("fsnl")
    paper = dict(fsnl.run_opts(4, methods.get_rule("paper"), num_classes=92))
    bs, lr = fsnl_bs_lr(92, 4)
    assert paper["DATALOADER.TRAIN_X.BATCH_SIZE"] == str(bs) and float(paper["OPTIM.LR"]) == pytest.approx(lr)
    assert paper["OPTIM.MAX_EPOCH"] == "200" and paper["TRAIN.CHECKPOINT_FREQ"] == "10"
    mini = dict(fsnl.run_opts(4, methods.get_rule("mini"), num_classes=92))
    assert mini["OPTIM.MAX_EPOCH"] == "50" and float(mini["OPTIM.LR"]) == pytest.approx(8 * lr)
    # Rule none: only what makes the run the right cell; the config file decides everything else.
    assert fsnl.run_opts(4, methods.get_rule("none")) == [("DATASET.NUM_SHOTS", "4"), ("DATASET.SUB_CLASSES", "OOP")]
    assert methods.default_rule("mini", None, None).name == "mini"
    assert methods.default_rule("paper", "my.yaml", None).name == "none"
    assert methods.default_rule("paper", "my.yaml", "paper").name == "paper"
    with pytest.raises(ValueError, match="unknown rule"):
        methods.get_rule("fast")


def test_configs_per_shot_count() -> None:
    taskres = methods.get_method("taskres")
    assert [taskres.config_for("paper", k) for k in (1, 4, 8, 16)] == [
        "adam_lr2e-3_B256_ep100", "adam_lr2e-3_B256_ep100", "adam_lr2e-3_B256_ep200", "adam_lr2e-3_B256_ep200"]
    assert taskres.config_for("mini", 16) == "mini_cpu"
    assert methods.get_method("fsnl_ablation2").config_trainer == "FSNL_openclip"


def test_labels_by_longest_prefix() -> None:
    order = {name: i for i, name in enumerate(methods.METHODS)}
    assert methods.label_for("ZeroshotCLIP2_openclip")[1] == "OpenCLIP (zero-shot, ensemble)"
    assert methods.label_for("ZeroshotCLIP_openclip")[1] == "OpenCLIP (zero-shot)"
    assert methods.label_for("ZeroshotCLIP")[1] == "Zero-shot CLIP"
    assert methods.label_for("FSNL_openclip_USE_CAPTION_True") == (order["fsnl"], "FSNL")
    assert methods.label_for("FSNL_openclip_Ablation1_USE_CAPTION_True")[1] == "FSNL (caption loss only)"
    assert methods.label_for("CoCoOp_openclip_mini_cpu")[1] == "CoCoOp"
    assert methods.label_for("something_else")[1] is None


def test_run_dir_from_the_resolved_config() -> None:
    cfg = {"OPTIM": {"LR": 0.000575, "MAX_EPOCH": 200}, "DATALOADER": {"TRAIN_X": {"BATCH_SIZE": 368}},
           "TRAINER": {"FSNL": {"USE_CAPTION": True}}}
    parts = methods.run_dir_parts(methods.get_method("fsnl"), cfg, "Animals92_42", 4, "vit_b16_ep200_standard")
    assert parts == ["Animals92_42", "shots_4", "train", "FSNL_openclip_USE_CAPTION_True", "MEPOCH_200_BS_368_LR_0.000575"]
