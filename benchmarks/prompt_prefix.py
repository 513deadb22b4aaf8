"""CoOp's and CoCoOp's learned context run once per prefix instead of once per prompt, side by side.

    python -m benchmarks.prompt_prefix [--model mini-clip] [--classes 41] [--images 16] [--threads 1]

In CoOp's prompts "SOT ctx_1 … ctx_n NAME . EOT" with a shared context (class token at the end) the
first 1 + n positions are the same in every class prompt, and under the causal mask so are their
hidden states; CoCoOp's are the same in the C prompts of one image (the context shifted by that
image's meta-net output). The trainers run those positions once per prefix, with gradient
(``TextEncoder.prefix_states``), and each prompt only its own positions against the cached
keys / values (``TextEncoder.encode_continuations``), in length groups where a group pays for its
extra pass (``clip.text.GROUP_OVERHEAD``). This script times one training step's text work --
forward and the backward to the learned prefix and the frozen name rows -- both ways:

* ``CoOp``: C prompts sharing one prefix (one CoOp step, any batch size);
* ``CoCoOp``: B images × C classes, one prefix per image (one CoCoOp step of batch B).

and the cached path two ways (``TextEncoder(prefix_in_place=…)``): each prompt attending to its
prefix's keys / values in place (``clip.text._prefix_attention``, the CPU's default for several
prefixes), and the prefix copied in front of every prompt's own keys / values for one fused attention
kernel (the default for one prefix and on other devices).

Before timing it checks that both ways give the same features and gradients (1e-5). Names are
random rows of 1-4 positions (Mini-Beyond's names are 1-4 BPE tokens).
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import Any, Callable, Dict, Optional, Sequence, Tuple  # noqa: E402

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
from clip.text import TEXT_BUCKETS, length_buckets  # noqa: E402
from dassl.cli import ArgumentParser  # noqa: E402

Step = Callable[[], Tuple[torch.Tensor, ...]]


def make_inputs(width: int, prefixes: int, prefix_len: int, classes: int, seed: int, device: torch.device):
    """``prefixes [G, P, W]``, per-class suffix rows ``[C, S, W]`` (name, ".", EOT, padding) and EOTs."""
    g = torch.Generator().manual_seed(seed)
    name_lengths = [1 + (i * 7) % 4 for i in range(classes)]
    suffix_len = max(name_lengths) + 2
    prefix = torch.randn(prefixes, prefix_len, width, generator=g).to(device)
    suffix = torch.randn(classes, suffix_len, width, generator=g).to(device)
    eot = torch.tensor([prefix_len + n + 1 for n in name_lengths], device=device)
    return prefix, suffix, eot


def text_step(enc: TextEncoder, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor, cached: bool) -> Step:
    """One step's text work for every (prefix, class) pair: features and the gradients of a loss to the
    prefixes and name rows. ``cached``: each prefix through the tower once and each prompt's own
    positions against its cached keys / values, as the trainers call it (one prefix: the C prompts in
    length groups; several, CoCoOp: per group of equal-length classes, the prompts prefix by prefix);
    else every prompt in full, one call (the trainers' path before prefix reuse)."""
    g, c = prefix.shape[0], suffix.shape[0]
    img = torch.arange(g, device=prefix.device).repeat_interleave(c)
    cls = torch.arange(c, device=prefix.device).repeat(g)
    groups = [torch.tensor(rows, device=prefix.device) for rows in length_buckets((eot + 1).tolist(), TEXT_BUCKETS)]
    order = torch.cat(groups)

    def run() -> Tuple[torch.Tensor, ...]:
        p, s = prefix.detach().requires_grad_(True), suffix.detach().requires_grad_(True)
        if cached and g == 1:
            feats = enc.encode_continuations(enc.prefix_states(p), s, None, eot, buckets=TEXT_BUCKETS)
        elif cached:
            states = enc.prefix_states(p)
            parts = [enc.encode_continuations(states, s[rows].repeat(g, 1, 1), None, eot[rows].repeat(g)).view(g, len(rows), -1)
                     for rows in groups]
            feats = torch.cat(parts, dim=1)[:, order.argsort()].reshape(g * c, -1)
        else:
            feats = enc(torch.cat([p[img], s[cls]], dim=1), eot[cls])
        return (feats.detach(),) + torch.autograd.grad(feats.square().sum(), (p, s))
    return run


def check_equal(full: Step, cached: Step) -> float:
    worst = 0.0
    for a, b in zip(full(), cached()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        worst = max(worst, float((a - b).abs().max()))
    return worst


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, repeats=7, warmup=1)
    parser.add_argument("--model", default="mini-clip")
    parser.add_argument("--classes", type=int, default=41, help="C (MiniAnimals' OOP classes by default)")
    parser.add_argument("--images", type=int, default=16, help="CoCoOp's batch: one prefix per image")
    parser.add_argument("--n-ctx", type=int, default=4, help="context vectors (the prefix is SOT + n_ctx)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.classes, args.images, args.repeats, args.warmup = "test-tiny", 6, 3, 2, 0
    device = setup(args)
    loaded = load_model(args.model, device, args.prec, args.seed)
    enc = TextEncoder(loaded.model, prefix_in_place=True)
    copied = TextEncoder(loaded.model, prefix_in_place=False)
    if not enc.can_reuse_prefix:
        raise SystemExit(f"{args.model}: its text tower does not run cached prefixes")
    width = int(enc.token_embedding.weight.shape[1])
    modes: Dict[str, Callable[[], Any]] = {}
    worst = 0.0
    for method, prefixes in (("CoOp", 1), ("CoCoOp", args.images)):
        prefix, suffix, eot = make_inputs(width, prefixes, 1 + args.n_ctx, args.classes, args.seed, device)
        full, cached = (text_step(enc, prefix, suffix, eot, c) for c in (False, True))
        cached_copy = text_step(copied, prefix, suffix, eot, True)
        worst = max(worst, check_equal(full, cached), check_equal(full, cached_copy))
        modes[f"{method}: every prompt in full"] = full
        modes[f"{method}: prefix once, copied per prompt"] = cached_copy
        modes[f"{method}: prefix once, in place"] = cached
    res = measure(modes, args.repeats, args.warmup, device)
    rows = []
    for method in ("CoOp", "CoCoOp"):
        base = res[f"{method}: every prompt in full"]
        for name in (base.name, f"{method}: prefix once, copied per prompt", f"{method}: prefix once, in place"):
            m = res[name]
            rows.append([m.name, fmt_seconds(m.median), fmt_spread(m.times),
                         fmt_ratio(base.median / m.median), fmt_ratio(paired_ratio(base, m))])
    info = machine_info(device, args.threads)
    md = (f"## Learned context once per prefix ({args.model}, C = {args.classes}, CoCoOp batch {args.images}, "
          f"prefix SOT + {args.n_ctx} context positions)\n\n"
          + markdown_table(["mode", "median", "min–max", "speed-up", "paired"], rows)
          + f"\n\nBoth ways agree to {worst:.1e} (features, prefix and name-row gradients). "
          f"Median of {args.repeats} interleaved repeats after {args.warmup} warm-up call(s).\n\n"
          + machine_markdown(info))
    finish({"markdown": md, "machine": info, "max_abs_diff": worst,
            "modes": {k: v.to_dict() for k, v in res.items()}}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
