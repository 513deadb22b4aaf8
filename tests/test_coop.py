"""CoOp: step-0 equals zero-shot, the vectorised prompts equal the reference's per-class construction,
training, trainable parameters, checkpoint round trip, OOP→IP, and the CSC label-space error."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clip import TextEncoder
from tests.helpers import build, clip_logits, clip_text_features, run_train, train_argv

TRAINER = "CoOp_openclip"


def reference_prompts(trainer, ctx, position):
    """The reference's construction: tokenise ``"X … X name."`` whole, cut prefix/suffix, loop over classes."""
    model, tok = trainer.clip.model, trainer.clip.tokenizer
    names = [c.replace("_", " ") for c in trainer.dm.dataset.classnames]
    n = ctx.shape[-2]
    ids = tok([" ".join(["X"] * n) + " " + name + "." for name in names])
    with torch.no_grad():
        emb = model.token_embedding(ids)
    prefix, suffix = emb[:, :1], emb[:, 1 + n:]
    prompts = []
    for i, name in enumerate(names):
        c = ctx[i] if ctx.dim() == 3 else ctx
        k = len(tok.encode(name))
        if position == "end":
            parts = [prefix[i], c, suffix[i]]
        elif position == "front":
            parts = [prefix[i], suffix[i, :k], c, suffix[i, k:]]
        else:
            half = n // 2
            parts = [prefix[i], c[:half], suffix[i, :k], c[half:], suffix[i, k:]]
        prompts.append(torch.cat(parts))
    return torch.stack(prompts), ids.argmax(dim=-1)


def test_ctx_init_step0_equals_zero_shot(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    assert trainer.prompt_learner.ctx.shape == (4, trainer.clip.text_width)
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in trainer.dm.dataset.classnames]
    images = next(iter(trainer.test_loader))["img"]
    expected = clip_logits(trainer, images, clip_text_features(trainer, prompts))
    with torch.no_grad():
        trainer.before_test()
        got = trainer.model_inference(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position,csc,n_ctx", [
    ("end", False, 5), ("middle", False, 5), ("front", False, 5),
    ("middle", True, 3), ("front", True, 2), ("end", True, 2), ("middle", False, 1),
])
def test_positions_match_per_class_construction(toy_root, tmp_path, position, csc, n_ctx):
    trainer = build(toy_root, tmp_path, TRAINER, "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", str(n_ctx),
                    "TRAINER.COOP.CSC", str(csc), "TRAINER.COOP.CLASS_TOKEN_POSITION", position)
    ctx = trainer.prompt_learner.ctx
    c = len(trainer.dm.dataset.classnames)
    assert tuple(ctx.shape) == ((c, n_ctx, trainer.clip.text_width) if csc else (n_ctx, trainer.clip.text_width))
    assert ctx.std().item() == pytest.approx(0.02, rel=0.5)
    expected, eot = reference_prompts(trainer, ctx.detach(), position)
    with torch.no_grad():
        got, got_eot = trainer.model.prompt_bank(trainer.prompt_learner.rows())
        # The bank keeps the positions up to the longest EOT (all the text encoder reads).
        assert got.shape[1] == int(eot.max()) + 1
        torch.testing.assert_close(got, expected[:, :got.shape[1]], atol=0, rtol=0)
        assert torch.equal(got_eot, eot)
        feats = F.normalize(TextEncoder(trainer.clip.model)(expected, eot, truncate=False), dim=-1)
        torch.testing.assert_close(trainer.compute_text_features(), feats, atol=1e-5, rtol=1e-5)


def test_only_context_is_trained_and_loss_decreases(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    assert [n for n, p in trainer.prompt_learner.named_parameters() if p.requires_grad] == ["ctx"]
    assert list(trainer.prompt_learner.state_dict()) == ["ctx"]
    assert trainer.get_model_names() == ["prompt_learner"]
    assert not any(p.requires_grad for p in trainer.clip.model.parameters())
    params = [p for g in trainer.optim.param_groups for p in g["params"]]
    assert len(params) == 1 and params[0] is trainer.prompt_learner.ctx
    for group in trainer.optim.param_groups:
        group["lr"] = 0.5
    batch = next(iter(trainer.train_loader_x))
    trainer.num_batches, trainer.batch_idx = 100, 0
    before = trainer.prompt_learner.ctx.detach().clone()
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]
    assert not torch.equal(before, trainer.prompt_learner.ctx.detach())
    assert all(p.grad is None for p in trainer.clip.model.parameters())
    # The loss is the cross-entropy of s·cos logits with the current context.
    images, labels = batch["img"], batch["label"]
    with torch.no_grad():
        logits = trainer.logit_scale * trainer.encode_images(images) @ trainer.compute_text_features().t()
        loss = F.cross_entropy(logits, labels).item()
    assert trainer.forward_backward(batch)["loss"] == pytest.approx(loss, rel=1e-5)


def test_round_trip_and_oop_to_ip(toy_root, tmp_path):
    out = tmp_path / "train"
    trainer = run_train(train_argv(toy_root, out, TRAINER))
    res = json.loads((out / "results.json").read_text())
    assert {"oop", "ip", "hmean"} <= set(res)
    assert res["hmean"] == pytest.approx(0.0 if res["oop"] + res["ip"] == 0
                                         else 2 * res["oop"] * res["ip"] / (res["oop"] + res["ip"]))
    ckpt = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    assert list(ckpt["state_dict"]) == ["ctx"]
    assert ckpt["meta"]["classnames"] == list(trainer.dm.dataset.classnames)
    torch.testing.assert_close(ckpt["state_dict"]["ctx"], trainer.prompt_learner.ctx.detach())

    evald = tmp_path / "eval"
    run_train(train_argv(toy_root, evald, TRAINER, extra=("--eval-only", "--model-dir", str(out))))
    again = json.loads((evald / "results.json").read_text())
    assert again["oop"] == res["oop"] and again["ip"] == res["ip"]
    assert again["metrics"] == res["metrics"]

    # IP: the shared OOP context applied to the IP names, i.e. the cross-evaluation's number.
    ip_dir = tmp_path / "ip"
    ip = run_train(train_argv(toy_root, ip_dir, TRAINER, "DATASET.SUB_CLASSES", "IP",
                              extra=("--eval-only", "--model-dir", str(out))))
    assert len(ip.dm.dataset.classnames) == 3
    torch.testing.assert_close(ip.prompt_learner.ctx.detach(), trainer.prompt_learner.ctx.detach())
    assert json.loads((ip_dir / "results.json").read_text())["ip"] == res["ip"]


def test_class_specific_context_refuses_other_label_space(toy_root, tmp_path):
    out = tmp_path / "csc"
    trainer = run_train(train_argv(toy_root, out, TRAINER, "TRAINER.COOP.CSC", "True"))
    assert trainer.prompt_learner.ctx.shape[0] == 5
    res = json.loads((out / "results.json").read_text())
    assert "oop" in res and "ip" not in res  # no cross-evaluation for class-specific contexts
    with pytest.raises(ValueError, match=r"5 classes.*3 classes"):
        run_train(train_argv(toy_root, tmp_path / "ip", TRAINER, "TRAINER.COOP.CSC", "True",
                             "DATASET.SUB_CLASSES", "IP", extra=("--eval-only", "--model-dir", str(out))))
    # A shared-context trainer refuses a class-specific checkpoint too.
    shared = build(toy_root, tmp_path / "shared", TRAINER)
    with pytest.raises(ValueError, match="class-specific"):
        shared.load_state("prompt_learner", trainer.prompt_learner.state_dict(), {})


def test_loads_reference_checkpoint_keys(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    ctx = torch.randn_like(trainer.prompt_learner.ctx)
    state = {"module.ctx": ctx.half(), "token_prefix": torch.zeros(5, 1, 32), "token_suffix": torch.zeros(5, 72, 32)}
    trainer.load_state("prompt_learner", state, {})
    torch.testing.assert_close(trainer.prompt_learner.ctx.detach(), ctx.half().float())
    with pytest.raises(ValueError, match="N_CTX"):
        trainer.load_state("prompt_learner", {"ctx": torch.zeros(3, ctx.shape[1])}, {})
