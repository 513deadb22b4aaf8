"""FSNL: step-0 equivalence with zero-shot, gradients, losses, captions, checkpoints, OOP→IP."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import build, clip_logits, clip_text_features, run_train, train_argv

TRAINER = "FSNL_openclip"


def test_step0_equals_zero_shot_with_fsnl_template(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    names = [c.lower().replace("_", " ") for c in trainer.dm.dataset.classnames]
    prompts = [f"a photo of {n}, a type of {trainer.hint}." for n in names]
    batch = next(iter(trainer.test_loader))
    images = batch["img"]
    expected = clip_logits(trainer, images, clip_text_features(trainer, prompts))
    with torch.no_grad():
        trainer.before_test()
        got = trainer.model_inference(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_only_name_tensors_get_gradients(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER)
    trainable = [n for n, p in trainer.name_learner.named_parameters() if p.requires_grad]
    assert trainable == ["bank"]
    assert not any(p.requires_grad for p in trainer.clip.model.parameters())
    before = trainer.name_learner.bank.detach().clone()
    batch = next(iter(trainer.train_loader_x))
    trainer.num_batches, trainer.batch_idx = 10, 0
    trainer.forward_backward(batch)
    assert trainer.name_learner.bank.grad is not None
    assert all(p.grad is None for p in trainer.clip.model.parameters())
    assert not torch.equal(before, trainer.name_learner.bank.detach())
    # The optimiser holds exactly the name bank: no token table (B8).
    params = [p for g in trainer.optim.param_groups for p in g["params"]]
    assert len(params) == 1 and params[0] is trainer.name_learner.bank


@pytest.mark.parametrize("opts", [
    (),
    ("TRAINER.FSNL.USE_CAPTION", "False"),
    ("TRAINER.FSNL.FLE", "True", "TRAINER.FSNL.N_CTX", "3"),
    ("TRAINER.FSNL.CIFC", "False"),
    ("TRAINER.FSNL.ABSENT_CLASSES", "present"),
])
def test_loss_decreases(toy_root, tmp_path, opts):
    trainer = build(toy_root, tmp_path, TRAINER, "OPTIM.LR", "0.5", *opts)
    for group in trainer.optim.param_groups:
        group["lr"] = 0.5
    batch = next(iter(trainer.train_loader_x))
    trainer.num_batches, trainer.batch_idx = 100, 0
    # Fix the caption-swap RNG so the loss is a deterministic function of the names.
    losses = []
    for _ in range(6):
        trainer.rng.manual_seed(0)
        losses.append(trainer.forward_backward(batch)["loss"])
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_fle_and_cifc_shapes(toy_root, tmp_path):
    fle = build(toy_root, tmp_path / "a", TRAINER, "TRAINER.FSNL.FLE", "True", "TRAINER.FSNL.N_CTX", "3")
    c = len(fle.dm.dataset.classnames)
    assert fle.name_learner.bank.shape[0] == 3 * c
    cifc = build(toy_root, tmp_path / "b", TRAINER)
    table = cifc.clip.model.token_embedding.weight
    ids = [cifc.clip.tokenizer.encode(n) for n in cifc.name_learner.classnames]
    torch.testing.assert_close(cifc.name_learner.bank.detach(), table[[t for i in ids for t in i]].float())
    rand = build(toy_root, tmp_path / "c", TRAINER, "TRAINER.FSNL.CIFC", "False")
    assert not torch.allclose(rand.name_learner.bank, cifc.name_learner.bank)
    assert rand.name_learner.bank.std().item() == pytest.approx(0.02, rel=0.5)


def test_same_label_loss_matches_manual():
    from trainers.fsnl import same_label_loss

    torch.manual_seed(0)
    z = torch.randn(5, 4)
    rows = torch.tensor([0, 1, 1, 3, 0])
    cols = torch.arange(4)
    p = z.softmax(1)
    manual = torch.stack([-torch.log(p[r, rows[r]] + 1e-10) for r in range(5)]).mean()
    torch.testing.assert_close(same_label_loss(z, rows, cols), manual)
    # Transposed: class 2 has no image → constant -log(eps) in the reference mode.
    zt = z.t()
    pt = zt.softmax(1)
    per = [-torch.log(pt[c][rows == c].sum() + 1e-10) for c in range(4)]
    torch.testing.assert_close(same_label_loss(zt, cols, rows), torch.stack(per).mean())
    present = torch.stack([per[c] for c in (0, 1, 3)]).mean()
    torch.testing.assert_close(same_label_loss(zt, cols, rows, only_present=True), present)
    assert per[2].item() == pytest.approx(-math.log(1e-10), rel=1e-4)


def test_caption_fallbacks_never_crash(toy_root, tmp_path):
    """B3/B5/B6: one-class batches, empty captions and captions without their name fall back."""
    trainer = build(toy_root, tmp_path, TRAINER)
    model = trainer.model
    assert model.caption_template("", 0) is None
    assert model.caption_template("a picture of something else entirely", 0) is None
    # A one-class batch: every item falls back to its base prompt.
    labels = torch.tensor([1, 1, 1])
    seqs = trainer.swapped_sequences([0, 0, 0], labels)
    assert all(s == model.class_pieces[1] for s in seqs)
    # Two classes with valid templates: each item gets the *other* class's caption with its own name.
    name0, name1 = model.classnames[0], model.classnames[1]
    idx = len(trainer.caption_templates)
    trainer.caption_templates.append(model.caption_template(f"a {name0} sleeping on grass", 0))
    trainer.caption_templates.append(model.caption_template(f"two {name1} near water", 1))
    out = trainer.swapped_sequences([idx, idx + 1], torch.tensor([0, 1]))
    from clip import Slot

    assert Slot(0) in out[0] and Slot(1) not in out[0]
    assert Slot(1) in out[1] and Slot(0) not in out[1]
    text0 = [p for p in out[0] if not isinstance(p, Slot)]
    assert text0 == [p for p in trainer.caption_templates[idx + 1] if not isinstance(p, Slot)]


def test_fp16_on_cpu_falls_back_to_fp32(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path, TRAINER, "TRAINER.FSNL.PREC", "fp16")
    assert trainer.precision.name == "fp32"
    assert trainer.clip.dtype == torch.float32
    assert trainer.name_learner.bank.dtype == torch.float32


def test_train_eval_roundtrip_and_oop_to_ip(toy_root, tmp_path):
    out = tmp_path / "run"
    run_train(train_argv(toy_root, out, TRAINER))
    res = json.loads((out / "results.json").read_text())
    assert {"oop", "ip", "hmean"} <= set(res)
    assert res["hmean"] == pytest.approx(2 * res["oop"] * res["ip"] / (res["oop"] + res["ip"]))
    assert (out / "config.yaml").is_file()

    # The checkpoint holds only name tensors, keyed by class name, and loads with weights_only.
    ckpt_dir = out / "name_learner"
    files = sorted(ckpt_dir.glob("model.pth.tar-*"))
    assert files
    ckpt = torch.load(files[-1], weights_only=True)
    assert all(k.startswith("name_embeddings.") for k in ckpt["state_dict"])
    assert files[-1].stat().st_size < 200_000

    ev = tmp_path / "eval"
    run_train(train_argv(toy_root, ev, TRAINER, extra=("--eval-only", "--model-dir", str(out))))
    res_ev = json.loads((ev / "results.json").read_text())
    assert res_ev["oop"] == res["oop"]
    assert res_ev["ip"] == res["ip"]
    # results.json records what the evaluation loaded (a trained run loaded nothing)
    classnames = ckpt["meta"]["classnames"]
    assert res["loaded"] is None
    assert res_ev["loaded"]["model_dir"] == str(out) and res_ev["loaded"]["epoch"] == res["epoch"]
    assert res_ev["loaded"]["names_loaded"] == f"{len(classnames)}/{len(classnames)}"

    # IP evaluation of the OOP checkpoint: no IP name was trained, so it equals zero-shot on IP.
    ip = tmp_path / "ip"
    ip_trainer = run_train(train_argv(toy_root, ip, TRAINER, "DATASET.SUB_CLASSES", "IP",
                                      extra=("--eval-only", "--model-dir", str(out))))
    zs = tmp_path / "zs_ip"
    run_train(train_argv(toy_root, zs, TRAINER, "DATASET.SUB_CLASSES", "IP", "TEST.ALLOW_UNTRAINED", "True",
                         extra=("--eval-only",)))
    res_ip = json.loads((ip / "results.json").read_text())
    assert res_ip["ip"] == res["ip"]
    assert res_ip["loaded"]["names_loaded"] == f"0/{len(ip_trainer.dm.dataset.classnames)}"  # no IP name trained
    assert json.loads((zs / "results.json").read_text())["ip"] == res["ip"]


def test_loads_reference_style_and_cross_label_space(toy_root, tmp_path):
    """Reference keys keep '_' and carry the token table; both are handled."""
    trainer = build(toy_root, tmp_path, TRAINER)
    learner = trainer.name_learner
    width = learner.bank.shape[1]
    name = learner.classnames[0]
    raw = name.replace(" ", "_")
    value = torch.full((learner.lengths[0], width), 0.25)
    state = {f"name_embeddings.{raw}": value, "name_embeddings.not a class here": torch.zeros(2, width),
             "clip_model_token_embedding.weight": torch.zeros(10, width)}
    before = learner.bank.detach().clone()
    trainer.load_state("name_learner", state, {})
    torch.testing.assert_close(learner.name_tensor(0).detach(), value)
    torch.testing.assert_close(learner.bank.detach()[learner.lengths[0]:], before[learner.lengths[0]:])


def test_variant_presets_and_ablations():
    from trainers import fsnl

    assert fsnl.FSNL_openclip_400M_L14.BACKBONE_PRESET[:2] == ("ViT-L-14", "laion400m_e32")
    assert fsnl.FSNL_openclip_2B.BACKBONE_PRESET[:2] == ("ViT-g-14", "laion2b_s12b_b42k")
    assert fsnl.OpenAI_FSNL.BACKBONE_PRESET[:2] == ("ViT-B-16", "openai")
    assert fsnl.FSNL_openclip_Ablation2.LOSS_PRESET == "base"
    import open_clip

    for cls in (fsnl.FSNL_openclip_400M_L14, fsnl.FSNL_openclip_2B, fsnl.OpenAI_FSNL,
                fsnl.EVA_FSNL_400M, fsnl.EVA_FSNL_2B):
        name, tag = cls.BACKBONE_PRESET[:2]
        assert tag in open_clip.list_pretrained_tags_by_model(name)


class _ReferenceScheduler:
    """Stands for the reference's pickled Dassl scheduler object (module path is gone on load)."""

    def __init__(self):
        self.successor = {"T_max": 200}


def test_loads_a_reference_checkpoint_file(toy_root, tmp_path, monkeypatch):
    """B15/B8: a reference checkpoint pickles a scheduler object and embeds the token table."""
    import sys
    import types

    from dassl.utils import load_checkpoint

    trainer = build(toy_root, tmp_path, "FSNL_openclip")
    learner = trainer.name_learner
    name = learner.classnames[1]
    value = torch.full((learner.lengths[1], learner.bank.shape[1]), -0.5)
    module = types.ModuleType("reference_dassl_lr_scheduler")
    module._ReferenceScheduler = _ReferenceScheduler
    monkeypatch.setattr(_ReferenceScheduler, "__module__", module.__name__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ckpt = {"state_dict": {f"name_embeddings.{name.replace(' ', '_')}": value,
                           "clip_model_token_embedding.weight": torch.zeros(4, learner.bank.shape[1])},
            "epoch": 200, "optimizer": {}, "scheduler": _ReferenceScheduler(), "val_result": 71.5}
    path = tmp_path / "name_learner" / "model-best.pth.tar"
    path.parent.mkdir()
    torch.save(ckpt, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = load_checkpoint(str(path))
    assert loaded["scheduler"] is None and loaded["epoch"] == 200
    trainer.load_model(str(tmp_path))
    torch.testing.assert_close(learner.name_tensor(1).detach(), value)


def test_no_dataparallel_wrapping(toy_root, tmp_path, monkeypatch):
    """B9: even with several GPUs visible the model is never wrapped, so its attributes stay reachable."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    trainer = build(toy_root, tmp_path, "FSNL_openclip")
    assert not isinstance(trainer.model, torch.nn.DataParallel)
    assert trainer.model.name_learner is trainer.name_learner
    assert all(not isinstance(m, torch.nn.DataParallel) for m in trainer._models.values())


def test_loads_a_reference_checkpoint_with_momentum_state(toy_root, tmp_path, monkeypatch):
    """Issue 14: after >= 1 momentum step the reference's pickled scheduler holds the optimizer, whose
    state is a ``collections.defaultdict`` keyed by parameters. The restricted unpickler loads the
    names and the optimizer state dict, and never imports or calls anything else."""
    import pickle
    import sys
    import types

    from dassl.utils import load_checkpoint

    trainer = build(toy_root, tmp_path / "run", "FSNL_openclip")
    learner = trainer.name_learner
    name = learner.classnames[0]
    value = torch.full((learner.lengths[0], learner.bank.shape[1]), 0.25)
    param = torch.nn.Parameter(torch.ones(3))
    optim = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones(3)
    optim.step()  # creates the momentum buffer: optimizer.state becomes a non-empty defaultdict
    scheduler = _ReferenceScheduler()
    scheduler.successor = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=10)
    module = types.ModuleType("reference_dassl_lr_scheduler")
    module._ReferenceScheduler = _ReferenceScheduler
    monkeypatch.setattr(_ReferenceScheduler, "__module__", module.__name__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ckpt = {"state_dict": {f"name_embeddings.{name.replace(' ', '_')}": value}, "epoch": 3,
            "optimizer": optim.state_dict(), "scheduler": scheduler, "val_result": None}
    path = tmp_path / "ref" / "name_learner" / "model.pth.tar-3"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    called = []
    monkeypatch.setattr(torch.optim.lr_scheduler.CosineAnnealingLR, "__setstate__",
                        lambda self, state: called.append("scheduler"), raising=False)
    monkeypatch.setattr(torch.optim.SGD, "__setstate__", lambda self, state: called.append("sgd"))
    loaded = load_checkpoint(str(path))
    assert called == []  # no class of the pickle stream was instantiated
    assert loaded["scheduler"] is None and loaded["epoch"] == 3
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert loaded["optimizer"]["param_groups"][0]["momentum"] == 0.9
    trainer.load_model(str(tmp_path / "ref"), epoch=3)
    torch.testing.assert_close(learner.name_tensor(0).detach(), value)


def _reference_partner_sets(labels, valid):
    """The reference's candidates per item: valid items of another label (spec §2.7)."""
    return [{j for j in range(len(labels)) if valid[j] and labels[j] != labels[i]} for i in range(len(labels))]


def test_swap_partners_uniform_over_the_reference_candidates():
    """O(B) template swapping draws exactly the reference's distribution: uniform over the candidates."""
    from trainers.fsnl import swap_partners

    labels = torch.tensor([3, 1, 3, 0, 1, 3, 2, 2, 0, 5])
    valid = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    sets = _reference_partner_sets(labels.tolist(), valid.tolist())
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([swap_partners(labels, valid, g) for _ in range(6000)])
    for i, cands in enumerate(sets):
        got = draws[:, i]
        if not cands:
            assert bool((got == -1).all())
            continue
        assert set(got.tolist()) == cands  # never outside, every candidate reached
        counts = torch.bincount(got, minlength=len(labels)).double()[sorted(cands)]
        expected = len(got) / len(cands)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        # 99.9% quantile of chi² with <= 7 degrees of freedom is 24.3
        assert chi2 < 24.3, (i, counts.tolist())


def test_swap_partners_maps_every_draw_onto_one_candidate():
    """Exact: the draws (u + ½)/n, u = 0..n-1, hit every reference candidate once (a bijection: uniform)."""
    from trainers.fsnl import swap_partners

    rng = torch.Generator().manual_seed(1)
    for trial in range(40):
        b = int(torch.randint(1, 12, (1,), generator=rng))
        labels = torch.randint(0, 4, (b,), generator=rng)
        valid = torch.rand(b, generator=rng) < 0.7
        for i, cands in enumerate(_reference_partner_sets(labels.tolist(), valid.tolist())):
            n = max(len(cands), 1)
            hits = [int(swap_partners(labels, valid, draws=torch.full((b,), (u + 0.5) / n,
                                                                      dtype=torch.float64))[i]) for u in range(n)]
            assert sorted(hits) == (sorted(cands) if cands else [-1]), (trial, i)


def _fake_trainer(names, hint, matching):
    """What ``FSNLModel`` reads from a trainer, around the tiny random-weight CLIP."""
    from types import SimpleNamespace

    from yacs.config import CfgNode as CN

    from benchmarks.common import load_model
    from trainers.base import ClipTrainer
    from trainers.fsnl import add_config

    cfg = CN()
    cfg.TRAINER = CN()
    add_config(cfg)
    cfg.TRAINER.FSNL.NAME_MATCHING = matching
    return SimpleNamespace(cfg=cfg, clip=load_model("test-tiny", torch.device("cpu")), classnames=list(names),
                           hint=hint, display_names=ClipTrainer.display_names)


REFERENCE_NAMES = ["ant", "Giant_Anteater", "plant", "art", "folk art", "Mr._Mime", "red  panda"]


def test_name_matching_reference_reproduces_the_original_embeddings():
    """NAME_MATCHING reference: class prompts and captions embed exactly as the original's
    per-string ``text2embedding`` (spec §2.5, re-implemented independently in benchmarks/)."""
    from benchmarks.prompt_building import reference_class_prompts, reference_text2embedding
    from clip import PromptBatch, tokenize_pieces
    from trainers.fsnl import FSNLModel

    model = FSNLModel(_fake_trainer(REFERENCE_NAMES, "folk art", "reference"))
    assert model.classnames == ["ant", "giant_anteater", "plant", "art", "folk art", "mr _mime", "red  panda"]
    nl, tok_emb = model.name_learner, model.text_encoder.token_embedding
    learned = {n: nl.name_tensor(i) for i, n in enumerate(model.classnames)}
    with torch.no_grad():
        ours, ours_eot = model.prompt_bank(nl.bank)
        ref, ref_eot = reference_class_prompts(model.classnames, "folk art", learned, model.tokenizer, tok_emb,
                                               model.context_length)
        assert torch.equal(ours_eot, ref_eot)
        assert torch.equal(ours, ref[:, :ours.shape[1]])
        for caption in ["A giant anteater, a PLANT and pants", "folk art with art", "mr _mime and a red  panda",
                        "no name here at all"]:
            seq = tokenize_pieces(model.tokenizer, model.matcher.split(caption))
            batch = PromptBatch.build([seq], nl.lengths, model.slot_token_ids, model.context_length)
            got = batch.embed(model.token_weight, nl.bank)
            exp, exp_ids = reference_text2embedding(caption, model.classnames, learned, model.tokenizer, tok_emb,
                                                    model.context_length)
            assert int(batch.eot_idx[0]) == int(exp_ids.argmax())
            assert torch.equal(got[0], exp), caption


def test_name_matching_reference_swaps_captions_as_the_original():
    """NAME_MATCHING reference, template swapping (spec §2.7): the original replaces *every* substring
    occurrence of the extracted name ("ant" inside "elephant" and "pants" too), fills the placeholder
    with the partner's name and embeds the filled text. Splitting the caption first marked only the
    occurrences the name alternation matched."""
    from benchmarks.prompt_building import reference_text2embedding
    from clip import PromptBatch
    from trainers.fsnl import FSNLModel

    model = FSNLModel(_fake_trainer(REFERENCE_NAMES, "folk art", "reference"))
    nl, tok_emb = model.name_learner, model.text_encoder.token_embedding
    learned = {n: nl.name_tensor(i) for i, n in enumerate(model.classnames)}
    for caption in ["The elephant shrew next to a potted plant.", "A giant_anteater, a PLANT and pants",
                    "mr _mime and a red  panda"]:
        owner = model.caption_owner(caption, 0)
        template = model.caption_template(caption, 0)
        for partner in (2, 3, 6):
            filled = caption.lower().replace(model.classnames[owner], model.classnames[partner])  # the original's
            seq = model.fill(template, partner)
            batch = PromptBatch.build([seq], nl.lengths, model.slot_token_ids, model.context_length)
            with torch.no_grad():
                got = batch.embed(model.token_weight, nl.bank)
                exp, exp_ids = reference_text2embedding(filled, model.classnames, learned, model.tokenizer, tok_emb,
                                                        model.context_length)
            assert int(batch.eot_idx[0]) == int(exp_ids.argmax()), (caption, partner)
            assert torch.equal(got[0], exp), (caption, partner)


@pytest.mark.parametrize("case", ["no-token-name", "long-name", "fle-n-ctx"])
def test_names_that_cannot_be_learned_are_refused_at_build(case):
    """A class name with no BPE token (a control character) was a ValueError traceback; a name the 77-token
    context cuts out of its prompt (or FLE with N_CTX 80) left no slot: never learned and scored untrained
    (exit 0), or a "does not require grad" traceback. One user error, naming the class and the fix."""
    from clip import BackboneError
    from trainers.fsnl import FSNLModel

    names = ["ant", "red panda", {"no-token-name": "\x01", "long-name": "bear" + "0123456789" * 8}.get(case, "owl")]
    trainer = _fake_trainer(names, "animal", "fixed")
    if case == "fle-n-ctx":
        trainer.cfg.TRAINER.FSNL.FLE, trainer.cfg.TRAINER.FSNL.N_CTX = True, 80
    expected = {"no-token-name": "class name(s) ['\\x01'] encode to no token",
                "long-name": f"the prompt of class {names[2]!r} needs",
                "fle-n-ctx": "the prompt of class 'ant' needs"}[case]
    with pytest.raises(BackboneError) as err:
        FSNLModel(trainer)
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert ("lower TRAINER.FSNL.N_CTX (now 80)" in str(err.value)) == (case == "fle-n-ctx")


def test_name_matching_fixed_is_the_default_and_differs():
    """The default keeps B2/B4 fixed: "art" is not found inside the hint "folk art" or inside words."""
    from clip import Slot
    from trainers.fsnl import FSNLModel

    fixed = FSNLModel(_fake_trainer(REFERENCE_NAMES, "folk art", "fixed"))
    ref = FSNLModel(_fake_trainer(REFERENCE_NAMES, "folk art", "reference"))
    art = 3
    slots = lambda pieces: [p.index for p in pieces if isinstance(p, Slot)]  # noqa: E731
    assert slots(fixed.class_pieces[art]) == [art]
    assert slots(ref.class_pieces[art]) == [art, 4]  # the hint "folk art" is a class name too
    assert slots(ref.class_pieces[2]) == [2, 4]  # "plant", then the hint
    assert fixed.classnames[1] == "giant anteater" and ref.classnames[1] == "giant_anteater"
    assert fixed.caption_owner("a plant near an ant", 2) == 2
    assert ref.caption_owner("a plant near an ant", 2) == 0  # B6: first name in label order


def test_name_matching_reference_trains_and_bad_values_fail(toy_root, tmp_path):
    trainer = build(toy_root, tmp_path / "ref", TRAINER, "TRAINER.FSNL.NAME_MATCHING", "reference")
    assert trainer.model.reference_matching
    batch = next(iter(trainer.train_loader_x))
    trainer.num_batches, trainer.batch_idx = 10, 0
    out = trainer.forward_backward(batch)
    assert math.isfinite(out["loss"])
    with pytest.raises(ValueError, match="NAME_MATCHING"):
        build(toy_root, tmp_path / "bad", TRAINER, "TRAINER.FSNL.NAME_MATCHING", "regex")
