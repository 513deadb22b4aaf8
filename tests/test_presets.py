"""A trainer's backbone preset (``preset_cfg``, e.g. ``OpenAI_FSNL``) fills only what the user's files
leave alone: a value the file sets wins, the log says so, and the command line wins over both."""
from __future__ import annotations

import configs
from clip import resolve_backbone
from tests.helpers import trainer_config


def test_preset_applies_when_no_file_sets_the_backbone():
    cfg = configs.build_cfg(trainer="OpenAI_FSNL")
    spec = resolve_backbone(cfg)  # checks the tag without building or downloading anything
    assert (spec.name, spec.weights, spec.weights_kind, spec.quick_gelu) == ("ViT-B-16", "openai", "tag", True)
    assert cfg.MODEL.BACKBONE.QUICK_GELU == "true"


def test_user_yaml_wins_over_the_preset_and_the_log_says_so(caplog):
    with caplog.at_level("INFO", logger="configs"):
        cfg = configs.build_cfg(trainer="OpenAI_FSNL",
                                config=str(trainer_config("FSNL_openclip", "vit_b16_ep200_standard")))
    assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WEIGHTS) == ("ViT-B-16", "laion400m_e32")
    # the preset's QUICK_GELU "true" belongs with its openai weights: dropped with the group
    assert cfg.MODEL.BACKBONE.QUICK_GELU == "auto"
    assert any("MODEL.BACKBONE.WEIGHTS" in r.getMessage() and "wins over OpenAI_FSNL's preset 'openai'"
               in r.getMessage() for r in caplog.records)


def test_command_line_still_wins_over_the_preset():
    cfg = configs.build_cfg(trainer="OpenAI_FSNL", backbone="ViT-L-14", opts=["MODEL.BACKBONE.WEIGHTS", "none"])
    assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WEIGHTS) == ("ViT-L-14", "none")
