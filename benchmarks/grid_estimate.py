"""What the full LAION-Beyond grid costs on a GPU: exact work counts, measured FLOPs, assumed speed.

    python -m benchmarks.grid_estimate [--tflops-fp32 50] [--tflops-bf16 250] [--step-ms 10]
                                       [--feature-step-ms 1] [--test-per-class 50]
                                       [--name-tokens 3] [--caption-tokens 20] [--views 8] [--json F]

No GPU has been lent to this project, so the grid's GPU time is an **estimate**. This script makes
it one that can be checked: every count comes from the code that runs the grid, every FLOP is
measured, and what is assumed (how fast the GPU turns FLOPs into seconds, what one eager optimiser
step costs beyond its FLOPs, the sizes we cannot see offline) is an argument.

* **Cells and their schedules, exact**: the registry's methods (:mod:`scripts.methods`: zero-shot,
  zero-shot ensemble, FSNL, CoOp, CoCoOp, CLIP-Adapter, TaskRes, linear probe) × the 9 LAION-Beyond
  domains × shots 1/2/4/8/16 × seeds 1-3, each cell's config built by the grid's own call
  (:func:`configs.build_cfg` with the paper config set and rule) -- epochs, batch size -- and the OOP /
  IP class counts of each registered name (``Animals92_42``: 92 OOP, 42 IP; spec §4.6). Optimiser
  steps per epoch are Dassl's: ``N // B`` with ``N = K·C`` training images (one batch when N < B).
* **Text work per step**: FSNL runs its C class prompts (after the shared template prefix) and one
  caption per image, CoOp its C prompts after the shared context, CoCoOp B·C prompts after B
  image-conditioned prefixes -- all forward and backward to the inputs (the towers are frozen).
  CoCoOp also encodes C prompts per *test* image (OOP and IP); the other methods encode their class
  texts once per evaluation (negligible). CLIP-Adapter, TaskRes and the probe train on cached image
  features: their steps cost overhead, not FLOPs.
* **FLOPs, measured**: ``torch.utils.flop_counter.FlopCounterMode`` over the project's
  :class:`clip.TextEncoder` on a random-weight ViT-B-16 (the same code path as the trainers:
  ``prefix_states`` / ``encode_continuations``, pooled-only last block), for one prompt of
  ``1 + 4 + name + 2`` positions and one caption, forward and forward + input-gradient backward; and
  the image tower's forward on one 224-px image. Only matrix products are counted (the rest is small).
* **Image encoder**: an upper bound -- every LAION-Beyond image once (README totals: 157,382) plus
  ``--views`` augmented views of up to 3 seeds × (1+2+4+8+16) few-shot images per OOP class.

Assumptions (arguments, printed with the result):

* the sustained TFLOPS on these products, once in fp32 -- the paper configs' ``PREC``; torch leaves
  TF32 off, and an H200's fp32 peak is ~67 TFLOPS -- and once under ``PREC bf16`` / ``amp`` (dense
  bf16 peak ~990 TFLOPS, of which 512-wide products reach a fraction);
* ``--step-ms``: the cost of one optimiser step through the text tower beyond its FLOPs (eager
  kernel launches of a 12-block tower forward and backward); ``--feature-step-ms`` the same for the
  small steps on cached features;
* ``--test-per-class`` (LAION-Beyond's split sizes are not known offline; ~157 images per class in
  all) and the token lengths of names and captions.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import re  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Dict, List, Optional, Sequence, Tuple  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import add_common_args, finish, load_model, markdown_table, setup  # noqa: E402
from clip import TextEncoder  # noqa: E402
from configs import build_cfg  # noqa: E402
from dassl.cli import ArgumentParser  # noqa: E402
from scripts.domains import LAION_BEYOND_DOMAINS  # noqa: E402
from scripts.methods import get_method, get_rule  # noqa: E402

METHODS = ("zeroshot", "zeroshot_ensemble", "fsnl", "coop", "cocoop", "clip_adapter", "taskres", "linear_probe")
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
#: README totals of LAION-Beyond (400M): images of both subsets
TOTAL_IMAGES = 157_382
CONTEXT = 4  # N_CTX of FSNL's template prefix, CoOp and CoCoOp: SOT + 4 positions before the name
_COUNTS = re.compile(r"(\d+)_(\d+)$")


def class_counts(dataset: str) -> Tuple[int, int]:
    """(OOP, IP) class counts of a registered LAION-Beyond name (``Animals92_42`` -> (92, 42))."""
    match = _COUNTS.search(dataset)
    if not match:
        raise ValueError(f"{dataset}: not a <Prefix><OOP>_<IP> name")
    return int(match.group(1)), int(match.group(2))


def steps_per_epoch(images: int, batch: int) -> int:
    """Dassl's train loader: ``drop_last`` when there is at least one full batch."""
    return images // batch if images >= batch else 1


@dataclass
class Flops:
    """Measured FLOPs of the units the grid is made of."""

    prompt_fwd: float  # one class prompt after a cached prefix, forward
    prompt_train: float  # the same, forward + backward to its inputs and the prefix
    prefix_fwd: float  # one prefix (SOT + context), forward
    prefix_train: float
    caption_train: float  # one caption in full, forward + backward
    image_fwd: float  # one image through the image tower


def _count(fn: Any) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def measure_flops(model_name: str, name_tokens: int, caption_tokens: int, device: torch.device) -> Flops:
    """FLOPs per unit on ``model_name`` with random weights, through the trainers' text path."""
    loaded = load_model(model_name, device)
    model = loaded.model
    enc = TextEncoder(model)
    width = int(enc.token_embedding.weight.shape[1])
    p, s = 1 + CONTEXT, name_tokens + 2  # SOT + context | name + "." + EOT
    rows = 4  # several rows, divided out: the per-row cost is what scales

    def prefix(train: bool) -> float:
        x = torch.randn(rows, p, width, device=device, requires_grad=train)

        def run() -> None:
            states = enc.prefix_states(x)
            if train:
                sum(t.sum() for t in states).backward()
        return _count(run) / rows

    def continuation(train: bool) -> float:
        pre = torch.randn(1, p, width, device=device, requires_grad=train)
        suffix = torch.randn(rows, s, width, device=device, requires_grad=train)
        eot = torch.full((rows,), p + s - 1, dtype=torch.long, device=device)
        with torch.no_grad():
            fixed = enc.prefix_states(pre.detach())

        def run() -> None:
            out = enc.encode_continuations(fixed, suffix, None, eot)
            if train:
                out.sum().backward()
        return _count(run) / rows

    def caption() -> float:
        x = torch.randn(rows, caption_tokens, width, device=device, requires_grad=True)
        eot = torch.full((rows,), caption_tokens - 1, dtype=torch.long, device=device)
        return _count(lambda: enc(x, eot).sum().backward()) / rows

    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    image = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        image_fwd = _count(lambda: model.encode_image(image))
    return Flops(prompt_fwd=continuation(False), prompt_train=continuation(True), prefix_fwd=prefix(False),
                 prefix_train=prefix(True), caption_train=caption(), image_fwd=image_fwd)


@dataclass
class Work:
    """One method's total over the grid."""

    cells: int = 0
    steps: int = 0
    flops: float = 0.0
    encodings: int = 0  # text sequences run with gradient (training) or per test image (CoCoOp eval)
    parts: Dict[str, float] = field(default_factory=dict)

    def add(self, part: str, flops: float) -> None:
        self.flops += flops
        self.parts[part] = self.parts.get(part, 0.0) + flops


def _paper_cfg(method_name: str, dataset: str, shots: int, num_classes: int) -> Any:
    method = get_method(method_name)
    rule = get_rule("paper")
    opts = method.run_opts(shots, rule, num_classes) if method.kind == "train" else []
    return build_cfg(trainer=method.trainer, dataset=dataset, config=method.config_for("paper", shots),
                     opts=[item for pair in opts for item in pair])


def grid_work(f: Flops, methods: Sequence[str], domains: Sequence[str], shots: Sequence[int],
              seeds: Sequence[int], test_per_class: int) -> Dict[str, Work]:
    """Cells, optimiser steps and FLOPs of each method over the grid (see the module docstring)."""
    out: Dict[str, Work] = {m: Work() for m in methods}
    for dataset in domains:
        c, c_ip = class_counts(dataset)
        for name in methods:
            method, w = get_method(name), out[name]
            if method.kind != "train":
                w.cells += 1 if method.kind == "probe" else len(method.seeds)
                continue
            for k in shots:
                cfg = _paper_cfg(name, dataset, k, c)
                batch = int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
                steps = int(cfg.OPTIM.MAX_EPOCH) * steps_per_epoch(k * c, batch)
                n = len(seeds)
                w.cells += n
                w.steps += n * steps
                if name == "fsnl":
                    w.encodings += n * steps * (c + batch)
                    w.add("train", n * steps * (f.prefix_train + c * f.prompt_train + batch * f.caption_train))
                elif name == "coop":
                    w.encodings += n * steps * c
                    w.add("train", n * steps * (f.prefix_train + c * f.prompt_train))
                elif name == "cocoop":
                    w.encodings += n * steps * batch * c
                    w.add("train", n * steps * batch * (f.prefix_train + c * f.prompt_train))
                    tests = ((c * test_per_class, c), (c_ip * test_per_class, c_ip))  # OOP and IP evaluation
                    w.encodings += n * sum(images * classes for images, classes in tests)
                    w.add("eval", n * sum(images * (f.prefix_fwd + classes * f.prompt_fwd)
                                          for images, classes in tests))
    return out


def image_work(f: Flops, domains: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
               views: int) -> Tuple[int, float]:
    """(image encodings, FLOPs): every image once plus ``views`` views of the few-shot unions (upper bound)."""
    oop_classes = sum(class_counts(d)[0] for d in domains)
    few_shot = oop_classes * len(seeds) * sum(shots)
    images = TOTAL_IMAGES + views * few_shot
    return images, images * f.image_fwd


#: methods whose steps run on cached image features (no text tower in the step)
FEATURE_METHODS = ("clip_adapter", "taskres")


def estimate(work: Dict[str, Work], image_flops: float, tflops: float, step_ms: float,
             feature_step_ms: float) -> Dict[str, float]:
    """Seconds per method (FLOPs at ``tflops`` plus a fixed cost per step: ``step_ms`` for steps through
    the text tower, ``feature_step_ms`` for steps on cached features) and for the image encoder."""
    rate = tflops * 1e12
    seconds = {name: w.flops / rate + w.steps * (feature_step_ms if name in FEATURE_METHODS else step_ms) / 1000.0
               for name, w in work.items()}
    seconds["image encoder"] = image_flops / rate
    return seconds


def _fmt_count(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} "


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, repeats=1, warmup=0)
    parser.add_argument("--model", default="ViT-B-16", help="backbone whose FLOPs are measured (random weights)")
    parser.add_argument("--tflops-fp32", type=float, default=50.0,
                        help="assumed sustained TFLOPS in fp32, the paper configs' PREC (H200 peak: ~67)")
    parser.add_argument("--tflops-bf16", type=float, default=250.0,
                        help="assumed sustained TFLOPS under PREC bf16 / amp (H200 dense peak: ~990)")
    parser.add_argument("--step-ms", type=float, default=10.0,
                        help="assumed cost of one optimiser step through the text tower beyond its FLOPs")
    parser.add_argument("--feature-step-ms", type=float, default=1.0,
                        help="assumed cost of one step on cached features (CLIP-Adapter, TaskRes)")
    parser.add_argument("--test-per-class", type=int, default=50, help="assumed test images per class (CoCoOp eval)")
    parser.add_argument("--name-tokens", type=int, default=3, help="assumed BPE tokens per class name")
    parser.add_argument("--caption-tokens", type=int, default=20, help="assumed positions per caption")
    parser.add_argument("--views", type=int, default=8, help="augmented views per few-shot image (feature store)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model = "test-tiny"
    positive = (args.tflops_fp32, args.tflops_bf16, args.test_per_class, args.name_tokens, args.caption_tokens)
    if min(positive) <= 0 or min(args.step_ms, args.feature_step_ms, args.views) < 0:
        raise SystemExit("--tflops-*, --test-per-class, --name-tokens, --caption-tokens must be positive; "
                         "--step-ms, --feature-step-ms, --views >= 0")
    device = setup(args)
    f = measure_flops(args.model, args.name_tokens, args.caption_tokens, device)
    work = grid_work(f, METHODS, LAION_BEYOND_DOMAINS, SHOTS, SEEDS, args.test_per_class)
    images, image_flops = image_work(f, LAION_BEYOND_DOMAINS, SHOTS, SEEDS, args.views)
    precisions = {"fp32": args.tflops_fp32, "bf16": args.tflops_bf16}
    seconds = {prec: estimate(work, image_flops, tflops, args.step_ms, args.feature_step_ms)
               for prec, tflops in precisions.items()}
    totals = {prec: sum(s.values()) for prec, s in seconds.items()}

    def minutes(name: str) -> List[str]:
        return [f"{seconds[prec][name] / 60:.1f}" for prec in precisions]

    rows: List[List[Any]] = []
    for name, w in work.items():
        rows.append([get_method(name).label, w.cells, f"{w.steps:,}", _fmt_count(w.encodings),
                     _fmt_count(w.flops) + "FLOP"] + minutes(name))
    rows.append(["image encoder", "", "", f"{images:,} images", _fmt_count(image_flops) + "FLOP"]
                + minutes("image encoder"))
    rows.append(["**all**", sum(w.cells for w in work.values()), f"{sum(w.steps for w in work.values()):,}", "",
                 _fmt_count(sum(w.flops for w in work.values()) + image_flops) + "FLOP"]
                + [f"**{totals[prec] / 60:.1f}**" for prec in precisions])
    oop = sum(class_counts(d)[0] for d in LAION_BEYOND_DOMAINS)
    headers = ["method", "cells", "optimiser steps", "text encodings", "FLOPs"] + [
        f"minutes, {prec} at {tflops:g} TFLOPS" for prec, tflops in precisions.items()]
    md = (f"## Full LAION-Beyond grid on one GPU: an estimate ({args.model}, 9 domains, \u03a3 C_OOP = {oop}, "
          f"shots {'/'.join(map(str, SHOTS))}, seeds {'/'.join(map(str, SEEDS))})\n\n"
          + markdown_table(headers, rows)
          + f"\n\nMeasured per unit (FlopCounterMode, matrix products): a prompt after its cached prefix "
          f"{_fmt_count(f.prompt_fwd)}FLOP forward, {_fmt_count(f.prompt_train)}FLOP with backward; a prefix "
          f"{_fmt_count(f.prefix_train)}FLOP with backward; a caption of {args.caption_tokens} positions "
          f"{_fmt_count(f.caption_train)}FLOP with backward; an image {_fmt_count(f.image_fwd)}FLOP.\n"
          f"Assumed: the sustained TFLOPS in the headers; {args.step_ms:g} ms per optimiser step through the text "
          f"tower beyond its FLOPs ({args.feature_step_ms:g} ms on cached features); {args.test_per_class} test "
          f"images per class; names of {args.name_tokens} tokens. **An estimate, not a measurement.**")
    finish({"markdown": md, "flops": dict(f.__dict__), "assumptions": {
        "tflops": precisions, "step_ms": args.step_ms, "feature_step_ms": args.feature_step_ms,
        "test_per_class": args.test_per_class, "name_tokens": args.name_tokens,
        "caption_tokens": args.caption_tokens, "views": args.views},
        "methods": {name: {"cells": w.cells, "steps": w.steps, "encodings": w.encodings, "flops": w.flops,
                           "parts": w.parts, "seconds": {prec: seconds[prec][name] for prec in precisions}}
                    for name, w in work.items()},
        "image_encodings": images, "image_flops": image_flops,
        "image_seconds": {prec: seconds[prec]["image encoder"] for prec in precisions},
        "total_seconds": totals}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
