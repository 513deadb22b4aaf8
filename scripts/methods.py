"""The methods of the paper as data: one registry read by the sweep, the grid engine and the tables.

Each :class:`Method` says everything a sweep needs to know about it, so no script keeps a per-method
table of its own (adding a method is one trainer file, its configs and one entry here):

* ``trainer``: the registered trainer (``config_dir`` when its configs live in another trainer's
  folder, as for the FSNL ablations);
* ``configs``: per *config set* (``paper``, ``mini``, ``smoke``) the config per shot count, as
  ``((max_shots, config), ...)`` where the last entry also covers larger shot counts;
* ``opts``: the ``KEY VALUE`` overrides of the reference scripts, each marked ``always`` (what makes
  the run the right cell: shots, subset) or ``rule`` (a training setting: applied only under a rule,
  so that a config file given with ``--config`` is never silently overridden);
* ``batch_rule``: whether the BS/LR rule applies (FSNL: ``BS = min(K,4)·C``, ``LR = BS/128·2e-4``);
* ``dirs``: the run-directory parts below ``--out``, as templates over the resolved config
  (``{OPTIM.LR}``), ``{trainer}``, ``{config}``, ``{dataset}``, ``{shots}``;
* ``label``: the paper's name in tables and plots; ``seeds``: the default seeds.

A :class:`Rule` is the schedule a sweep imposes on top of the configs: ``paper`` (the reference
scripts: 200 epochs, the BS/LR rule, checkpoints every 10 epochs), ``mini`` (the Mini-Beyond recipe
of the README table: 50 epochs and 8x the rule's LR, compensating the mini CLIP's logit scale of 18
instead of 100 and the 4x shorter schedule) or ``none`` (the config files as they are). A config
set names its default rule; ``--rule`` chooses another, and ``--config FILE`` implies ``none``.

This module only holds data and pure functions (no torch), so ``parse_test_res`` can read the labels
without importing the trainers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from scripts.fsnl_rule import BASE_BATCH_SIZE, BASE_LR, MAX_SHOTS_PER_BATCH, format_lr

__all__ = [
    "ALWAYS",
    "RULE",
    "Method",
    "Rule",
    "METHODS",
    "RULES",
    "CONFIG_SETS",
    "get_method",
    "method_names",
    "get_rule",
    "default_rule",
    "label_for",
    "format_template",
    "batch_lr",
    "cfg_lookup",
    "PLACEHOLDER",
    "run_dir_parts",
]

ALWAYS = "always"
RULE = "rule"

Opt = Tuple[str, str, str]  # (key, value template, ALWAYS | RULE)


@dataclass(frozen=True)
class Rule:
    """A schedule imposed on the configs (see the module docstring)."""

    name: str
    epochs: Optional[int] = None
    lr_scale: float = 1.0
    checkpoint_freq: Optional[int] = None
    #: whether the methods' ``rule`` opts (the reference scripts' settings) apply
    method_opts: bool = True


@dataclass(frozen=True)
class Method:
    """One method's sweep defaults (see the module docstring)."""

    name: str
    trainer: str
    label: str
    configs: Mapping[str, Tuple[Tuple[int, str], ...]]
    dirs: Tuple[str, ...]
    opts: Tuple[Opt, ...] = ()
    kind: str = "train"  # train | zeroshot | probe
    batch_rule: bool = False
    seeds: Tuple[int, ...] = (1, 2, 3)
    config_dir: str = ""
    #: extra first-folder prefixes that carry this label in result trees (e.g. OpenAI variants)
    prefixes: Tuple[str, ...] = ()

    @property
    def config_trainer(self) -> str:
        """The trainer folder under ``configs/trainers/`` that holds this method's configs."""
        return self.config_dir or self.trainer

    def config_for(self, config_set: str, shots: int) -> str:
        """The config name of ``config_set`` for ``shots`` shots."""
        if config_set not in self.configs:
            raise ValueError(f'method "{self.name}" has no config set "{config_set}"; '
                             f"choose from {', '.join(self.configs)}")
        table = self.configs[config_set]
        for max_shots, name in table:
            if shots <= max_shots:
                return name
        return table[-1][1]

    def run_opts(self, shots: int, rule: Optional[Rule], num_classes: int = 0,
                 sub_classes: str = "OOP") -> List[Tuple[str, str]]:
        """The ``KEY VALUE`` overrides of one run (``rule`` None: the ``always`` ones only)."""
        values: Dict[str, str] = {"shots": str(int(shots)), "sub": sub_classes}
        if rule is not None and rule.method_opts:
            if rule.checkpoint_freq is not None:
                values["checkpoint_freq"] = str(rule.checkpoint_freq)
            if rule.epochs is not None:
                values["epochs"] = str(rule.epochs)
            if self.batch_rule:
                if num_classes < 1:
                    raise ValueError(f"the BS/LR rule of {self.name} needs the class count")
                bs, lr = batch_lr(num_classes, shots, rule.lr_scale)
                values["bs"], values["lr"] = str(bs), format_lr(lr)
        out: List[Tuple[str, str]] = []
        for key, template, owner in self.opts:
            if owner == RULE and (rule is None or not rule.method_opts):
                continue
            try:
                out.append((key, template.format(**values)))
            except KeyError:
                continue  # a rule that does not set this value (e.g. no checkpoint frequency)
        return out


def batch_lr(num_classes: int, shots: int, lr_scale: float = 1.0) -> Tuple[int, float]:
    """``BS = min(K, 4)·C`` and ``LR = lr_scale · BS/128 · 2e-4`` (spec §8.3; scripts/fsnl_rule.py)."""
    if num_classes < 1 or shots < 1:
        raise ValueError(f"the BS/LR rule needs C >= 1 and K >= 1, got C={num_classes}, K={shots}")
    bs = min(int(shots), MAX_SHOTS_PER_BATCH) * int(num_classes)
    return bs, bs / BASE_BATCH_SIZE * BASE_LR * float(lr_scale)


RULES: Mapping[str, Rule] = MappingProxyType({
    "paper": Rule("paper", epochs=200, lr_scale=1.0, checkpoint_freq=10),
    "mini": Rule("mini", epochs=50, lr_scale=8.0, checkpoint_freq=10),
    "none": Rule("none", method_opts=False),
})

#: Config set → its default rule.
CONFIG_SETS: Mapping[str, str] = MappingProxyType({"paper": "paper", "mini": "mini", "smoke": "none"})

_FSNL_OPTS: Tuple[Opt, ...] = (
    ("TRAINER.FSNL.FLE", "False", RULE),
    ("TRAINER.FSNL.N_CTX", "4", RULE),
    ("TRAINER.FSNL.CIFC", "True", RULE),
    ("TRAINER.FSNL.USE_CAPTION", "True", RULE),
    ("DATASET.NUM_SHOTS", "{shots}", ALWAYS),
    ("TRAIN.CHECKPOINT_FREQ", "{checkpoint_freq}", RULE),
    ("TEST.NO_TEST", "False", RULE),
    ("OPTIM.LR", "{lr}", RULE),
    ("OPTIM.MAX_EPOCH", "{epochs}", RULE),
    ("DATALOADER.TRAIN_X.BATCH_SIZE", "{bs}", RULE),
    ("DATASET.SUB_CLASSES", "OOP", ALWAYS),
)
_FSNL_DIRS = ("{dataset}", "shots_{shots}", "train", "{trainer}_USE_CAPTION_{TRAINER.FSNL.USE_CAPTION}",
              "MEPOCH_{OPTIM.MAX_EPOCH}_BS_{DATALOADER.TRAIN_X.BATCH_SIZE}_LR_{OPTIM.LR}")
_FSNL_CONFIGS = MappingProxyType({"paper": ((16, "vit_b16_ep200_standard"),), "mini": ((16, "mini_cpu"),),
                                  "smoke": ((16, "cpu_smoke"),)})
_SHOTS_OOP: Tuple[Opt, ...] = (("DATASET.NUM_SHOTS", "{shots}", ALWAYS), ("DATASET.SUB_CLASSES", "OOP", ALWAYS))


def _configs(paper: Tuple[Tuple[int, str], ...]) -> Mapping[str, Tuple[Tuple[int, str], ...]]:
    return MappingProxyType({"paper": paper, "mini": ((16, "mini_cpu"),), "smoke": ((16, "cpu_smoke"),)})


def _fsnl_ablation(n: int, what: str) -> Method:
    return Method(f"fsnl_ablation{n}", f"FSNL_openclip_Ablation{n}", f"FSNL ({what})", _FSNL_CONFIGS, _FSNL_DIRS,
                  _FSNL_OPTS, batch_rule=True, config_dir="FSNL_openclip")


_REGISTRY: Tuple[Method, ...] = (
    Method("zeroshot", "ZeroshotCLIP_openclip", "OpenCLIP (zero-shot)", _configs(((16, "vit_b16_ep50_ctxv1"),)),
           ("{dataset}", "{trainer}", "ZS_{DATASET.SUB_CLASSES}"), (("DATASET.SUB_CLASSES", "{sub}", ALWAYS),),
           kind="zeroshot", seeds=(3,)),
    Method("zeroshot_ensemble", "ZeroshotCLIP2_openclip", "OpenCLIP (zero-shot, ensemble)",
           _configs(((16, "vit_b16_ep50_ctxv1"),)),
           ("{dataset}", "{trainer}", "ZS_{DATASET.SUB_CLASSES}"), (("DATASET.SUB_CLASSES", "{sub}", ALWAYS),),
           kind="zeroshot", seeds=(3,), prefixes=("ZeroshotCLIP2",)),
    Method("coop", "CoOp_openclip", "CoOp", _configs(((16, "vit_b16_ep200_ctxv1"),)),
           ("{dataset}", "shots_{shots}", "train", "CoOp_openclip", "CSC_{TRAINER.COOP.CSC}", "{config}"),
           (("TRAINER.COOP.N_CTX", "4", RULE), ("TRAINER.COOP.CSC", "False", RULE),
            ("TRAINER.COOP.CLASS_TOKEN_POSITION", "end", RULE)) + _SHOTS_OOP, prefixes=("CoOp",)),
    Method("cocoop", "CoCoOp_openclip", "CoCoOp", _configs(((16, "vit_b16_c4_ep10_batch1_ctxv1"),)),
           ("{dataset}", "shots_{shots}", "train", "CoCoOp_openclip_{config}"),
           (("DATASET.NUM_SHOTS", "{shots}", ALWAYS), ("TRAIN.CHECKPOINT_FREQ", "{checkpoint_freq}", RULE),
            ("DATASET.SUB_CLASSES", "OOP", ALWAYS)), prefixes=("CoCoOp",)),
    Method("clip_adapter", "CLIP_Adapter", "CLIP-Adapter", _configs(((16, "vit_b16_ep200_ctxv1"),)),
           ("{dataset}", "shots_{shots}", "train", "CLIP_Adapter", "ImageA_{config}"), _SHOTS_OOP),
    # TaskRes trains 100 epochs up to 4 shots and 200 beyond (spec §3.7).
    Method("taskres", "TaskRes", "TaskRes",
           _configs(((4, "adam_lr2e-3_B256_ep100"), (16, "adam_lr2e-3_B256_ep200"))),
           ("{dataset}", "shots_{shots}", "train", "TaskRes", "{config}"),
           (("DATASET.NUM_SHOTS", "{shots}", ALWAYS), ("TRAINER.TaskRes.RESIDUAL_SCALE", "0.5", RULE),
            ("DATASET.SUB_CLASSES", "OOP", ALWAYS))),
    # The linear probe has no trainer; its features are extracted with CoOp's configs.
    Method("linear_probe", "CoOp_openclip", "Linear probe",
           _configs(((16, "vit_b16_ep200_ctxv1_lpclip"),)), ("{dataset}", "linear_probe"), kind="probe",
           prefixes=("linear_probe",)),
    Method("fsnl", "FSNL_openclip", "FSNL", _FSNL_CONFIGS, _FSNL_DIRS, _FSNL_OPTS, batch_rule=True,
           prefixes=("FSNL",)),
    _fsnl_ablation(1, "caption loss only"),
    _fsnl_ablation(2, "base loss only"),
    _fsnl_ablation(3, "CLIP caption loss"),
)

METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in _REGISTRY})

#: First-folder prefixes of result trees that only carry a label (trainers without sweep defaults).
_LABEL_ONLY: Tuple[Tuple[str, str], ...] = (("ZeroshotCLIP", "Zero-shot CLIP"),)


def method_names() -> Tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f'unknown method "{name}"; choose from {", ".join(METHODS)}')
    return METHODS[name]


def get_rule(name: str) -> Rule:
    if name not in RULES:
        raise ValueError(f'unknown rule "{name}"; choose from {", ".join(RULES)}')
    return RULES[name]


def resolve_config_set(config_set: Optional[str], config: Optional[str]) -> str:
    """The config set of a sweep or grid command line (default ``paper``). ``--config`` replaces the
    set's configs for every method, so a ``--config-set`` beside it would be silently ignored: that is
    a ValueError (one ``error:`` line) instead."""
    if config_set and config:
        raise ValueError(f"--config-set {config_set} and --config {config}: --config replaces the config set's "
                         "files for every method; give one of them")
    return config_set or "paper"


def default_rule(config_set: Optional[str], config: Optional[str], rule: Optional[str]) -> Rule:
    """The rule in force: ``rule`` when given; else ``none`` for an explicit ``config`` (a user's file
    is never overridden silently); else the config set's default."""
    if rule:
        return get_rule(rule)
    if config:
        return RULES["none"]
    return get_rule(CONFIG_SETS[config_set or "paper"])


def _label_table() -> List[Tuple[str, int, str]]:
    rows: List[Tuple[str, int, str]] = []
    for order, m in enumerate(_REGISTRY):
        for prefix in (m.trainer, *m.prefixes):
            rows.append((prefix, order, m.label))
    for prefix, label in _LABEL_ONLY:
        rows.append((prefix, len(_REGISTRY), label))
    return rows


def label_for(folder: str) -> Tuple[int, Optional[str]]:
    """``(row order, paper label)`` of a result tree's method folder, by its longest matching prefix
    (``ZeroshotCLIP2_openclip`` is the ensemble, not ``ZeroshotCLIP``); ``(n, None)`` when unknown."""
    best: Tuple[int, int, Optional[str]] = (-1, len(_REGISTRY) + 1, None)
    for prefix, order, label in _label_table():
        if folder.startswith(prefix) and len(prefix) > best[0]:
            best = (len(prefix), order, label)
    return best[1], best[2]


PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def format_template(template: str, lookup: Callable[[str], Any]) -> str:
    """``template`` with every ``{NAME}`` replaced by ``lookup(NAME)``; floats as :func:`format_lr`."""

    def one(match: re.Match[str]) -> str:
        value = lookup(match.group(1))
        if isinstance(value, float):
            return format_lr(value)
        return str(value)

    return PLACEHOLDER.sub(one, template)


def cfg_lookup(cfg: Any, extra: Mapping[str, Any]) -> Callable[[str], Any]:
    """A :func:`format_template` lookup: ``extra`` names first, then dotted config keys."""

    def lookup(name: str) -> Any:
        if name in extra:
            return extra[name]
        node = cfg
        for part in name.split("."):
            node = node[part]
        return node

    return lookup


def run_dir_parts(method: Method, cfg: Any, dataset: str, shots: int, config_name: str) -> List[str]:
    """The run-directory parts of one run (without the ``seed<S>`` folder)."""
    lookup = cfg_lookup(cfg, {"trainer": method.trainer, "config": config_name, "dataset": dataset,
                              "shots": shots})
    return [format_template(t, lookup) for t in method.dirs]

