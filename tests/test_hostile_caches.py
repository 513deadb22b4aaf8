"""Hostile inputs against the caches and reuse decisions (a third hostile pass, caches only).

Each case builds what a researcher really produces and checks the outcome against the principle
"nothing is reused unless its identity matches": a reused value is compared with an independent
computation, and a user mistake must end in one ``error:`` line, not a traceback.

* unseeded random weights (``WEIGHTS none`` with ``SEED -1``): every load draws another model, yet
  the on-disk evaluation and training-view caches keyed it as ``random, seed -1`` and a second run
  read the first run's model's features;
* a truncated copy of a file the project itself wrote into ``~/.cache/clip`` (the seeded random init
  of a repository model) ended the OpenAI-CLIP trainers in a traceback;
* a truncated ``CLIP_WEIGHTS`` file (the user's) was a traceback after the data was built;
* a resumed FSNL run whose checkpoint names do not fit (written by code that tokenised a name
  differently) went on from a half-loaded state instead of stopping in one line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import open_clip
import pytest
import torch

import train
from clip import clip as oai
from clip.loader import register_repo_configs
from dassl.data.transforms import build_transform
from dassl.utils import read_image
from tests.helpers import build, make_cfg, train_argv
from trainers import feature_cache as fc

TRAINER = "FSNL_openclip"


@pytest.fixture(autouse=True)
def _drop_log_handlers(drop_new_log_handlers):
    """``train.main`` tees the log into each output dir (conftest's ``drop_new_log_handlers``)."""


def _fresh_eval_features(trainer):
    """The test split encoded image by image by ``trainer``'s own model, bypassing every cache."""
    items = trainer.dm.dataset.test
    images = torch.stack([trainer.dm.tfm_test(read_image(d.impath)) for d in items])
    return trainer.encode_images(images, normalize=False)


def _fresh_views(trainer, views):
    """``trainer``'s training views computed by its own model, without any store or file."""
    return fc.encode_views(trainer.cfg, trainer.dm.dataset.train_x, trainer.dm.tfm_train,
                           lambda x: trainer.encode_images(x, normalize=False), views, int(trainer.cfg.SEED))


def test_unseeded_random_weights_never_reuse_another_models_features(toy_root, tmp_path):
    """Two processes with ``WEIGHTS none`` and ``--seed -1`` build two different models (simulated by
    two global RNG states); the second must not be handed the first one's features from disk."""
    opts = ("TEST.FEATURE_CACHE_DIR", str(tmp_path / "eval"), "DATALOADER.FEATURE_CACHE.VIEWS", "2",
            "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "views"), "MODEL.BACKBONE.WEIGHTS", "none")
    torch.manual_seed(11)
    first = build(toy_root, tmp_path / "a", TRAINER, *opts, seed=-1)
    torch.cat([b["feat"] for b in first.eval_loader("test")])
    torch.manual_seed(12)
    second = build(toy_root, tmp_path / "b", TRAINER, *opts, seed=-1)
    first_params = dict(first.clip.model.named_parameters())
    assert any(not torch.equal(p, first_params[n]) for n, p in second.clip.model.named_parameters())

    got = torch.cat([b["feat"] for b in second.eval_loader("test")])
    torch.testing.assert_close(got, _fresh_eval_features(second), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second._cached_train.features, _fresh_views(second, 2), atol=1e-5, rtol=1e-5)
    # features no later run can reuse are not written either
    assert not [p for d in ("eval", "views") for p in (tmp_path / d).glob("**/*") if p.is_file()]


def test_truncated_repository_weights_in_the_clip_cache_are_written_again(toy_root, tmp_path, monkeypatch, capsys):
    """``~/.cache/clip/openai-tiny-<digest>.pt`` is the project's own file (a seeded random init): a
    truncated copy of it (a partial rsync, a full disk while copying a home folder) ended CoOp in a
    ``RuntimeError`` traceback from ``torch.load``; it is written again, equal to a fresh one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(oai.WEIGHTS_ENV, raising=False)
    url = oai._MODELS["openai-tiny"]
    path = oai._download(url)
    assert path == str(tmp_path / "home" / ".cache" / "clip" / os.path.basename(url))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)

    out = tmp_path / "run"
    code = train.cli(train_argv(toy_root, out, "CoOp", "OPTIM.MAX_EPOCH", "1"))
    assert code == 0, capsys.readouterr().err
    assert (out / "results.json").is_file()
    fresh = oai.load_state_dict(oai._download(url, root=str(tmp_path / "fresh")))
    rewritten = oai.load_state_dict(path)
    assert rewritten.keys() == fresh.keys() and all(torch.equal(rewritten[k], fresh[k]) for k in fresh)


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_from_a_checkpoint_whose_names_do_not_fit_is_one_line(toy_root, tmp_path, capsys):
    """An interrupted FSNL run resumed after a code change that tokenises a class name into another
    number of tokens (simulated: one name's tensor in the checkpoint gets another shape, its
    configuration fingerprint untouched). The name was skipped with a warning and the run went on from
    the checkpoint with that name at its initial value, its results filed as the resumed run's; the
    engine's rule for a resume whose weights do not fit is one ``error:`` line, nothing changed."""
    out = tmp_path / "run"
    argv = train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1",
                      "TEST.NO_TEST", "True")
    assert train.cli(argv) == 0
    learner = out / "name_learner"
    (learner / "model.pth.tar-2").unlink()  # interrupted after epoch 1
    (learner / "checkpoint").write_text("model.pth.tar-1\n")
    ckpt = torch.load(learner / "model.pth.tar-1", weights_only=True)
    key = sorted(k for k in ckpt["state_dict"] if k.startswith("name_embeddings."))[0]
    ckpt["state_dict"][key] = torch.cat([ckpt["state_dict"][key]] * 2)
    torch.save(ckpt, learner / "model.pth.tar-1")
    before = _tree_bytes(out)
    capsys.readouterr()

    assert train.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "cannot resume from" in err and str(learner / "model.pth.tar-1") in err, err
    after = _tree_bytes(out)
    assert {k: v for k, v in after.items() if k != "log.txt"} == {k: v for k, v in before.items() if k != "log.txt"}


def test_a_truncated_clip_weights_file_is_one_line_before_any_work(toy_root, tmp_path, monkeypatch, capsys):
    """``CLIP_WEIGHTS`` naming a truncated copy of the weights (the user's file, not the project's: it
    is refused, not replaced) ended CoOp in a ``torch.load`` traceback; now one ``error:`` line naming
    the file, before any output is written, and the file is left as it was."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(oai.WEIGHTS_ENV, raising=False)
    intact = oai._download(oai._MODELS["openai-tiny"], root=str(tmp_path / "made"))
    data = open(intact, "rb").read()[: os.path.getsize(intact) // 2]
    mine = tmp_path / "mine.pt"
    mine.write_bytes(data)
    monkeypatch.setenv(oai.WEIGHTS_ENV, str(mine))
    out = tmp_path / "run"
    capsys.readouterr()
    assert train.cli(train_argv(toy_root, out, "CoOp")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(mine) in err, err
    assert mine.read_bytes() == data and not out.exists()
    assert not (tmp_path / "home" / ".cache" / "clip").exists()


def test_training_views_of_another_input_config_are_another_store(tmp_path):
    """The grid shares training views between cells whose store keys match. A transform's ``repr``
    does not show every parameter (torchvision's ``AutoAugment`` omits its interpolation), so two cells
    differing only in ``INPUT.INTERPOLATION`` under ``imagenet_policy`` shared one store; the key of
    training views includes ``INPUT`` now. Evaluation stores keep sharing across such cells."""
    policy = ("INPUT.TRANSFORMS", "('random_crop','imagenet_policy','normalize')")
    cfgs = [make_cfg(tmp_path, tmp_path / "out", TRAINER, *policy, "INPUT.INTERPOLATION", interp)
            for interp in ("bilinear", "bicubic")]
    train_tfms = [build_transform(cfg, is_train=True) for cfg in cfgs]
    assert repr(train_tfms[0]) == repr(train_tfms[1])  # what the key saw before
    keys = [fc.store_namespace("train", cfg, tfm, "fp32", "cpu", 1) for cfg, tfm in zip(cfgs, train_tfms)]
    assert keys[0] != keys[1]
    assert keys[0] == fc.store_namespace("train", cfgs[0], train_tfms[0], "fp32", "cpu", 1)
    test_tfm = build_transform(cfgs[0], is_train=False)
    assert (fc.store_namespace("eval", cfgs[0], test_tfm, "fp32", "cpu", None)
            == fc.store_namespace("eval", cfgs[1], test_tfm, "fp32", "cpu", None))


def test_features_cached_under_another_image_decoder_are_recomputed(toy_root, tmp_path, monkeypatch, caplog):
    """``read_image`` changed what some files decode to (16-bit and float grayscale), and features
    cached before were still keyed as current. The keys carry ``READ_IMAGE_VERSION`` now: after a bump
    both the training views and the evaluation features are computed again, and the log says why."""
    opts = ("TEST.FEATURE_CACHE_DIR", str(tmp_path / "eval_cache"),
            "DATALOADER.FEATURE_CACHE.DIR", str(tmp_path / "train_cache"), "DATALOADER.FEATURE_CACHE.VIEWS", "1")
    first = build(toy_root, tmp_path / "a", TRAINER, *opts, seed=1)
    first.eval_loader("test")
    monkeypatch.setattr(fc, "READ_IMAGE_VERSION", fc.READ_IMAGE_VERSION + 1)
    with caplog.at_level(logging.INFO):
        second = build(toy_root, tmp_path / "b", TRAINER, *opts, seed=1)
        features = torch.cat([b["feat"] for b in second.eval_loader("test")])
    assert caplog.text.count("image decoding changed") == 2  # the training views and the test features
    torch.testing.assert_close(features, _fresh_eval_features(second), atol=1e-5, rtol=1e-5)


def _openai_tiny_state(tmp_path, **changes):
    """The openai-tiny weights (the seeded init), with ``changes`` applied to some tensors."""
    state = oai.load_state_dict(oai._download(oai._MODELS["openai-tiny"], root=str(tmp_path / "made")))
    state.update(changes)
    return state


def _other_architecture_state():
    """test-tiny's random weights in OpenAI's layout: the image size of openai-tiny (32) and its embedding
    width (32), another text tower (width 32, not 64)."""
    register_repo_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return open_clip.create_model("test-tiny").state_dict()


@pytest.mark.parametrize("kind", ["architecture", "logit-scale"])
def test_clip_weights_that_are_not_the_named_model_are_one_line(toy_root, tmp_path, monkeypatch, capsys, kind):
    """``CLIP_WEIGHTS`` naming another architecture's file: CoOp built the model from the file's shapes and
    ran with exit 0, its results naming the model asked for (with another image size: a traceback after
    the data loaded). A logit scale whose exponential overflows gave accuracies of NaN argmaxes. Now one
    ``error:`` line naming the variable and what differs, before any output; the file is left as it was."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    mine = tmp_path / "mine.pt"
    if kind == "architecture":
        torch.save(_other_architecture_state(), mine)
    else:
        torch.save(_openai_tiny_state(tmp_path, logit_scale=torch.tensor(89.0)), mine)
    data = mine.read_bytes()
    monkeypatch.setenv(oai.WEIGHTS_ENV, str(mine))
    out = tmp_path / "run"
    capsys.readouterr()
    assert train.cli(train_argv(toy_root, out, "CoOp")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {oai.WEIGHTS_ENV}=") and "\n" not in err and str(mine) in err, err
    expected = ("holds another architecture than CLIP 'openai-tiny': text_width 32 (not 64)" if kind == "architecture"
                else "logit_scale 89 overflows its exponential")
    assert expected in err, err
    assert mine.read_bytes() == data and not out.exists()


def test_clip_weights_win_over_a_cached_file(toy_root, tmp_path, monkeypatch, capsys):
    """With ``~/.cache/clip`` holding the model's file, a set ``CLIP_WEIGHTS`` was ignored without a word
    (first hit won), and the run recorded the cached file's identity while the user believed it ran on
    theirs. The user's explicit file comes first now: the run loads it and records its content."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(oai.WEIGHTS_ENV, raising=False)
    url = oai._MODELS["openai-tiny"]
    cached = oai._download(url)  # ~/.cache/clip/<file>
    state = _openai_tiny_state(tmp_path)
    state["text_projection"] = state["text_projection"] * 2  # the user's own weights of the same model
    mine = tmp_path / "mine.pt"
    torch.save(state, mine)
    monkeypatch.setenv(oai.WEIGHTS_ENV, str(mine))
    assert oai._download(url) == str(mine) != cached
    folder = tmp_path / "folder"  # a folder without the file: the other sources are asked
    folder.mkdir()
    monkeypatch.setenv(oai.WEIGHTS_ENV, str(folder))
    assert oai._download(url) == cached
    monkeypatch.setenv(oai.WEIGHTS_ENV, str(mine))
    out = tmp_path / "run"
    assert train.cli(train_argv(toy_root, out, "CoOp", "OPTIM.MAX_EPOCH", "1")) == 0, capsys.readouterr().err
    recorded = json.loads((out / "results.json").read_text())["fingerprint"]["weights"]
    assert recorded["sha256"] == hashlib.sha256(mine.read_bytes()).hexdigest()
