"""What every benchmark shares: run-time set-up, interleaved timing, peak memory, tables, data.

Design choices (the README explains them with the numbers):

* Timing of long modes is *interleaved*: after the warm-up, repeat ``r`` runs every mode once
  before repeat ``r + 1`` starts. The benchmark machines are shared, so a load change hits all
  modes alike and the ratios of medians stay meaningful even when absolute times drift.
  Sub-millisecond modes run their repeats back to back instead (see :func:`measure`).
* Peak memory is measured in one extra, untimed call per mode after the warm-up. CUDA:
  ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated before the
  call. CPU: the resident set size; before the call freed heap memory is handed back to the OS
  (``malloc_trim``) and the kernel's high-water mark is reset (``/proc/self/clear_refs``), so
  ``VmHWM - VmRSS(before)`` is the memory the call itself added. Where the kernel refuses the reset the growth of
  ``ru_maxrss`` is used instead, which is only a lower bound (it says so in the table).
* Synthetic data: realistic multi-word class names chosen so that no name occurs inside another
  name or inside template text; the reference's plain-substring matching (spec §2.5) then finds
  exactly the names our word-boundary matcher finds, and both pipelines must build identical
  embeddings (each benchmark asserts it before timing).
"""
from __future__ import annotations

import os

# Idle OpenMP workers must not spin between the many small ops of a step (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from yacs.config import CfgNode as CN  # noqa: E402

import train  # noqa: E402
from clip import add_clip_config, cpu_supports_bf16, load_clip, register_repo_configs  # noqa: E402
from dassl.engine import build_trainer  # noqa: E402
from dassl.utils import check_cpu_option, read_json_object, usable_cpus  # noqa: E402
from scripts.parse_test_res import OutputError, check_output_target  # noqa: E402

logger = logging.getLogger(__name__)

GPU_PRECISIONS = ("bf16", "amp")
#: FSNL's class prompt (spec §2.4); the hint comes from the dataset (Animals -> "animal").
FSNL_TEMPLATE = "a photo of {name}, a type of {hint}."
HINT = "animal"
#: DATASET.NAME whose loader reads ``Animals<digits>_OOP`` folders (hint "animal").
DATASET_NAME = "Animals92_42"
DATASET_PREFIX = "Animals"

_ADJECTIVES = (
    "spotted", "crested", "golden", "lesser", "giant", "pygmy", "striped", "red-billed", "snowy",
    "marbled", "long-tailed", "black-footed", "royal", "dwarf", "northern", "southern", "mountain",
    "desert", "ringed", "horned", "bearded", "painted", "hooded", "silver", "copper",
)
_NOUNS = (
    "owl", "salamander", "gecko", "heron", "tree frog", "mongoose", "weasel", "pheasant", "kingfisher",
    "lemur", "tortoise", "shrew", "iguana", "woodpecker", "antelope", "sea slug", "fruit bat",
    "pit viper", "ibis", "cuckoo",
)
#: LAION-style refined captions of varied length ({a} is the class name).
CAPTION_TEMPLATES = (
    "a {a} resting on a mossy log in a dense forest.",
    "close-up photo of a {a} with detailed texture, natural light and a shallow depth of field.",
    "wildlife photograph of a {a} standing in tall dry grass at sunset, warm golden tones and a "
    "softly blurred background.",
    "a {a} seen from the side.",
    "illustration of a {a} from a vintage natural history book, hand-coloured engraving on cream paper.",
    "two {a} near the water's edge on a cloudy afternoon, reflections visible in the calm lake.",
    "museum specimen of a {a} displayed behind glass with a small printed label.",
    "a juvenile {a} photographed in its natural habitat during the rainy season in a tropical region "
    "of south america.",
)


# ------------------------------------------------------------------------------------ set-up
def default_threads() -> int:
    """The CPUs this process may run on (:func:`dassl.utils.usable_cpus`)."""
    return usable_cpus()


def add_common_args(parser: argparse.ArgumentParser, repeats: int = 5, warmup: int = 1) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--prec", choices=("fp32", "bf16", "amp"), default="fp32",
                        help="bf16/amp need --device cuda")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch.set_num_threads (default: the CPUs available to this process)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per mode first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--tiny", action="store_true",
                        help="seconds-long settings on the test-tiny model (smoke runs)")
    parser.add_argument("--verbose", action="store_true", help="show the trainers' INFO logs")


def refuse(message: str) -> NoReturn:
    """A benchmark's user mistake: one ``error:`` line, exit 2, as every entry point (it was a bare line
    with exit 1)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _written_result(path: Path) -> bool:
    data = read_json_object(path)
    return data is not None and isinstance(data.get("markdown"), str)


def check_json_target(path: str, option: str = "--json") -> None:
    """Refuse (:func:`refuse`) a ``--json`` that would replace anything but an earlier benchmark result:
    it overwrote whatever it named, the committed weights file included."""
    try:
        check_output_target(path, f"{option} {path}", "benchmark result", _written_result)
    except (OutputError, OSError) as err:
        refuse(str(err))


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, logging, seeds and the device; refuses settings that cannot mean what they say, and a
    ``--json`` target that is not an earlier result, before any work."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        check_cpu_option(args.threads, zero_means_all=False)
    except ValueError as err:
        refuse(str(err))
    if args.repeats < 1 or args.warmup < 0:
        refuse("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        refuse("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if args.prec in GPU_PRECISIONS and args.device != "cuda" and not (args.prec == "bf16" and cpu_supports_bf16()):
        refuse(f"--prec {args.prec} is a GPU precision here (this CPU has no native bfloat16); use --device cuda")
    if args.json:
        check_json_target(args.json)
    torch.set_num_threads(args.threads)
    # numpy's BLAS too (scikit-learn's side of the probe benchmark): left at its default it starts a
    # thread per core, and on 2 cores next to torch that thrashed the L-BFGS fits 10-20x (an 8-shot C
    # search took 71 s instead of 5 s), which would flatter any comparison against it
    threadpool_limits(limits=args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    return torch.device(args.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ memory
def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Memory one call adds on top of what is resident (CPU) or allocated (CUDA) just before it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated - allocated before the call"
        elif _proc_status_kib("VmHWM") is not None and _reset_hwm():
            self.method = "VmHWM - VmRSS before the call (malloc_trim + clear_refs reset before each call)"
        else:
            self.method = "growth of ru_maxrss (lower bound: only new process maxima count)"
        self._base = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            _malloc_trim()
            self._base = (_proc_status_kib("VmRSS") or 0) * 1024
            _reset_hwm()
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
        if self.method.startswith("VmHWM"):
            return max(0, (_proc_status_kib("VmHWM") or 0) * 1024 - self._base)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base)


# ------------------------------------------------------------------------------------ timing
@dataclass
class Measurement:
    """Timed calls of one mode (wall seconds) and the memory its probe call(s) added."""

    name: str
    times: List[float] = field(default_factory=list)
    peaks: List[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def peak(self) -> int:
        return max(self.peaks) if self.peaks else 0

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "median_s": self.median, "times_s": list(self.times),
                "peak_bytes": self.peak, "peaks_bytes": list(self.peaks)}


def measure(
    modes: Dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device,
    repeats_for: Optional[Dict[str, int]] = None,
    memory: bool = True,
    interleave: bool = True,
) -> Dict[str, Measurement]:
    """Warm every mode up, probe its memory once, then time it; ``repeats_for`` lowers one mode's count.

    The memory probe is a separate, untimed call (``PROBE_CALLS`` per mode, after the warm-up): it
    hands freed memory back to the OS first, which would make the next allocations page-fault and
    so must not happen inside a timed call. ``interleave`` runs the modes round-robin (long modes on
    a shared machine); without it each mode's repeats run back to back (sub-millisecond modes, where
    the allocator state another mode leaves behind would be timed too).
    """
    counts = {name: (repeats_for or {}).get(name, repeats) for name in modes}
    out = {name: Measurement(name) for name in modes}
    for fn in modes.values():
        for _ in range(warmup):
            fn()
            sync(device)
    if memory:
        probe = PeakMemory(device)
        for name, fn in modes.items():
            probe.start()
            fn()
            out[name].peaks.append(probe.stop())

    def timed(name: str, fn: Callable[[], Any], r: int) -> None:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out[name].times.append(time.perf_counter() - t0)
        logger.info("%s repeat %d: %.4f s", name, r + 1, out[name].times[-1])

    if interleave:
        for r in range(max(counts.values())):
            for name, fn in modes.items():
                if r < counts[name]:
                    timed(name, fn, r)
    else:
        for name, fn in modes.items():
            for r in range(counts[name]):
                timed(name, fn, r)
    return out


PROBE_CALLS = 1


def paired_ratio(numerator: Measurement, denominator: Measurement) -> float:
    """Median over repeats of ``numerator_r / denominator_r`` (same round of the interleaving).

    Both modes of a pair ran back to back, so this cancels most of a load change that happens
    between rounds; it complements the ratio of medians on a busy machine.
    """
    pairs = [a / b for a, b in zip(numerator.times, denominator.times) if b > 0]
    return statistics.median(pairs) if pairs else float("nan")


def memory_method(device: torch.device) -> str:
    return PeakMemory(device).method


# ------------------------------------------------------------------------------------ output
def fmt_seconds(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_spread(times: Sequence[float]) -> str:
    """``min–max`` of the timed repeats: how noisy the machine was while this mode ran."""
    return f"{fmt_seconds(min(times))}–{fmt_seconds(max(times))}" if times else "–"


def fmt_bytes(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def fmt_ratio(x: float) -> str:
    return f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, threads: int) -> Dict[str, Any]:
    """Where the numbers come from, including how busy the machine was."""
    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": default_threads(),
        "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_markdown(info: Dict[str, Any]) -> str:
    load = ", ".join(f"{v:.2f}" for v in info.get("loadavg", []))
    lines = [
        f"- CPU: {info['cpu']} ({info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs), "
        f"torch threads {info['torch_threads']}, OMP_WAIT_POLICY={info['omp_wait_policy'] or 'unset'}",
        f"- torch {info['torch']}, open_clip {info['open_clip']}, Python {info['python']} ({info['platform']})",
        f"- device: {info['device']}" + (f" ({info['gpu']})" if info.get("gpu") else ""),
        f"- load average (1/5/15 min) at start: {load}; {info['date']}",
    ]
    return "\n".join(lines)


def finish(result: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """Print the Markdown, add the end-of-run load, write ``--json``."""
    if hasattr(os, "getloadavg"):
        result["loadavg_end"] = list(os.getloadavg())
        result["markdown"] += ("\n\nLoad average (1/5/15 min) at the end: "
                               + ", ".join(f"{v:.2f}" for v in result["loadavg_end"]))
    print(result["markdown"])
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return result


# ------------------------------------------------------------------------------------ models
def load_model(name: str, device: torch.device, prec: str = "fp32", seed: int = 0) -> Any:
    """A seeded random-weight CLIP through the project's loader (never downloads)."""
    cfg = CN()
    cfg.SEED = int(seed)
    add_clip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.WEIGHTS = "none"
    return load_clip(cfg, device, prec)


# ------------------------------------------------------------------------------------ data
def realistic_names(n: int, seed: int = 0) -> List[str]:
    """``n`` two/three-word animal names, none inside another name or inside any template text."""
    candidates = [f"{a} {b}" for a in _ADJECTIVES for b in _NOUNS]
    random.Random(seed).shuffle(candidates)
    fixed_text = " ".join([FSNL_TEMPLATE.format(name="", hint=HINT)]
                          + [t.format(a="") for t in CAPTION_TEMPLATES])
    chosen: List[str] = []
    for name in candidates:
        if name in fixed_text or any(name in c or c in name for c in chosen):
            continue
        chosen.append(name)
        if len(chosen) == n:
            return chosen
    raise ValueError(f"Only {len(chosen)} collision-free names available, {n} asked for")


def caption_for(name: str, k: int) -> str:
    return CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)].format(a=name)


def _write_image(path: Path, size: int, label: int, rng: np.random.Generator) -> None:
    colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.float64)
    pixels = colour[None, None, :] + rng.normal(0.0, 40.0, size=(size, size, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_beyond_dataset(
    root: str, num_classes: int, train_per_class: int = 2, test_images: int = 0, image_size: int = 32,
    seed: int = 0,
) -> List[str]:
    """A LAION-Beyond-layout OOP subset (``Animals<C>_OOP``) under ``root``; returns the class names.

    Every class gets ``train_per_class`` train images and one val image; ``test_images`` test images
    are dealt round-robin over the classes (at least one per class when 0). Captions name their class.
    """
    names = realistic_names(num_classes, seed)
    dirname = f"{DATASET_PREFIX}{num_classes}_OOP"
    subset = Path(root) / dirname
    rng = np.random.default_rng(seed)
    splits: Dict[str, Dict[str, Any]] = {"train": {}, "val": {}, "test": {}}
    plan = {"train": [c for c in range(num_classes) for _ in range(train_per_class)],
            "val": list(range(num_classes)),
            "test": [i % num_classes for i in range(test_images or num_classes)]}
    k = 0
    for split, labels in plan.items():
        for label in labels:
            name = names[label]
            folder = subset / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            image_name = f"{split}_{k:05d}.jpg"
            _write_image(folder / image_name, image_size, label, rng)
            splits[split][str(len(splits[split]))] = {
                "classname": name, "image_name": image_name, "label": label, "s_label": 0,
                "superclass": "animal", "INFO": {"Refined_caption3": caption_for(name, k)},
            }
            k += 1
    with open(subset / f"split_Xin_{dirname}.json", "w", encoding="utf-8") as f:
        json.dump(splits, f)
    return names


def build_fsnl_trainer(
    data_root: str, output_dir: str, model: str, device: torch.device, prec: str, batch_size: int,
    test_batch_size: int, shots: int, seed: int = 1, extra_opts: Sequence[str] = (),
) -> Any:
    """The real ``FSNL_openclip`` trainer on the synthetic subset, with random backbone weights."""
    loaded_size = _image_size(model)
    args = train.parse_args([
        "--root", str(data_root), "--seed", str(seed), "--trainer", "FSNL_openclip",
        "--dataset-config-file", str(REPO_ROOT / f"configs/datasets/{DATASET_NAME}.yaml"),
        "--config-file", str(REPO_ROOT / "configs/trainers/FSNL_openclip/cpu_smoke.yaml"),
        "--output-dir", str(output_dir),
        "MODEL.BACKBONE.NAME", model, "MODEL.BACKBONE.WEIGHTS", "none",
        "INPUT.SIZE", f"({loaded_size}, {loaded_size})",
        "DATASET.NUM_SHOTS", str(shots),
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch_size),
        "DATALOADER.TEST.BATCH_SIZE", str(test_batch_size),
        "DATALOADER.NUM_WORKERS", "0",
        "TEST.CROSS_EVAL", "()",  # the synthetic domain has no IP subset (validated when the trainer is built)
        "TRAINER.FSNL.PREC", prec,
        "USE_CUDA", str(device.type == "cuda"),
        *extra_opts,
    ])
    return build_trainer(train.setup_cfg(args))


def _image_size(model: str) -> int:
    register_repo_configs()
    cfg = open_clip.get_model_config(model.replace("/", "-"))
    if cfg is None:
        raise SystemExit(f"Unknown model {model!r}")
    size = cfg["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)
