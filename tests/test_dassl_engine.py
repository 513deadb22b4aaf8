"""Engine behaviour on a tiny synthetic colour dataset and linear trainers (CPU, a few seconds)."""
from __future__ import annotations

import errno
import json
import logging
import os
import os.path as osp
import random
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from dassl.config import get_cfg_default
from dassl.data import DataManager, DatasetWrapper
from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.data.samplers import RandomClassSampler, build_sampler
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY, TrainerBase, build_trainer
from dassl.evaluation import build_evaluator, hmean
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (
    MetricMeter,
    load_checkpoint,
    load_pretrained_weights,
    resume_from_checkpoint,
    save_checkpoint,
    set_random_seed,
    setup_logger,
    write_json,
)
from tests.helpers import (
    COLORS,
    IP_COLORS,
    OOP_COLORS,
    ToyColors,
    ToyLinear,
    colour_accuracy,
    make_colour_images,
)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
OOP, IP = OOP_COLORS, IP_COLORS
SPLITS = {"train": 4, "val": 2, "test": 3}


@DATASET_REGISTRY.register(force=True)
class ToyColorsEngine(ToyColors):
    """Colour squares with a val split; ``DATASET.NUM_SHOTS`` samples the train split."""


@DATASET_REGISTRY.register(force=True)
class ToyColorsEngineNoVal(ToyColorsEngine):
    with_val = False


@TRAINER_REGISTRY.register(force=True)
class ToyLinearEngine(ToyLinear):
    """The shared linear trainer under this file's registered name."""


def good_weights(names):
    rows = [torch.tensor(COLORS[n], dtype=torch.float32).div(255)[:, None, None].expand(3, 8, 8).flatten() - 0.5
            for n in names]
    return torch.stack(rows)


@TRAINER_REGISTRY.register(force=True)
class ToyScriptedEngine(ToyLinearEngine):
    """Weights follow a script per epoch: 'good' (colour templates, 100 %) or 'zero' (all ties → class 0)."""

    SCRIPT = ("good", "zero", "zero")

    def forward_backward(self, batch):
        with torch.no_grad():
            if self.SCRIPT[self.epoch % len(self.SCRIPT)] == "good":
                self.model.weight.copy_(good_weights(self.dm.dataset.classnames))
            else:
                self.model.weight.zero_()
            self.model.bias.zero_()
        return {"loss": 0.0}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy_colors"))
    make_colour_images(root, SPLITS)
    return root


def make_cfg(root, out, trainer="ToyLinearEngine", dataset="ToyColorsEngine", **opts):
    cfg = get_cfg_default()
    cfg.DATASET.SUB_CLASSES = "OOP"  # normally added by datasets.add_dataset_config
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = dataset
    cfg.TRAINER.NAME = trainer
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = 1
    cfg.USE_CUDA = False
    cfg.INPUT.SIZE = (8, 8)
    cfg.INPUT.TRANSFORMS = ("random_flip",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 8
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.5
    cfg.OPTIM.MAX_EPOCH = 3
    cfg.OPTIM.LR_SCHEDULER = "cosine"
    cfg.OPTIM.WARMUP_EPOCH = 1
    cfg.OPTIM.WARMUP_TYPE = "constant"
    cfg.TRAIN.PRINT_FREQ = 1
    cfg.TEST.CROSS_EVAL = ()
    for key, value in opts.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    cfg.freeze()
    return cfg


def build(cfg, **kw):
    set_random_seed(cfg.SEED)
    return build_trainer(cfg, **kw)


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_roundtrip_pointer_and_load_model(image_root, tmp_path):
    cfg = make_cfg(image_root, tmp_path / "run", TRAIN__CHECKPOINT_FREQ=1)
    trainer = build(cfg)
    trainer.train()
    mdir = tmp_path / "run" / "linear"
    assert sorted(os.listdir(mdir)) == ["checkpoint", "model.pth.tar-1", "model.pth.tar-2", "model.pth.tar-3"]
    assert (mdir / "checkpoint").read_text().strip() == "model.pth.tar-3"

    ckpt = torch.load(mdir / "model.pth.tar-2", weights_only=True)
    assert set(ckpt) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result", "meta"}
    assert ckpt["epoch"] == 2 and ckpt["val_result"] is None
    assert ckpt["meta"]["classnames"] == OOP and ckpt["meta"]["trainer"] == "ToyLinearEngine"

    other = build(make_cfg(image_root, tmp_path / "other", SEED=7))
    assert not torch.equal(other.model.weight, trainer.model.weight)
    other.load_model(str(tmp_path / "run"))  # no model-best: follows the pointer (val_result None: B13)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v)
    assert other.model_epoch == 3

    other.load_model(str(tmp_path / "run"), epoch=2)
    assert torch.equal(other.model.weight, ckpt["state_dict"]["weight"])
    with pytest.raises(FileNotFoundError, match="model.pth.tar-3"):
        other.load_model(str(tmp_path / "run"), epoch=7)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        other.load_model(str(tmp_path / "nowhere"))

    fresh = nn.Linear(3 * 8 * 8, 3)
    fresh_opt = build_optimizer(fresh, cfg.OPTIM)
    fresh_sched = build_lr_scheduler(fresh_opt, cfg.OPTIM)
    assert resume_from_checkpoint(str(mdir), fresh, fresh_opt, fresh_sched) == 3
    assert torch.equal(fresh.weight, trainer.model.weight)
    assert fresh_sched.last_epoch == trainer.sched.last_epoch
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(trainer.optim.param_groups[0]["lr"])


def test_model_best_does_not_move_pointer(tmp_path):
    state = {"state_dict": {"module.w": torch.ones(2)}, "epoch": 3, "val_result": None}
    save_checkpoint(state, str(tmp_path))
    assert (tmp_path / "checkpoint").read_text().strip() == "model.pth.tar-3"
    best = dict(state, epoch=5, val_result=90.0)
    save_checkpoint(best, str(tmp_path), is_best=True, model_name="model-best.pth.tar")
    assert (tmp_path / "checkpoint").read_text().strip() == "model.pth.tar-3"  # B14
    loaded = load_checkpoint(str(tmp_path / "model-best.pth.tar"))
    assert loaded["epoch"] == 5 and list(loaded["state_dict"]) == ["w"]  # module. prefix stripped


def test_atomic_writes_keep_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json({"a": 1}, str(target))
    with pytest.raises(TypeError):
        write_json({"a": object()}, str(target))
    assert json.loads(target.read_text()) == {"a": 1}
    save_checkpoint({"state_dict": {"w": torch.zeros(1)}, "epoch": 1}, str(tmp_path))

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="no space left"):
        save_checkpoint({"state_dict": {"w": torch.ones(1)}, "epoch": 1}, str(tmp_path))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(str(tmp_path / "model.pth.tar-1"))["state_dict"]["w"], torch.zeros(1))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.pth.tar-1", "results.json"]  # no temp files


class _Interrupt(RuntimeError):
    pass


@TRAINER_REGISTRY.register(force=True)
class ToyInterruptedEngine(ToyLinearEngine):
    def after_epoch(self):
        super().after_epoch()
        if self.epoch == 1:
            raise _Interrupt("simulated crash after epoch 2")


def _epochs_run(trainer):
    seen = []
    original = trainer.run_epoch

    def run_epoch():
        seen.append(trainer.epoch)
        original()

    trainer.run_epoch = run_epoch
    return seen


def test_resume_after_interruption_matches_uninterrupted(image_root, tmp_path, caplog):
    # A small LR keeps the weights moving in epochs 3-4, so batch order and augmentation matter.
    common = dict(OPTIM__MAX_EPOCH=4, TRAIN__CHECKPOINT_FREQ=1, DATALOADER__TRAIN_X__BATCH_SIZE=2, OPTIM__LR=0.01)
    full = build(make_cfg(image_root, tmp_path / "full", **common))
    full.train()
    at_epoch2 = load_checkpoint(str(tmp_path / "full" / "linear" / "model.pth.tar-2"))["state_dict"]["weight"]
    assert (full.model.weight - at_epoch2).abs().max() > 1e-3

    cfg_b = make_cfg(image_root, tmp_path / "b", trainer="ToyInterruptedEngine", **common)
    with pytest.raises(_Interrupt):
        build(cfg_b).train()
    assert (tmp_path / "b" / "linear" / "checkpoint").read_text().strip() == "model.pth.tar-2"

    resumed = build(make_cfg(image_root, tmp_path / "b", **common))
    seen = _epochs_run(resumed)
    resumed.train()
    assert seen == [2, 3]
    for k, v in full.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[k], v, rtol=0, atol=1e-6), k
    assert resumed.optim.param_groups[0]["lr"] == pytest.approx(full.optim.param_groups[0]["lr"])

    # Rerunning a finished directory trains nothing and goes straight to evaluation.
    again = build(make_cfg(image_root, tmp_path / "full", **common))
    seen = _epochs_run(again)
    with caplog.at_level(logging.INFO):
        again.train()
    assert seen == []
    assert "already complete" in caplog.text
    assert again.last_results["accuracy"] == pytest.approx(full.last_results["accuracy"])


# ------------------------------------------------------------------------------------------ selection
def test_final_model_best_test_vs_last_step(image_root, tmp_path):
    last = build(make_cfg(image_root, tmp_path / "last", trainer="ToyScriptedEngine"))
    last.train()
    assert last.last_results["accuracy"] == pytest.approx(100 / 3)  # zero weights: ties → class 0
    assert not (tmp_path / "last" / "linear" / "model-best.pth.tar").exists()

    best = build(make_cfg(image_root, tmp_path / "best", trainer="ToyScriptedEngine",
                          TEST__FINAL_MODEL="best_test", TRAIN__CHECKPOINT_FREQ=1))
    best.train()
    mdir = tmp_path / "best" / "linear"
    ckpt = load_checkpoint(str(mdir / "model-best.pth.tar"))
    assert ckpt["epoch"] == 1 and ckpt["val_result"] == pytest.approx(100.0)
    assert (mdir / "checkpoint").read_text().strip() == "model.pth.tar-3"
    assert best.last_results["accuracy"] == pytest.approx(100.0)
    res = json.loads((tmp_path / "best" / "results.json").read_text())
    assert res["epoch"] == 1 and res["final_model"] == "best_test"


def test_best_val_uses_val_and_falls_back_without_val(image_root, tmp_path, caplog):
    trainer = build(make_cfg(image_root, tmp_path / "v", trainer="ToyScriptedEngine",
                             TEST__FINAL_MODEL="best_val"))
    splits = []
    original = trainer.test

    def spy(split=None):
        splits.append(trainer._resolve_split(split))
        return original(split)

    trainer.test = spy
    trainer.train()
    assert splits == ["val", "val", "val", "test"]  # CHECKPOINT_FREQ 0 → selection every epoch
    assert load_checkpoint(str(tmp_path / "v" / "linear" / "model-best.pth.tar"))["epoch"] == 1

    nov = build(make_cfg(image_root, tmp_path / "nv", trainer="ToyScriptedEngine", dataset="ToyColorsEngineNoVal",
                         TEST__FINAL_MODEL="best_val"))
    with caplog.at_level(logging.WARNING):
        nov.train()
    assert "no val split" in caplog.text
    assert nov.last_results["accuracy"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------ results
def test_results_json_with_cross_eval_and_hmean(image_root, tmp_path):
    class AllGood(ToyScriptedEngine):
        SCRIPT = ("good",)

    TRAINER_REGISTRY.register(AllGood, force=True, name="ToyAllGoodEngine")
    cfg = make_cfg(image_root, tmp_path / "r", trainer="ToyAllGoodEngine", TEST__CROSS_EVAL=("auto", "All"),
                   DATASET__NUM_SHOTS=2, OPTIM__MAX_EPOCH=2)
    trainer = build(cfg)
    assert trainer.cross_eval_subsets() == ["IP", "All"]
    trainer.train()
    res = json.loads((tmp_path / "r" / "results.json").read_text())

    w_oop = good_weights(OOP)
    w_all = torch.cat([w_oop, torch.zeros(len(IP), w_oop.shape[1])])  # IP rows unmatched → zero
    oop = colour_accuracy(image_root, OOP, w_oop)
    ip = colour_accuracy(image_root, IP, torch.zeros(len(IP), w_oop.shape[1]))
    all_acc = colour_accuracy(image_root, OOP + IP, w_all)
    assert ip == pytest.approx(50.0)

    assert res["trainer"] == "ToyAllGoodEngine" and res["dataset"] == "ToyColorsEngine"
    assert res["sub_classes"] == "OOP" and res["shots"] == 2 and res["seed"] == 1 and res["epoch"] == 2
    assert "weights" not in res  # MODEL.BACKBONE.WEIGHTS is a project key, absent here
    assert res["accuracy"] == pytest.approx(oop) and res["metrics"]["accuracy"] == pytest.approx(oop)
    assert res["oop"] == pytest.approx(oop) and res["ip"] == pytest.approx(ip)
    assert res["subsets"]["All"]["accuracy"] == pytest.approx(all_acc)
    assert res["hmean"] == pytest.approx(2 * oop * ip / (oop + ip))
    assert set(res["metrics"]) == {"accuracy", "error_rate", "macro_f1"}
    assert {"python", "torch", "torchvision", "open_clip", "numpy"} <= set(res["versions"])
    cfg_text = (tmp_path / "r" / "config.yaml").read_text()
    assert "ToyAllGoodEngine" in cfg_text and "SUB_CLASSES: OOP" in cfg_text  # cross-eval did not overwrite it
    assert hmean(0, 0) == 0.0 and hmean(60, 40) == pytest.approx(48.0)


def test_engine_alone_knows_no_benchmark(image_root, tmp_path):
    """A plain TrainerX evaluates only its own subset: cross-evaluation and H-mean are the
    benchmark's trainer hook (trainers.cross_eval), not the engine's."""
    from dassl.engine import TrainerX

    class Plain(TrainerX):
        build_model = ToyLinear.build_model
        model_inference = ToyLinear.model_inference
        forward_backward = ToyScriptedEngine.forward_backward
        SCRIPT = ("good",)

    assert not hasattr(Plain, "cross_eval_subsets")
    TRAINER_REGISTRY.register(Plain, force=True, name="ToyPlainEngine")
    trainer = build(make_cfg(image_root, tmp_path / "p", trainer="ToyPlainEngine", TEST__CROSS_EVAL=("auto", "All"),
                             OPTIM__MAX_EPOCH=1))
    assert trainer.extra_evaluations({"accuracy": 1.0}) == {}
    trainer.train()
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert not {"subsets", "oop", "ip", "hmean"} & set(res) and res["loaded"] is None
    assert res["accuracy"] == pytest.approx(colour_accuracy(image_root, OOP, good_weights(OOP)))


def test_cross_eval_auto_rules(image_root, tmp_path):
    trainer = build(make_cfg(image_root, tmp_path / "a", TEST__CROSS_EVAL=("auto",)))
    assert trainer.cross_eval_subsets() == ["IP"]
    ip_run = build(make_cfg(image_root, tmp_path / "b", TEST__CROSS_EVAL=("auto",), DATASET__SUB_CLASSES="IP"))
    assert ip_run.cross_eval_subsets() == []
    explicit = build(make_cfg(image_root, tmp_path / "c", TEST__CROSS_EVAL=("OOP", "All")))
    assert explicit.cross_eval_subsets() == ["All"]  # the main subset is not evaluated twice


# ------------------------------------------------------------------------------------------ evaluator
def test_classification_evaluator_matches_sklearn(tmp_path, caplog):
    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.PER_CLASS_RESULT = True
    cfg.TEST.COMPUTE_CMAT = True
    ev = build_evaluator(cfg, lab2cname={i: f"c{i}" for i in range(5)})
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(103, 5, generator=gen)
    labels = torch.randint(0, 4, (103,), generator=gen)  # class 4 never appears in y_true
    with caplog.at_level(logging.INFO):
        for chunk in range(0, 103, 10):
            ev.process(logits[chunk:chunk + 10], labels[chunk:chunk + 10], ["x"] * len(labels[chunk:chunk + 10]))
        res = ev.evaluate()
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    assert list(res) == ["accuracy", "error_rate", "macro_f1", "perclass_accuracy"]
    assert res["accuracy"] == pytest.approx(100 * accuracy_score(y_true, y_pred), abs=1e-12)
    assert res["error_rate"] == pytest.approx(100 - res["accuracy"], abs=1e-12)
    assert res["macro_f1"] == pytest.approx(
        100 * f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true)), abs=1e-12)
    per_class = [100 * np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    assert res["perclass_accuracy"] == pytest.approx(np.mean(per_class))
    cmat = torch.load(tmp_path / "cmat.pt", weights_only=True).numpy()
    np.testing.assert_allclose(cmat, confusion_matrix(y_true, y_pred, normalize="true"))
    assert f"* accuracy: {res['accuracy']:.2f}%" in caplog.text
    assert "* total: 103" in caplog.text and f"* macro_f1: {res['macro_f1']:.2f}%" in caplog.text
    ev.reset()
    with pytest.raises(RuntimeError):
        ev.evaluate()


def test_compute_accuracy_topk():
    out = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 1, 0])
    top1, top2 = compute_accuracy(out, target, topk=(1, 2))
    assert top1.item() == pytest.approx(100 / 3) and top2.item() == pytest.approx(200 / 3)


# ------------------------------------------------------------------------------------------ data
def test_data_manager_wrapper_and_transforms(image_root, tmp_path):
    cfg = make_cfg(image_root, tmp_path, DATALOADER__TRAIN_X__BATCH_SIZE=5, INPUT__INTERPOLATION="bicubic")
    dm = DataManager(cfg)
    assert dm.num_classes == 3 and dm.lab2cname == {0: "red", 1: "green", 2: "blue"}
    assert dm.num_source_domains == 0 and dm.train_loader_u is None
    assert len(dm.train_loader_x) == 12 // 5  # drop_last: 12 images, batch 5
    assert len(dm.test_loader) == 2 and dm.val_loader is not None
    batch = next(iter(dm.test_loader))
    assert set(batch) == {"img", "label", "domain", "impath", "caption", "index"}
    assert batch["img"].shape == (8, 3, 8, 8) and batch["caption"][0] == "a red square"
    assert batch["index"].tolist() == list(range(8))

    test_tfm = build_transform(cfg, is_train=False)
    names = [type(t).__name__ for t in test_tfm.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor"]
    assert str(test_tfm.transforms[0].interpolation).endswith("BICUBIC")
    cfg2 = cfg.clone()
    cfg2.defrost()
    cfg2.INPUT.SIZE = (4, 4)
    cfg2.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    train_tfm = build_transform(cfg2, is_train=True)
    assert [type(t).__name__ for t in train_tfm.transforms] == [
        "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train_tfm.transforms[0].scale == (0.08, 1.0)
    img = Image.new("RGB", (10, 6), (255, 0, 0))
    assert train_tfm(img).shape == (3, 4, 4)
    assert build_transform(cfg2, is_train=False)(img).shape == (3, 4, 4)
    cfg2.INPUT.TRANSFORMS = ("random_flipp",)
    with pytest.raises(ValueError, match='Did you mean "random_flip"'):
        build_transform(cfg2)

    missing = [Datum(impath=str(tmp_path / "nope.png"), label=0)]
    with pytest.raises(FileNotFoundError, match="nope.png"):
        DatasetWrapper(cfg, missing, transform=test_tfm)[0]


def test_samplers():
    data = [Datum(impath=f"{i}.png", label=i % 4, domain=i % 2) for i in range(40)]
    random.seed(0)
    sampler = RandomClassSampler(data, batch_size=8, n_ins=2)
    idxs = list(iter(sampler))
    assert len(idxs) % 8 == 0 and len(idxs) > 0
    for start in range(0, len(idxs), 8):
        labels = [data[i].label for i in idxs[start:start + 8]]
        assert sorted(set(labels)) == sorted(labels[::2]) and len(set(labels)) == 4
    seq = build_sampler("SeqDomainSampler", data_source=data, batch_size=4)
    doms = [data[i].domain for i in seq]
    assert doms[:4] == [0, 0, 1, 1]
    rnd = build_sampler("RandomDomainSampler", data_source=data, batch_size=4, n_domain=2)
    assert len(list(iter(rnd))) == len(rnd)
    assert list(build_sampler("SequentialSampler", data_source=data)) == list(range(40))
    with pytest.raises(ValueError, match="RandomSampler"):
        build_sampler("RandomSamplr", data_source=data)


# ------------------------------------------------------------------------------------------ utils
def test_setup_logger_idempotent_and_timestamped(tmp_path):
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        first = setup_logger(str(tmp_path))
        again = setup_logger(str(tmp_path))
        assert first == again == str(tmp_path / "log.txt")
        logging.getLogger("some.module").info("hello from a module")
        for h in root.handlers:
            h.flush()
        assert "hello from a module" in (tmp_path / "log.txt").read_text()
        other = tmp_path / "second"
        other.mkdir()
        (other / "log.txt").write_text("old run\n")
        path = setup_logger(str(other))
        assert path != str(other / "log.txt") and path.startswith(str(other / "log.txt-"))
        assert (other / "log.txt").read_text() == "old run\n"
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
                h.close()


def test_metric_meter_format():
    meter = MetricMeter()
    meter.update({"loss": torch.tensor(2.0), "acc": 50.0})
    meter.update({"loss": 1.0, "acc": 100.0})
    assert str(meter) == "loss 1.0000 (1.5000) acc 100.0000 (75.0000)"
    with pytest.raises(TypeError):
        meter.update(3.0)


def test_load_pretrained_weights_partial(tmp_path):
    src = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    dst = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))  # second layer has another shape
    before = dst[1].weight.clone()
    load_pretrained_weights(dst, str(tmp_path / "w.pth"))
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[1].weight, before)


# ------------------------------------------------------------------------------------------ isolation
def test_trainer_runs_importing_only_dassl(tmp_path):
    """A trainer defined with nothing but dassl.* trains, tests and writes results; importing dassl
    pulls in no optional package (B34) and none of the project folders."""
    script = textwrap.dedent(f"""
        import sys, os, json
        sys.path.insert(0, {ROOT!r})
        import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
        from PIL import Image
        from dassl.config import get_cfg_default
        from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
        from dassl.engine import TRAINER_REGISTRY, TrainerX, build_trainer
        from dassl.optim import build_optimizer, build_lr_scheduler
        torch.set_num_threads(1)
        root = {str(tmp_path)!r}
        items = []
        for label, rgb in enumerate([(250, 0, 0), (0, 0, 250)]):
            for i in range(3):
                p = os.path.join(root, f"{{label}}_{{i}}.png")
                Image.new("RGB", (8, 8), rgb).save(p)
                items.append(Datum(impath=p, label=label, classname=str(label)))

        @DATASET_REGISTRY.register()
        class Two(DatasetBase):
            def __init__(self, cfg):
                super().__init__(train_x=items, test=items, classnames=["0", "1"])

        @TRAINER_REGISTRY.register()
        class Lin(TrainerX):
            def build_model(self):
                self.model = nn.Linear(192, 2)
                self.optim = build_optimizer(self.model, self.cfg.OPTIM)
                self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
                self.register_model("lin", self.model, self.optim, self.sched)
            def model_inference(self, x):
                return self.model(x.flatten(1))
            def forward_backward(self, batch):
                x, y, _ = self.parse_batch_train(batch)
                loss = F.cross_entropy(self.model(x.flatten(1)), y)
                self.model_backward_and_update(loss)
                if self.batch_idx + 1 == self.num_batches:
                    self.update_lr()
                return {{"loss": loss.item()}}

        cfg = get_cfg_default()
        cfg.DATASET.NAME = "Two"; cfg.TRAINER.NAME = "Lin"; cfg.OUTPUT_DIR = os.path.join(root, "out")
        cfg.INPUT.SIZE = (8, 8); cfg.DATALOADER.NUM_WORKERS = 0; cfg.OPTIM.MAX_EPOCH = 2
        cfg.OPTIM.NAME = "sgd"; cfg.OPTIM.LR = 0.5; cfg.USE_CUDA = False; cfg.SEED = 0
        cfg.freeze()
        build_trainer(cfg).train()
        res = json.load(open(os.path.join(root, "out", "results.json")))
        bad = [m for m in sys.modules if m.split(".")[0] in ("wilds", "tensorboard", "clip", "datasets", "trainers", "open_clip")]
        print("RESULT", res["accuracy"], res["trainer"], bad)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    assert line == "RESULT 100.0 Lin []"


def test_load_state_keeps_derived_buffers_of_another_label_space():
    """Parameters load strictly; persistent buffers (CoOp's class-name embeddings) keep the model's
    values when the checkpoint is from another label space or has another shape."""
    class Learner(torch.nn.Module):
        def __init__(self, n_cls):
            super().__init__()
            self.ctx = torch.nn.Parameter(torch.zeros(2, 3))
            self.register_buffer("token_suffix", torch.full((n_cls, 3), float(n_cls)))

    def trainer(names):
        t = TrainerBase()
        t.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=names))
        t.register_model("prompt_learner", Learner(len(names)))
        return t

    saved = {"ctx": torch.ones(2, 3), "token_suffix": torch.full((2, 3), 7.0)}
    same = trainer(["a", "b"])
    same.load_state("prompt_learner", saved, {"classnames": ["a", "b"]})
    assert torch.equal(same._models["prompt_learner"].token_suffix, saved["token_suffix"])  # same space: loaded
    other = trainer(["c", "d"])  # same shape, other names: the names' embeddings must not be replaced
    other.load_state("prompt_learner", saved, {"classnames": ["a", "b"]})
    assert torch.equal(other._models["prompt_learner"].ctx, saved["ctx"])
    assert torch.equal(other._models["prompt_learner"].token_suffix, torch.full((2, 3), 2.0))
    bigger = trainer(["a", "b", "c"])  # no meta (a reference checkpoint), another shape
    bigger.load_state("prompt_learner", saved, {})
    assert torch.equal(bigger._models["prompt_learner"].token_suffix, torch.full((3, 3), 3.0))
    with pytest.raises(RuntimeError):  # parameters stay strict
        bigger.load_state("prompt_learner", {**saved, "ctx": torch.ones(4, 3)}, {})
