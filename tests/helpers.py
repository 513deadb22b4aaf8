"""Plain helpers shared by the test files (fixtures live in ``conftest.py``).

Two families of set-up kept here so that every test file builds them the same way:

* the real project on the toy LAION-Beyond data: ``train.py`` argument lists, cfgs, trainers and runs
  for a trainer's ``configs/trainers/<Trainer>/<config>.yaml``, plus the dataset-only cfg of the
  loader tests;
* the synthetic colour-square dataset, linear trainer and stand-in project modules of the tests
  that exercise only ``train.py`` and ``dassl`` (no CLIP, no LAION-Beyond).
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import random
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import configs
import train
from clip import load_clip
from dassl.data.datasets import DatasetBase, Datum
from dassl.engine import TrainerX, build_trainer
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from trainers.cross_eval import SubsetEvaluation

REPO = Path(__file__).resolve().parents[1]
DATASET = "Animals92_42"

PathLike = Union[str, Path]


# ------------------------------------------------------------------------------- project on toy data
def trainer_config(trainer: str, config: str = "cpu_smoke") -> Path:
    """``configs/trainers/<trainer>/<config>.yaml``: where every trainer keeps its CPU smoke settings."""
    return REPO / "configs" / "trainers" / trainer / f"{config}.yaml"


def dataset_config(dataset: str = DATASET) -> Path:
    return REPO / "configs" / "datasets" / f"{dataset}.yaml"


def train_argv(
    root: PathLike,
    out: PathLike,
    trainer: str,
    *opts: str,
    extra: Sequence[str] = (),
    config: Union[str, Path] = "cpu_smoke",
    dataset: str = DATASET,
    seed: int = 1,
    shots: Optional[int] = 2,
) -> List[str]:
    """A ``train.py`` command line; ``extra`` flags come before the ``KEY VALUE`` overrides, as they must.

    ``config`` is a config name under the trainer's folder, or a ``Path`` to any yaml (aliases and
    GCD reuse another trainer's smoke config). ``shots=None`` leaves ``DATASET.NUM_SHOTS`` unset.
    """
    config_file = config if isinstance(config, Path) else trainer_config(trainer, config)
    argv = ["--root", str(root), "--seed", str(seed), "--trainer", trainer,
            "--dataset-config-file", str(dataset_config(dataset)),
            "--config-file", str(config_file), "--output-dir", str(out), *extra]
    if shots is not None:
        argv += ["DATASET.NUM_SHOTS", str(shots)]
    return argv + list(opts)


def make_cfg(
    root: PathLike,
    out: PathLike,
    trainer: str,
    *opts: str,
    extra: Sequence[str] = (),
    config: Union[str, Path] = "cpu_smoke",
    dataset: str = DATASET,
    seed: int = 1,
    shots: Optional[int] = 2,
) -> Any:
    """The frozen cfg ``train.py`` would build for :func:`train_argv` (same keyword arguments), built by
    :func:`configs.build_cfg`; ``extra`` takes ``--flag value`` pairs of ``configs.FIELDS`` options."""
    fields: Dict[str, Any] = {}
    for flag, value in zip(extra[0::2], extra[1::2]):
        fields[flag.lstrip("-").replace("-", "_")] = value
    shot_opts = ["DATASET.NUM_SHOTS", str(shots)] if shots is not None else []
    config_file = config if isinstance(config, Path) else trainer_config(trainer, config)
    return configs.build_cfg(trainer=trainer, dataset=str(dataset_config(dataset)), config=str(config_file),
                             opts=shot_opts + list(opts), root=str(root), output_dir=str(out), seed=seed, **fields)


def build(root: PathLike, out: PathLike, trainer: str, *opts: str, **kwargs: Any) -> Any:
    """A trainer built from :func:`make_cfg`, without training or evaluating."""
    return build_trainer(make_cfg(root, out, trainer, *opts, **kwargs))


def snapshot_tree(root: PathLike) -> Dict[str, Tuple[str, bytes]]:
    """Every entry below ``root`` by its relative path: a link by its target, a file by its bytes, a
    folder by its name -- what hostile-input tests compare to assert that nothing on disk changed."""
    entries: Dict[str, Tuple[str, bytes]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = os.fspath(path.relative_to(root))
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path).encode())
            elif path.is_dir():
                entries[rel] = ("dir", b"")
            else:
                entries[rel] = ("file", path.read_bytes())
    return entries


def save_tiny_weights(path: PathLike, seed: int, trainer: str = "FSNL_openclip") -> None:
    """A ``test-tiny`` weights file (same size for every seed: only the values differ)."""
    cfg = make_cfg(".", "unused", trainer, "MODEL.BACKBONE.WEIGHTS", "none", seed=seed)
    model = load_clip(cfg, "cpu").model
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def run_train(argv: Sequence[str]) -> Any:
    """Run ``train.py`` in process (train or evaluate, write results) and return its trainer."""
    return train.main(train.parse_args(list(argv)))


def clip_text_features(trainer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Normalised ``encode_text`` of ``prompts`` straight from the OpenCLIP model, bypassing the trainer."""
    with torch.no_grad():
        return F.normalize(trainer.clip.model.encode_text(trainer.clip.tokenizer(list(prompts))), dim=-1)


def clip_logits(trainer: Any, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP's zero-shot head by hand: ``exp(logit_scale) * cos(encode_image(images), text)``."""
    model = trainer.clip.model
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        return model.logit_scale.exp() * img @ text.t()


def dataset_cfg(
    root: PathLike,
    name: str = DATASET,
    shots: int = -1,
    sub: str = "OOP",
    seed: int = 1,
    superclass: bool = False,
    output_dir: PathLike = "",
    cache_dir: PathLike = "",
) -> Any:
    """A Dassl default cfg with the dataset keys only: the loaders are tested without any trainer.

    ``output_dir`` defaults to ``<root>/_out`` (only the read-only fallback of the few-shot cache
    writes there).
    """
    import datasets
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    datasets.add_dataset_config(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUB_CLASSES = sub
    cfg.DATASET.USE_SUPERCLASS_F_ZS_TEST = superclass
    cfg.DATASET.FEWSHOT_CACHE_DIR = str(cache_dir)
    cfg.SEED = seed
    cfg.OUTPUT_DIR = str(output_dir or Path(root) / "_out")
    return cfg


# ------------------------------------------------------------------------------- synthetic colours
COLORS: Dict[str, tuple] = {
    "red": (220, 30, 30),
    "green": (30, 220, 30),
    "blue": (30, 30, 220),
    "yellow": (220, 220, 30),
    "cyan": (30, 220, 220),
}
OOP_COLORS = ["red", "green", "blue"]
IP_COLORS = ["yellow", "cyan"]
COLOR_SUBSETS = {"OOP": OOP_COLORS, "IP": IP_COLORS, "All": OOP_COLORS + IP_COLORS}


def make_colour_images(root: PathLike, splits: Mapping[str, int], seed: int = 0) -> None:
    """``root/<split>/<colour>/<i>.png``: noisy 8x8 squares, so a linear model on pixels can separate them."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for name, rgb in COLORS.items():
            os.makedirs(osp.join(root, split, name), exist_ok=True)
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.integers(-25, 26, size=(8, 8, 3)), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(osp.join(root, split, name, f"{i}.png"))


def colour_accuracy(root: PathLike, names: Sequence[str], weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None) -> float:
    """Test accuracy of ``argmax(weight @ x + bias)`` on the raw pixels, computed without the engine."""
    correct = total = 0
    for label, name in enumerate(names):
        for path in sorted(glob.glob(osp.join(root, "test", name, "*.png"))):
            x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
            scores = weight @ x.permute(2, 0, 1).flatten()
            if bias is not None:
                scores = scores + bias
            correct += int(int(torch.argmax(scores)) == label)
            total += 1
    return 100.0 * correct / total


class ToyColors(DatasetBase):
    """Colour squares read from folders; subclasses register a name (and may drop the val split)."""

    supports_subsets = True
    with_val = True

    def __init__(self, cfg: Any) -> None:
        names = COLOR_SUBSETS[cfg.DATASET.get("SUB_CLASSES", "OOP")]

        def read(split: str) -> List[Datum]:
            return [Datum(impath=path, label=label, classname=name, caption=f"a {name} square")
                    for label, name in enumerate(names)
                    for path in sorted(glob.glob(osp.join(cfg.DATASET.ROOT, split, name, "*.png")))]

        train_x = read("train")
        if cfg.DATASET.NUM_SHOTS > 0:
            train_x = self.generate_fewshot_dataset(train_x, num_shots=cfg.DATASET.NUM_SHOTS,
                                                    rng=random.Random(cfg.SEED))
        val = read("val") if self.with_val else None
        super().__init__(train_x=train_x, val=val, test=read("test"), classnames=names)


class ToyLinear(SubsetEvaluation, TrainerX):
    """Linear classifier on flattened 8x8 RGB images; maps weights across label spaces by class name.

    It carries the LAION-Beyond evaluation protocol (OOP->IP cross-evaluation, H-mean) as the CLIP
    trainers do; ``TrainerX`` alone has none."""

    def build_model(self) -> None:
        self.model = nn.Linear(3 * 8 * 8, self.num_classes)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("linear", self.model, self.optim, self.sched)

    def model_inference(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flatten(1))

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        x, y, _ = self.parse_batch_train(batch)
        out = self.model(x.flatten(1))
        loss = F.cross_entropy(out, y)
        self.model_backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(out, y)[0].item()}

    def load_state(self, name: str, state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        src = meta.get("classnames")
        dst = list(self.dm.dataset.classnames)
        if src is None or list(src) == dst:
            return super().load_state(name, state_dict, meta)
        src = list(src)
        weight = torch.zeros_like(self.model.weight)
        bias = torch.zeros_like(self.model.bias)
        for i, c in enumerate(dst):
            if c in src:
                weight[i] = state_dict["weight"][src.index(c)]
                bias[i] = state_dict["bias"][src.index(c)]
        self.model.load_state_dict({"weight": weight, "bias": bias})
        return None


def stub_project_modules(monkeypatch: pytest.MonkeyPatch, add_trainer_configs: Callable[[Any], None]) -> None:
    """Stand-ins for ``datasets/``, ``clip/`` and ``trainers/`` so a test exercises only ``train.py`` + dassl.

    ``configs.extend_cfg`` calls these three packages; the stand-ins add just ``DATASET.SUB_CLASSES``,
    ``MODEL.BACKBONE.WEIGHTS`` and whatever trainer keys the caller needs (no trainer file declares
    another type for any key, as ``configs``' type errors ask ``trainers.other_type_declarations``).
    """

    def add_dataset_config(cfg: Any) -> None:
        cfg.DATASET.SUB_CLASSES = "OOP"

    def add_clip_config(cfg: Any) -> None:
        cfg.MODEL.BACKBONE.WEIGHTS = "laion400m_e32"

    def other_type_declarations(cfg: Any, key: str) -> List[str]:
        return []

    for name, functions in (
        ("datasets", {"add_dataset_config": add_dataset_config}),
        ("clip", {"add_clip_config": add_clip_config}),
        ("trainers", {"add_trainer_configs": add_trainer_configs,
                      "other_type_declarations": other_type_declarations}),
    ):
        mod = types.ModuleType(name)
        for attr, fn in functions.items():
            setattr(mod, attr, fn)
        monkeypatch.setattr(configs, name, mod)
