"""``pretrain``: pre-train ``mini-clip`` from scratch on the emoji corpus (fp16 safetensors + log)."""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm import tqdm

from dassl.utils import atomic_write, check_cpu_option, read_json_object, usable_cpus
from scripts.parse_test_res import check_output_target

from .common import (
    ASSETS_DIR,
    LOG_FILE,
    MODEL_NAME,
    PRETRAIN_TEMPLATES,
    SPLIT_FILE,
    WEIGHTS_FILE,
    Assets,
    emoji_captions,
    load_assets,
    write_json_file,
)
from .evaluate import create_mini_clip, evaluate
from .views import PRETRAIN_AUG, augment, normalize, rgba_tensor

log = logging.getLogger(__name__)

def default_threads() -> int:
    """Two torch threads, as the shipped weights were trained, or fewer where fewer cores are usable."""
    return min(2, usable_cpus())


def _param_groups(model, weight_decay: float) -> List[Dict[str, object]]:
    """open_clip's rule: no weight decay on gains, biases, embeddings' 1-d params and logit scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    """Endless batches, each without repeats (a repeat would be a false negative for ClipLoss)."""
    buf = np.zeros(0, dtype=np.int64)
    while True:
        while len(buf) < batch_size:
            buf = np.concatenate([buf, rng.permutation(n)])
        batch, buf = buf[:batch_size], buf[batch_size:]
        if len(np.unique(batch)) < len(batch):
            # the tail of one permutation met the head of the next: take a fresh permutation
            batch = rng.permutation(n)[:batch_size]
        yield batch


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * progress))


def fp16_state_dict(model) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}


def written_weights(path: Path) -> bool:
    """A weights file this job wrote: a safetensors file whose metadata names ``mini-clip``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("model") == MODEL_NAME
    except (OSError, SafetensorError):
        return False


def written_log(path: Path) -> bool:
    """A pre-training log this job wrote: a JSON object naming ``mini-clip`` and holding a ``history``."""
    data = read_json_object(path)
    return data is not None and data.get("model") == MODEL_NAME and "history" in data


def corpus_size(directory: Path = ASSETS_DIR) -> int:
    """The number of emoji in the pre-training corpus, from the split file alone (no image is read)."""
    split = read_json_object(Path(directory) / SPLIT_FILE)
    if split is None or not isinstance(split.get("pretrain_indices"), list):
        raise ValueError(f"{Path(directory) / SPLIT_FILE}: missing or not a Mini-Beyond split file; "
                         "rebuild it with `python -m tools.mini_beyond split`")
    return len(split["pretrain_indices"])


def check_pretrain_args(out: Path, log_path: Path, steps: int, minutes: Optional[float], batch_size: int,
                        lr: float, threads: int, corpus: Optional[int] = None) -> None:
    """Refuse (one-line ``ValueError`` / ``OSError``, naming the option) counts that train nothing or
    cannot run, and targets the job must not write, before any step: ``--steps 0`` wrote random
    weights over the shipped ones and exited 0; ``--out`` a directory failed after the whole run;
    a user's file at ``--out`` or beside it (``pretrain_log.json``) was overwritten; a ``--batch-size``
    above the ``corpus`` size trained on batches of the whole corpus while the log recorded the size
    asked for (a batch holds no emoji twice: a repeat is a false negative of the contrastive loss)."""
    if minutes is None and steps < 1:
        raise ValueError(f"--steps {steps}: must be >= 1 (0 steps would save an untrained model)")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"--minutes {minutes}: the time budget must be > 0")
    if batch_size < 2:
        raise ValueError(f"--batch-size {batch_size}: the contrastive loss needs at least 2 pairs per batch")
    if corpus is not None and batch_size > corpus:
        raise ValueError(f"--batch-size {batch_size}: more than the {corpus} emoji of the pre-training corpus "
                         f"(a batch holds each at most once); give at most {corpus}")
    if not lr > 0:
        raise ValueError(f"--lr {lr}: must be > 0")
    check_cpu_option(threads, zero_means_all=False)
    if Path(out).name == log_path.name:
        raise ValueError(f"--out {out}: {log_path.name} is the name of the log written beside the weights; "
                         "give the weights another name")
    check_output_target(str(out), f"--out {out}", "mini-clip weights file", written_weights)
    check_output_target(str(log_path), f"{log_path} (the log beside --out {out})", "pre-training log", written_log)


class _Pretrainer:
    """Model, optimiser and every random stream of one pre-training run, seeded at construction."""

    def __init__(self, assets: Assets, seed: int, batch_size: int, lr: float, weight_decay: float,
                 warmup_frac: float) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.model, self.tokenizer = create_mini_clip()
        self.model.train()
        corpus = np.asarray(assets.split["pretrain_indices"], dtype=np.int64)
        meta = assets.meta
        self.corpus_size = len(corpus)
        self.tokens = torch.stack([self.tokenizer(emoji_captions(str(meta[i]["name"]), str(meta[i]["subgroup"])))
                                   for i in corpus])
        self.images = rgba_tensor(assets.rgba[corpus])
        self.loss_fn = ClipLoss()
        self.opt = torch.optim.AdamW(_param_groups(self.model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
        self.gen = torch.Generator().manual_seed(seed)
        self.batches = _batches(len(corpus), batch_size, np.random.default_rng(seed))
        self.lr, self.warmup_frac = lr, warmup_frac

    def warmup_steps(self, total: int) -> int:
        return max(1, int(self.warmup_frac * total))

    def step(self, step: int, total: int) -> float:
        idx = torch.from_numpy(next(self.batches))
        for g in self.opt.param_groups:
            g["lr"] = _lr_at(step, total, self.warmup_steps(total), self.lr)
        x = normalize(augment(self.images[idx], self.gen, PRETRAIN_AUG))
        txt = self.tokens[idx, torch.randint(self.tokens.shape[1], (len(idx),), generator=self.gen)]
        img_f = self.model.encode_image(x, normalize=True)
        txt_f = self.model.encode_text(txt, normalize=True)
        loss = self.loss_fn(img_f, txt_f, self.model.logit_scale.exp())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))  # as open_clip's training loop does
        return loss.item()


def pretrain(
    out: Path = ASSETS_DIR / WEIGHTS_FILE,
    steps: int = 600,
    minutes: Optional[float] = None,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_frac: float = 0.05,
    threads: Optional[int] = None,
    log_every: int = 10,
    assets: Optional[Assets] = None,
    log_path: Optional[Path] = None,
) -> Dict[str, object]:
    """Pre-train ``mini-clip`` from scratch on the corpus; write fp16 safetensors and the log.

    Reproducible: same seed, step count and thread count on the same machine give the same
    weights. ``minutes`` derives the step count from a few timed steps of a throw-away run (so
    it depends on the machine load); the run itself is then exactly the ``steps=N`` run, and the
    log records N.
    """
    out = Path(out)
    log_path = Path(log_path) if log_path else out.with_name(LOG_FILE)
    threads = default_threads() if threads is None else threads
    check_pretrain_args(out, log_path, steps, minutes, batch_size, lr, threads,
                        corpus=len(assets.split["pretrain_indices"]) if assets else corpus_size())
    torch.set_num_threads(threads)
    assets = assets or load_assets()
    if minutes is not None:
        probe = _Pretrainer(assets, seed, batch_size, lr, weight_decay, warmup_frac)
        probe.step(0, 100)  # first step pays one-off allocation costs
        t = time.time()
        for s in range(3):
            probe.step(s + 1, 100)
        per_step = (time.time() - t) / 3
        steps = max(1, int(minutes * 60 / per_step))
        log.info("%.2f s/step -> %d steps for %.1f minutes", per_step, steps, minutes)
        del probe
    run = _Pretrainer(assets, seed, batch_size, lr, weight_decay, warmup_frac)
    model = run.model
    log.info("corpus: %d emoji x %d templates", run.corpus_size, run.tokens.shape[1])

    t0 = time.time()
    history: List[Dict[str, float]] = []
    bar = tqdm(range(steps), desc="pretrain mini-clip")
    running = None
    for s in bar:
        loss = run.step(s, steps)
        running = loss if running is None else 0.9 * running + 0.1 * loss
        if s % log_every == 0 or s == steps - 1:
            history.append({"step": s, "loss": round(loss, 5), "lr": _lr_at(s, steps, run.warmup_steps(steps), lr),
                            "logit_scale": round(float(model.logit_scale.exp()), 4),
                            "elapsed_s": round(time.time() - t0, 1)})
            bar.set_postfix(loss=f"{running:.3f}")
    train_s = time.time() - t0

    # atomically: a killed save leaves the previous weights whole (save_file wrote the target in place)
    data = save(fp16_state_dict(model), metadata={"model": MODEL_NAME, "seed": str(seed), "steps": str(steps)})
    atomic_write(str(out), lambda f: f.write(data), mode="wb")
    # evaluate what is shipped: the fp16-rounded weights, loaded the way users load them
    model_eval, tokenizer = create_mini_clip(out)
    results = evaluate(model_eval, tokenizer, assets, seed=0)
    record = {
        "model": MODEL_NAME,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_steps": run.warmup_steps(steps),
        "threads": threads,
        "corpus_emoji": run.corpus_size,
        "templates": list(PRETRAIN_TEMPLATES),
        "train_wall_s": round(train_s, 1),
        "s_per_step": round(train_s / max(1, steps), 3),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
        "eval": results,
        "history": history,
    }
    write_json_file(log_path, record)
    log.info("pre-training done: %d steps in %.1f min; zero-shot mean %s", steps, train_s / 60, results["mean"])
    return record


