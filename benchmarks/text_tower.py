"""The text tower's written-out blocks and pooled-only last block against open_clip's blocks, side by side.

    python -m benchmarks.text_tower [--model mini-clip] [--rows 656] [--threads 1]

``clip.TextEncoder`` runs a causal tower of plain open_clip blocks with its own block loop: the
attention on contiguous matrices (``clip.text._attention``, the same math as
``nn.MultiheadAttention`` without its transposes and copies) and the last block at the pooled (EOT)
position only -- the other positions' last-block outputs are thrown away by the pooling, so only
their keys and values are needed. This script times one batch of prompts through open_clip's
blocks, the written-out blocks, and the written-out blocks with the pooled-only last block, in the
two ways the trainers use the tower: forward + backward to the token embeddings (FSNL / CoOp /
CoCoOp training; the tower is frozen, so no weight gradients) and a forward under
``torch.inference_mode`` (evaluation). The default batch is one CoCoOp training step on MiniAnimals
at 16 shots: 16 images × 41 classes = 656 prompts of 6-14 positions.

Before timing it checks that all three give the same features and embedding gradients (1e-5).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import Any, Callable, Dict, Optional, Sequence  # noqa: E402

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_common_args,
    finish,
    fmt_ratio,
    fmt_seconds,
    fmt_spread,
    load_model,
    machine_info,
    machine_markdown,
    markdown_table,
    measure,
    paired_ratio,
    setup,
)
from clip import TextEncoder  # noqa: E402
from dassl.cli import ArgumentParser  # noqa: E402


def make_batch(enc: TextEncoder, rows: int, lengths: Sequence[int], device: torch.device, seed: int):
    """``rows`` embedding rows with EOT positions cycling through ``lengths`` (minus one)."""
    g = torch.Generator().manual_seed(seed)
    width = enc.token_embedding.weight.shape[1]
    longest = max(lengths)
    embeds = torch.randn(rows, longest, width, generator=g).to(device)
    eot = torch.tensor([lengths[i % len(lengths)] - 1 for i in range(rows)], device=device)
    return embeds, eot


#: mode -> TextEncoder keywords. ``truncate=False`` on a batch as wide as its longest prompt runs the
#: same positions through open_clip's own blocks (the path before the written-out blocks).
PATHS = {
    "open_clip blocks": dict(truncate=False),
    "written-out blocks, full last block": dict(pooled_only=False),
    "written-out blocks, pooled-only last block": dict(pooled_only=True),
}


def train_step(enc: TextEncoder, embeds: torch.Tensor, eot: torch.Tensor, kw: Dict[str, bool]) -> Callable[[], Any]:
    def run() -> torch.Tensor:
        leaf = embeds.detach().requires_grad_(True)
        feats = enc(leaf, eot, **kw)
        (grad,) = torch.autograd.grad(feats.square().sum(), leaf)
        return grad
    return run


def eval_step(enc: TextEncoder, embeds: torch.Tensor, eot: torch.Tensor, kw: Dict[str, bool]) -> Callable[[], Any]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return enc(embeds, eot, **kw)
    return run


def check_equal(enc: TextEncoder, embeds: torch.Tensor, eot: torch.Tensor) -> float:
    """Largest |difference| of features and embedding gradients from open_clip's blocks, over the paths."""
    worst = 0.0
    for step in (train_step, eval_step):
        ref = step(enc, embeds, eot, PATHS["open_clip blocks"])()
        for kw in PATHS.values():
            got = step(enc, embeds, eot, kw)()
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
            worst = max(worst, float((got - ref).abs().max()))
    return worst


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, repeats=7, warmup=1)
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--rows", type=int, default=656, help="prompts in the batch (CoCoOp: images x classes)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(range(6, 15)),
                        help="prompt lengths (EOT position + 1) the rows cycle through")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.rows, args.repeats, args.warmup = "test-tiny", 16, 2, 0
    device = setup(args)
    loaded = load_model(args.model, device, args.prec, args.seed)
    enc = TextEncoder(loaded.model)
    if not enc.can_reuse_prefix:
        raise SystemExit(f"{args.model}: its text tower does not run the pooled-only path")
    embeds, eot = make_batch(enc, args.rows, args.lengths, device, args.seed)
    worst = check_equal(enc, embeds, eot)
    modes: Dict[str, Callable[[], Any]] = {}
    for kind, step in (("train", train_step), ("eval", eval_step)):
        for path, kw in PATHS.items():
            modes[f"{kind}: {path}"] = step(enc, embeds, eot, kw)
    res = measure(modes, args.repeats, args.warmup, device)
    rows = []
    for kind in ("train", "eval"):
        base = res[f"{kind}: open_clip blocks"]
        for path in PATHS:
            m = res[f"{kind}: {path}"]
            rows.append([m.name, fmt_seconds(m.median), fmt_spread(m.times),
                         fmt_ratio(base.median / m.median), fmt_ratio(paired_ratio(base, m))])
    blocks = len(enc.transformer.resblocks)
    info = machine_info(device, args.threads)
    md = (f"## Text tower: written-out blocks ({args.model}, {blocks} blocks, {args.rows} prompts of "
          f"{min(args.lengths)}-{max(args.lengths)} positions)\n\n"
          + markdown_table(["mode", "median", "min–max", "speed-up", "paired"], rows)
          + f"\n\nAll paths agree with open_clip's blocks to {worst:.1e} (features and embedding gradients). "
          f"Median of {args.repeats} interleaved repeats after {args.warmup} warm-up call(s).\n\n"
          + machine_markdown(info))
    finish({"markdown": md, "machine": info, "max_abs_diff": worst,
            "modes": {k: v.to_dict() for k, v in res.items()}}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
