"""clip.config / clip.loader: name and weight resolution, seeded init, weight files, precision."""
from __future__ import annotations

import json
import logging
import uuid

import open_clip
import pytest
import torch
from yacs.config import CfgNode as CN

from clip import (
    Precision,
    add_clip_config,
    autocast,
    load_clip,
    make_grad_scaler,
    normalize_model_name,
    parse_quick_gelu,
    register_repo_configs,
    resolve_backbone,
    resolve_precision,
)
from clip.pretrained import DEFAULT_WEIGHTS, REPO_ROOT


def make_cfg(name: str = "test-tiny", weights: str = "none", quick: str = "auto", seed: int = 0) -> CN:
    cfg = CN()
    cfg.SEED = seed
    add_clip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.WEIGHTS = weights
    cfg.MODEL.BACKBONE.QUICK_GELU = quick
    return cfg


@pytest.fixture(scope="module")
def tiny():
    return load_clip(make_cfg(), "cpu")


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------ config
def test_add_clip_config_defaults_and_merge():
    cfg = CN()
    add_clip_config(cfg)
    assert cfg.MODEL.BACKBONE.WEIGHTS == "laion400m_e32"
    assert cfg.MODEL.BACKBONE.QUICK_GELU == "auto"
    cfg.MODEL.BACKBONE.WEIGHTS = "none"
    add_clip_config(cfg)  # idempotent: keeps user values
    assert cfg.MODEL.BACKBONE.WEIGHTS == "none"
    cfg.merge_from_list(["MODEL.BACKBONE.QUICK_GELU", "true"])
    assert parse_quick_gelu(cfg.MODEL.BACKBONE.QUICK_GELU) is True


@pytest.mark.parametrize("value,expected", [
    ("auto", None), ("AUTO", None), (None, None), ("true", True), (True, True), ("False", False),
    (False, False), ("0", False),
])
def test_parse_quick_gelu(value, expected):
    assert parse_quick_gelu(value) is expected


def test_parse_quick_gelu_rejects_garbage():
    with pytest.raises(ValueError, match="QUICK_GELU"):
        parse_quick_gelu("sometimes")


# ------------------------------------------------------------------------------------------ names
def test_normalize_model_name():
    assert normalize_model_name("ViT-B/16") == "ViT-B-16"
    assert normalize_model_name(" ViT-L/14 ") == "ViT-L-14"
    assert normalize_model_name("hf-hub:org/repo") == "hf-hub:org/repo"


def test_repo_configs_registered_once():
    stems = register_repo_configs()
    register_repo_configs()
    assert "test-tiny" in stems
    assert open_clip.list_models().count("test-tiny") == 1


def test_register_new_config_file(tmp_path):
    stem = f"tmp-{uuid.uuid4().hex[:8]}"
    with open(REPO_ROOT / "clip" / "model_configs" / "test-tiny.json") as f:
        data = json.load(f)
    (tmp_path / f"{stem}.json").write_text(json.dumps(data))
    assert stem not in open_clip.list_models()
    register_repo_configs(tmp_path)
    register_repo_configs(tmp_path)
    assert open_clip.list_models().count(stem) == 1


def test_resolve_tag_and_openai_spelling():
    spec = resolve_backbone(make_cfg("ViT-B/16", "laion400m_e32"))
    assert (spec.name, spec.weights_kind, spec.pretrained, spec.quick_gelu) == (
        "ViT-B-16", "tag", "laion400m_e32", False)


def test_quick_gelu_auto_follows_tag_and_config():
    # OpenAI weights were trained with QuickGELU: the tag's metadata says so
    assert resolve_backbone(make_cfg("ViT-B-32", "openai")).quick_gelu is True
    # a "-quickgelu" config carries the flag itself
    assert resolve_backbone(make_cfg("ViT-B-16-quickgelu", "none")).quick_gelu is True
    # explicit values override
    assert resolve_backbone(make_cfg("ViT-B-32", "openai", quick="false")).quick_gelu is False
    assert resolve_backbone(make_cfg("ViT-B-16", "laion400m_e32", quick="true")).quick_gelu is True


def test_default_weights_table():
    spec = resolve_backbone(make_cfg("test-tiny", "default"))
    assert spec.weights_kind == "none"
    spec = resolve_backbone(make_cfg("ViT-B-16", "default"))
    assert (spec.weights_kind, spec.pretrained) == ("tag", "laion400m_e32")
    for model, weights in DEFAULT_WEIGHTS.items():
        if model in open_clip.list_models() and "/" not in weights and weights != "none":
            assert open_clip.is_pretrained_cfg(model, weights), (model, weights)


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match="ViT-B-16"):
        resolve_backbone(make_cfg("ViT-B-61"))
    with pytest.raises(ValueError, match="test-tiny"):
        resolve_backbone(make_cfg("test-tin"))


def test_unknown_tag_lists_tags():
    with pytest.raises(ValueError, match="laion400m_e32") as err:
        resolve_backbone(make_cfg("ViT-B-16", "laion400m_e23"))
    assert "laion2b_s34b_b88k" in str(err.value)


def test_repo_model_with_tag_points_to_default():
    with pytest.raises(ValueError, match="'none'"):
        resolve_backbone(make_cfg("test-tiny", "laion400m_e32"))


def test_missing_weight_file():
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        resolve_backbone(make_cfg("test-tiny", "checkpoints/nowhere.safetensors"))


def test_schema_names_ignore_weights(tmp_path):
    spec = resolve_backbone(make_cfg("hf-hub:org/some-model", "laion400m_e32"))
    assert (spec.weights, spec.weights_kind, spec.pretrained) == ("hf-hub:org/some-model", "schema", None)
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        resolve_backbone(make_cfg("local-dir:missing-dir"))


# ------------------------------------------------------------------------------------------ loading
def test_loaded_fields(tiny):
    model = tiny.model
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert tiny.context_length == model.context_length == 77
    assert (tiny.embed_dim, tiny.text_width, tiny.vision_width) == (32, 32, 64)
    assert tiny.image_size == (32, 32)
    assert tiny.dtype == torch.float32 and tiny.precision.name == "fp32"
    assert tiny.num_params == sum(p.numel() for p in model.parameters())
    assert tiny.num_params * 4 < 8 * 2**20  # a few MB
    assert tiny.quick_gelu is False
    assert tiny.tokenizer("a b").shape == (1, 77)
    assert tuple(tiny.mean) == open_clip.OPENAI_DATASET_MEAN
    image = torch.zeros(2, 3, 32, 32)
    assert model.encode_image(image).shape == (2, 32)


def test_seeded_random_init_is_reproducible_and_isolated(tiny):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = load_clip(make_cfg(seed=0), "cpu")
    assert torch.equal(torch.rand(3), expected_next)  # caller's RNG stream untouched
    assert state_equal(tiny.model, again.model)
    other = load_clip(make_cfg(seed=1), "cpu")
    assert not torch.equal(tiny.model.token_embedding.weight, other.model.token_embedding.weight)


def test_quick_gelu_override_builds_quickgelu(tiny):
    loaded = load_clip(make_cfg(quick="true"), "cpu")
    assert loaded.quick_gelu is True
    acts = [m for m in loaded.model.modules() if isinstance(m, open_clip.transformer.QuickGELU)]
    assert acts


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weight_file_roundtrip(tiny, tmp_path, monkeypatch, suffix):
    other = load_clip(make_cfg(seed=7), "cpu")
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in other.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    monkeypatch.chdir(tmp_path)  # a relative path resolves against the cwd
    loaded = load_clip(make_cfg(weights=path.name, seed=0), "cpu")
    assert loaded.weights == str(path.resolve())
    assert state_equal(loaded.model, other.model)
    assert not state_equal(loaded.model, tiny.model)


def test_fp16_on_cpu_falls_back(caplog):
    with caplog.at_level(logging.WARNING, logger="clip.loader"):
        loaded = load_clip(make_cfg(), "cpu", "fp16")
    assert loaded.precision.name == "fp32"
    assert loaded.model.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float32
    assert "B30" in caplog.text


# ------------------------------------------------------------------------------------------ precision
def test_resolve_precision_table():
    cuda = torch.device("cuda")
    assert resolve_precision("fp32", cuda) == Precision("fp32", torch.float32, None, False)
    assert resolve_precision("FP16", cuda) == Precision("fp16", torch.float16, None, False)
    assert resolve_precision("amp", cuda) == Precision("amp", torch.float32, torch.float16, True)
    assert resolve_precision("bf16", "cuda:0") == Precision("bf16", torch.float32, torch.bfloat16, False)
    for name in ("fp16", "amp"):
        assert resolve_precision(name, "cpu").name == "fp32"
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp8", cuda)


def test_bf16_on_cpu_only_where_supported(monkeypatch):
    """bf16 is an opt-in on CPUs with native bfloat16; elsewhere it falls back to fp32 (B30)."""
    from clip import loader

    monkeypatch.setattr(loader, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("bf16", "cpu") == Precision("bf16", torch.float32, torch.bfloat16, False)
    monkeypatch.setattr(loader, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("bf16", "cpu").name == "fp32"


def test_autocast_helper():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(resolve_precision("fp32", "cpu"), "cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast(Precision("bf16", torch.float32, torch.bfloat16, False), "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    assert not make_grad_scaler(resolve_precision("amp", "cpu"), "cpu").is_enabled()


def test_local_dir_schema(tiny, tmp_path, monkeypatch):
    """``local-dir:`` brings config and weights itself (open_clip's layout), offline."""
    from safetensors.torch import save_file

    folder = tmp_path / "tiny_dir"
    folder.mkdir()
    with open(REPO_ROOT / "clip" / "model_configs" / "test-tiny.json") as f:
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.load(f)}))
    other = load_clip(make_cfg(seed=3), "cpu")
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    monkeypatch.chdir(tmp_path)
    loaded = load_clip(make_cfg("local-dir:tiny_dir", weights="laion400m_e32"), "cpu")
    assert loaded.name == f"local-dir:{folder.resolve()}"
    assert state_equal(loaded.model, other.model)
    assert loaded.context_length == 77 and not loaded.model.training
