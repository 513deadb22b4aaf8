"""One FSNL training step (forward + backward + SGD) in three modes, plus the text-tower lower bound.

    python -m benchmarks.fsnl_step [--model ViT-B-16] [--classes 100] [--batch 32]
                                   [--device cpu|cuda] [--prec fp32|bf16|amp] [--threads N]
                                   [--repeats 5] [--warmup 1] [--json F]

All modes drive the real ``FSNL_openclip`` trainer (``forward_backward``: the real loss, the real
optimiser step) on a synthetic LAION-Beyond-layout subset with C classes and one prepared batch of B
images with captions:

* **reference-style**: the trainer with its prompt and caption construction replaced by the
  per-string version of spec §2.5/§2.7 (``benchmarks.prompt_building``), the text tower run on all
  77 positions (``truncate=False``) and the frozen image encoder run on every step;
* **ours, online**: the trainer as shipped (name slots, one gather/scatter on prompts cut after the
  longest EOT, truncated text tower),
  image encoder on every step (``DATALOADER.FEATURE_CACHE.VIEWS 0``, the paper's setting);
* **ours, cached**: the same with the batch's image features taken from the feature cache
  (``DATALOADER.FEATURE_CACHE.VIEWS K``): only the text path runs;
* **bare text fwd+bwd**: the text tower alone, forward and backward, over the same already-built
  and already-truncated embeddings (C class prompts + B captions): a floor for any FSNL step.

Data loading is excluded from every mode (the batch is prepared once), which favours the
reference: it would also decode and augment B images per step, the cached mode would not.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.prompt_building import (  # noqa: E402
    reference_class_prompts,
    reference_encode_strings,
    reference_swap_captions,
)
from clip import PromptBatch, cpu_supports_bf16  # noqa: E402
from dassl.cli import ArgumentParser  # noqa: E402

TARGET_ONLINE = 1.5
TARGET_CACHED = 10.0
TARGET_BARE = 1.5
COMPONENTS = ("image encoder", "prompt/caption construction", "text forward", "rest")


class Breakdown:
    """Wall time spent inside wrapped callables during one step (synchronised on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: Dict[str, float] = {}
        self.records: Dict[str, List[Dict[str, float]]] = {}

    def wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            common.sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            common.sync(self.device)
            self.totals[key] = self.totals.get(key, 0.0) + time.perf_counter() - t0
            return out
        return timed

    def step(self, mode: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` recording, per call, the total and how much of it each wrapped part took."""
        def run() -> Any:
            self.totals = {}
            common.sync(self.device)
            t0 = time.perf_counter()
            out = fn()
            common.sync(self.device)
            total = time.perf_counter() - t0
            t = dict(self.totals)
            text = t.get("text forward", 0.0)
            construction = sum(t.get(k, 0.0) for k in ("class text", "caption text", "swap")) - text
            record = {"total": total, "image encoder": t.get("image encoder", 0.0),
                      "prompt/caption construction": max(construction, 0.0), "text forward": text}
            record["rest"] = max(total - record["image encoder"] - record["prompt/caption construction"]
                                 - text, 0.0)
            self.records.setdefault(mode, []).append(record)
            return out
        return run

    def medians(self, mode: str, skip: int) -> Dict[str, float]:
        records = self.records.get(mode, [])[skip:]
        if not records:
            return {}
        return {k: statistics.median(r[k] for r in records) for k in records[0]}


class TimedEncoder:
    """Stands in for ``FSNLModel.text_encoder`` and times its forward calls.

    With ``plain`` the prefix reuse and length buckets are switched off (the truncated tower as it
    was before them), so their gain is measured side by side.
    """

    def __init__(self, encoder: Any, breakdown: Breakdown, plain: bool = False) -> None:
        self.encoder = encoder
        self.plain = plain
        self.call = breakdown.wrap("text forward", encoder.__call__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.plain:
            kwargs.pop("shared_prefix", None)
            kwargs.pop("buckets", None)
        return self.call(*args, **kwargs)


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Shadow ``obj.name`` with an instance attribute for the duration of the block."""
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if had:
            object.__setattr__(obj, name, old)
        else:
            object.__delattr__(obj, name)


class ReferenceStyle:
    """The reference's text path (spec §2.4-§2.7) on top of the trainer's learned names."""

    def __init__(self, trainer: Any, seed: int) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.classnames = list(trainer.model.classnames)
        self.hint = trainer.hint or "object"
        self.captions = [d.caption for d in trainer.dm.dataset.train_x]
        self.rng = random.Random(seed)
        loaded = trainer.clip
        self.tokenizer = loaded.tokenizer
        self.token_embedding = loaded.model.token_embedding
        self.context_length = loaded.context_length

    def learned(self) -> Dict[str, torch.Tensor]:
        """The per-class tensors, looked up per call as the reference's ParameterDict is."""
        nl = self.model.name_learner
        return {n: nl.name_tensor(i) for i, n in enumerate(self.classnames)}

    def class_embeddings(self) -> Any:
        return reference_class_prompts(self.classnames, self.hint, self.learned(), self.tokenizer,
                                       self.token_embedding, self.context_length)

    def class_text_features(self) -> torch.Tensor:
        embeds, eot = self.class_embeddings()
        return F.normalize(self.model.text_encoder(embeds, eot, truncate=False).float(), dim=-1)

    def swapped_sequences(self, indices: Sequence[int], labels: torch.Tensor) -> List[str]:
        return reference_swap_captions([self.captions[int(i)] for i in indices], self.classnames, self.rng)

    def string_embeddings(self, texts: Sequence[str]) -> Any:
        return reference_encode_strings(texts, self.classnames, self.learned(), self.tokenizer,
                                        self.token_embedding, self.context_length)

    def text_features_for(self, texts: Sequence[str]) -> torch.Tensor:
        embeds, eot = self.string_embeddings(texts)
        return F.normalize(self.model.text_encoder(embeds, eot, truncate=False).float(), dim=-1)


def check_equivalence(trainer: Any, ref: ReferenceStyle, indices: Sequence[int], labels: torch.Tensor) -> Dict[str, Any]:
    """Both text paths must compute the same thing before their speed is compared."""
    model = trainer.model
    with torch.no_grad(), trainer.autocast():
        ours_e, ours_eot = model.prompt_bank(model.name_learner.bank)
        ref_e, ref_eot = ref.class_embeddings()
        # Ours may stop after the longest EOT (PromptBank trim); nothing later is ever read.
        if not (torch.equal(ours_e, ref_e[:, :ours_e.shape[1]]) and torch.equal(ours_eot, ref_eot)):
            raise AssertionError("class prompt embeddings differ between our path and the reference-style one")
        ours_f = model.class_text_features()
        ref_f = ref.class_text_features()
        torch.testing.assert_close(ours_f, ref_f, atol=2e-3 if trainer.precision.autocast_dtype else 1e-5,
                                   rtol=1e-3)
        own = trainer.own_sequences(indices, labels)
        batch = PromptBatch.build(own, model.name_learner.lengths, model.slot_token_ids,
                                  model.context_length).to(trainer.device)
        ours_c = batch.embed(model.token_weight, model.name_learner.bank)
        ref_c, ref_ceot = ref.string_embeddings([ref.captions[int(i)] for i in indices])
        if not (torch.equal(ours_c, ref_c[:, :ours_c.shape[1]]) and torch.equal(batch.eot_idx, ref_ceot)):
            raise AssertionError("caption embeddings differ between our path and the reference-style one")
    return {"class_prompt_length": int(ours_eot.max()) + 1, "caption_length": int(batch.eot_idx.max()) + 1,
            "context_length": int(model.context_length)}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device = common.setup(args)
    info = common.machine_info(device, args.threads)
    with tempfile.TemporaryDirectory(prefix="fsnl_bench_") as tmp:
        data_root = Path(tmp) / "data"
        common.write_beyond_dataset(str(data_root), args.classes, train_per_class=2, image_size=32,
                                    seed=args.seed)
        t0 = time.perf_counter()
        trainer = common.build_fsnl_trainer(
            str(data_root), str(Path(tmp) / "out"), args.model, device, args.prec, batch_size=args.batch,
            test_batch_size=args.batch, shots=2, seed=args.seed + 1)
        build_s = time.perf_counter() - t0
        fast = None
        if args.bf16_mode and args.prec == "fp32" and (device.type == "cuda" or cpu_supports_bf16()):
            fast = common.build_fsnl_trainer(
                str(data_root), str(Path(tmp) / "out_bf16"), args.model, device, "bf16", batch_size=args.batch,
                test_batch_size=args.batch, shots=2, seed=args.seed + 1)
        return measure_steps(args, device, info, trainer, build_s, fast)


def measure_steps(args: argparse.Namespace, device: torch.device, info: Dict[str, Any], trainer: Any,
                  build_s: float, fast: Any = None) -> Dict[str, Any]:
    trainer.num_batches, trainer.batch_idx = 1 << 30, 0  # never reach the per-epoch LR step
    batch = next(iter(trainer.train_loader_x))
    if len(batch["label"]) != args.batch:
        raise SystemExit(f"got a batch of {len(batch['label'])}, wanted {args.batch}")
    indices = batch["index"].tolist()
    labels = batch["label"]
    image_batch = {"img": batch["img"], "label": labels, "index": batch["index"]}
    # What the feature-cache loader yields: unnormalised frozen features of (one view of) each image.
    cached_batch = {"feat": trainer.encode_images(batch["img"], normalize=False).cpu(), "label": labels,
                    "index": batch["index"]}
    ref = ReferenceStyle(trainer, args.seed)
    lengths = check_equivalence(trainer, ref, indices, labels)

    model = trainer.model
    breakdown = Breakdown(device)

    @contextlib.contextmanager
    def instrumented(reference: bool, plain: bool = False, trainer: Any = trainer) -> Iterator[None]:
        source = ref if reference else None
        model = trainer.model
        encoder = TimedEncoder(model.text_encoder, breakdown, plain=plain or reference)
        with contextlib.ExitStack() as stack:
            stack.enter_context(patched(model, "text_encoder", encoder))
            stack.enter_context(patched(trainer, "encode_images",
                                        breakdown.wrap("image encoder", type(trainer).encode_images.__get__(trainer))))
            cls_fn = source.class_text_features if source else type(model).class_text_features.__get__(model)
            cap_fn = source.text_features_for if source else type(model).text_features_for.__get__(model)
            swap_fn = source.swapped_sequences if source else type(trainer).swapped_sequences.__get__(trainer)
            stack.enter_context(patched(model, "class_text_features", breakdown.wrap("class text", cls_fn)))
            stack.enter_context(patched(model, "text_features_for", breakdown.wrap("caption text", cap_fn)))
            stack.enter_context(patched(trainer, "swapped_sequences", breakdown.wrap("swap", swap_fn)))
            yield

    def reference_step() -> Any:
        with instrumented(reference=True):
            return trainer.forward_backward(image_batch)

    def online_step() -> Any:
        with instrumented(reference=False):
            return trainer.forward_backward(image_batch)

    def cached_step() -> Any:
        with instrumented(reference=False):
            return trainer.forward_backward(cached_batch)

    def cached_plain_step() -> Any:
        with instrumented(reference=False, plain=True):
            return trainer.forward_backward(cached_batch)

    # The floor: the same truncated embeddings, built once, through the tower and back.
    with torch.no_grad(), trainer.autocast():
        cls_e, cls_eot = model.prompt_bank(model.name_learner.bank)
        trainer.rng.manual_seed(args.seed)
        swapped = trainer.swapped_sequences(indices, labels.to(trainer.device))
        cap_batch = PromptBatch.build(swapped, model.name_learner.lengths, model.slot_token_ids,
                                      model.context_length).to(trainer.device)
        cap_e = cap_batch.embed(model.token_weight, model.name_learner.bank)
    leaves = [cls_e[:, :int(cls_eot.max()) + 1].detach().clone().requires_grad_(True),
              cap_e[:, :int(cap_batch.eot_idx.max()) + 1].detach().clone().requires_grad_(True)]
    eots = [cls_eot, cap_batch.eot_idx]

    def bare_step() -> Any:
        for leaf in leaves:
            leaf.grad = None
        with trainer.autocast():
            out = sum(model.text_encoder(e, i).float().sum() for e, i in zip(leaves, eots))
        out.backward()
        return out.item()

    modes = {
        "reference-style": breakdown.step("reference-style", reference_step),
        "ours, online": breakdown.step("ours, online", online_step),
        "ours, cached": breakdown.step("ours, cached", cached_step),
        "ours, cached, plain truncation": breakdown.step("ours, cached, plain truncation", cached_plain_step),
        "bare text fwd+bwd": breakdown.step("bare text fwd+bwd", bare_step),
    }
    if fast is not None:
        fast.num_batches, fast.batch_idx = 1 << 30, 0
        fast.name_learner.load_state_dict(trainer.name_learner.state_dict())
        fast_batch = {"feat": fast.encode_images(batch["img"], normalize=False).cpu(), "label": labels,
                      "index": batch["index"]}

        def cached_bf16_step() -> Any:
            with instrumented(reference=False, trainer=fast):
                return fast.forward_backward(fast_batch)

        modes["ours, cached, bf16 autocast"] = breakdown.step("ours, cached, bf16 autocast", cached_bf16_step)
    work = {name: gemm_flops(fn) for name, fn in modes.items()}
    for records in breakdown.records.values():
        records.clear()
    results = common.measure(modes, args.repeats, args.warmup, device,
                             repeats_for={"reference-style": args.reference_repeats or args.repeats})
    out = report(args, device, info, results, breakdown, lengths, build_s, work)
    if args.profile:
        out["profile"] = profile_step(cached_step, device, args.profile_rows)
        out["markdown"] += "\n\n" + profile_markdown(out["profile"], "ours, cached")
    return out


def gemm_flops(step: Callable[[], Any]) -> Dict[str, float]:
    """Matrix-product FLOPs of one step (``torch.utils.flop_counter``: mm/addmm/bmm/attention, forward
    and backward): the work a mode does, independent of how loaded the machine is."""
    with FlopCounterMode(display=False) as counter:
        step()
    per_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": float(counter.get_total_flops()), **per_op}


def profile_step(step: Callable[[], Any], device: torch.device, rows: int) -> List[Dict[str, Any]]:
    """The ops that take the time of one step (self time, torch.profiler), most expensive first."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [{"op": e.key, "calls": int(e.count), "self_s": getattr(e, attr) / 1e6,
             "share": getattr(e, attr) / total} for e in events[:rows]]


def profile_markdown(ops: List[Dict[str, Any]], mode: str) -> str:
    table = [[f"`{o['op']}`", o["calls"], common.fmt_seconds(o["self_s"]), f"{100 * o['share']:.1f}%"] for o in ops]
    return "\n".join([
        f"Profile of one extra *{mode}* step (torch.profiler, self time per op, top {len(ops)}; the profiler "
        "adds overhead, so read shares, not absolute times):",
        "",
        common.markdown_table(["op", "calls", "self time", "share of step"], table),
    ])


def report(args: argparse.Namespace, device: torch.device, info: Dict[str, Any],
           results: Dict[str, common.Measurement], breakdown: Breakdown, lengths: Dict[str, Any],
           build_s: float, work: Optional[Dict[str, Dict[str, float]]] = None) -> Dict[str, Any]:
    ref_m, bare_m = results["reference-style"], results["bare text fwd+bwd"]
    ref, bare = ref_m.median, bare_m.median
    work = work or {}
    ref_work = work.get("reference-style", {}).get("total", 0.0)
    rows, table = [], []
    for name, m in results.items():
        parts = breakdown.medians(name, args.warmup + common.PROBE_CALLS)
        paired = common.paired_ratio(ref_m, m)
        row = {"mode": name, "median_s": m.median, "times_s": m.times, "speedup_vs_reference": ref / m.median,
               "paired_speedup_vs_reference": paired, "vs_bare": m.median / bare,
               "paired_vs_bare": common.paired_ratio(m, bare_m), "peak_bytes": m.peak, "breakdown_s": parts,
               "gemm_flops": work.get(name, {})}
        flops = work.get(name, {}).get("total", 0.0)
        rows.append(row)
        table.append([name, len(m.times), common.fmt_seconds(m.median), common.fmt_spread(m.times),
                      f"**{common.fmt_ratio(ref / m.median)}**", common.fmt_ratio(paired),
                      common.fmt_ratio(m.median / bare), common.fmt_bytes(m.peak),
                      f"{flops / 1e9:.4g}" if flops else "–",
                      common.fmt_ratio(ref_work / flops) if flops and ref_work else "–"]
                     + [common.fmt_seconds(parts.get(k, 0.0)) if name != "bare text fwd+bwd" else "–"
                        for k in COMPONENTS])
    by = {r["mode"]: r for r in rows}
    by_parts = by["reference-style"]["breakdown_s"] or {k: 0.0 for k in COMPONENTS}
    checks = {
        f"online ≥ {TARGET_ONLINE}× faster than reference-style": by["ours, online"]["speedup_vs_reference"] >= TARGET_ONLINE,
        f"cached ≥ {TARGET_CACHED:.0f}× faster than reference-style": by["ours, cached"]["speedup_vs_reference"] >= TARGET_CACHED,
        **({f"cached with bf16 autocast ≥ {TARGET_CACHED:.0f}× faster than reference-style (fp32)":
            by["ours, cached, bf16 autocast"]["speedup_vs_reference"] >= TARGET_CACHED}
           if "ours, cached, bf16 autocast" in by else {}),
        f"cached within {TARGET_BARE}× of bare text fwd+bwd": by["ours, cached"]["vs_bare"] <= TARGET_BARE,
    }
    md = "\n".join([
        f"### FSNL training step: {args.model}, C={args.classes} classes, B={args.batch} images with captions, "
        f"{args.prec}, {device.type}, {args.threads} threads",
        "",
        f"Median of the timed repeats (count in the table, interleaved) after {args.warmup} warm-up step(s) per mode; "
        "a step = forward + backward + SGD update (`FSNL_openclip.forward_backward`). Text lengths: class "
        f"prompts {lengths['class_prompt_length']}, captions {lengths['caption_length']} positions "
        f"(max EOT + 1) vs the full {lengths['context_length']}; both text paths verified equal before timing. "
        f"Peak memory = what one extra, untimed step added ({common.memory_method(device)}). Trainer build "
        f"(dataset, random-weight model, captions): {common.fmt_seconds(build_s)}, not timed.",
        "",
        common.markdown_table(["mode", "n", "median step", "min–max", "speed-up vs reference",
                               "paired speed-up", "× bare text",
                               "peak memory added", "GEMM GFLOP", "work ratio"] + list(COMPONENTS), table),
        "",
        "Speed-up = ratio of medians; paired = median over rounds of the per-round ratio (robust to load "
        "changes between rounds). Breakdown columns are medians of wall time inside the image encoder, the prompt/caption "
        "construction (incl. template swapping), the text tower's forward, and the rest (backward, "
        "losses, SGD step). GEMM GFLOP = matrix-product FLOPs of one step (mm/addmm/bmm, forward and "
        "backward; `torch.utils.flop_counter`), work ratio = reference-style GFLOP / the mode's: the work, "
        "independent of machine load. *Ours, cached* runs the text tower with the shared class-prompt "
        "prefix computed once and 4 length buckets (`clip.TextEncoder`: `shared_prefix`, `buckets`); "
        "*plain truncation* is the same step with both off (every row cut at the batch's longest EOT).",
        "",
        f"Where the reference-style step's time goes: image encoder {common.fmt_seconds(by_parts['image encoder'])}, "
        f"text forward over all {lengths['context_length']} positions {common.fmt_seconds(by_parts['text forward'])}, "
        f"backward + rest {common.fmt_seconds(by_parts['rest'])}, prompt/caption construction "
        f"{common.fmt_seconds(by_parts['prompt/caption construction'])}. No text-path mode can beat the floor, "
        f"which is {common.fmt_ratio(ref / bare)} faster than the reference-style step here.",
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()) + ".",
    ])
    return {"benchmark": "fsnl_step", "args": vars(args), "machine": info, "rows": rows, "lengths": lengths,
            "targets": checks, "markdown": md}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, repeats=5, warmup=1)
    parser.add_argument("--model", default=None, help="default ViT-B-16 (test-tiny with --tiny)")
    parser.add_argument("--classes", type=int, default=None, help="C (default 100; 10 with --tiny)")
    parser.add_argument("--batch", type=int, default=None, help="B (default 32; 8 with --tiny)")
    parser.add_argument("--reference-repeats", type=int, default=0,
                        help="timed repeats of the (slowest) reference-style mode (default: --repeats)")
    parser.add_argument("--no-bf16-mode", dest="bf16_mode", action="store_false",
                        help="skip the 'ours, cached, bf16 autocast' mode (on by default where bf16 is native)")
    parser.add_argument("--profile", action="store_true",
                        help="append a torch.profiler op table of one extra cached step")
    parser.add_argument("--profile-rows", type=int, default=12)
    args = parser.parse_args(argv)
    args.model = args.model or ("test-tiny" if args.tiny else "ViT-B-16")
    args.classes = args.classes or (10 if args.tiny else 100)
    args.batch = args.batch or (8 if args.tiny else 32)
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    return common.finish(run(args), args)


if __name__ == "__main__":
    main()
