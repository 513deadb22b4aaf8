"""What real CoOp-family descendants (KgCoOp, TaskRes, DAPT, ...) use of OpenAI's ``clip.model`` beyond
CoOp's own files, checked against independent computations on ``openai-tiny``:

* the image tower step by step, as visual-prompt trainers (DAPT, VPT-style) write it: ``conv1``, class
  and positional embeddings, ``ln_pre``, then ``visual.transformer`` on *sequence-first* input,
  ``ln_post``, ``proj`` -- against open_clip's batch-first modules of the same weights; and a small
  visual-prompt trainer of ours, trained through ``train.py``, evaluating what open_clip computes;
* the text blocks one by one (``transformer.resblocks`` of OpenAI blocks, each sequence-first and
  causally masked by itself), ``resblocks`` callable as OpenAI's ``nn.Sequential``;
* OpenAI's constructors and helpers descendants call: ``Transformer(width, layers, heads, attn_mask)``
  loading the text tower's weights, ``CLIP.build_attention_mask``, ``convert_weights`` on the
  OpenAI-layout image tower.

HOME points into tmp; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import configs
from clip import clip as oai
from clip import load_clip
from clip import model as oai_model
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from tests.helpers import run_train, train_argv, trainer_config

TINY = "openai-tiny"
TOL = 1e-5
N_VIS = 2  # visual prompt tokens of the client trainer


def _weights(home: Path) -> Path:
    return home / ".cache" / "clip" / Path(oai._MODELS[TINY]).name


def _openai(home: Path) -> oai_model.CLIP:
    """The OpenAI-layout model, fp32, as a descendant's ``load_clip_to_cpu`` + ``.float()`` gives it."""
    return oai.build_model(oai.load_state_dict(_weights(home))).float()


def _open_clip(home: Path) -> nn.Module:
    """The same weights as a plain open_clip model (batch-first transformers): the independent side."""
    cfg = configs.build_cfg(opts=["MODEL.BACKBONE.NAME", TINY, "MODEL.BACKBONE.WEIGHTS", str(_weights(home)),
                                  "MODEL.BACKBONE.QUICK_GELU", "true"])
    return load_clip(cfg, "cpu").model.eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _reference_image_features(visual: nn.Module, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """open_clip's ViT on its own batch-first modules, with ``prompts [P, W]`` inserted after the class
    token (no prompt: ``encode_image``)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls_token = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls_token, x], dim=1) + visual.positional_embedding)
    x = torch.cat([x[:, :1], prompts.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    x = visual.transformer(x)  # batch-first in open_clip
    return visual.ln_post(x[:, 0]) @ visual.proj


# ------------------------------------------------------------------------------------- image tower
def test_visual_transformer_runs_sequence_first_as_openais(home):
    model, reference = _openai(home), _open_clip(home)
    visual = model.visual
    assert visual.input_resolution == 32 and visual.output_dim == 32
    images = _images()
    prompts = torch.randn(N_VIS, visual.conv1.weight.shape[0], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # a visual-prompt trainer's forward: OpenAI's attributes, transformer on [L, N, D]
        x = visual.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = visual.ln_pre(x + visual.positional_embedding)
        for extra, expected in ((None, reference.encode_image(images)),
                                (prompts, _reference_image_features(reference.visual, images, prompts))):
            h = x if extra is None else torch.cat([x[:, :1], extra.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
            h = visual.transformer(h.permute(1, 0, 2)).permute(1, 0, 2)
            ours = visual.ln_post(h[:, 0, :]) @ visual.proj
            assert (ours - expected).abs().max() <= TOL
        assert (model.encode_image(images) - reference.encode_image(images)).abs().max() <= TOL


def test_convert_weights_makes_the_openai_image_projection_fp16(home):
    model = _openai(home)
    assert model.visual.proj.dtype == torch.float32
    oai_model.convert_weights(model)  # CoOp's zsclip.py calls it on a loaded model
    assert model.visual.proj.dtype == torch.float16 and model.text_projection.dtype == torch.float16
    assert model.visual.conv1.weight.dtype == torch.float16 and model.dtype == torch.float16
    assert model.visual.class_embedding.dtype == torch.float32  # OpenAI converts neither embedding


# ------------------------------------------------------------------------------------- text tower
def _text_input(model: oai_model.CLIP, texts) -> torch.Tensor:
    tokens = oai.tokenize(texts)
    return (model.token_embedding(tokens) + model.positional_embedding).permute(1, 0, 2), tokens


def test_text_blocks_one_by_one_are_sequence_first_and_causal(home):
    model, reference = _openai(home), _open_clip(home)
    with torch.no_grad():
        x, tokens = _text_input(model, ["a photo of a cat.", "itap of a large dog."])
        whole = model.transformer(x)
        h = x
        for block in model.transformer.resblocks:  # e.g. a trainer adding deep prompts between blocks
            assert block.attn_mask is not None
            h = block(h)
        assert torch.equal(h, whole)
        assert torch.equal(model.transformer.resblocks(x), whole)  # OpenAI's nn.Sequential
        feats = model.ln_final(h.permute(1, 0, 2))[torch.arange(2), tokens.argmax(-1)] @ model.text_projection
        assert (feats - reference.encode_text(tokens)).abs().max() <= TOL
        # one block alone masks causally: changing later positions leaves earlier ones as they were
        block = model.transformer.resblocks[0]
        changed = x.clone()
        changed[6:] += 1.0
        assert torch.equal(block(x)[:6], block(changed)[:6])
        assert not torch.allclose(block(x)[6:], block(changed)[6:])


def test_openai_transformer_constructor_and_attention_mask(home):
    model = _openai(home)
    mask = model.build_attention_mask()
    ctx = model.context_length
    expected = torch.triu(torch.full((ctx, ctx), float("-inf")), diagonal=1)
    assert mask.shape == (ctx, ctx) and torch.equal(mask, expected)
    width, layers = model.transformer.width, model.transformer.layers
    heads = width // 64 or 1  # OpenAI's rule for the text tower
    fresh = oai_model.Transformer(width=width, layers=layers, heads=heads, attn_mask=mask)
    assert isinstance(fresh.resblocks, nn.Sequential) and len(fresh.resblocks) == layers
    fresh.load_state_dict(model.transformer.state_dict())  # OpenAI's parameter names both ways
    with torch.no_grad():
        x, _ = _text_input(model, ["a photo of a cat."])
        assert (fresh(x) - model.transformer(x)).abs().max() <= TOL
    block = oai_model.ResidualAttentionBlock(width, heads)  # OpenAI's signature, no mask: image-tower block
    assert block.attn_mask is None and block(x).shape == x.shape


# ------------------------------------------------------------------------------------- a drop-in trainer
class VisualPrompts(nn.Module):
    """``N_VIS`` learned tokens inserted after the class token of the image sequence."""

    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        init = torch.randn(N_VIS, width, generator=torch.Generator().manual_seed(seed)) * 0.02
        self.vis_ctx = nn.Parameter(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], self.vis_ctx.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)


class PromptedCLIP(nn.Module):
    """Frozen zero-shot class texts; the image path written against OpenAI's visual attributes."""

    def __init__(self, clip_model: oai_model.CLIP, classnames, seed: int) -> None:
        super().__init__()
        self.visual = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.prompt_learner = VisualPrompts(self.visual.conv1.weight.shape[0], seed)
        with torch.no_grad():
            text = clip_model.encode_text(oai.tokenize([f"a photo of a {c}." for c in classnames]))
        self.register_buffer("text_features", F.normalize(text, dim=-1))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(image)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = self.prompt_learner(v.ln_pre(x + v.positional_embedding))
        x = v.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return v.ln_post(x[:, 0, :]) @ v.proj

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image_features = F.normalize(self.encode_image(image), dim=-1)
        return self.logit_scale.exp() * image_features @ self.text_features.t()


@TRAINER_REGISTRY.register()
class VisualPromptClient(TrainerX):
    """A shallow visual-prompt trainer written the way DAPT's image encoder is (our own code)."""

    def build_model(self):
        clip_model = oai.build_model(oai.load_state_dict(oai._download(oai._MODELS[self.cfg.MODEL.BACKBONE.NAME])))
        clip_model.float()
        self.model = PromptedCLIP(clip_model, self.dm.dataset.classnames, self.cfg.SEED)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)


def test_visual_prompt_trainer_trains_and_evaluates_what_open_clip_computes(home, toy_root, tmp_path):
    out = tmp_path / "run"
    client = run_train(train_argv(toy_root, out, "VisualPromptClient", config=trainer_config("CoOp")))
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    learned = client.model.prompt_learner.vis_ctx.detach()
    assert not torch.allclose(learned, VisualPrompts(learned.shape[1], 1).vis_ctx)  # it trained
    reference = _open_clip(home)
    images = _images(4)
    client.set_model_mode("eval")
    with torch.no_grad():
        feats = F.normalize(_reference_image_features(reference.visual, images, learned), dim=-1)
        tokens = oai.tokenize([f"a photo of a {c}." for c in client.dm.dataset.classnames])
        texts = F.normalize(reference.encode_text(tokens), dim=-1)
        expected = reference.logit_scale.exp() * feats @ texts.t()
        scale = reference.logit_scale.exp()
        assert ((client.model(images) - expected).abs() / scale).max() <= TOL
