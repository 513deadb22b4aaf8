"""The original CoOp trainer names resolve to the OpenCLIP trainers on OpenAI ViT-B/16 (no weights loaded)."""
from __future__ import annotations

import json

import pytest

import configs
from clip import resolve_backbone, resolve_precision
from dassl.engine import TRAINER_REGISTRY
from tests.helpers import run_train, train_argv, trainer_config
from trainers.cocoop import CoCoOp_openclip
from trainers.coop import CoOp_openclip
from trainers.zsclip import ZeroshotCLIP2_openclip, ZeroshotCLIP_openclip

ALIASES = {
    "CoOp": (CoOp_openclip, "COOP"),
    "CoCoOp": (CoCoOp_openclip, "COCOOP"),
    "ZeroshotCLIP": (ZeroshotCLIP_openclip, "COOP"),
    "ZeroshotCLIP2": (ZeroshotCLIP2_openclip, "COOP"),
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_resolves_to_openai_vit_b16(alias):
    parent, prec_key = ALIASES[alias]
    cls = TRAINER_REGISTRY.get(alias)
    assert issubclass(cls, parent) and cls is not parent
    cfg = configs.build_cfg(trainer=alias)
    spec = resolve_backbone(cfg)  # checks the tag without building or downloading anything
    assert (spec.name, spec.weights, spec.weights_kind, spec.quick_gelu) == ("ViT-B-16", "openai", "tag", True)
    assert cfg.MODEL.BACKBONE.QUICK_GELU == "true"
    assert getattr(cfg.TRAINER, prec_key).PREC == "fp16"  # CoOp's default setting...
    assert resolve_precision(getattr(cfg.TRAINER, prec_key).PREC, "cpu").name == "fp32"  # ...run fp32 on CPU


def test_user_yaml_wins_over_the_preset_and_the_log_says_so(caplog):
    # The OpenCLIP yaml names ViT-B-16 / laion400m_e32: a value the user's file sets is never silently
    # replaced by the trainer's preset (the preset fills only what the file leaves alone).
    with caplog.at_level("INFO", logger="configs"):
        cfg = configs.build_cfg(trainer="CoOp", config=str(trainer_config("CoOp_openclip", "vit_b16_ep200_ctxv1")))
    assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WEIGHTS) == ("ViT-B-16", "laion400m_e32")
    # the preset's QUICK_GELU "true" belongs with its openai weights: dropped with the group
    assert cfg.MODEL.BACKBONE.QUICK_GELU == "auto"
    assert cfg.TRAINER.COOP.N_CTX == 4  # the rest of the yaml is kept
    assert any("MODEL.BACKBONE.WEIGHTS" in r.getMessage() and "wins over CoOp's preset 'openai'" in r.getMessage()
               for r in caplog.records)


def test_command_line_still_wins_over_the_preset():
    cfg = configs.build_cfg(trainer="CoOp", backbone="ViT-L-14", opts=["MODEL.BACKBONE.WEIGHTS", "none"])
    assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WEIGHTS) == ("ViT-L-14", "none")


def test_alias_runs_end_to_end(toy_root, tmp_path):
    out = tmp_path / "zs"
    run_train(train_argv(
        toy_root, out, "ZeroshotCLIP",
        "MODEL.BACKBONE.NAME", "test-tiny", "MODEL.BACKBONE.WEIGHTS", "none", "MODEL.BACKBONE.QUICK_GELU", "auto",
        extra=("--eval-only",), config=trainer_config("ZeroshotCLIP_openclip"), shots=None,
    ))
    results = json.loads((out / "results.json").read_text())
    assert results["trainer"] == "ZeroshotCLIP" and results["backbone"] == "test-tiny"
    assert set(results["subsets"]) == {"OOP", "IP"}
