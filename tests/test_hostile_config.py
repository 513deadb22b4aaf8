"""Hostile inputs to ``train.py``: config, weights, checkpoints and the output directory (issue 12).

Every case builds the bad input on the toy benchmark with the ``test-tiny`` model and asserts:
exit code 2, exactly one ``error:`` line on stderr that names the file or key, no traceback, and that
a previous run's finished files (results.json, config.yaml, log.txt, checkpoints) are byte-identical
afterwards. Most cases run ``train.cli`` in process (milliseconds); one runs the real script.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_safetensors

import configs
import train
from clip.loader import BackboneSpec, check_weights_available, expected_embed_dim, load_clip
from dassl.data.datasets import build_dataset
from dassl.utils import (
    FormerFile,
    WriteError,
    atomic_write_text,
    check_writable_dir,
    clean_temp_files,
    close_log_file,
    missing_dirs,
    remove_failed_start,
    setup_logger,
    write_json,
)
from tests.helpers import REPO, run_train, train_argv

TRAINER = "FSNL_openclip"
MINI_WEIGHTS = REPO / "assets" / "mini_beyond" / "mini_clip.safetensors"


def snapshot(directory: Path) -> Dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _console_only_logging():
    """No test may leave a file handler behind: a later error would append to that run's log.txt."""
    setup_logger(None)
    yield
    setup_logger(None)


@pytest.fixture(scope="module")
def finished(toy_root, tmp_path_factory) -> Path:
    """A finished FSNL run (3 epochs, a checkpoint per epoch), written under umask 022."""
    out = tmp_path_factory.mktemp("hostile") / "finished"
    old = os.umask(0o022)
    try:
        run_train(train_argv(toy_root, out, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1"))
    finally:
        os.umask(old)
        setup_logger(None)
    return out


def one_error_line(capsys, rc: int) -> str:
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- config
CONFIG_CASES = [
    (("TRAINER.FSNL.PREC", "fp8"), ["TRAINER.FSNL.PREC", "fp8"]),
    (("TRAINER.FSNL.LOSS", "nope"), ["TRAINER.FSNL.LOSS", "nope"]),
    (("TRAINER.FSNL.ABSENT_CLASSES", "some"), ["TRAINER.FSNL.ABSENT_CLASSES"]),
    (("TRAINER.FSNL.NAME_MATCHING", "regex"), ["TRAINER.FSNL.NAME_MATCHING", "'regex'", "fixed"]),
    (("INPUT.SIZE", "(64, 64)"), ["INPUT.SIZE", "[32, 32]"]),
    (("INPUT.SIZE", "(32,)"), ["INPUT.SIZE"]),
    (("INPUT.TRANSFORMS", "['random_flip', 'nope']"), ["INPUT.TRANSFORMS", "nope"]),
    (("DATALOADER.TRAIN_X.BATCH_SIZE", "0"), ["DATALOADER.TRAIN_X.BATCH_SIZE"]),
    (("DATALOADER.TRAIN_X.BATCH_SIZE", "-4"), ["DATALOADER.TRAIN_X.BATCH_SIZE"]),
    (("DATALOADER.TEST.BATCH_SIZE", "0"), ["DATALOADER.TEST.BATCH_SIZE"]),
    (("OPTIM.MAX_EPOCH", "0"), ["OPTIM.MAX_EPOCH", "--eval-only"]),
    (("OPTIM.MAX_EPOCH", "-3"), ["OPTIM.MAX_EPOCH"]),
    (("TEST.CROSS_EVAL", "XYZ"), ["TEST.CROSS_EVAL", "XYZ"]),
    (("TEST.CROSS_EVAL", "('IP', 'ip')"), ["TEST.CROSS_EVAL", "'ip'"]),
    # reached torch/torchvision as tracebacks (after the output dir was set up) before check_cfg knew them
    (("OPTIM.LR", "-1"), ["OPTIM.LR", "-1"]),
    (("DATALOADER.NUM_WORKERS", "-1"), ["DATALOADER.NUM_WORKERS", ">= 0"]),
    (("INPUT.INTERPOLATION", "cubic"), ["INPUT.INTERPOLATION", "bicubic"]),
    (("INPUT.PIXEL_STD", "[0, 0, 0]"), ["INPUT.PIXEL_STD", "> 0"]),
    (("INPUT.PIXEL_MEAN", "[0.5, 0.5]"), ["INPUT.PIXEL_MEAN", "1 or 3"]),
    (("DATALOADER.TRAIN_X.BATCH_SIZE", "2.5"), ["DATALOADER.TRAIN_X.BATCH_SIZE", "int", "2.5"]),
    # fixed-length name embeddings with no (or negative) rows: a traceback in the name learner before
    (("TRAINER.FSNL.FLE", "True", "TRAINER.FSNL.N_CTX", "0"), ["TRAINER.FSNL.N_CTX", ">= 1", "got 0"]),
    (("TRAINER.FSNL.FLE", "True", "TRAINER.FSNL.N_CTX", "-2"), ["TRAINER.FSNL.N_CTX", "got -2"]),
    # accepted before: -1 cached views ran online augmentation but were recorded as -1 views; -5 shots
    # ran on all images under the name shots_-5
    (("DATALOADER.FEATURE_CACHE.VIEWS", "-1"), ["DATALOADER.FEATURE_CACHE.VIEWS", ">= 0", "got -1"]),
    (("DATASET.NUM_SHOTS", "-5"), ["DATASET.NUM_SHOTS", "-1 for all", "got -5"]),
    (("DATASET.NUM_SHOTS", "0"), ["DATASET.NUM_SHOTS", "-1 for all", "got 0"]),  # all images, filed as 0-shot
    # torch's optimizer checks fired as tracebacks once data and backbone were loaded
    (("OPTIM.WEIGHT_DECAY", "-1"), ["OPTIM.WEIGHT_DECAY must be a finite number >= 0", "got -1.0"]),
    (("OPTIM.MOMENTUM", "-1"), ["OPTIM.MOMENTUM", "sgd", "got -1.0"]),
    (("OPTIM.NAME", "adam", "OPTIM.ADAM_BETA1", "1.5"), ["OPTIM.ADAM_BETA1", "[0, 1)", "adam", "1.5"]),
    (("OPTIM.NAME", "adamw", "OPTIM.ADAM_BETA2", "-0.1"), ["OPTIM.ADAM_BETA2", "must be in [0, 1) for adamw", "-0.1"]),
    (("OPTIM.NAME", "rmsprop", "OPTIM.RMSPROP_ALPHA", "-1"), ["OPTIM.RMSPROP_ALPHA", "got -1.0"]),
    (("OPTIM.MOMENTUM", "0.0", "OPTIM.SGD_NESTEROV", "True"), ["OPTIM.SGD_NESTEROV True needs OPTIM.MOMENTUM > 0"]),
    (("OPTIM.STAGED_LR", "True", "OPTIM.BASE_LR_MULT", "-0.1"), ["OPTIM.BASE_LR_MULT must be a finite number >= 0 with OPTIM.STAGED_LR"]),
    # the schedule: a bad warm-up type or milestone was a traceback; a negative decay factor or
    # warm-up LR trained with a negative learning rate (gradient ascent), exit 0
    (("OPTIM.WARMUP_TYPE", "linaer"), ["OPTIM.WARMUP_TYPE", "linaer", '"linear"']),
    (("OPTIM.WARMUP_CONS_LR", "-1.0"), ["OPTIM.WARMUP_CONS_LR", "constant warm-up", "got -1.0"]),
    (("OPTIM.WARMUP_TYPE", "linear", "OPTIM.WARMUP_MIN_LR", "-1e-5"), ["OPTIM.WARMUP_MIN_LR (the linear warm-up's learning rate)", ">= 0"]),
    (("OPTIM.LR_SCHEDULER", "single_step", "OPTIM.GAMMA", "-0.1"), ["OPTIM.GAMMA (the LR decay factor of single_step)", "-0.1"]),
    (("OPTIM.LR_SCHEDULER", "multi_step", "OPTIM.STEPSIZE", "(0, 2)"), ["multi_step needs positive OPTIM.STEPSIZE milestones", "[0, 2]"]),
    (("OPTIM.LR_SCHEDULER", "multi_step", "OPTIM.STEPSIZE", "(1.5,)"), ["OPTIM.STEPSIZE must be whole numbers of epochs for multi_step", "1.5"]),
    # the loaders: tracebacks while building them ('list' object has no attribute 'to' for K != 1)
    (("DATALOADER.TRAIN_X.SAMPLER", "RandomSamplr"), ["DATALOADER.TRAIN_X.SAMPLER", '"RandomSampler"']),
    (("DATALOADER.TEST.SAMPLER", "bogus"), ["DATALOADER.TEST.SAMPLER: unknown sampler 'bogus'", "SequentialSampler"]),
    (("DATALOADER.K_TRANSFORMS", "0"), ["DATALOADER.K_TRANSFORMS", ">= 1", "got 0"]),
    (("DATALOADER.K_TRANSFORMS", "2"), ["DATALOADER.K_TRANSFORMS", "must be 1", TRAINER, "got 2"]),
    # the hub client's own message, naming no key
    (("MODEL.BACKBONE.NAME", "hf-hub:a/b/c"), ["MODEL.BACKBONE.NAME 'hf-hub:a/b/c' is not a hub model id"]),
]


@pytest.mark.parametrize("opts,expected", CONFIG_CASES, ids=[f"{o[0]}={o[1]}" for o, _ in CONFIG_CASES])
def test_config_mistake_is_one_line_before_any_work(toy_root, finished, capsys, monkeypatch, opts, expected):
    before = snapshot(finished)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER, *opts)))
    assert all(word in line for word in expected), line
    assert snapshot(finished) == before  # not even a log line or a config.yaml was written


@pytest.mark.parametrize("flag", ["--output-dir", "--root"])
def test_an_empty_folder_option_is_one_line_and_writes_nothing(toy_root, tmp_path, capsys, monkeypatch, flag):
    """``--output-dir "$OUT"`` with OUT unset: the run went to ./output of whatever directory it started
    in (the config's default), exit 0."""
    monkeypatch.chdir(tmp_path)
    argv = train_argv(toy_root, tmp_path / "out", TRAINER)
    argv[argv.index(flag) + 1] = ""
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} is empty" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_an_output_dir_given_twice_is_one_line_before_any_work(toy_root, tmp_path, capsys):
    """``--output-dir A ... OUTPUT_DIR B``: the override won without a word and the run went to B."""
    a, b = tmp_path / "a", tmp_path / "b"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, a, TRAINER, "OUTPUT_DIR", str(b))))
    assert f"--output-dir {a} and the override OUTPUT_DIR '{b}'" in line and "give it once" in line, line
    assert not a.exists() and not b.exists()
    # the same value twice is no conflict; neither is the override alone
    assert configs.build_cfg(trainer=TRAINER, output_dir=str(a), opts=["OUTPUT_DIR", str(a)]).OUTPUT_DIR == str(a)
    # nor is one folder written two ways
    assert configs.build_cfg(trainer=TRAINER, output_dir=f"{a}/", opts=["OUTPUT_DIR", str(a)]).OUTPUT_DIR == str(a)
    assert configs.build_cfg(trainer=TRAINER, root=f"{a}/./", opts=["DATASET.ROOT", str(a)]).DATASET.ROOT == str(a)
    # an OUTPUT_DIR "" override wrote into the current directory
    line = one_error_line(capsys, train.cli(train_argv(toy_root, a, TRAINER, "OUTPUT_DIR", "")))
    assert "set OUTPUT_DIR twice" in line, line
    argv = train_argv(toy_root, a, TRAINER, "OUTPUT_DIR", "")
    del argv[argv.index("--output-dir"):argv.index("--output-dir") + 2]
    line = one_error_line(capsys, train.cli(argv))
    assert "OUTPUT_DIR is empty" in line, line
    assert configs.build_cfg(trainer=TRAINER, opts=["OUTPUT_DIR", str(b), "SEED", "3"], seed=3).OUTPUT_DIR == str(b)
    # an option left at its default is not "given": the override alone of its key is no conflict
    args = train.parse_args(["--trainer", "TaskRes", "--seed", "1", "SEED", "1", "TRAINER.TaskRes.ENHANCED_BASE",
                             "clip"])
    cfg = train.setup_cfg(args)
    assert cfg.SEED == 1 and cfg.TRAINER.TaskRes.ENHANCED_BASE == "clip"


@pytest.mark.parametrize("key", ["DATASET.FEWSHOT_CACHE_DIR", "TEST.FEATURE_CACHE_DIR", "DATALOADER.FEATURE_CACHE.DIR"])
def test_a_file_as_a_cache_folder_is_one_line_naming_the_key(toy_root, tmp_path, capsys, monkeypatch, key):
    """A file where a cache folder goes: the few-shot and evaluation caches only warned (the setting
    silently dropped), the training views failed after loading, naming neither key nor fix."""
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    out = tmp_path / "out"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, key, str(afile),
                                                       "DATALOADER.FEATURE_CACHE.VIEWS", "2")))
    assert f'{key} folder "{afile}"' in line and "is a file, not a directory" in line, line
    assert afile.read_text() == "mine\n" and not out.exists()


def test_cache_folders_are_where_the_check_looked(toy_root, tmp_path, monkeypatch):
    """``DATALOADER.FEATURE_CACHE.DIR ~/fc`` made a folder literally named ``~`` in the current directory
    (the check had expanded it), and ``FEWSHOT_CACHE_DIR " "`` a folder named " "."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert train.cli(train_argv(toy_root, tmp_path / "out", TRAINER, "DATALOADER.FEATURE_CACHE.VIEWS", "2",
                                "DATALOADER.FEATURE_CACHE.DIR", "~/fc", "DATASET.FEWSHOT_CACHE_DIR", " ",
                                "OPTIM.MAX_EPOCH", "1")) == 0
    assert list((home / "fc").glob("train_views2_*.pt")) and list(cwd.iterdir()) == []


def test_more_shots_than_any_class_has_is_one_line_before_training(toy_root, tmp_path, capsys):
    """Hostile: NUM_SHOTS 100 on a benchmark with at most a handful of training images per class ran the
    all-images run and filed it as a 100-shot result (results.json, run folder, tables). Now the
    dataset refuses it, naming the largest class size, before any training; nothing but the log is
    written."""
    out = tmp_path / "run"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, shots=100)))
    assert "DATASET.NUM_SHOTS 100: no class of" in line and "use a shot count <=" in line, line
    written = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert "results.json" not in written and not any(n.startswith("model") for n in written), written


YAML_CASES = {
    "unclosed_flow": ("OPTIM:\n  LR: [0.1\n", "line 3"),
    "bad_indent": ("OPTIM:\n  LR: 0.1\n MAX_EPOCH: 2\n", "line 3"),
    "tab": ("OPTIM:\n\tLR: 0.1\n", "line 2"),
    "list_not_mapping": ("- OPTIM\n- LR\n", "mapping"),
    "type_mismatch": ("OPTIM:\n  MAX_EPOCH: many\n", "MAX_EPOCH"),
    "unknown_key": ("OPTIM:\n  LRR: 0.1\n", "OPTIM.LR"),
    # yacs printed the whole default OPTIM section (20+ lines) in its type-mismatch message
    "section_as_value": ("OPTIM: 5\n", "OPTIM is a section"),
    # PyYAML kept the last OPTIM section: the first one's NAME/LR_SCHEDULER fell back to defaults, rc 0
    "duplicate_section": ("OPTIM:\n  NAME: sgd\n  LR: 0.1\nOPTIM:\n  LR: 0.5\n", "key 'OPTIM' is given twice (first on line 1)"),
    "duplicate_key": ("OPTIM:\n  LR: 0.1\n  LR: 0.5\n", "key 'LR' is given twice (first on line 2)"),
    "duplicate_flow_key": ("OPTIM: {LR: 0.1, LR: 0.5}\n", "key 'LR' is given twice (first on line 1)"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_malformed_yaml_names_the_file(toy_root, finished, tmp_path, capsys, case):
    text, expected = YAML_CASES[case]
    path = _yaml(tmp_path, f"{case}.yaml", text)
    before = snapshot(finished)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER, config=path)))
    assert str(path) in line and expected in line, line
    assert snapshot(finished) == before


def test_binary_config_file(toy_root, finished, tmp_path, capsys):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER, config=path)))
    assert str(path) in line


def test_debug_shows_the_traceback(toy_root, finished, monkeypatch):
    argv = train_argv(toy_root, finished, TRAINER, "TRAINER.FSNL.PREC", "fp8")
    with pytest.raises(configs.ConfigError, match="TRAINER.FSNL.PREC"):
        train.cli(["--debug", *argv])
    monkeypatch.setenv(train.DEBUG_ENV, "1")
    with pytest.raises(configs.ConfigError):
        train.cli(argv)


def test_real_process_exit_code_and_one_line(toy_root, finished, tmp_path):
    """The script itself (not only ``cli``): exit 2, one stderr line, nothing on stdout."""
    before = snapshot(finished)
    argv = train_argv(toy_root, finished, TRAINER, "TEST.CROSS_EVAL", "XYZ")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop(train.DEBUG_ENV, None)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *argv], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: TEST.CROSS_EVAL")
    assert "Traceback" not in proc.stderr and proc.stdout.strip() == ""
    assert snapshot(finished) == before


# ------------------------------------------------------------------------------------------ weights
def _random_bytes(path: Path) -> None:
    path.write_bytes(hashlib.sha256(b"x").digest() * 200)


WEIGHT_CASES = {
    "random.pt": (_random_bytes, "not a readable weights file"),
    "empty.pt": (lambda p: p.write_bytes(b""), "the file is empty"),
    "empty.safetensors": (lambda p: p.write_bytes(b""), "not a readable weights file"),
    "bad.safetensors": (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": nope"),
                        "not a readable weights file"),
    "truncated.safetensors": (lambda p: p.write_bytes(MINI_WEIGHTS.read_bytes()[:5000]),
                              "not a readable weights file"),
}


@pytest.mark.parametrize("name", sorted(WEIGHT_CASES))
def test_corrupt_weights_file_is_one_line_naming_it(toy_root, finished, tmp_path, capsys, name):
    make, expected = WEIGHT_CASES[name]
    path = tmp_path / name
    make(path)
    before = snapshot(finished)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER,
                                                       "MODEL.BACKBONE.WEIGHTS", str(path))))
    assert str(path) in line and expected in line, line
    assert snapshot(finished) == before


def assert_kept(before: Dict[str, str], after: Dict[str, str]) -> None:
    """Every finished file is byte-identical; the only new file may be this attempt's own log."""
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.startswith("log.txt-") for k in set(after) - set(before)), sorted(set(after) - set(before))


def test_weights_of_another_architecture(toy_root, tmp_path, capsys):
    """The mini CLIP's weights for test-tiny used to die in resize_pos_embed with a dtype error. This
    is found when the weights load (after the data), so the attempt's log.txt may remain. (A finished
    run of other weights is refused before that: ``test_output_dir_of_another_configuration``.)"""
    out = tmp_path / "fresh"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER,
                                                       "MODEL.BACKBONE.WEIGHTS", str(MINI_WEIGHTS))))
    assert "these weights do not fit test-tiny: 0 missing / 48 unexpected keys" in line, line
    assert str(MINI_WEIGHTS) in line
    assert set(snapshot(out)) <= {"log.txt"}


def test_weights_file_that_is_no_state_dict(toy_root, finished, tmp_path, capsys):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    out = tmp_path / "fresh"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, "MODEL.BACKBONE.WEIGHTS",
                                                       str(path))))
    assert str(path) in line and "not a readable weights file" in line, line
    assert set(snapshot(out)) <= {"log.txt"}


@pytest.mark.parametrize("killed", [False, True], ids=["finished", "killed"])
def test_output_dir_of_another_configuration(toy_root, finished, tmp_path, capsys, monkeypatch, killed):
    """train.py into a run's folder with another config used to auto-resume that run's last
    checkpoint, skip to evaluation and rewrite results.json with the new fingerprint over the old
    model's numbers (rc 0). Now: one line naming the differing key, before anything is written; a
    killed run (checkpoints and config.yaml, no results.json) is refused by its config.yaml header."""
    run = _copy_run(finished, tmp_path / "run")
    if killed:
        (run / "results.json").unlink()
    before = snapshot(run)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    line = one_error_line(capsys, train.cli(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1",
                                                       "OPTIM.LR", "0.123")))
    assert f'--output-dir "{run}"' in line and "another --output-dir" in line, line
    assert "OPTIM.LR 0.05 -> 0.123" in line, line  # named from config.yaml's body, not two hashes
    assert snapshot(run) == before


def test_checkpoints_without_config_or_results_are_not_resumed_by_another_config(
        toy_root, finished, tmp_path, capsys, monkeypatch):
    """A folder whose config.yaml and results.json were deleted still holds checkpoints; train.py with
    another OPTIM.LR used to resume the old checkpoint and record the old numbers under the new
    fingerprint. Checkpoints now carry their configuration's fingerprint: refused before any model is
    built, naming the key, nothing touched."""
    run = _copy_run(finished, tmp_path / "run")
    (run / "results.json").unlink()
    (run / "config.yaml").unlink()
    before = snapshot(run)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    line = one_error_line(capsys, train.cli(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1",
                                                       "OPTIM.LR", "0.3")))
    assert "checkpoints of a run of another configuration" in line and "OPTIM.LR 0.05 -> 0.3" in line, line
    assert "--overwrite" in line
    assert snapshot(run) == before


def test_a_directory_as_config_file(toy_root, finished, tmp_path, capsys):
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER, config=tmp_path)))
    assert str(tmp_path) in line and "is a directory, not a YAML file" in line, line


@pytest.mark.parametrize("content", ['{"my": "results"}', "not json at all"], ids=["foreign", "garbage"])
def test_results_file_that_is_not_a_run_of_ours_is_kept(toy_root, tmp_path, capsys, content):
    """train.py replaced a results.json it could not read, or one without a run fingerprint (another
    program's), without a word (rc 0); the probe already refused the same. Now one line, --overwrite to
    replace it."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text(content)
    before = snapshot(out)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER)))
    assert f'--output-dir "{out}"' in line and "results.json" in line and "--overwrite" in line, line
    assert ("cannot be read" if content.startswith("not") else "without a run fingerprint") in line, line
    assert snapshot(out) == before


def test_resume_of_another_folder_does_not_overwrite_this_ones_run(toy_root, finished, tmp_path, capsys):
    """--resume DIR skipped the output-dir check even when DIR is not --output-dir: a finished run of
    another configuration there was overwritten (results.json and config.yaml of the new config beside
    the old checkpoints, rc 0). Only a --resume of the folder itself continues it on purpose."""
    run = _copy_run(finished, tmp_path / "run")
    other = _copy_run(finished, tmp_path / "other")
    before = snapshot(run)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1",
                                                       "OPTIM.LR", "0.3", extra=("--resume", str(other)))))
    assert f'--output-dir "{run}"' in line and "OPTIM.LR 0.05 -> 0.3" in line, line
    assert snapshot(run) == before


@pytest.mark.parametrize("extra", [("--no-train",), ("--eval-only", "--no-train")], ids=["no_train", "eval_no_train"])
def test_no_train_does_not_skip_the_output_dir_check(toy_root, finished, tmp_path, capsys, extra):
    """--no-train skipped the output-dir check, but building the trainer rewrites config.yaml, and with
    --eval-only the run is evaluated and results.json replaced: a finished run of another configuration
    lost both (rc 0)."""
    run = _copy_run(finished, tmp_path / "run")
    model = _copy_run(finished, tmp_path / "model")
    before = snapshot(run)
    more = ("--model-dir", str(model)) if "--eval-only" in extra else ()
    line = one_error_line(capsys, train.cli(train_argv(toy_root, run, TRAINER, "OPTIM.MAX_EPOCH", "9",
                                                       extra=(*extra, *more))))
    assert f'--output-dir "{run}"' in line and "would overwrite it" in line, line
    assert snapshot(run) == before


def test_garbage_checkpoint_to_evaluate_is_one_line(toy_root, finished, tmp_path, capsys):
    """Random bytes in the checkpoint --eval-only loads: the legacy-checkpoint fallback first warned that
    the file "holds pickled objects ... loading its tensors" and then the load failed: two lines, the
    first wrong. Now only the error line."""
    run = _copy_run(finished, tmp_path / "run")
    newest = max((run / "name_learner").glob("model.pth.tar-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    newest.write_bytes(np.random.default_rng(0).bytes(1000))
    line = one_error_line(capsys, train.cli(train_argv(toy_root, tmp_path / "ev", TRAINER,
                                                       extra=("--eval-only", "--model-dir", str(run)))))
    assert str(newest) in line and "unreadable" in line, line


def test_explicit_resume_of_another_configuration_names_the_key(toy_root, finished, tmp_path, capsys):
    """--resume DIR skips the output-dir check; the trainer refuses the checkpoint itself."""
    run = _copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    out = tmp_path / "continued"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1",
                                                       "OPTIM.LR", "0.3", extra=("--resume", str(run)))))
    assert "cannot resume from" in line and "OPTIM.LR 0.05 -> 0.3" in line, line
    assert snapshot(run) == before
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("case", ["zeroshot", "own_model_dir", "other_eval"])
def test_eval_only_never_overwrites_another_run(toy_root, finished, tmp_path, capsys, case):
    """--eval-only used to write results.json and config.yaml over whatever --output-dir held (rc 0):
    a finished training run, or the evaluation of another model. Its identity (config plus what
    --model-dir loads) is now checked like a training run's."""
    run = _copy_run(finished, tmp_path / "run")
    target = run
    if case == "zeroshot":
        argv = train_argv(toy_root, run, TRAINER, "TEST.ALLOW_UNTRAINED", "True", extra=("--eval-only",))
        expected = "TEST.ALLOW_UNTRAINED false -> true"
    elif case == "own_model_dir":
        argv = train_argv(toy_root, run, TRAINER, extra=("--eval-only", "--model-dir", str(run)))
        expected = "source"
    else:
        target = tmp_path / "ev"
        assert train.cli(train_argv(toy_root, target, TRAINER, extra=("--eval-only", "--model-dir", str(run)))) == 0
        capsys.readouterr()
        argv = train_argv(toy_root, target, TRAINER, "DATASET.SUB_CLASSES", "IP",
                          extra=("--eval-only", "--model-dir", str(run)))
        expected = "DATASET.SUB_CLASSES 'OOP' -> 'IP'"
    before = snapshot(target)
    line = one_error_line(capsys, train.cli(argv))
    assert f'--output-dir "{target}"' in line and "evaluating here would overwrite it" in line, line
    assert expected in line, line
    assert snapshot(target) == before
    # the same evaluation again is idempotent, not a conflict
    if case == "other_eval":
        assert train.cli(train_argv(toy_root, target, TRAINER, extra=("--eval-only", "--model-dir", str(run)))) == 0


@pytest.mark.parametrize("how", ["flag", "env"])
def test_overwrite_trains_afresh_and_keeps_foreign_files(toy_root, finished, tmp_path, capsys, monkeypatch, how):
    """--overwrite (or FSNL_OVERWRITE=1, what scripts.sweep/launch --force set for their jobs) replaces
    the other configuration's run: its checkpoints are removed, so nothing is resumed, and a file the
    user put there stays."""
    run = _copy_run(finished, tmp_path / "run")
    (run / "results.json").unlink()
    (run / "config.yaml").unlink()
    (run / "notes.txt").write_text("mine")
    if how == "env":
        monkeypatch.setenv("FSNL_OVERWRITE", "1")
    assert train.cli(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.LR", "0.3",
                                extra=("--overwrite",) if how == "flag" else ())) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["fingerprint"]["config"]["OPTIM.LR"] == 0.3
    assert (run / "notes.txt").read_text() == "mine"
    log = max(run.glob("log.txt-*")).read_text()  # the kept log.txt is the old run's
    assert "overwrite:" in log and "OPTIM.LR 0.05 -> 0.3" in log and "No checkpoint found, train from scratch" in log
    fresh = tmp_path / "fresh"
    assert train.cli(train_argv(toy_root, fresh, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.LR", "0.3")) == 0
    assert json.loads((fresh / "results.json").read_text())["accuracy"] == pytest.approx(results["accuracy"], abs=1e-9)


@pytest.mark.parametrize("opts", [
    ("MODEL.BACKBONE.NAME", "ViT-B-16", "MODEL.BACKBONE.WEIGHTS", "laion400m_e32", "INPUT.SIZE", "(224, 224)"),
    ("MODEL.BACKBONE.NAME", "hf-hub:nobody/no-such-model"),
], ids=["tag", "hf-hub"])
def test_offline_hub_fails_fast_with_local_advice(toy_root, finished, capsys, monkeypatch, tmp_path, opts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache, whatever the machine has
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("open_clip was asked to download"))
    monkeypatch.setattr("clip.loader.try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER, *opts)))
    assert "HF_HUB_OFFLINE" in line and "local-dir:" in line and "MODEL.BACKBONE" in line


@pytest.mark.parametrize("opts", [
    ("MODEL.BACKBONE.NAME", "ViT-B-16", "MODEL.BACKBONE.WEIGHTS", "laion400m_e32", "INPUT.SIZE", "(224, 224)"),
    ("MODEL.BACKBONE.NAME", "hf-hub:nobody/no-such-model"),
], ids=["tag", "hf-hub"])
def test_no_network_fails_fast_without_hf_hub_offline(toy_root, finished, capsys, monkeypatch, tmp_path, opts):
    """Hostile: a compute node without network and without ``HF_HUB_OFFLINE``. The hub's client retried
    for ~50 s, printing ~50 warning lines, before the one error line. Now no download host resolving
    is the same one line at once (the lookup is faked here: no test touches the network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("open_clip was asked to download"))
    monkeypatch.setattr("clip.loader.try_to_load_from_cache", lambda *a, **k: None)
    looked_up = []

    def no_dns(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER, *opts)))
    assert "cannot be resolved (no network here?)" in line and "local-dir:" in line and "MODEL.BACKBONE" in line
    assert "huggingface.co" in looked_up and ("github.com" in looked_up) == (opts[-1] == "(224, 224)")


def test_a_resolving_host_leaves_the_download_to_open_clip(monkeypatch):
    """Only a lookup that fails everywhere refuses: with one host answering, open_clip downloads (and
    reports its own failure); nothing is refused on a guess."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("clip.loader.try_to_load_from_cache", lambda *a, **k: None)

    def only_the_hub(host, *args, **kwargs):
        if host != "huggingface.co":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return []

    monkeypatch.setattr(socket, "getaddrinfo", only_the_hub)
    spec = BackboneSpec("ViT-B-16", "laion400m_e32", "tag", "laion400m_e32", False)
    check_weights_available(spec)  # no error: huggingface.co resolved


# -------------------------------------------------------------------------------------- checkpoints
def _copy_run(finished: Path, dest: Path) -> Path:
    shutil.copytree(finished, dest)
    return dest


def test_resume_dir_without_checkpoint(toy_root, finished, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    (empty / "name_learner").mkdir(parents=True)
    (empty / "name_learner" / "notes.txt").write_text("mine\n")
    out = tmp_path / "new"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, extra=["--resume", str(empty)])))
    assert "--resume" in line and str(empty) in line
    assert not out.exists() and (empty / "name_learner" / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("reduction,expected", [("0", "got 0"), ("64", "got 64"), ("-4", "got -4")])
def test_adapter_reduction_is_checked_against_the_declared_width(toy_root, tmp_path, capsys, monkeypatch,
                                                                 reduction, expected):
    """CLIP-Adapter's bottleneck is D // REDUCTION wide: test-tiny declares D = 32, so 64 leaves it
    empty. It was a ValueError traceback from the adapter's constructor, after the backbone loaded."""
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    out = tmp_path / "adapter"
    argv = train_argv(toy_root, out, "CLIP_Adapter", "TRAINER.CLIP_ADAPTER.REDUCTION", reduction)
    line = one_error_line(capsys, train.cli(argv))
    assert "TRAINER.CLIP_ADAPTER.REDUCTION" in line and "[1, 32]" in line and expected in line, line
    assert not out.exists()


def test_the_declared_embedding_width_is_the_models(toy_root):
    """``expected_embed_dim`` reads the width without building the model: it must be the built one's."""
    cfg = configs.build_cfg(trainer="CLIP_Adapter", dataset="LAION_Beyond_GCD", config="cpu_smoke", root=str(toy_root))
    model = open_clip.create_model(str(cfg.MODEL.BACKBONE.NAME))
    assert expected_embed_dim(cfg) == model.text_projection.shape[1] == 32


@pytest.mark.parametrize("nested", [False, True], ids=["new_dir", "new_nested_dirs"])
def test_eval_only_without_a_model_leaves_no_folder_behind(toy_root, tmp_path, capsys, nested):
    """Only the built trainer knows it has weights to load, so this mistake is found after the run
    wrote its config.yaml and log.txt: the folders this run created go again (they were left behind)."""
    out = tmp_path / "a" / "b" / "run" if nested else tmp_path / "run"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, extra=["--eval-only"])))
    assert "--model-dir" in line and "TEST.ALLOW_UNTRAINED" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "run").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_start_keeps_a_folder_that_existed_and_what_others_put_in(toy_root, tmp_path, capsys):
    """Not created by this run, or holding anything but its own two files: the folder and what others put
    in it stay; the start's own config.yaml and log go (they were left behind)."""
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine\n")
    one_error_line(capsys, train.cli(train_argv(toy_root, existing, TRAINER, extra=["--eval-only"])))
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    assert (existing / "notes.txt").read_text() == "mine\n"


def test_unreadable_resume_checkpoints_leave_no_new_folder(toy_root, finished, tmp_path, capsys):
    """``--resume`` of a folder whose every checkpoint is garbage: one line, found while resuming,
    and the new output folder (config.yaml, log.txt) is gone again; the resumed folder is untouched."""
    broken = _copy_run(finished, tmp_path / "broken")
    for ckpt in broken.rglob("model.pth.tar-*"):
        ckpt.write_bytes(b"garbage")
    before = snapshot(broken)
    out = tmp_path / "new"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, extra=["--resume", str(broken)])))
    assert "--resume" in line and "no readable checkpoint" in line
    assert not out.exists() and snapshot(broken) == before


def test_remove_failed_start_removes_only_its_own_files(tmp_path):
    top = tmp_path / "x"
    run = top / "y" / "run"
    created = missing_dirs(str(run))
    assert created == [str(top), str(top / "y"), str(run)] and missing_dirs(str(tmp_path)) == []
    run.mkdir(parents=True)
    ours = [str(run / "config.yaml"), str(run / "log.txt")]
    for p in ours:
        Path(p).write_text("ours\n")
    (run / "sub").mkdir()
    (run / "sub" / "other.bin").write_bytes(b"someone else's")
    # someone else's file in the folder: it stays, with the folder; only what the start wrote goes
    assert not remove_failed_start(str(run), created, ours)
    assert not any(Path(p).exists() for p in ours) and (run / "sub" / "other.bin").read_bytes() == b"someone else's"
    (run / "sub" / "other.bin").unlink()
    for p in ours:
        Path(p).write_text("ours\n")
    (run / "link").symlink_to(tmp_path)
    assert not remove_failed_start(str(run), created, ours) and (run / "link").is_symlink()
    assert not any(Path(p).exists() for p in ours) and tmp_path.is_dir()
    (run / "link").unlink()
    for p in ours:
        Path(p).write_text("ours\n")
    # a file the start replaced gets its former bytes back; the folder (not created here) stays
    assert not remove_failed_start(str(run), [], ours, previous={ours[0]: FormerFile(b"a finished run's\n", 0o444)})
    assert Path(ours[0]).read_bytes() == b"a finished run's\n" and not Path(ours[1]).exists()
    assert stat.S_IMODE(os.stat(ours[0]).st_mode) == 0o444  # its permission bits too (it came back as 0644)
    # a sibling run (another seed of a sweep) wrote into a parent this run created: the parent stays
    sibling = top / "y" / "seed2"
    sibling.mkdir()
    (sibling / "log.txt").write_text("running\n")
    assert remove_failed_start(str(run), created, ours)
    assert not run.exists() and (sibling / "log.txt").read_text() == "running\n"
    shutil.rmtree(sibling)
    run.mkdir()
    for p in ours:
        Path(p).write_text("ours\n")
    assert remove_failed_start(str(run), created, ours)
    assert not top.exists() and tmp_path.is_dir()


@pytest.mark.parametrize("out,left", [
    ("x/../y", []),                # makedirs creates x too; it was left behind
    ("nd/..", []),                 # the working directory, which existed: its new config.yaml and log go
    ("new.txt", []),               # the log goes beside the folder (new.txt-<time>); it was left behind
    ("a//b/./c/", []),
])
def test_a_failed_start_removes_every_folder_it_created(toy_root, tmp_path, capsys, monkeypatch, out, left):
    """Paths as users write them: whatever creating --output-dir added goes again, and only that."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine\n")
    monkeypatch.chdir(work)
    one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, extra=["--eval-only"])))
    found = sorted(p.name for p in work.iterdir())
    assert found == sorted(["keep.txt", *left]), found
    assert (work / "keep.txt").read_text() == "mine\n"


def test_a_failed_start_in_a_finished_run_gives_back_its_config(toy_root, tmp_path, capsys):
    """A start that fails once the trainer is built (here --eval-only without a model) had rewritten the
    finished run's config.yaml with its own settings (TRAIN.PRINT_FREQ is not in the fingerprint, so no
    conflict stops it) and left a log-<time> beside the run's log."""
    out = tmp_path / "run"
    run_train(train_argv(toy_root, out, TRAINER))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, "TRAIN.PRINT_FREQ", "7",
                                                extra=["--eval-only"])))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_failed_start_gives_back_a_linked_or_read_only_config(toy_root, finished, tmp_path, capsys):
    """The former config.yaml came back as a new regular file: a user's symbolic link was replaced by a copy
    of its target, and a read-only (0444) file became 0644."""
    linked, read_only = _copy_run(finished, tmp_path / "linked"), _copy_run(finished, tmp_path / "read_only")
    kept = tmp_path / "configs" / "config.yaml"
    kept.parent.mkdir()
    (linked / "config.yaml").rename(kept)
    (linked / "config.yaml").symlink_to(kept)
    (read_only / "config.yaml").chmod(0o444)
    before = {run: snapshot(run) for run in (linked, read_only)}
    target = kept.read_bytes()
    for run in (linked, read_only):
        one_error_line(capsys, train.cli(train_argv(toy_root, run, TRAINER, extra=["--eval-only"])))
        assert snapshot(run) == before[run]
    assert os.readlink(linked / "config.yaml") == str(kept) and kept.read_bytes() == target
    assert stat.S_IMODE((read_only / "config.yaml").stat().st_mode) == 0o444


def test_ctrl_c_before_training_gives_back_the_finished_run_too(toy_root, tmp_path, capsys, monkeypatch):
    """Interrupted once the trainer is built but before it trains: undone like a failed start."""
    out = tmp_path / "run"
    run_train(train_argv(toy_root, out, TRAINER))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "check_untrained_eval", interrupt)
    assert train.cli(train_argv(toy_root, out, TRAINER, "TRAIN.PRINT_FREQ", "7", extra=["--eval-only"])) == 130
    assert capsys.readouterr().err.strip().startswith("interrupted before results.json was written")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def _link_work(tmp_path: Path) -> Path:
    """A working directory with ``lnk -> real/sub`` and a user's own ``x/notes.txt``: ``lnk/../x`` is
    ``real/x`` to the kernel, and ``x`` to ``os.path.abspath``."""
    work = tmp_path / "work"
    (work / "real" / "sub").mkdir(parents=True)
    (work / "lnk").symlink_to(Path("real") / "sub")
    (work / "x").mkdir()
    (work / "x" / "notes.txt").write_text("mine\n")
    return work


def test_dotdot_after_a_symbolic_link_is_where_the_kernel_puts_it(tmp_path, monkeypatch):
    """The writer, its probe and the log went by os.path.abspath (``lnk/../x`` -> ``./x``) while mkdir went
    by the kernel (``real/x``): "No such file" for a folder just created, or a log in another folder."""
    work = _link_work(tmp_path)
    monkeypatch.chdir(work)
    check_writable_dir("lnk/../y")
    atomic_write_text("lnk/../y/r.json", "{}")
    assert (work / "real" / "y" / "r.json").read_text() == "{}" and not (work / "y").exists()
    assert missing_dirs("lnk/../z/w") == [str(work / "real" / "z"), str(work / "real" / "z" / "w")]
    logging.getLogger().handlers, saved = [], list(logging.getLogger().handlers)
    try:
        log = setup_logger("lnk/../y")
        logging.getLogger("t").info("hello")
    finally:
        close_log_file()
        logging.getLogger().handlers = saved
    assert log == str(work / "real" / "y" / "log.txt") and "hello" in Path(log).read_text()
    assert sorted(p.name for p in (work / "x").iterdir()) == ["notes.txt"]


def test_a_failed_start_through_a_link_leaves_no_log_in_another_folder(toy_root, tmp_path, capsys, monkeypatch):
    """``--output-dir lnk/../x`` with no model to evaluate: the log went into the user's ``./x`` (abspath's
    reading), where the failed start's clean-up could not take it back."""
    work = _link_work(tmp_path)
    monkeypatch.chdir(work)
    one_error_line(capsys, train.cli(train_argv(toy_root, "lnk/../x", TRAINER, extra=["--eval-only"])))
    assert sorted(p.name for p in (work / "x").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in (work / "real").iterdir()) == ["sub"]


@pytest.mark.parametrize("opts", [
    ("OPTIM.LR_SCHEDULER", "cosine", "OPTIM.STEPSIZE", "(5.0,)"),  # cosine reads no STEPSIZE
    ("OPTIM.LR_SCHEDULER", "single_step", "OPTIM.STEPSIZE", "(2.0,)", "OPTIM.GAMMA", "0.0"),
    ("OPTIM.NAME", "sgd", "OPTIM.ADAM_BETA1", "1.0"),              # a key sgd does not read
    ("OPTIM.WARMUP_EPOCH", "0", "OPTIM.WARMUP_TYPE", "anything", "OPTIM.WARMUP_CONS_LR", "-1.0"),
])
def test_values_the_chosen_optimizer_and_schedule_do_not_read_are_not_refused(toy_root, opts):
    cfg = configs.build_cfg(trainer=TRAINER, dataset="LAION_Beyond_GCD", config="cpu_smoke", root=str(toy_root),
                            opts=list(opts))
    train.validate_cfg(cfg)


def test_k_transforms_is_a_training_key(toy_root):
    """An evaluation never builds the training loader: K_TRANSFORMS 2 there is not refused."""
    cfg = configs.build_cfg(trainer=TRAINER, dataset="LAION_Beyond_GCD", config="cpu_smoke", root=str(toy_root),
                            opts=["DATALOADER.K_TRANSFORMS", "2"])
    train.validate_cfg(cfg, training=False)
    with pytest.raises(configs.ConfigError, match="DATALOADER.K_TRANSFORMS must be 1 for FSNL_openclip"):
        train.validate_cfg(cfg, training=True)


def test_a_sampler_without_a_full_batch_is_one_line(toy_root, tmp_path, capsys):
    """RandomDomainSampler draws whole batches per domain: with fewer images than a batch the training
    loader is empty, which was a ValueError traceback (and a log left in a new folder)."""
    out = tmp_path / "run"
    argv = train_argv(toy_root, out, TRAINER, "DATALOADER.TRAIN_X.SAMPLER", "RandomDomainSampler",
                      "DATALOADER.TRAIN_X.BATCH_SIZE", "64")
    line = one_error_line(capsys, train.cli(argv))
    assert "loader has no batch" in line and "RandomDomainSampler" in line and "smaller batch size" in line
    assert not out.exists()


def test_no_test_run_says_it_finished_and_how_to_evaluate_it(toy_root, tmp_path, capsys):
    """Dassl's TEST.NO_TEST trains and saves without the final test. The run printed nothing at all
    (no results, no line); now one line says so and names the command, which works."""
    out = tmp_path / "trained"
    assert train.cli(train_argv(toy_root, out, TRAINER, "TEST.NO_TEST", "True")) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("done ")]
    assert len(lines) == 1 and "not evaluated (TEST.NO_TEST True" in lines[0], lines
    assert f"--eval-only --model-dir {out}" in lines[0] and not (out / "results.json").exists()
    evaluated = tmp_path / "evaluated"
    assert train.cli(train_argv(toy_root, evaluated, TRAINER, extra=["--eval-only", "--model-dir", str(out)])) == 0
    results = json.loads((evaluated / "results.json").read_text())
    assert results["loaded"]["model_dir"] == str(out) and results["loaded"]["epoch"] == 3  # the trained model


@pytest.mark.parametrize("field,value,expected", [
    ("classnames", ["a", "b", "c"], "label space"),
    ("trainer", "CoOp_openclip", "another trainer"),
])
def test_resume_from_another_run_before_optimizer_state(toy_root, finished, tmp_path, capsys, monkeypatch,
                                                        field, value, expected):
    other = _copy_run(finished, tmp_path / "other")
    for ckpt_path in (other / "name_learner").glob("model.pth.tar-*"):
        ckpt = torch.load(ckpt_path, weights_only=True)
        ckpt["meta"][field] = value
        torch.save(ckpt, ckpt_path)
    before = snapshot(other)
    touched: List[str] = []
    monkeypatch.setattr(torch.optim.Optimizer, "load_state_dict", lambda self, sd: touched.append("optim"))
    out = tmp_path / "resumed"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, extra=["--resume", str(other)])))
    assert expected in line and str(other) in line, line
    assert touched == []
    assert snapshot(other) == before and not (out / "results.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_resume_falls_back_to_the_newest_valid_checkpoint(toy_root, finished, tmp_path, caplog, damage):
    """The latest checkpoint is damaged: resume from epoch 2 with a warning, retrain epoch 3, and end
    with the same weights as the uninterrupted run (per-epoch reseeding makes that bit-exact)."""
    run = _copy_run(finished, tmp_path / "run")
    latest = run / "name_learner" / "model.pth.tar-3"
    data = latest.read_bytes()
    latest.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    (run / "results.json").unlink()
    with caplog.at_level(logging.WARNING):
        run_train(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1"))
    assert "resuming from epoch 2" in caplog.text
    ours = torch.load(latest, weights_only=True)["state_dict"]
    ref = torch.load(finished / "name_learner" / "model.pth.tar-3", weights_only=True)["state_dict"]
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert (run / "results.json").read_bytes() != b""


@pytest.mark.parametrize("part,value,expected", [
    ("optimizer", {}, "its optimizer state does not fit"),
    ("scheduler", {"kind": "cosine"}, "its scheduler state does not fit (it lacks ['max_epoch'"),
])
def test_resume_of_a_checkpoint_with_a_damaged_state_is_one_line(toy_root, finished, tmp_path, capsys, part, value,
                                                                  expected):
    """An empty optimizer state was a KeyError traceback; a partial scheduler state resumed silently at
    the start of the schedule (another learning rate every epoch)."""
    run = _copy_run(finished, tmp_path / "run")
    (run / "results.json").unlink()
    latest = run / "name_learner" / "model.pth.tar-3"
    ckpt = torch.load(latest, weights_only=True)
    ckpt[part] = value
    torch.save(ckpt, latest)
    before = snapshot(run)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1")))
    assert expected in line and str(latest) in line and "--overwrite" in line, line
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("log.txt")} == \
        {k: v for k, v in before.items() if not k.startswith("log.txt")}


def test_overwrite_removes_only_checkpoints_this_code_wrote(toy_root, finished, tmp_path):
    """``--overwrite`` removed every file of a checkpoint's *name* in any subfolder: a user's note called
    ``other/model.pth.tar-3`` or ``other/checkpoint`` went too."""
    run = _copy_run(finished, tmp_path / "run")
    (run / "other").mkdir()
    mine = {run / "other" / "model.pth.tar-3": "x\n", run / "other" / "checkpoint": "n\n",
            run / "name_learner" / "model-best.pth.tar": "my notes, not a model\n"}
    for path, text in mine.items():
        path.write_text(text)
    assert train.cli(train_argv(toy_root, run, TRAINER, "OPTIM.MAX_EPOCH", "1", extra=("--overwrite",))) == 0
    assert all(path.read_text() == text for path, text in mine.items())
    assert sorted(p.name for p in (run / "name_learner").iterdir()) == ["checkpoint", "model-best.pth.tar",
                                                                         "model.pth.tar-1"]


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid -= 1


def test_temp_files_of_killed_writes_are_cleaned_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    (run / "name_learner").mkdir(parents=True)
    pid = _dead_pid()
    ours = [run / f".results.json.{pid}-0123abcd.tmp", run / "name_learner" / f".model.pth.tar-2.{pid}-deadbeef.tmp"]
    live = run / f".config.yaml.{os.getpid()}-0123abcd.tmp"  # a write in progress in this process
    theirs = [run / ".notes.tmp", run / "name_learner" / ".model.pth.tar-2.tmp", run / "keep.1-0123abcd.tmp",
              run / f".x.{pid}-0123abcd.tmp.bak"]
    for p in ours + theirs + [live]:
        p.write_text("x")
    removed = clean_temp_files(str(run))
    assert sorted(removed) == sorted(str(p) for p in ours)
    assert all(p.exists() for p in theirs + [live]) and not any(p.exists() for p in ours)


def test_a_run_cleans_its_output_dir(toy_root, finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    stale = run / "name_learner" / f".model.pth.tar-3.{_dead_pid()}-0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = run / ".my_notes.tmp"
    mine.write_text("keep")
    run_train(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1"))
    assert not stale.exists() and mine.read_text() == "keep"
    assert not [p for p in run.rglob("*.tmp") if p != mine]


# ----------------------------------------------------------------------------------- output folder
def test_output_dir_is_a_file(toy_root, tmp_path, capsys):
    target = tmp_path / "results_file"
    target.write_text("precious\n")
    line = one_error_line(capsys, train.cli(train_argv(toy_root, target, TRAINER)))
    assert str(target) in line and "not a directory" in line
    assert target.read_text() == "precious\n"


def test_output_dir_below_a_file(toy_root, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("precious\n")
    line = one_error_line(capsys, train.cli(train_argv(toy_root, blocker / "run", TRAINER)))
    assert str(blocker / "run") in line and "cannot create the output directory" in line
    assert blocker.read_text() == "precious\n"


def _deny_writes_under(monkeypatch, directory: Path, err: int) -> None:
    """Make file creation under ``directory`` fail with ``err`` (what a read-only or full mount
    does; chmod cannot show it when the tests run as root)."""
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        if str(path).startswith(str(directory)) and flags & os.O_CREAT:
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


@pytest.mark.parametrize("err,expected", [(errno.EROFS, "read-only file system"),
                                          (errno.EACCES, "permission denied"),
                                          (errno.ENOSPC, "no space left")])
def test_unwritable_output_dir(toy_root, finished, capsys, monkeypatch, err, expected):
    before = snapshot(finished)
    _deny_writes_under(monkeypatch, finished, err)
    line = one_error_line(capsys, train.cli(train_argv(toy_root, finished, TRAINER)))
    assert str(finished) in line and expected in line, line
    assert snapshot(finished) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_output_dir_real_permissions(toy_root, finished, tmp_path, capsys):
    ro = _copy_run(finished, tmp_path / "ro")
    before = snapshot(ro)
    ro.chmod(0o555)
    try:
        line = one_error_line(capsys, train.cli(train_argv(toy_root, ro, TRAINER)))
    finally:
        ro.chmod(0o755)
    assert str(ro) in line and snapshot(ro) == before


def test_full_disk_during_the_run_is_one_line(toy_root, finished, tmp_path, capsys, monkeypatch):
    """The probe passes, then the disk fills up: the checkpoint write fails with one line, and the
    previous checkpoints of the run are intact."""
    run = _copy_run(finished, tmp_path / "run")
    (run / "results.json").unlink()
    for p in (run / "name_learner").glob("model.pth.tar-3"):
        p.unlink()
    (run / "name_learner" / "checkpoint").write_text("model.pth.tar-2\n")
    before = snapshot(run / "name_learner")
    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, f):
            self._f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr("dassl.utils.tools.os.fdopen", lambda fd, *a, **k: FullFile(real_fdopen(fd, *a, **k)))
    line = one_error_line(capsys, train.cli(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1")))
    assert "no space left" in line and str(run) in line, line
    assert snapshot(run / "name_learner") == before
    assert not list(run.rglob("*.tmp"))


def test_log_file_never_loses_lines_silently(tmp_path):
    """A log.txt that can no longer be written raises a WriteError naming it (logging used to print a
    '--- Logging error ---' traceback and drop the line)."""
    path = setup_logger(str(tmp_path / "run"))
    log = logging.getLogger("test_hostile")
    log.info("first line")
    handler = [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", None) == path][0]
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    handler.stream.close()
    handler.stream = open("/dev/full", "w", encoding="utf-8")  # every write: ENOSPC
    with pytest.raises(WriteError, match="no space left") as info:
        log.info("second line")
    assert path in str(info.value)
    assert Path(path).read_text() == "first line\n"


# -------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        write_json({"a": 1}, str(tmp_path / "r.json"))
        atomic_write_text(str(tmp_path / "sub" / "c.yaml"), "x: 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "sub" / "c.yaml").stat().st_mode) == mode


def test_run_files_are_0644_under_umask_022(finished, toy_root):
    files = [finished / "results.json", finished / "config.yaml", finished / "name_learner" / "checkpoint",
             *sorted((finished / "name_learner").glob("model.pth.tar-*"))]
    cache = sorted(Path(toy_root).glob("*/split_fewshot/*.json"))
    assert len(files) >= 6 and cache
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_fewshot_cache_in_the_dataset_tree_honours_the_umask(toy_root, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root, ignore=shutil.ignore_patterns("split_fewshot"))
    old = os.umask(0o022)
    try:
        build_dataset(train.setup_cfg(train.parse_args(train_argv(root, tmp_path / "o", TRAINER, shots=1))))
    finally:
        os.umask(old)
    cache = sorted(root.glob("*_OOP/split_fewshot/*.json"))
    assert cache and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in cache)


def test_write_error_names_the_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match="a component of the path is a file") as info:
        write_json({}, str(blocker / "results.json"))
    assert str(blocker) in str(info.value)


# ---------------------------------------------------------------- weights and checkpoints: NaN, local-dir
def _tiny_state(seed: int = 3) -> Dict[str, torch.Tensor]:
    cfg = configs.build_cfg(trainer=TRAINER, dataset="LAION_Beyond_GCD", config="cpu_smoke", root=".",
                            opts=["MODEL.BACKBONE.WEIGHTS", "none", "SEED", str(seed)])
    return {k: v.contiguous() for k, v in load_clip(cfg, "cpu").model.state_dict().items()}


def _local_dir(tmp_path: Path, weights: Dict[str, bytes], config: object = "tiny") -> Path:
    """A ``local-dir:`` folder: ``open_clip_config.json`` (test-tiny's, or ``config`` as given) and files."""
    folder = tmp_path / "model_dir"
    folder.mkdir()
    if config == "tiny":
        config = {"model_cfg": json.loads((REPO / "clip" / "model_configs" / "test-tiny.json").read_text())}
    (folder / "open_clip_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name, data in weights.items():
        (folder / name).write_bytes(data)
    return folder


def _saved(state: Dict[str, torch.Tensor], fmt: str) -> bytes:
    if fmt == "safetensors":
        return save_safetensors(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


LOCAL_DIR_CASES = {
    # open_clip only looks for .safetensors/.bin/.pth: this trained on a RANDOM backbone, silently
    "pt_only": (lambda s: {"open_clip_model.pt": _saved(s, "pt")}, "tiny",
                "holds no weights file open_clip loads (*.safetensors, *.bin or *.pth), so the model would be "
                "random; rename open_clip_model.pt to open_clip_model.pth"),
    "no_weights": (lambda s: {}, "tiny", "holds no weights file open_clip loads"),
    "bad_json": (lambda s: {"open_clip_model.safetensors": _saved(s, "safetensors")}, "{bad json",
                 "open_clip_config.json\" is not readable JSON"),
    "no_text_cfg": (lambda s: {"open_clip_model.safetensors": _saved(s, "safetensors")},
                    {"model_cfg": {"embed_dim": 32}}, "lacks ['vision_cfg', 'text_cfg']"),
    "corrupt_weights": (lambda s: {"open_clip_model.safetensors": os.urandom(4096)}, "tiny",
                        "is not a readable weights file"),
    "other_architecture": (lambda s: {"open_clip_pytorch_model.bin": _mini_weights_pt()}, "tiny",
                           "could not be built"),
}


def _mini_weights_pt() -> bytes:
    return _saved({k: v.float() for k, v in load_file(str(MINI_WEIGHTS)).items()}, "pt")


@pytest.mark.parametrize("case", sorted(LOCAL_DIR_CASES))
def test_local_dir_folders_open_clip_cannot_use_are_one_line(toy_root, tmp_path, capsys, case):
    """A ``local-dir:`` folder is checked like a weights file: a malformed config or weights file was a
    traceback, a folder of weights open_clip does not look for trained a random backbone (exit 0), and
    weights of another architecture said "download the weights on a machine with network access"."""
    files, config, expected = LOCAL_DIR_CASES[case]
    folder = _local_dir(tmp_path, files(_tiny_state()), config)
    out = tmp_path / "run"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, "MODEL.BACKBONE.NAME",
                                                       f"local-dir:{folder}")))
    assert expected in line and f"local-dir:{folder}" in line and "network" not in line, line
    assert not out.exists()


@pytest.mark.parametrize("what", ["file", "missing"])
def test_local_dir_naming_a_file_or_nothing_says_which(toy_root, tmp_path, capsys, what):
    """``local-dir:`` naming a weights file said "directory ... not found" of a path that exists, and named
    the same folder twice as where it looked."""
    target = tmp_path / "w.safetensors"
    if what == "file":
        target.write_bytes(_saved(_tiny_state(), "safetensors"))
    line = one_error_line(capsys, train.cli(train_argv(toy_root, tmp_path / "run", TRAINER, "MODEL.BACKBONE.NAME",
                                                       f"local-dir:{target}")))
    if what == "file":
        assert f"'{target}' is a file, not an open_clip model folder" in line and "MODEL.BACKBONE.WEIGHTS" in line, line
    else:
        assert "not found (looked in" in line and line.count(str(REPO)) == 1, line


def _nan_weights(state):
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}


def _scale_89(state):
    return {**state, "logit_scale": torch.tensor(89.0)}


@pytest.mark.parametrize("damage,expected", [(_nan_weights, "hold NaN or infinite values"),
                                             (_scale_89, "logit_scale 89 overflows its exponential")],
                         ids=["nan", "logit-scale-89"])
def test_weights_that_give_no_numbers_are_one_line(toy_root, tmp_path, capsys, damage, expected):
    """Weights full of NaN trained into a traceback, and a zero-shot evaluation filed chance accuracy.
    Weights whose ``logit_scale`` is 89 (exp is inf in float32) differ from intact ones in a factor that
    cannot change an argmax, yet zero-shot filed IP 33.3 where the intact weights give 0.0 (NaN argmaxes,
    exit 0), and FSNL's divergence blamed the learning rate. Now one line naming the file."""
    path = tmp_path / "damaged.pt"
    torch.save(damage(_tiny_state()), path)
    for trainer, extra in ((TRAINER, []), ("ZeroshotCLIP_openclip", ["--eval-only"])):
        out = tmp_path / f"run_{trainer}"
        line = one_error_line(capsys, train.cli(train_argv(toy_root, out, trainer, "MODEL.BACKBONE.WEIGHTS",
                                                           str(path), extra=extra)))
        assert expected in line and str(path) in line, line
        assert not out.exists()


@pytest.mark.parametrize("content", ["truncated", "other-architecture"])
def test_a_damaged_cached_download_of_a_tag_is_one_line(toy_root, tmp_path, capsys, monkeypatch, content):
    """A pretrained tag whose cached hub file is damaged (a download cut short) or holds another model:
    a safetensors or open_clip ``AssertionError`` traceback after the data loaded, and an output folder
    left behind. Now one line naming the cached file and the fix (delete it, download again)."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "test-tiny",
                        {"cachedtag": open_clip.pretrained._pcfg(hf_hub="me/tiny-tag/")})
    data = (save_safetensors(_tiny_state())[:3000] if content == "truncated"
            else _saved({k: v.float() for k, v in load_file(str(MINI_WEIGHTS)).items()}, "safetensors"))
    _hub_cache(tmp_path / "hub", "me/tiny-tag", {"open_clip_model.safetensors": data})
    out = tmp_path / "run"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, "MODEL.BACKBONE.WEIGHTS", "cachedtag")))
    cached = next((tmp_path / "hub").rglob("open_clip_model.safetensors"))
    assert "MODEL.BACKBONE.WEIGHTS 'cachedtag' of test-tiny: the cached file" in line, line
    assert f"delete {cached} and download the weights again" in line, line
    assert ("is not a readable weights file" if content == "truncated" else "do not fit test-tiny") in line, line
    assert not out.exists() and cached.read_bytes() == data


def _nan_checkpoint(path: Path) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, path)


def test_nan_checkpoints_are_refused_or_skipped(toy_root, finished, tmp_path, capsys):
    """A NaN checkpoint was evaluated at chance level and filed (exit 0); resuming from one ended in a
    "Loss is infinite or NaN!" traceback. Evaluating it is one line; resuming takes the newest intact one."""
    run = _copy_run(finished, tmp_path / "nan")
    newest = max(run.rglob("model.pth.tar-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    _nan_checkpoint(newest)
    out = tmp_path / "eval"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, extra=[
        "--eval-only", "--model-dir", str(run), "--load-epoch", newest.name.rsplit("-", 1)[1]])))
    assert "holds NaN or infinite weights" in line and str(newest) in line, line
    assert not out.exists()
    (run / "results.json").unlink()
    epochs = int(newest.name.rsplit("-", 1)[1])
    trainer = run_train(train_argv(toy_root, run, TRAINER, "TRAIN.CHECKPOINT_FREQ", "1"))
    assert trainer.start_epoch == epochs - 1 and (run / "results.json").is_file()


def test_a_diverging_loss_is_one_line_naming_the_learning_rate(toy_root, tmp_path, capsys):
    """OPTIM.LR 1e37 made the loss NaN: a 'FloatingPointError: Loss is infinite or NaN!' traceback."""
    line = one_error_line(capsys, train.cli(train_argv(toy_root, tmp_path / "run", TRAINER, "OPTIM.LR", "1e37",
                                                       "OPTIM.WARMUP_EPOCH", "0", "OPTIM.MAX_EPOCH", "4")))
    assert "training diverged; lower OPTIM.LR (now 1e+37)" in line and "at epoch" in line, line


@pytest.mark.parametrize("key,value,expected", [
    ("MODEL.BACKBONE.NAME", "hf-hub:", "names no model; write hf-hub:<org>/<repo>"),
    ("MODEL.BACKBONE.NAME", "local-dir:", "names no model; write local-dir:<folder>"),
    ("MODEL.BACKBONE.WEIGHTS", "DIR", "is a folder, not a weights file"),
])
def test_backbone_names_that_name_nothing_are_one_line(toy_root, tmp_path, capsys, key, value, expected):
    """'hf-hub:' said "Repo id must use alphanumeric chars: ''"; 'local-dir:' loaded the working
    directory; a folder as WEIGHTS said "file not found" although it exists."""
    value = str(tmp_path) if value == "DIR" else value
    line = one_error_line(capsys, train.cli(train_argv(toy_root, tmp_path / "run", TRAINER, key, value)))
    assert expected in line and key in line, line


def test_empty_weights_files_say_so(toy_root, tmp_path, capsys):
    """An empty state dict read as "(StopIteration: StopIteration)"."""
    for name in ("empty_dict.pt", "no_tensors.safetensors"):
        path = tmp_path / name
        torch.save({}, path) if name.endswith(".pt") else save_file({}, str(path))
        line = one_error_line(capsys, train.cli(train_argv(toy_root, tmp_path / "run", TRAINER,
                                                           "MODEL.BACKBONE.WEIGHTS", str(path))))
        assert "StopIteration" not in line and ("holds no state dict of tensors" in line or "holds no tensors" in line), line


def _hub_cache(root: Path, repo: str, files: Dict[str, bytes], commit: str = "0" * 40) -> None:
    """huggingface_hub's cache layout for ``repo`` at snapshot ``commit`` (then its "main"), holding ``files``."""
    base = root / ("models--" + repo.replace("/", "--"))
    snapshot_dir = base / "snapshots" / commit
    snapshot_dir.mkdir(parents=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (snapshot_dir / name).write_bytes(data)


def test_a_cached_hub_model_without_its_weights_is_not_a_random_backbone(toy_root, tmp_path, capsys, monkeypatch):
    """An ``hf-hub:`` model whose config is cached but not its weights: open_clip logs a warning and builds a
    random model, so offline it trained one silently. Now one line; with the weights cached it loads them,
    and a corrupt cached weights file is one line too."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = json.dumps({"model_cfg": json.loads((REPO / "clip" / "model_configs" / "test-tiny.json").read_text())})
    state = _tiny_state(seed=5)
    cases = {"me/config-only": ({}, "is not in the local cache and HF_HUB_OFFLINE is set"),
             "me/corrupt": ({"open_clip_model.safetensors": os.urandom(2048)}, "is not a readable weights file")}
    for repo, (weights, expected) in cases.items():
        _hub_cache(tmp_path / "hub", repo, {"open_clip_config.json": config.encode(), **weights})
        line = one_error_line(capsys, train.cli(train_argv(toy_root, tmp_path / "run", TRAINER,
                                                           "MODEL.BACKBONE.NAME", f"hf-hub:{repo}")))
        assert expected in line and f"hf-hub:{repo}" in line, line
    _hub_cache(tmp_path / "hub", "me/whole", {"open_clip_config.json": config.encode(),
                                              "open_clip_model.safetensors": _saved(state, "safetensors")})
    cfg = configs.build_cfg(trainer=TRAINER, dataset="LAION_Beyond_GCD", config="cpu_smoke", root=".",
                            opts=["MODEL.BACKBONE.NAME", "hf-hub:me/whole"])
    loaded = load_clip(cfg, "cpu").model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_hub_model_is_identified_by_the_snapshot_it_loads(tmp_path, monkeypatch):
    """An ``hf-hub:`` model was identified by its name alone, so a run finished (or features cached) under
    one snapshot of the repository counted as done for the next: "main" moves. Now the identity is the
    content of the cached files open_clip loads; the same bytes under another snapshot give the same one."""
    from huggingface_hub import constants as hf_constants

    from clip import weights_identity
    from dassl.engine.build import expected_fingerprint

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = json.dumps({"model_cfg": json.loads((REPO / "clip" / "model_configs" / "test-tiny.json").read_text())})
    cfg = configs.build_cfg(trainer=TRAINER, dataset="LAION_Beyond_GCD", config="cpu_smoke", root=".",
                            opts=["MODEL.BACKBONE.NAME", "hf-hub:me/moving"])
    first, second = _saved(_tiny_state(seed=5), "safetensors"), _saved(_tiny_state(seed=6), "safetensors")
    before = weights_identity(cfg)
    assert before["files"] == {}  # nothing cached yet: a run downloads, then records what it loaded
    _hub_cache(tmp_path / "hub", "me/moving", {"open_clip_config.json": config.encode(),
                                              "open_clip_model.safetensors": first}, commit="1" * 40)
    old, old_fp = weights_identity(cfg), expected_fingerprint(cfg)
    assert old["files"]["open_clip_model.safetensors"] == {"size": len(first),
                                                           "sha256": hashlib.sha256(first).hexdigest()}
    assert old["files"]["open_clip_config.json"]["sha256"] == hashlib.sha256(config.encode()).hexdigest()
    _hub_cache(tmp_path / "hub", "me/moving", {"open_clip_config.json": config.encode(),
                                              "open_clip_model.safetensors": second}, commit="2" * 40)
    new = weights_identity(cfg)
    assert new["files"]["open_clip_model.safetensors"]["sha256"] == hashlib.sha256(second).hexdigest()
    assert new != old and expected_fingerprint(cfg) != old_fp
    _hub_cache(tmp_path / "hub", "me/moving", {"open_clip_config.json": config.encode(),
                                              "open_clip_model.safetensors": first}, commit="3" * 40)
    assert weights_identity(cfg) == old and expected_fingerprint(cfg) == old_fp


def test_resume_of_another_configuration_says_to_drop_resume(toy_root, finished, tmp_path, capsys):
    """``--resume RUN`` into a fresh folder under another OPTIM.MAX_EPOCH advised "use another --output-dir,
    or --overwrite", which changes nothing: the folder is fresh and the mismatch is the resumed run's."""
    out = tmp_path / "fresh"
    line = one_error_line(capsys, train.cli(train_argv(toy_root, out, TRAINER, "OPTIM.MAX_EPOCH", "9",
                                                       extra=["--resume", str(finished)])))
    assert "another configuration" in line and "drop --resume" in line and "--overwrite" not in line, line
