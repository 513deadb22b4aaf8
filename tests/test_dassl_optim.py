"""Optimizer factory and the closed-form epoch scheduler (spec §10.5)."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn as nn

from dassl.config import get_cfg_default
from dassl.optim import build_lr_scheduler, build_optimizer

BASE = 0.002


def _optim_cfg(**kw):
    cfg = get_cfg_default().OPTIM
    cfg.NAME = "sgd"
    cfg.LR = BASE
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _lrs(ocfg, n_epochs):
    """LR in effect during each epoch when the scheduler is stepped once per epoch."""
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, ocfg)
    sched = build_lr_scheduler(opt, ocfg)
    out = []
    for _ in range(n_epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_constant_warmup_matches_closed_form():
    T = 10
    lrs = _lrs(_optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=T, WARMUP_EPOCH=1, WARMUP_TYPE="constant",
                          WARMUP_CONS_LR=1e-5, WARMUP_RECOUNT=True), T)
    assert lrs[0] == pytest.approx(1e-5)
    for e in range(1, T):
        expected = BASE * 0.5 * (1 + math.cos(math.pi * (e - 1) / T))
        assert lrs[e] == pytest.approx(expected, rel=1e-12), e
    assert lrs[1] == pytest.approx(BASE)
    assert lrs[T - 1] > 0  # the last epoch still has a small non-zero LR


def test_cosine_without_warmup():
    T = 6
    lrs = _lrs(_optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=T), T)
    for e in range(T):
        assert lrs[e] == pytest.approx(BASE * 0.5 * (1 + math.cos(math.pi * e / T)), rel=1e-12)


def test_linear_warmup_recount_and_not():
    T, W = 8, 3
    kw = dict(LR_SCHEDULER="cosine", MAX_EPOCH=T, WARMUP_EPOCH=W, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-6)
    rec = _lrs(_optim_cfg(WARMUP_RECOUNT=True, **kw), T)
    norec = _lrs(_optim_cfg(WARMUP_RECOUNT=False, **kw), T)
    for lrs in (rec, norec):
        assert lrs[0] == pytest.approx(1e-6)
        assert lrs[1] == pytest.approx(BASE * 1 / W)
        assert lrs[2] == pytest.approx(BASE * 2 / W)
    for e in range(W, T):
        assert rec[e] == pytest.approx(BASE * 0.5 * (1 + math.cos(math.pi * (e - W) / T)))
        assert norec[e] == pytest.approx(BASE * 0.5 * (1 + math.cos(math.pi * e / T)))


def test_single_and_multi_step():
    lrs = _lrs(_optim_cfg(LR_SCHEDULER="single_step", STEPSIZE=(3,), GAMMA=0.5, MAX_EPOCH=9), 9)
    assert lrs == pytest.approx([BASE * 0.5 ** (e // 3) for e in range(9)])
    # STEPSIZE -1 means no decay within MAX_EPOCH
    lrs = _lrs(_optim_cfg(LR_SCHEDULER="single_step", STEPSIZE=(-1,), MAX_EPOCH=5), 5)
    assert lrs == pytest.approx([BASE] * 5)
    lrs = _lrs(_optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=(2, 5), GAMMA=0.1, MAX_EPOCH=7), 7)
    expected = [BASE, BASE, BASE * 0.1, BASE * 0.1, BASE * 0.1, BASE * 0.01, BASE * 0.01]
    assert lrs == pytest.approx(expected)


def test_scheduler_state_dict_roundtrip_weights_only():
    ocfg = _optim_cfg(LR_SCHEDULER="cosine", MAX_EPOCH=10, WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, ocfg)
    sched = build_lr_scheduler(opt, ocfg)
    for _ in range(4):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # B15: no pickled scheduler object inside

    model2 = nn.Linear(3, 2)
    opt2 = build_optimizer(model2, ocfg)
    sched2 = build_lr_scheduler(opt2, ocfg)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    ref = []
    for _ in range(4):
        opt.step()
        sched.step()
        ref.append(opt.param_groups[0]["lr"])
    got = []
    for _ in range(4):
        opt2.step()
        sched2.step()
        got.append(opt2.param_groups[0]["lr"])
    assert got == pytest.approx(ref, rel=1e-15)


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("amsgrad", torch.optim.Adam),
                                      ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop),
                                      ("radam", torch.optim.RAdam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_kinds(name, cls):
    opt = build_optimizer(nn.Linear(2, 2), _optim_cfg(NAME=name, WEIGHT_DECAY=0.01))
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.01)
    if name == "amsgrad":
        assert opt.param_groups[0]["amsgrad"] is True
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == pytest.approx(0.9)


def test_staged_lr_and_unknown_names():
    model = nn.Sequential()
    model.add_module("backbone", nn.Linear(4, 4))
    model.add_module("head", nn.Linear(4, 2))
    opt = build_optimizer(model, _optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1))
    base_group, new_group = opt.param_groups
    assert base_group["lr"] == pytest.approx(BASE * 0.1) and new_group["lr"] == pytest.approx(BASE)
    assert {id(p) for p in new_group["params"]} == {id(p) for p in model.head.parameters()}
    with pytest.raises(ValueError, match='Did you mean "sgd"'):
        build_optimizer(model, _optim_cfg(NAME="sdg"))
    with pytest.raises(ValueError, match="cosine"):
        build_lr_scheduler(build_optimizer(model, _optim_cfg()), _optim_cfg(LR_SCHEDULER="cosin"))
