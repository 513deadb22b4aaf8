"""OpenAI CLIP's API inside ``clip/`` (``clip.clip``, ``clip.model``, ``clip.simple_tokenizer``) and the
CoOp-idiom trainers on it: a CoOp-family client trainer (``tests/coop_client.py``) runs through
``train.py`` and agrees with ``CoOp_openclip`` on the same weights; ``_download``'s preference order.

Weights: ``openai-tiny`` (``clip/model_configs/openai-tiny.json``), a seeded random OpenAI-format
model written into a temporary ``~/.cache/clip``; HOME points into tmp in every test, nothing is
downloaded.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import configs
import train
import trainers
from clip import BackboneNotFoundError, load_clip, register_repo_configs, weights_identity
from clip import clip as oai
from clip import model as oai_model
from clip.simple_tokenizer import SimpleTokenizer
from dassl.engine import TRAINER_REGISTRY, expected_fingerprint
from tests import coop_client  # noqa: F401  (registers CoOpClient)
from tests.helpers import REPO, build, run_train, train_argv, trainer_config
from trainers import coop, imagenet_templates

TINY = "openai-tiny"
TOL = 1e-5


def tiny_file(home: Path) -> Path:
    return home / ".cache" / "clip" / os.path.basename(oai._MODELS[TINY])


def open_clip_tiny(path: Path) -> torch.nn.Module:
    cfg = configs.build_cfg(opts=["MODEL.BACKBONE.NAME", TINY, "MODEL.BACKBONE.WEIGHTS", str(path),
                                  "MODEL.BACKBONE.QUICK_GELU", "true"])
    return load_clip(cfg, "cpu").model


# ------------------------------------------------------------------------------------- tokenizer
def test_tokenize_matches_open_clip_ids():
    texts = ["a photo of a dog.", "Mr. Mime, a type of pokemon!", "  lots   of\tspace "]
    ids = oai.tokenize(texts)
    assert ids.dtype == torch.long and ids.shape == (3, 77)
    assert torch.equal(ids, open_clip.tokenize(texts).long())
    assert torch.equal(oai.tokenize("a photo of a dog."), ids[:1])
    with pytest.raises(RuntimeError, match="too long"):
        oai.tokenize("word " * 80)
    cut = oai.tokenize("word " * 80, truncate=True)[0]
    assert cut[-1].item() == 49407 and (cut != 0).all()


def test_simple_tokenizer_speaks_openai_special_tokens():
    tok = SimpleTokenizer()
    assert tok.encoder["<|startoftext|>"] == 49406 and tok.encoder["<|endoftext|>"] == 49407
    assert tok.encode("<|startoftext|>a dog<|endoftext|>") == [49406, *tok.encode("a dog"), 49407]
    assert tok.decode(tok.encode("Hello World!")).strip() == "hello world !"


# ------------------------------------------------------------------------------------- model
def test_build_model_has_openai_layout_and_open_clip_values(home):
    path = tiny_file(home)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = oai.build_model(state)
    assert set(model.state_dict()) == set(state)  # OpenAI-format keys both ways
    assert model.dtype == torch.float16  # OpenAI's mixed precision until .float()
    assert model.visual.input_resolution == 32 and model.visual.output_dim == 32
    assert model.ln_final.weight.shape[0] == 64 and model.transformer.width == 64
    model.float()
    reference = open_clip_tiny(path)
    tokens = oai.tokenize(["a photo of a cat.", "itap of a dog."])
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= TOL
        assert (model.encode_image(images) - reference.encode_image(images)).abs().max() <= TOL
        # the transformer is sequence-first and masks causally without being told to
        x = model.token_embedding(tokens) + model.positional_embedding
        lnd = model.transformer(x.permute(1, 0, 2))
        assert lnd.shape == (77, 2, 64)
        prefix = model.transformer(x.permute(1, 0, 2)[:9])
        assert (prefix - lnd[:9]).abs().max() <= TOL
        logits_img, logits_txt = model(images, tokens)
    assert torch.equal(logits_img.t(), logits_txt)


def test_jit_archive_and_plain_state_dict_both_load(home, tmp_path):
    plain = tiny_file(home)
    with pytest.raises(RuntimeError):
        torch.jit.load(str(plain), map_location="cpu")  # CoOp then falls back to torch.load
    model = oai.build_model(oai.load_state_dict(plain)).float()
    archive = tmp_path / "tiny.jit.pt"
    tokens = oai.tokenize(["a photo of a cat."])
    traced = torch.jit.trace_module(model, {"encode_text": (tokens,)})
    torch.jit.save(traced, str(archive))
    state = torch.jit.load(str(archive), map_location="cpu").eval().state_dict()
    rebuilt = oai.build_model(state).float()
    with torch.no_grad():
        assert (rebuilt.encode_text(tokens) - model.encode_text(tokens)).abs().max() <= TOL
    # reading OpenAI's format is ours to do quietly: torch's deprecation of it printed twice per run
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ours = oai.load_state_dict(archive)
    assert ours.keys() == state.keys() and all(torch.equal(ours[k], state[k]) for k in state)


def test_load_returns_model_and_preprocess(home):
    model, preprocess = oai.load(TINY, device="cpu")
    assert isinstance(model, oai_model.CLIP) and model.dtype == torch.float32  # CPU: fp32, as OpenAI's
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    assert TINY in oai.available_models() and "ViT-B/16" in oai.available_models()
    with pytest.raises(BackboneNotFoundError, match="not found"):
        oai.load("ViT-Z/99", device="cpu")


# ------------------------------------------------------------------------------------- _download
def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_download_prefers_a_verified_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    data = b"weights"
    good = f"https://host/models/{hashlib.sha256(data).hexdigest()}/M.pt"
    cached = _write(tmp_path / ".cache" / "clip" / "M.pt", data)
    assert oai._download(good) == str(cached)  # default root: ~/.cache/clip
    bad = f"https://host/models/{'0' * 64}/M.pt"
    with pytest.raises(BackboneNotFoundError):  # a file whose content is not the URL's is never used
        oai._download(bad)
    assert oai._download(good, root=str(tmp_path / ".cache" / "clip")) == str(cached)


def test_download_order_local_file_then_cache_then_open_clip(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(oai.WEIGHTS_ENV, raising=False)
    url = oai._MODELS["ViT-B/16"]
    calls = []

    def offline(cfg, *args, **kwargs):
        calls.append(cfg["url"])
        raise OSError("offline")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(BackboneNotFoundError) as e:
        oai._download(url)
    assert calls == [url] and "\n" not in str(e.value) and "ViT-B-16.pt" in str(e.value)
    assert not (tmp_path / ".cache").exists()  # nothing written on failure

    local = _write(tmp_path / "mine" / "ViT-B-16.pt", b"local")
    hub = tmp_path / "hub" / "open_clip_model.safetensors"
    hub.parent.mkdir()
    save_file({"w": torch.arange(3.0)}, str(hub))
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda cfg, *a, **k: str(hub))
    monkeypatch.setenv(oai.WEIGHTS_ENV, str(local.parent))  # the user's folder holding <file> wins ...
    assert oai._download(url) == str(local)
    monkeypatch.setenv(oai.WEIGHTS_ENV, str(local))  # ... and so does the file itself
    assert oai._download(url) == str(local)

    monkeypatch.delenv(oai.WEIGHTS_ENV)
    converted = oai._download(url)  # then open_clip's weights, made torch-readable
    assert converted.startswith(str(tmp_path / ".cache" / "clip")) and converted.endswith(".pt")
    assert torch.equal(torch.load(converted, weights_only=True)["w"], torch.arange(3.0))

    with caplog.at_level("WARNING", logger="clip.clip"):
        _write(tmp_path / ".cache" / "clip" / "ViT-B-16.pt", b"not OpenAI's file")
        assert oai._download(url) == converted  # a cache file with the wrong SHA-256 is skipped
    assert any("does not match the SHA-256" in r.getMessage() for r in caplog.records)


def test_offline_openai_backbone_is_one_error_line(toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(oai.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    out = tmp_path / "out"
    code = train.cli(train_argv(toy_root, out, "CoOp", "MODEL.BACKBONE.NAME", "ViT-B/16", "INPUT.SIZE", "(224, 224)"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: no weights for CLIP 'ViT-B/16'")
    assert not (out / "prompt_learner").exists()


# ------------------------------------------------------------------------------------- trainers
def test_discovery_finds_every_trainer_module_in_sorted_order():
    names = trainers.trainer_module_names()
    assert names == sorted(names) and not any(n.startswith("_") for n in names)
    assert {"coop", "cocoop", "zsclip", "coop_openclip", "cocoop_openclip", "zsclip_openclip"} <= set(names)
    assert "aliases" not in names
    for name in ("CoOp", "CoCoOp", "ZeroshotCLIP", "ZeroshotCLIP2", "CoOp_openclip", "CoCoOp_openclip",
                 "ZeroshotCLIP_openclip", "ZeroshotCLIP2_openclip"):
        assert name in TRAINER_REGISTRY.registered_names()
    assert TRAINER_REGISTRY.get("CoOp").__module__ == "trainers.coop"


DROPPED_IN = '''
from yacs.config import CfgNode as CN
from dassl.engine import TRAINER_REGISTRY, TrainerX


def extend_cfg(cfg):  # pasted from a CoOp-family train.py: re-creates CoCoOp's block with 3 keys
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"
    cfg.TRAINER.DROPPEDIN = CN()
    cfg.TRAINER.DROPPEDIN.W = 8.0


@TRAINER_REGISTRY.register()
class DroppedIn(TrainerX):
    pass
'''


def test_a_dropped_in_trainer_registers_and_declares_keys_additively(tmp_path, monkeypatch):
    (tmp_path / "zz_dropped_in.py").write_text(DROPPED_IN)
    monkeypatch.setattr(trainers, "__path__", [*trainers.__path__, str(tmp_path)])
    assert trainers.trainer_module_names()[-1] == "zz_dropped_in"
    cfg = configs.build_cfg()  # extend_cfg → add_trainer_configs → the hooks
    assert "DroppedIn" in TRAINER_REGISTRY.registered_names()
    assert cfg.TRAINER.DROPPEDIN.W == 8.0
    assert cfg.TRAINER.COCOOP.TEXT_CHUNK == 4096  # the project's key survives the re-created block
    assert cfg.TRAINER.COOP.CLASS_TOKEN_POSITION == "end"


def _images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _openclip_trainer(root, out, trainer: str, path: Path, *opts: str, **kwargs):
    """The OpenCLIP trainer on the same ``openai-tiny`` weights file (QuickGELU, as OpenAI's)."""
    return build(root, out, trainer, "MODEL.BACKBONE.NAME", TINY, "MODEL.BACKBONE.WEIGHTS", str(path),
                 "MODEL.BACKBONE.QUICK_GELU", "true", *opts, **kwargs)


def test_coop_client_runs_via_train_py_and_matches_coop_openclip(home, toy_root, tmp_path):
    out = tmp_path / "client"
    client = run_train(train_argv(toy_root, out, "CoOpClient", config=trainer_config("CoOp")))
    results = json.loads((out / "results.json").read_text())
    # A plain TrainerX (as CoOp's files are) gets the engine's protocol only: its own subset. The
    # LAION-Beyond OOP->IP cross-evaluation is the SubsetEvaluation mixin of the project's trainers.
    assert results["trainer"] == "CoOpClient" and results["sub_classes"] == "OOP" and "ip" not in results
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()

    reference = _openclip_trainer(toy_root, tmp_path / "oc", "CoOp_openclip", tiny_file(home))
    images = _images()
    with torch.no_grad():  # step 0: same init phrase, same weights
        fresh = build(toy_root, tmp_path / "fresh", "CoOpClient", config=trainer_config("CoOp"))
        fresh.set_model_mode("eval")
        assert (fresh.model.text_features() - reference.model.class_text_features()).abs().max() <= TOL
        scale = fresh.model.logit_scale.exp()
        assert ((fresh.model(images) - reference.model_inference(images)).abs() / scale).max() <= TOL
        # the trained context means the same in both implementations
        reference.import_state(client.export_state(), meta=client.checkpoint_meta())
        reference.before_test()
        client.set_model_mode("eval")
        ours, theirs = client.model.text_features(), reference.model.class_text_features()
        assert (ours - theirs).abs().max() <= TOL
        assert ((client.model(images) - reference.model_inference(images)).abs() / scale).max() <= TOL
    assert not torch.allclose(client.model.prompt_learner.ctx, fresh.model.prompt_learner.ctx)

    # CoOp's own load_model override (best → explicit epoch) still drives --eval-only
    evaluated = run_train(train_argv(toy_root, tmp_path / "eval", "CoOpClient", config=trainer_config("CoOp"),
                                     extra=("--eval-only", "--model-dir", str(out), "--load-epoch", "2")))
    assert torch.equal(evaluated.model.prompt_learner.ctx, client.model.prompt_learner.ctx)


@pytest.mark.parametrize("name", ["CoOp", "CoCoOp", "ZeroshotCLIP", "CoOpClient"])
def test_openai_trainers_fingerprint_the_weight_file_they_load(home, toy_root, tmp_path, monkeypatch, name):
    """The OpenAI-CLIP trainers -- and a CoOp-family file without an identity hook (CoOpClient) --
    record the content of the file ``clip._download`` resolves, not ``weights: null``; rewriting that
    file makes the same command another run."""
    config = trainer_config("CoOp" if name == "CoOpClient" else name)
    shots = None if name.startswith("Zeroshot") else 2

    def expected() -> dict:
        argv = train_argv(toy_root, tmp_path / "run", name, config=config, shots=shots)
        return expected_fingerprint(train.setup_cfg(train.parse_args(argv)))

    own_home = tmp_path / "home"
    cached = own_home / ".cache" / "clip" / tiny_file(home).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_file(home).read_bytes())
    monkeypatch.setenv("HOME", str(own_home))
    before = expected()
    assert before["weights"] == {"kind": "file", "model": TINY, "size": cached.stat().st_size,
                                 "sha256": hashlib.sha256(cached.read_bytes()).hexdigest()}
    state = torch.load(cached, weights_only=True)
    state["ln_final.weight"] = state["ln_final.weight"] + 1
    torch.save(state, cached)
    after = expected()
    assert after["weights"]["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert after["id"] != before["id"] and after["config_digest"] == before["config_digest"]


@pytest.mark.parametrize("position", ["middle", "front"])
def test_coop_prompt_positions_match_coop_openclip(home, toy_root, tmp_path, position):
    opts = ("TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "3", "TRAINER.COOP.CLASS_TOKEN_POSITION", position)
    ours = build(toy_root, tmp_path / "a", "CoOp", *opts, config=trainer_config("CoOp"))
    reference = _openclip_trainer(toy_root, tmp_path / "b", "CoOp_openclip", tiny_file(home), *opts)
    reference.import_state(ours.export_state(), meta=ours.checkpoint_meta())
    with torch.no_grad():
        assert (ours.model.text_features() - reference.model.class_text_features()).abs().max() <= TOL


def test_cocoop_matches_cocoop_openclip(home, toy_root, tmp_path):
    ours = build(toy_root, tmp_path / "a", "CoCoOp", config=trainer_config("CoCoOp"))
    reference = _openclip_trainer(toy_root, tmp_path / "b", "CoCoOp_openclip", tiny_file(home),
                                  config=trainer_config("CoCoOp_openclip"))
    reference.import_state(ours.export_state(), meta=ours.checkpoint_meta())
    ours.set_model_mode("eval")
    images = _images(4)
    with torch.no_grad():
        diff = (ours.model(images) - reference.model_inference(images)).abs() / ours.model.logit_scale.exp()
    assert diff.max() <= TOL


@pytest.mark.parametrize("name", ["ZeroshotCLIP", "ZeroshotCLIP2"])
def test_zeroshot_matches_openclip_and_runs_eval_only(home, toy_root, tmp_path, name):
    out = tmp_path / "zs"
    ours = run_train(train_argv(toy_root, out, name, config=trainer_config(name), extra=("--eval-only",), shots=None))
    assert json.loads((out / "results.json").read_text())["trainer"] == name
    reference = _openclip_trainer(toy_root, tmp_path / "oc", f"{name}_openclip", tiny_file(home),
                                  config=trainer_config(f"{name}_openclip"), shots=None)
    images = _images()
    with torch.no_grad():
        theirs = reference.compute_text_features()
        assert (ours.text_features - theirs).abs().max() <= TOL
        mine = ours.model_inference(images)
        ref = reference.logit_scale * F.normalize(reference.encode_images(images), dim=-1) @ theirs.t()
    assert ((mine - ref).abs() / ours.clip_model.logit_scale.exp()).max() <= TOL
    again = run_train(train_argv(toy_root, tmp_path / "no_flag", name, config=trainer_config(name), shots=None))
    assert again.last_results["accuracy"] == ours.last_results["accuracy"]  # no --eval-only: evaluates


def test_repo_model_weights_are_seeded_and_keyed_by_config(tmp_path):
    register_repo_configs()
    a = oai._download(oai._MODELS[TINY], root=str(tmp_path / "a"))
    b = oai._download(oai._MODELS[TINY], root=str(tmp_path / "b"))
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert os.path.basename(a) == os.path.basename(oai._MODELS[TINY]) and "openai-tiny-" in os.path.basename(a)


@pytest.mark.parametrize("trainer,config", [
    ("CoOp", "vit_b16_ep50"), ("CoOp", "vit_b16"), ("CoOp", "rn50"), ("CoOp", "vit_b32"),
    ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1"), ("CoCoOp", "vit_b16_c16_ep10_batch1"), ("ZeroshotCLIP", "vit_b16"),
])
def test_coop_configs_keep_openai_backbone_names(trainer, config):
    cfg = configs.build_cfg(trainer=trainer, config=config)
    assert cfg.MODEL.BACKBONE.NAME in oai._MODELS  # OpenAI spelling kept (ViT-B/16)
    ident = weights_identity(cfg)  # what results and caches record: OpenAI's weights, QuickGELU
    assert (ident["kind"], ident["tag"], ident["quick_gelu"]) == ("tag", "openai", True)
    assert tuple(cfg.INPUT.SIZE) == (224, 224) and cfg.TRAINER.COOP.PREC == "fp16"


def test_openai_trainer_rejects_an_open_clip_name_in_one_line(toy_root, tmp_path, capsys):
    code = train.cli(train_argv(toy_root, tmp_path / "out", "CoOp", "MODEL.BACKBONE.NAME", "ViT-B-16",
                                config=trainer_config("CoOp")))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: MODEL.BACKBONE.NAME 'ViT-B-16' is not an OpenAI CLIP name") and "ViT-B/16" in err[0]


@pytest.mark.parametrize("opts,expected", [
    (("TRAINER.COOP.CLASS_TOKEN_POSITION", "left"), "TRAINER.COOP.CLASS_TOKEN_POSITION"),
    (("TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "0"), "TRAINER.COOP.N_CTX"),
])
def test_openai_coop_prompt_mistakes_are_one_line_up_front(toy_root, tmp_path, capsys, opts, expected):
    out = tmp_path / "out"
    code = train.cli(train_argv(toy_root, out, "CoOp", *opts, config=trainer_config("CoOp")))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {expected}"), err
    assert not out.exists()


@pytest.mark.parametrize("trainer,extra", [("CoOp", ()), ("CoCoOp", ()), ("ZeroshotCLIP", ("--eval-only",))])
def test_openai_trainer_rejects_a_weights_file_it_would_ignore(toy_root, tmp_path, capsys, trainer, extra):
    """clip.load finds OpenAI weights by name: a MODEL.BACKBONE.WEIGHTS file used to be ignored
    silently (rc 0, the random openai-tiny init) while results.json named that file as the weights."""
    finished = tmp_path / "finished.txt"
    finished.write_text("kept")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    code = train.cli(train_argv(toy_root, out, trainer, "MODEL.BACKBONE.WEIGHTS", str(weights), extra=extra,
                                config=trainer_config(trainer)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("error: MODEL.BACKBONE.WEIGHTS") and str(weights) in err[0] and oai.WEIGHTS_ENV in err[0]
    assert not out.exists() and finished.read_text() == "kept"


@pytest.mark.parametrize("name", ["CoOp", "CoCoOp"])
def test_openai_trainers_train_via_train_py_and_evaluate_like_openclip(home, toy_root, tmp_path, name):
    out = tmp_path / "run"
    ours = run_train(train_argv(toy_root, out, name, config=trainer_config(name)))
    results = json.loads((out / "results.json").read_text())
    # CoOp-idiom TrainerX files get the engine's protocol only (their own subset); the OOP->IP
    # cross-evaluation is the SubsetEvaluation mixin of the project's OpenCLIP trainers.
    assert results["trainer"] == name and results["sub_classes"] == "OOP" and "ip" not in results
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    assert results["fingerprint"]["weights"]["sha256"] == hashlib.sha256(tiny_file(home).read_bytes()).hexdigest()
    reference = _openclip_trainer(toy_root, tmp_path / "oc", f"{name}_openclip", tiny_file(home),
                                  config=trainer_config(f"{name}_openclip"))
    reference.import_state(ours.export_state(), meta=ours.checkpoint_meta())
    reference.test()
    assert reference.last_results["accuracy"] == pytest.approx(results["accuracy"], abs=1e-9)
    assert all(torch.isfinite(p).all() for p in ours.model.prompt_learner.parameters())


def test_each_openai_trainer_file_can_be_replaced_by_coops_alone():
    """Our coop/cocoop/zsclip.py import nothing from one another (shared helpers: _openai_clip), and
    offer what CoOp's own files import from their siblings and from clip/."""
    for name in ("coop", "cocoop", "zsclip"):
        tree = ast.parse((REPO / "trainers" / f"{name}.py").read_text())
        siblings = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
        assert siblings <= {"_openai_clip", "imagenet_templates"}, (name, siblings)
    assert callable(coop.load_clip_to_cpu)  # CoOp's zsclip.py: from .coop import load_clip_to_cpu
    assert len(imagenet_templates.IMAGENET_TEMPLATES) == 80 and len(imagenet_templates.IMAGENET_TEMPLATES_SELECT) == 7
    assert isinstance(imagenet_templates.IMAGENET_TEMPLATES_SELECT, list)  # CoOp's ZS2 does += [...]
    assert callable(oai_model.convert_weights)  # CoOp's zsclip.py: from clip.model import convert_weights


REDECLARED = '''
from dassl.engine import TRAINER_REGISTRY, TrainerX


def extend_cfg(cfg):  # as KgCoOp's train.py: CoOp's CTX_INIT re-declared as a bool
    cfg.TRAINER.COOP.CTX_INIT = False
    cfg.TRAINER.COOP.N_CTX = 4


@TRAINER_REGISTRY.register()
class Redeclares(TrainerX):
    pass
'''


def test_a_key_a_dropped_in_trainer_declares_with_another_type_is_named_in_the_error(tmp_path, monkeypatch):
    """KgCoOp's ``extend_cfg`` declares ``TRAINER.COOP.CTX_INIT = False`` and its yamls write ``True``;
    declarations only add keys, so the project's string default stays and the yaml failed with a bare
    type error. It now names the file that declared the bool and says what to write."""
    (tmp_path / "zz_redeclares.py").write_text(REDECLARED)
    monkeypatch.setattr(trainers, "__path__", [*trainers.__path__, str(tmp_path)])
    yaml_file = tmp_path / "kg.yaml"
    yaml_file.write_text("TRAINER:\n  COOP:\n    CTX_INIT: True\n")
    with pytest.raises(configs.ConfigError) as info:
        configs.build_cfg(trainer="Redeclares", config=str(yaml_file))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"trainer config file {yaml_file}: TRAINER.COOP.CTX_INIT must be of type str, got bool True")
    assert f"got bool True ({tmp_path / 'zz_redeclares.py'} declares it as bool False, but the first" in message
    assert message.endswith("write a str value)")
    # the same value on the command line gets the same explanation; the same type needs none
    with pytest.raises(configs.ConfigError, match="zz_redeclares.py declares it as bool False"):
        configs.build_cfg(trainer="Redeclares", opts=["TRAINER.COOP.CTX_INIT", "True"])
    assert configs.build_cfg(trainer="Redeclares", opts=["TRAINER.COOP.CTX_INIT", "a photo of a"]).TRAINER.COOP.CTX_INIT == "a photo of a"
    # a type mismatch no hook explains stays as it was
    with pytest.raises(configs.ConfigError) as plain:
        configs.build_cfg(trainer="Redeclares", opts=["TRAINER.COOP.N_CTX", "'x'"])
    assert str(plain.value) == "command-line overrides: TRAINER.COOP.N_CTX must be of type int, got str x"
