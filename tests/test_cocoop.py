"""CoCoOp: chunked B·C prompts equal the reference's per-image loop, step 0 equals zero-shot, training,
trainable parameters, checkpoint round trip and OOP→IP evaluation."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clip import TextEncoder
from tests.helpers import build, clip_logits, clip_text_features, run_train, train_argv

TRAINER = "CoCoOp_openclip"


class CallRecorder(nn.Module):
    """Wraps the text encoder and records the number of sequences (and prefixes) of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.sizes = []
        self.lengths = []
        self.prefixes = []

    @property
    def can_truncate(self):
        return self.inner.can_truncate

    def forward(self, embeds, eot):
        self.sizes.append(embeds.shape[0])
        self.lengths.append(embeds.shape[1])
        assert int(eot.max()) + 1 == embeds.shape[1]  # each call is cut at its own longest prompt
        return self.inner(embeds, eot)

    def prefix_states(self, prefixes):
        self.prefixes.append(tuple(prefixes.shape[:2]))
        return self.inner.prefix_states(prefixes)

    def encode_continuations(self, states, suffixes, rows, eot):
        p = states[0].shape[1]
        self.sizes.append(suffixes.shape[0])
        self.lengths.append(p + suffixes.shape[1])
        assert int(eot.max()) + 1 == p + suffixes.shape[1]  # each call is cut at its own longest prompt
        return self.inner.encode_continuations(states, suffixes, rows, eot)


def loop_logits(trainer, images):
    """The reference's forward: for each image, shift the context and encode the C prompts."""
    model, tok = trainer.clip.model, trainer.clip.tokenizer
    learner = trainer.prompt_learner
    names = [c.replace("_", " ") for c in trainer.dm.dataset.classnames]
    n = learner.n_ctx
    ids = tok(["a photo of a " + name + "." for name in names])
    encoder = TextEncoder(model)
    with torch.no_grad():
        emb = model.token_embedding(ids)
        prefix, suffix = emb[:, :1], emb[:, 1 + n:]
        feats = F.normalize(model.encode_image(images), dim=-1)
        rows = []
        for b in range(feats.shape[0]):
            shifted = learner.ctx + learner.meta_net(feats[b:b + 1])
            prompts = torch.cat([prefix, shifted.expand(len(names), -1, -1), suffix], dim=1)
            text = F.normalize(encoder(prompts, ids.argmax(dim=-1), truncate=False), dim=-1)
            rows.append(model.logit_scale.exp() * feats[b] @ text.t())
    return torch.stack(rows)


def test_chunked_prompts_equal_per_image_loop(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER, "TRAINER.COCOOP.TEXT_CHUNK", "7")
    learner = trainer.prompt_learner
    with torch.no_grad():  # make both the context and the image-conditioned shift matter
        learner.ctx.add_(0.05 * torch.randn_like(learner.ctx))
        learner.meta_net.linear2.weight.mul_(20.0)
    images = next(iter(trainer.test_loader))["img"]
    b = images.shape[0]
    expected = loop_logits(trainer, images)
    recorder = CallRecorder(trainer.model.text_encoder)
    trainer.model.text_encoder = recorder
    with torch.no_grad():
        trainer.before_test()
        got = trainer.model_inference(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the classes in groups of equal prompt length (independently: from the tokenised prompts)
    names = [n.replace("_", " ") for n in trainer.dm.dataset.classnames]
    ids = trainer.clip.tokenizer(["a photo of a " + name + "." for name in names])
    lengths = (ids.argmax(dim=-1) + 1).tolist()
    by_length = {v: lengths.count(v) for v in sorted(set(lengths))}
    assert 1 < len(by_length) <= 4, "the toy names should give a few prompt lengths"
    expected_sizes = []
    for count in by_length.values():  # whole images per call: as many as fit in 7 prompts, at least one
        per_call = max(1, 7 // count)
        expected_sizes += [per_call * count] * (b // per_call) + ([b % per_call * count] if b % per_call else [])
    assert recorder.sizes == expected_sizes and sum(expected_sizes) == b * len(names)
    # SOT + the 4 context positions ran once per image, not once per (image, class)
    assert recorder.prefixes == [(b, 5)] and trainer.model.prefix_len == 5
    recorder.sizes.clear()
    recorder.lengths.clear()
    trainer.model.text_chunk = 4096
    with torch.no_grad():
        torch.testing.assert_close(trainer.model_inference(images), expected, atol=1e-5, rtol=1e-5)
    # one batched call per length group, not one per image, each cut at its group's length
    assert recorder.sizes == [b * count for count in by_length.values()]
    assert recorder.lengths == list(by_length)


def test_per_image_prefix_gives_the_full_prompts_values_and_gradients(toy_root, tmp_path):
    """The cached per-image prefix (SOT + shifted context run once per image) against every (image,
    class) prompt run in full: same logits, same gradients for the context and the meta-net."""
    trainer = build(toy_root, tmp_path, TRAINER, "TRAINER.COCOOP.TEXT_CHUNK", "7")
    model, learner = trainer.model, trainer.prompt_learner
    with torch.no_grad():
        learner.ctx.add_(0.05 * torch.randn_like(learner.ctx))
        learner.meta_net.linear2.weight.mul_(20.0)
    feats = F.normalize(torch.randn(3, trainer.clip.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([0, 2, 1])
    outputs = {}
    for p in (model.prefix_len, 0):
        model.prefix_len = p
        learner.zero_grad()
        logits = model(feats)
        F.cross_entropy(18.0 * logits, labels).backward()
        outputs[p] = (logits.detach(), {n: q.grad.clone() for n, q in learner.named_parameters()})
    (cached, g_cached), (full, g_full) = outputs[5], outputs[0]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    for name, grad in g_full.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(g_cached[name], grad, atol=1e-5, rtol=1e-4)


def test_zero_shift_at_init_equals_zero_shot(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    assert trainer.prompt_learner.ctx.shape == (4, trainer.clip.text_width)
    with torch.no_grad():
        trainer.prompt_learner.meta_net.linear2.weight.zero_()
        trainer.prompt_learner.meta_net.linear2.bias.zero_()
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in trainer.dm.dataset.classnames]
    images = next(iter(trainer.test_loader))["img"]
    expected = clip_logits(trainer, images, clip_text_features(trainer, prompts))
    with torch.no_grad():
        got = trainer.model_inference(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_trainable_parameters_and_loss_decreases(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    learner = trainer.prompt_learner
    names = ["ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
             "meta_net.linear2.bias"]
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == names
    assert list(learner.state_dict()) == names
    d = trainer.clip.embed_dim
    assert learner.meta_net.linear1.weight.shape == (d // 16, d)
    assert learner.meta_net.linear2.weight.shape == (trainer.clip.text_width, d // 16)
    assert trainer.get_model_names() == ["prompt_learner"]
    assert not any(p.requires_grad for p in trainer.clip.model.parameters())
    optimised = {id(p) for g in trainer.optim.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in learner.parameters()}
    for group in trainer.optim.param_groups:
        group["lr"] = 0.5
    batch = next(iter(trainer.train_loader_x))
    trainer.num_batches, trainer.batch_idx = 100, 0
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in trainer.clip.model.parameters())
    with torch.no_grad():
        expected = F.cross_entropy(loop_logits(trainer, batch["img"]), batch["label"]).item()
    assert trainer.forward_backward(batch)["loss"] == pytest.approx(expected, rel=1e-4)


def test_round_trip_and_oop_to_ip(toy_root, tmp_path):
    out = tmp_path / "train"
    trainer = run_train(train_argv(toy_root, out, TRAINER))
    res = json.loads((out / "results.json").read_text())
    assert {"oop", "ip", "hmean"} <= set(res)
    ckpt = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    assert sorted(ckpt["state_dict"]) == sorted(trainer.prompt_learner.state_dict())
    evald = tmp_path / "eval"
    run_train(train_argv(toy_root, evald, TRAINER, extra=("--eval-only", "--model-dir", str(out))))
    again = json.loads((evald / "results.json").read_text())
    assert again["metrics"] == res["metrics"] and again["ip"] == res["ip"]
    # The IP number is the OOP-trained prompt learner on the IP names.
    ip = build(toy_root, tmp_path / "ip", TRAINER, "DATASET.SUB_CLASSES", "IP")
    ip.load_model(str(out))
    assert len(ip.dm.dataset.classnames) == 3
    assert ip.test() == pytest.approx(res["ip"])
    with pytest.raises(ValueError, match="N_CTX"):
        ip.load_state("prompt_learner", {**ckpt["state_dict"], "ctx": torch.zeros(2, ip.clip.text_width)}, {})
