"""One generator of run commands for every method of the paper (spec §8), replacing the reference's
hand-edited shell scripts with absolute paths (B33).

Every run is a ``Job``: the command line plus its marker file (the run's ``results.json``, or a
feature file for the linear probe). A job is skipped only when its ``results.json`` holds a finished
run with the fingerprint the job's command would record (``scripts.run_identity``, ``dassl.results``).
A finished run with a *different* fingerprint (another ``--config``, other ``--opts``, rewritten
weights, another split file) is never reused: the sweep stops before running anything with one
``error:`` line naming the differing keys; ``--force`` overwrites. A sweep is therefore idempotent
and resumable: rerunning it skips what finished and retries what did not.

    python -m scripts.sweep --method fsnl --root DATA --out OUT --domains Animals --shots 4 --dry-run
    python -m scripts.sweep --method coop --root DATA --out OUT                  # runs sequentially
    python -m scripts.sweep --method fsnl ... --dry-run > cmds.txt && python -m scripts.launch cmds.txt

``--opts KEY VALUE ...`` (last on the line) is merged into every ``train.py`` / feature-extractor
command: a key the sweep already sets is replaced in place, a new key is appended. Run directories
name the hyper-parameters that tell runs apart: FSNL's effective epochs / batch size / LR, the config
name where the reference layout has one, and every ``--opts`` key the folder names do not already
show, as one more folder ``KEY_value_KEY_value`` (``--config`` of FSNL as ``config_<name>``; see
``dassl.results.hparam_dir``). Commands are meant to run from the repository root, which is where this
module runs them.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (python dir/script.py): the repo root goes first on sys.path, as under -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one line, not a traceback
    from dassl.ctrl_c import quiet_ctrl_c_while_loading

    quiet_ctrl_c_while_loading()

import argparse
import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from configs import ConfigError, build_cfg
from dassl import results
from dassl.cli import ArgumentParser, console_logging
from dassl.ctrl_c import exit_with
from dassl.utils import WriteError, check_writable_dir
from dassl.utils.identity import code_version
from dassl.utils.registry import RegistryKeyError
from scripts.domains import (
    LAION_BEYOND_DOMAINS,
    REPO_ROOT,
    DomainError,
    check_shots,
    count_classes,
    has_subset,
    repo_path,
    resolve_domains,
)
from scripts.fsnl_rule import format_lr
from scripts.methods import (
    CONFIG_SETS,
    PLACEHOLDER,
    RULES,
    Method,
    default_rule,
    format_template,
    get_method,
    get_rule,
    method_names,
    resolve_config_set,
    run_dir_parts,
)
from scripts.methods import METHODS as REGISTRY
from scripts.run_identity import (
    CONFLICTS,
    RunConflict,
    check_command,
    command_state,
    conflict_message,
    exit_status,
)

__all__ = [
    "METHODS",
    "TRAINERS",
    "DEFAULT_CONFIGS",
    "DEFAULT_SHOTS",
    "DEFAULT_SEEDS",
    "RESULTS_FILE",
    "Job",
    "Run",
    "SweepSpec",
    "SweepSummary",
    "merge_opts",
    "fsnl_opts",
    "trainer_config",
    "plan_runs",
    "probe_dir",
    "build_jobs",
    "split_done",
    "job_states",
    "RunConflict",
    "run_jobs",
    "main",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = results.RESULTS_FILE
#: Method names, trainers and default (paper) configs, read from the registry (scripts/methods.py).
METHODS = method_names()
TRAINERS = MappingProxyType({name: m.trainer for name, m in REGISTRY.items()})
DEFAULT_CONFIGS = MappingProxyType({name: m.config_for("paper", 1) for name, m in REGISTRY.items()})
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
FEATURE_SPLITS = ("train", "val", "test")
FEATURE_SUBSETS = ("OOP", "IP")
#: ``SEED`` of the linear probe's feature extraction. It seeds random weights (``WEIGHTS none``, the smoke
#: configs), so a rerun recognises its own feature files (unseeded, every extraction drew new weights and
#: a finished probe could never be skipped); pretrained weights and the probe's runs
#: (``default_rng(run)``) do not depend on it.
PROBE_SEED = 1

Opts = List[Tuple[str, str]]


@dataclass(frozen=True)
class Job:
    """One command and the file that marks it as finished."""

    argv: Tuple[str, ...]
    done: str
    label: str = ""

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def is_done(self, cwd: Optional[str] = None, match_code: bool = False) -> bool:
        """Whether the job's output holds a finished run of this job's fingerprint (for a marker other
        than results.json: whether it exists); relative paths are relative to ``cwd``."""
        return self.state(cwd, match_code).done

    def state(self, cwd: Optional[str] = None, match_code: bool = False) -> results.Finished:
        return command_state(self.argv, self.done, cwd, match_code)


@dataclass
class SweepSpec:
    """What to sweep; ``domains`` may hold short names, ``seeds=None`` means the method's default."""

    method: str
    root: str
    out: str
    domains: Sequence[str] = LAION_BEYOND_DOMAINS
    shots: Sequence[int] = DEFAULT_SHOTS
    seeds: Optional[Sequence[int]] = None
    config: Optional[str] = None
    opts: Sequence[str] = ()
    python: str = "python"
    feature_dir: Optional[str] = None
    sub_classes: Sequence[str] = ("OOP",)
    #: config set of the registry (paper | mini | smoke), used where ``config`` is not given
    config_set: str = "paper"
    #: paper | mini | none; default: the config set's rule, or none with an explicit ``config``
    rule: Optional[str] = None


@dataclass
class SweepSummary:
    ran: List[Job] = field(default_factory=list)
    skipped: List[Job] = field(default_factory=list)
    failed: List[Tuple[Job, str]] = field(default_factory=list)
    exit_codes: List[Optional[int]] = field(default_factory=list)  # of the failed jobs, in order (None: no exit code)

    def line(self) -> str:
        total = len(self.ran) + len(self.skipped) + len(self.failed)
        return f"{total} job(s): ran {len(self.ran)}, skipped {len(self.skipped)}, failed {len(self.failed)}"


def merge_opts(base: Sequence[Tuple[str, str]], extra: Sequence[str]) -> Opts:
    """Override/extend ``base`` KEY VALUE pairs with the flat ``extra`` list (later wins, order kept)."""
    if len(extra) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got an odd number of items: {list(extra)}")
    merged: Dict[str, str] = dict(base)
    for key, value in zip(extra[::2], extra[1::2]):
        merged[str(key)] = str(value)
    return list(merged.items())


def _flat(opts: Opts) -> List[str]:
    return [item for pair in opts for item in pair]


def trainer_config(trainer: str, config: str) -> Tuple[str, str]:
    """(path, name) of a trainer config given by name (under ``configs/trainers/<trainer>/``) or by path."""
    if config.endswith((".yaml", ".yml")) or "/" in config or os.sep in config:
        return config, Path(config).stem
    return f"configs/trainers/{trainer}/{config}.yaml", config


def _dataset_config(dataset: str) -> str:
    return f"configs/datasets/{dataset}.yaml"


@dataclass(frozen=True)
class Run:
    """One planned ``train.py`` run: what its command line says, as data (the grid engine builds the
    same config from it with :func:`configs.build_cfg`, exactly as ``train.py`` would)."""

    method: str
    trainer: str
    dataset: str
    shots: int
    seed: int
    config: str
    opts: Tuple[Tuple[str, str], ...]
    output_dir: str
    eval_only: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} {self.dataset} K={self.shots} seed={self.seed}"

    def argv(self, root: str, python: str = "python") -> Tuple[str, ...]:
        argv = [
            python, "train.py",
            "--root", root,
            "--seed", str(self.seed),
            "--trainer", self.trainer,
            "--dataset-config-file", _dataset_config(self.dataset),
            "--config-file", self.config,
            "--output-dir", self.output_dir,
        ]
        if self.eval_only:
            argv.append("--eval-only")
        return tuple(argv + _flat(list(self.opts)))


def _seeds(spec: SweepSpec, method: Method) -> Sequence[int]:
    return spec.seeds if spec.seeds is not None else method.seeds


def _opts_dirs(spec: SweepSpec, shown: Sequence[str], config_name: str = "") -> Tuple[str, ...]:
    """One more folder for what the method folders do not show: ``config_<name>`` (when given) and
    every ``--opts`` key not in ``shown`` and not excluded from the fingerprint (e.g. PRINT_FREQ)."""
    pairs: List[Tuple[str, str]] = [("config", config_name)] if config_name else []
    for key, value in zip(spec.opts[::2], spec.opts[1::2]):
        if key not in shown and key not in results.EXCLUDED_KEYS:
            pairs.append((str(key), str(value)))
    return (results.hparam_dir(pairs),) if pairs else ()


def fsnl_opts(shots: int, bs: int, lr: float) -> Opts:
    """The paper's FSNL training overrides (spec §8.1) for K shots with the rule's BS and LR."""
    opts = dict(get_method("fsnl").run_opts(shots, get_rule("paper"), num_classes=1))
    opts["OPTIM.LR"] = format_lr(lr)
    opts["DATALOADER.TRAIN_X.BATCH_SIZE"] = str(bs)
    return list(opts.items())


def _dir_cfg(method: Method, dataset: str, config_path: str, opts: Opts) -> Any:
    """The resolved config a run's directory name is read from (the same ``build_cfg`` call as
    ``train.py``'s, without the per-seed fields, which no directory part shows)."""
    if not (REPO_ROOT / config_path).is_file() and not os.path.isfile(config_path):
        raise ValueError(f"config file(s) not found (relative to the repository root): {config_path}")
    return build_cfg(trainer=method.trainer, dataset=repo_path(_dataset_config(dataset)),
                     config=repo_path(config_path), opts=_flat(opts))


def plan_runs(spec: SweepSpec, dataset: str, method: Optional[Method] = None) -> List[Run]:
    """The ``train.py`` runs of one method (default ``spec.method``) on one dataset, in shots → seed
    order (training methods) or subset → seed order (zero-shot). The linear probe has none."""
    method = method or get_method(spec.method)
    if method.kind == "probe":
        return []
    rule = default_rule(spec.config_set, spec.config, spec.rule)
    runs: List[Run] = []
    if method.kind == "zeroshot":
        # Training-free: no shots and no model dir. With SUB_CLASSES OOP the engine's automatic
        # cross-evaluation also measures IP, so one run gives OOP, IP and their H-mean.
        for sub in spec.sub_classes:
            config_path, config_name = trainer_config(method.config_trainer,
                                                      spec.config or method.config_for(spec.config_set, 1))
            opts = merge_opts(method.run_opts(0, rule, sub_classes=sub), spec.opts)
            # The zero-shot folder names no opts (as before): another config there is a conflict.
            parts = run_dir_parts(method, _dir_cfg(method, dataset, config_path, opts), dataset, 0, config_name)
            for seed in _seeds(spec, method):
                runs.append(Run(method.name, method.trainer, dataset, 0, int(seed), config_path, tuple(opts),
                                os.path.join(spec.out, *parts, f"seed{seed}"), eval_only=True))
        return runs
    needs_classes = method.batch_rule and rule.method_opts
    data_root = repo_path(spec.root)  # where the jobs will read it
    num_classes = count_classes(data_root, dataset, "OOP") if needs_classes else 0
    if needs_classes or has_subset(data_root, dataset):
        # with the data at hand, a shot count no class has is one line here rather than one failed job
        # each; without it (commands planned for another machine's copy) the jobs check it themselves
        check_shots(data_root, dataset, spec.shots)
    for shots in spec.shots:
        config_path, config_name = trainer_config(method.config_trainer,
                                                  spec.config or method.config_for(spec.config_set, shots))
        opts = merge_opts(method.run_opts(shots, rule, num_classes), spec.opts)
        parts = run_dir_parts(method, _dir_cfg(method, dataset, config_path, opts), dataset, shots, config_name)
        parts += _extra_dirs(spec, method)
        for seed in _seeds(spec, method):
            runs.append(Run(method.name, method.trainer, dataset, int(shots), int(seed), config_path, tuple(opts),
                            os.path.join(spec.out, *parts, f"seed{seed}")))
    return runs


def _extra_dirs(spec: SweepSpec, method: Method) -> List[str]:
    """What the method's folders do not show (``dassl.results.hparam_dir``): ``config_<name>`` for an
    explicit ``--config`` where no folder names the config, and every ``--opts`` key no folder shows."""
    shown = {name for t in method.dirs for name in PLACEHOLDER.findall(t) if "." in name}
    named_config = any("{config}" in t for t in method.dirs)
    config_name = Path(spec.config).stem if spec.config and not named_config else ""
    return list(_opts_dirs(spec, sorted(shown), config_name))


def _method_jobs(spec: SweepSpec, dataset: str) -> Iterable[Job]:
    method = get_method(spec.method)
    if method.kind == "probe":
        yield from linear_probe_jobs(spec, dataset)
        return
    for run in plan_runs(spec, dataset, method):
        label = f"zeroshot {dataset} {dict(run.opts).get('DATASET.SUB_CLASSES')} seed={run.seed}" \
            if method.kind == "zeroshot" else run.label
        yield Job(run.argv(spec.root, spec.python), os.path.join(run.output_dir, RESULTS_FILE), label)


def probe_dir(spec: SweepSpec, dataset: str) -> str:
    """Where the linear probe of ``dataset`` writes its results."""
    method = get_method("linear_probe")
    return os.path.join(spec.out, *[format_template(t, lambda n: {"dataset": dataset}[n]) for t in method.dirs])


def linear_probe_jobs(spec: SweepSpec, dataset: str) -> Iterable[Job]:
    # Features of both subsets and all splits first, then one probe per domain (it loops over the
    # shot counts and its own runs internally). --opts reach the extractor only: the probe has a
    # plain argparse CLI without yacs overrides.
    method = get_method("linear_probe")
    feature_dir = spec.feature_dir or os.path.join(spec.out, "clip_feat")
    config_path, _ = trainer_config(method.config_trainer, spec.config or method.config_for(spec.config_set, 1))
    for sub in FEATURE_SUBSETS:
        opts = merge_opts([("DATASET.SUB_CLASSES", sub)], spec.opts)
        for split in FEATURE_SPLITS:
            argv = (
                spec.python, "-m", "lpclip.feat_extractor",
                "--root", spec.root,
                "--output-dir", feature_dir,
                "--config-file", config_path,
                "--dataset-config-file", _dataset_config(dataset),
                "--split", split,
                "--seed", str(PROBE_SEED),
                *_flat(opts),
            )
            done = os.path.join(feature_dir, dataset, sub, f"{split}.npz")
            yield Job(argv, done, f"features {dataset} {sub} {split}")
    out = probe_dir(spec, dataset)
    argv = (
        spec.python, "-m", "lpclip.linear_probe",
        "--feature-dir", feature_dir,
        "--dataset", dataset,
        "--sub-classes", "OOP",
        "--output-dir", out,
        "--shots", *[str(int(k)) for k in spec.shots],
    )
    yield Job(argv, os.path.join(out, RESULTS_FILE), f"linear_probe {dataset}")


def check_counts(shots: Sequence[int], seeds: Optional[Sequence[int]]) -> Tuple[List[int], Optional[List[int]]]:
    """Shot counts (>= 1) and seeds (>= 0; a negative seed would make the run unseeded), each kept once in
    the order given: a repeated value planned two jobs into one output folder. Raises ValueError."""
    if any(int(k) < 1 for k in shots):
        raise ValueError(f"--shots {' '.join(map(str, shots))}: every shot count must be >= 1")
    if seeds is not None and any(int(s) < 0 for s in seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: every seed must be >= 0 (a negative seed runs unseeded)")
    unique = list(dict.fromkeys(int(k) for k in shots))
    return unique, (list(dict.fromkeys(int(s) for s in seeds)) if seeds is not None else None)


#: Config keys the plan sets for every job, and the option that sets them; ``SEED`` also for the runs
#: of ``train.py`` and ``DATASET.NUM_SHOTS`` for the trained ones (the probe's jobs have no seed of their
#: own, and its tiny-model tests pass ``SEED``). Given in ``--opts`` they overrode the plan silently:
#: ``OUTPUT_DIR`` wrote every run into one folder outside ``--out``, ``SEED`` / ``DATASET.NUM_SHOTS``
#: filed a seed-5 or 4-shot run under ``seed1`` / ``shots_1``.
PLAN_KEYS: Mapping[str, str] = MappingProxyType({
    "OUTPUT_DIR": "--out", "DATASET.ROOT": "--root", "DATASET.NAME": "--domains"})


def check_opts(opts: Sequence[str], method: Method, extra: Optional[Mapping[str, str]] = None) -> None:
    """Raise a one-line ValueError for a ``--opts`` key the plan sets itself for ``method``'s jobs
    (``extra``: more such keys of the caller, key → option)."""
    owned = dict(PLAN_KEYS)
    if method.kind != "probe":
        owned["SEED"] = "--seeds"
    if method.kind == "train":
        owned["DATASET.NUM_SHOTS"] = "--shots"
    owned.update(extra or {})
    stray = next((item for item in opts if str(item).startswith("--")), None)
    if stray is not None:  # argparse's REMAINDER took an option given after --opts as a config item
        raise ValueError(f"--opts ... {stray}: --opts takes KEY VALUE pairs up to the end of the line; put "
                         f"{stray} before --opts")
    if len(opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got an odd number of items: {' '.join(map(str, opts))}")
    for key in list(opts)[::2]:
        option = owned.get(str(key))
        if option is not None:
            raise ValueError(f"--opts {key}: set for each {method.name} job from {option}; use {option} instead")


def build_jobs(spec: SweepSpec) -> List[Job]:
    """All jobs of a sweep in domain → shots → seed order (FSNL reads its class counts from ``spec.root``)."""
    check_opts(spec.opts, get_method(spec.method))
    shots, seeds = check_counts(spec.shots, spec.seeds)
    spec = replace(spec, shots=shots, seeds=seeds)
    jobs: List[Job] = []
    for dataset in resolve_domains(spec.domains):
        jobs.extend(_method_jobs(spec, dataset))
    _check_config_files(jobs)
    return jobs


def _check_config_files(jobs: Sequence[Job]) -> None:
    """Fail before running anything when a config file named by the jobs does not exist."""
    wanted = {
        job.argv[i + 1]
        for job in jobs
        for i, tok in enumerate(job.argv[:-1])
        if tok in ("--config-file", "--dataset-config-file")
    }
    missing = sorted(p for p in wanted if not (Path(p) if os.path.isabs(p) else REPO_ROOT / p).is_file())
    if missing:
        raise ValueError(f"config file(s) not found (relative to the repository root): {', '.join(missing)}")


def job_states(jobs: Sequence[Job], cwd: Optional[str] = None, match_code: bool = False) -> List[results.Finished]:
    """The ``results.Finished`` state of every job (``match`` means skip it)."""
    workdir = cwd or os.fspath(REPO_ROOT)
    return [job.state(workdir, match_code) for job in jobs]


def split_done(jobs: Sequence[Job], force: bool = False, cwd: Optional[str] = None,
               match_code: bool = False) -> Tuple[List[Job], List[Job]]:
    """(pending, already done), relative paths taken from ``cwd`` (default: the repository root, where
    jobs run). Raises :class:`RunConflict` (one line naming the differing keys) when a job's output
    holds a finished run with another fingerprint, unless ``force``."""
    if force:
        return list(jobs), []
    states = job_states(jobs, cwd, match_code)
    if any(s.state in CONFLICTS for s in states):
        raise RunConflict(conflict_message(states))
    pending = [j for j, s in zip(jobs, states) if not s.done]
    done = [j for j, s in zip(jobs, states) if s.done]
    commit = code_version()["commit"]
    older = [s for s in states if s.done and s.results is not None and s.results.fingerprint
             and (s.results.fingerprint.get("code") or {}).get("commit") != commit]
    if older:
        logger.warning("%d of the skipped run(s) were produced by another code version than %s (e.g. %s); "
                       "--match-code reruns them", len(older), commit[:12], older[0].path)
    return pending, done


def _executable_argv(argv: Sequence[str]) -> List[str]:
    # Commands say "python" so that they can be copied anywhere; run them with this interpreter
    # so a virtual environment that launched the sweep also runs the jobs.
    out = list(argv)
    if out and out[0] == "python":
        out[0] = sys.executable
    return out


def run_jobs(
    jobs: Sequence[Job], force: bool = False, fail_fast: bool = False, cwd: Optional[str] = None,
    match_code: bool = False,
) -> SweepSummary:
    """Run pending jobs one after the other; a failure is recorded and the sweep goes on (unless
    ``fail_fast``). Raises :class:`RunConflict` before running anything (see :func:`split_done`)."""
    summary = SweepSummary()
    workdir = cwd or os.fspath(REPO_ROOT)
    pending, summary.skipped = split_done(jobs, force, workdir, match_code)
    # --force: every job (train.py, lpclip) replaces a run of another configuration instead of refusing it
    env = {**os.environ, results.OVERWRITE_ENV: "1"} if force else None
    for i, job in enumerate(pending, 1):
        logger.info("[%d/%d] %s", i, len(pending), job.command)
        try:
            rc = subprocess.run(_executable_argv(job.argv), cwd=workdir, env=env).returncode
        except OSError as err:
            summary.failed.append((job, f"could not start: {err}"))
            summary.exit_codes.append(None)
        else:
            if rc != 0:
                summary.failed.append((job, f"exit code {rc}"))
                summary.exit_codes.append(rc)
            elif not job.is_done(workdir, match_code):
                state = job.state(workdir, match_code)
                why = "was not written" if state.state == "missing" else f"does not match the job ({state.line()})"
                summary.failed.append((job, f"exit code 0 but {job.done} {why}"))
                summary.exit_codes.append(None)
            else:
                summary.ran.append(job)
        if fail_fast and summary.failed:
            break
    return summary


def _yaml_dump(jobs: Sequence[Job]) -> str:
    payload = {"commands": [{"cmd": j.command, "done": j.done} for j in jobs]}
    return yaml.safe_dump(payload, sort_keys=False, width=1 << 16)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m scripts.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--root", required=True, help="dataset root (holds <Prefix><n>_OOP/ and _IP/ folders)")
    p.add_argument("--out", required=True, help="output root; runs go to <out>/<Dataset>/shots_<K>/train/...")
    p.add_argument("--domains", nargs="+", default=list(LAION_BEYOND_DOMAINS),
                   help="registered or short names (default: the nine LAION-Beyond domains)")
    p.add_argument("--shots", nargs="+", type=int, default=list(DEFAULT_SHOTS))
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="default: the method's (1 2 3; zero-shot: 3)")
    p.add_argument("--config-set", default=None, choices=list(CONFIG_SETS),
                   help="the registry's configs per shot count: paper (ViT-B-16; the default), mini (Mini-Beyond), "
                        "smoke (tests); not with --config")
    p.add_argument("--config", default=None,
                   help="one trainer config name under configs/trainers/<Trainer>/ or a yaml path for every "
                        "shot count; it is used as it is (rule none) unless --rule says otherwise")
    p.add_argument("--rule", default=None, choices=list(RULES),
                   help="schedule on top of the configs: paper (200 epochs, FSNL's BS/LR rule, checkpoints every "
                        "10), mini (the Mini-Beyond recipe), none (the files as they are). Default: the config "
                        "set's (paper→paper, mini→mini, smoke→none); none with --config")
    p.add_argument("--sub-classes", nargs="+", default=["OOP"], choices=["OOP", "IP", "All"],
                   help="zeroshot only: subsets to evaluate (OOP also cross-evaluates IP)")
    p.add_argument("--feature-dir", default=None, help="linear_probe only: feature folder (default <out>/clip_feat)")
    p.add_argument("--python", default="python", help="interpreter named in the commands")
    p.add_argument("--dry-run", action="store_true", help="print the pending commands, one per line, and exit")
    p.add_argument("--format", choices=["text", "yaml"], default="text",
                   help="dry-run output: one command per line, or a launch.py YAML with done markers")
    p.add_argument("--force", action="store_true",
                   help="(re)run every job, overwriting finished runs (also those of another fingerprint)")
    p.add_argument("--match-code", action="store_true",
                   help="a finished run counts only if the same code version (git commit) produced it")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed job")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE ... merged into every command (must come last)")
    return p


def check_data(spec: SweepSpec) -> None:
    """Before a real sweep starts any job: ``--root`` is a folder holding every domain (:class:`DomainError`).
    ``--dry-run`` does not ask: its commands may be meant for another machine's copy of the data."""
    root = repo_path(spec.root)  # where the jobs will read it
    if not os.path.isdir(root):
        raise DomainError(f"--root {spec.root} is not a directory (the dataset root)")
    method = get_method(spec.method)
    for dataset in resolve_domains(spec.domains):
        check_shots(root, dataset, spec.shots if method.kind == "train" else [])


def check_jobs(jobs: Sequence[Job], cwd: Optional[str] = None) -> None:
    """Every ``train.py`` job's config passes ``train.py``'s own checks, before the first job starts:
    a config value every job would refuse (``--opts OPTIM.WEIGHT_DECAY -1``) is one line naming the
    first job, not a failure per job. A real run only: ``--dry-run`` may plan for another machine, whose
    weights are not here (the check includes the backbone's)."""
    for job in jobs:
        try:
            check_command(job.argv, cwd)
        except (ConfigError, RegistryKeyError, ValueError) as err:
            raise ConfigError(f"{job.label or job.command}: {err}") from None


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    console_logging(logger.name)
    try:
        config_set = resolve_config_set(args.config_set, args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    spec = SweepSpec(
        method=args.method,
        root=args.root,
        out=args.out,
        domains=args.domains,
        shots=args.shots,
        seeds=args.seeds,
        config=args.config,
        opts=args.opts,
        python=args.python,
        feature_dir=args.feature_dir,
        sub_classes=args.sub_classes,
        config_set=config_set,
        rule=args.rule,
    )
    try:
        jobs = build_jobs(spec)
    except (DomainError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.dry_run:
        try:
            pending, done = split_done(jobs, args.force, match_code=args.match_code)
        except RunConflict as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.format == "yaml":
            sys.stdout.write(_yaml_dump(pending))
        else:
            for job in pending:
                print(job.command)
        print(f"# {args.method}: {len(pending)} pending, {len(done)} skipped (finished, same fingerprint)",
              file=sys.stderr)
        return 0

    try:
        check_data(spec)
        check_jobs(jobs)
    except (DomainError, ConfigError, RegistryKeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if shutil.which(args.python) is None:  # each job failed to start, one after the other
        print(f"error: --python {args.python!r} is not an executable found on PATH; name the interpreter "
              "that runs train.py", file=sys.stderr)
        return 2
    try:
        if args.feature_dir:  # the probe's extractor jobs each failed on it, then the probe job
            check_writable_dir(args.feature_dir, "feature folder (--feature-dir)", create=False)
        check_writable_dir(args.out)  # before any job: a file, /dev/null or a read-only folder
    except WriteError as err:
        print(f"error: {err.strerror or err}", file=sys.stderr)
        return 2
    try:
        summary = run_jobs(jobs, force=args.force, fail_fast=args.fail_fast, match_code=args.match_code)
    except RunConflict as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"sweep {args.method}: {summary.line()}", file=sys.stderr)
    for job, why in summary.failed:
        print(f"  FAILED ({why}): {job.command}", file=sys.stderr)
    return exit_status(summary.exit_codes)


if __name__ == "__main__":
    exit_with(main)
