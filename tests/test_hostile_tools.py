"""Hostile arguments to the side tools: ``python -m tools.mini_beyond`` (eval, pretrain, demo, compare,
split, render), ``python -m datasets.check``, ``python -m datasets.make_toy`` and ``scripts/gcd/gcd_fsnl.sh``.

Each mistake must end in exactly one ``error:`` line on stderr naming the option and the fix, exit code 2,
before any heavy work, and leave the files around it byte for byte as they were. Before, each of these
was a traceback (often after minutes of work), a silent overwrite of a user's file, or exit 0.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest
import torch
from safetensors.torch import save_file

from datasets import check as checker
from datasets import make_toy as toy
from tests.helpers import REPO, snapshot_tree
from tools.mini_beyond import __main__ as mb_main
from tools.mini_beyond import render
from tools.mini_beyond.common import ASSETS_DIR, SPLIT_FILE


def one_error(capsys: pytest.CaptureFixture, argv: Sequence[str]) -> str:
    """Run ``python -m tools.mini_beyond argv`` in process; assert exit 2 and one stderr line; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        mb_main.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: "), err[0]
    return err[0]


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------- eval
EVAL_CASES = [
    ("garbage", lambda d: write_bytes(d / "w.safetensors", b"garbage"), "is not a readable safetensors file"),
    ("empty", lambda d: write_bytes(d / "w.safetensors", b""), "is not a readable safetensors file"),
    ("directory", lambda d: (d / "w.safetensors").mkdir() or d / "w.safetensors", "is a directory"),
    ("missing", lambda d: d / "w.safetensors", "does not exist"),
]


@pytest.mark.parametrize("kind,make,message", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_unusable_weights(kind, make, message, tmp_path, capsys):
    """``eval --weights`` of garbage, an empty file, a folder or nothing: open_clip's traceback before."""
    weights = make(tmp_path)
    before = snapshot_tree(tmp_path)
    line = one_error(capsys, ["eval", "--weights", str(weights)])
    assert f'--weights "{weights}" {message}' in line and "mini_clip.safetensors" in line
    assert snapshot_tree(tmp_path) == before


def test_eval_refuses_weights_of_another_model(tmp_path, capsys):
    """A valid safetensors file of other tensors: named as not mini-clip's, without open_clip's log lines."""
    weights = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2)}, str(weights))
    before = snapshot_tree(tmp_path)
    line = one_error(capsys, ["eval", "--weights", str(weights)])
    assert "does not hold mini-clip weights" in line and "e.g. a" in line
    assert snapshot_tree(tmp_path) == before


# --------------------------------------------------------------------------------------- pretrain
def _user_log(d: Path) -> List[str]:
    (d / "pretrain_log.json").write_text('{"mine": 1}\n')
    return ["--out", str(d / "w.safetensors")]


def _run_folder(d: Path) -> List[str]:
    (d / "run").mkdir()
    (d / "run" / "results.json").write_text("{}")
    return ["--out", str(d / "run" / "w.safetensors")]


def _link(d: Path) -> List[str]:
    (d / "target.safetensors").write_bytes(b"mine")
    (d / "w.safetensors").symlink_to(d / "target.safetensors")
    return ["--out", str(d / "w.safetensors")]


SPLIT = ASSETS_DIR / SPLIT_FILE

PRETRAIN_CASES = [
    ("steps-0", lambda d: ["--out", str(d / "w.safetensors"), "--steps", "0"], "--steps 0: must be >= 1"),
    ("batch-1", lambda d: ["--out", str(d / "w.safetensors"), "--batch-size", "1"], "--batch-size 1:"),
    ("threads-0", lambda d: ["--out", str(d / "w.safetensors"), "--threads", "0"], "--threads 0: must be >= 1"),
    # OpenMP died allocating the pool, no error line
    ("threads-above-cores", lambda d: ["--out", str(d / "w.safetensors"), "--threads", "100000"],
     "--threads 100000: more than the"),
    # batches of the whole corpus were trained while the log recorded the size asked for
    ("batch-above-corpus", lambda d: ["--out", str(d / "w.safetensors"), "--batch-size", "100000"],
     f"--batch-size 100000: more than the {len(json.loads(SPLIT.read_text())['pretrain_indices'])} emoji"),
    ("minutes-0", lambda d: ["--out", str(d / "w.safetensors"), "--minutes", "0"], "--minutes 0.0:"),
    ("lr-0", lambda d: ["--out", str(d / "w.safetensors"), "--lr", "0"], "--lr 0.0: must be > 0"),
    ("out-dir", lambda d: (d / "w").mkdir() or ["--out", str(d / "w")], "is a directory"),
    ("out-user-file", lambda d: write_bytes(d / "w.safetensors", b"mine") and ["--out", str(d / "w.safetensors")],
     "exists and is not a mini-clip weights file this tool wrote"),
    ("out-link", _link, "is a symbolic link"),
    ("out-in-run-folder", _run_folder, "lies in the run folder"),
    ("user-log-beside", _user_log, "pretrain_log.json (the log beside --out"),
    ("out-named-log", lambda d: ["--out", str(d / "pretrain_log.json")], "is the name of the log"),
]


@pytest.mark.parametrize("kind,make,message", PRETRAIN_CASES, ids=[c[0] for c in PRETRAIN_CASES])
def test_pretrain_refuses_before_training(kind, make, message, tmp_path, capsys):
    """Counts that train nothing and targets it must not write, before any step: ``--steps 0`` saved
    random weights with exit 0, ``--out DIR`` failed after the whole run, a user's file was overwritten."""
    argv = make(tmp_path)
    before = snapshot_tree(tmp_path)
    line = one_error(capsys, ["pretrain", *argv])
    assert message in line, line
    assert snapshot_tree(tmp_path) == before


# ------------------------------------------------------------------------------------ demo / compare
DEMO_CASES = [
    ("root-file", lambda d: write_bytes(d / "root", b"x") and ["--root", str(d / "root")], "is a file"),
    ("out-file", lambda d: write_bytes(d / "out", b"x") and ["--out", str(d / "out")],
     'cannot create the output directory (--out) "'),
    ("bogus-domain", lambda d: ["--domains", "Bogus"], "--domains Bogus: not a Mini-Beyond domain"),
    ("shots-0", lambda d: ["--shots", "0"], "--shots 0: every shot count must be >= 1"),
    ("shots-above-build", lambda d: ["--shots", "17"], "--shots 17: Mini-Beyond is built with 16"),
    ("negative-seed", lambda d: ["--seed", "-1"], "--seeds -1: every seed must be >= 0"),
    ("threads-above-cores", lambda d: ["--threads", "100000"], "--threads 100000: more than the"),
    # every job failed with a WriteError traceback
    ("out-in-subset", lambda d: ["--out", str(d / "data" / "MiniAttire16_OOP" / "demo")], "lies inside the dataset folder"),
    ("user-figure", lambda d: write_bytes(d / "out" / "accuracy_vs_shots.png", b"mine") and [],
     "accuracy_vs_shots.png (from --out"),
]


@pytest.mark.parametrize("kind,make,message", DEMO_CASES, ids=[c[0] for c in DEMO_CASES])
def test_demo_refuses_before_building(kind, make, message, tmp_path, capsys):
    """Each was a traceback after the build (or every run failing, then plot_curves' traceback), or a
    user's file overwritten by the demo's figure."""
    extra = make(tmp_path)
    before = snapshot_tree(tmp_path)
    line = one_error(capsys, ["demo", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                              "--domains", "MiniAttire", *extra])
    assert message in line, line
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("name", ["x_run.json", "x_table4.md", "x_curves.json", "x_curves_ip.png"])
def test_compare_refuses_a_user_file_among_its_results(name, tmp_path, capsys):
    """``compare --results PREFIX``: a user's ``PREFIX_run.json`` was overwritten, and a refused table
    was reported after the whole grid had run, with exit 0."""
    write_bytes(tmp_path / "res" / name, b"mine\n")
    before = snapshot_tree(tmp_path)
    line = one_error(capsys, ["compare", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                              "--domains", "MiniAttire", "--methods", "zeroshot", "--shots", "1", "--seeds", "1",
                              "--results", str(tmp_path / "res" / "x")])
    assert str(tmp_path / "res" / name) in line and "not a" in line and "this tool wrote" in line, line
    assert snapshot_tree(tmp_path) == before


def test_compare_refuses_an_unknown_method_and_negative_workers(tmp_path, capsys):
    base = ["compare", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--domains", "MiniAttire",
            "--shots", "1", "--seeds", "1", "--results", str(tmp_path / "res" / "x")]
    assert 'unknown method "nope"' in one_error(capsys, [*base, "--methods", "nope"])
    assert "--workers -1: must be >= 0" in one_error(capsys, [*base, "--methods", "zeroshot", "--workers", "-1"])
    assert snapshot_tree(tmp_path) == {}


# --------------------------------------------------------------------------------- split / render
def test_split_refuses_missing_or_corrupt_metadata(tmp_path, capsys):
    """``split --assets`` without a readable ``emoji_meta.json``: a traceback before."""
    (tmp_path / "empty").mkdir()
    write_bytes(tmp_path / "bad" / "emoji_meta.json", b"{not json")
    write_bytes(tmp_path / "other" / "emoji_meta.json", b'{"a": 1}')
    before = snapshot_tree(tmp_path)
    assert "cannot read the emoji metadata (No such file or directory)" in one_error(
        capsys, ["split", "--assets", str(tmp_path / "empty")])
    assert "cannot read the emoji metadata (Expecting property name" in one_error(
        capsys, ["split", "--assets", str(tmp_path / "bad")])
    assert "not the emoji metadata render writes" in one_error(capsys, ["split", "--assets", str(tmp_path / "other")])
    assert snapshot_tree(tmp_path) == before


def test_render_refuses_missing_system_files_before_creating_assets(tmp_path, capsys, monkeypatch):
    """Without the Debian packages ``render`` created ``--assets`` and then raised FileNotFoundError."""
    monkeypatch.setattr(render, "SYSTEM_INPUTS", ((tmp_path / "emoji-test.txt", "unicode-data"),))
    line = one_error(capsys, ["render", "--assets", str(tmp_path / "assets")])
    assert "emoji-test.txt not found; install the Debian package unicode-data" in line
    assert snapshot_tree(tmp_path) == {}


# ------------------------------------------------------------------------------- datasets.check
@pytest.mark.parametrize("kind", ["file", "missing", "workers", "workers-above-cores"])
def test_check_mistakes_are_one_stderr_line(kind, tmp_path, capsys):
    """A ``--root`` that is a file or missing read as "No LAION-Beyond domain found" on stdout; ``--workers
    -1`` was a traceback after the scan, ``--workers 100000`` forked that many decoders at once; an
    unknown domain's ``error:`` line went to stdout."""
    (tmp_path / "file").write_text("x")
    root = {"file": tmp_path / "file", "missing": tmp_path / "missing"}.get(kind, tmp_path)
    workers = {"workers": ["--workers", "-1"], "workers-above-cores": ["--workers", "100000"]}.get(kind, [])
    argv = ["--root", str(root), *workers]
    out = io.StringIO()
    assert checker.main(argv, stream=out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert out.getvalue() == "" and len(err) == 1 and err[0].startswith("error: "), err
    expected = {"file": f"--root {root} is a file", "missing": f"--root {root} is missing",
                "workers": "--workers -1: must be >= 0",
                "workers-above-cores": "--workers 100000: more than the"}[kind]
    assert expected in err[0]


def test_check_unknown_domain_goes_to_stderr(tmp_path, capsys):
    out = io.StringIO()
    assert checker.main(["--root", str(tmp_path), "--domains", "Bogus"], stream=out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert out.getvalue() == "" and len(err) == 1 and err[0].startswith("error: Unknown domain(s) ['Bogus']")


# ----------------------------------------------------------------------------------- make_toy
def test_make_toy_refuses_a_root_holding_the_real_domain(tmp_path, capsys):
    """Written into a real LAION-Beyond root, the toy's ``Animals5_OOP`` beside ``Animals92_OOP`` made the
    domain ambiguous: training and datasets.check refused the user's real data afterwards."""
    write_bytes(tmp_path / "Animals92_OOP" / "split_Xin_Animals92_OOP.json", b"{}")
    before = snapshot_tree(tmp_path)
    assert toy.main(["--root", str(tmp_path), "--domains", "Animals92_42"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'Animals92_OOP'}: Animals92_42's OOP folder")
    assert "would make Animals92_42 ambiguous" in err[0]
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("argv,message", [(["--train", "0"], "need at least one image per split"),
                                          (["--image-size", "4"], "--image-size >= 8"),
                                          ([], "is a file")], ids=["train-0", "size-4", "root-file"])
def test_make_toy_mistakes_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    root = tmp_path / ("file" if message == "is a file" else "toy")
    before = snapshot_tree(tmp_path)
    assert toy.main(["--root", str(root), "--domains", "Food53_27", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert snapshot_tree(tmp_path) == before


def test_make_toy_reruns_over_its_own_output(tmp_path):
    """The refusal is for another copy of a domain, not for the toy's own folders."""
    toy.make_toy(str(tmp_path), domains=("Food53_27",), image_size=8, num_train=1, num_val=1, num_test=1)
    before = snapshot_tree(tmp_path)
    toy.make_toy(str(tmp_path), domains=("Food53_27",), image_size=8, num_train=1, num_val=1, num_test=1)
    assert snapshot_tree(tmp_path) == before


# ------------------------------------------------------------------------------------- GCD script
@pytest.mark.parametrize("content,message", [
    ("{not json", "malformed JSON at line 1"),
    ('{"a": 1}', "expected a JSON list of records, got dict"),
    ("[]", "1 problem(s):"),
    ('[{"image_path": "x"}]', "1 problem(s):"),
], ids=["malformed", "dict", "empty", "no-name"])
def test_gcd_script_refuses_a_malformed_clustering_file(content, message, tmp_path):
    """``gcd_fsnl.sh`` counted the clusters with its own one-line parse: a traceback (JSONDecodeError,
    TypeError, KeyError, the BS rule's ValueError for an empty list), exit 1."""
    data = tmp_path / "data"
    write_bytes(data / "MiniAnimals_clustering_results.json", content.encode())
    before = snapshot_tree(tmp_path)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gcd" / "gcd_fsnl.sh"), "MiniAnimals", str(data),
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr.startswith(f"error: {data / 'MiniAnimals_clustering_results.json'}: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot_tree(tmp_path) == before


@pytest.mark.parametrize("shots", [4, 1])
def test_compare_records_its_code_version_and_writes_the_table_only_with_4_shots(shots, tmp_path):
    """A tiny comparison end to end (one domain, zero-shot and CLIP-Adapter, one seed). ``<prefix>_run.json``
    names the code that ran the cells (a loop over the table steps once rebound ``code`` to an exit
    status), and a comparison without 4-shot cells writes no 4-shot table instead of failing on it."""
    res = tmp_path / "res" / "x"
    mb_main.main(["compare", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--domains",
                  "MiniFood", "--methods", "zeroshot", "clip_adapter", "--shots", str(shots), "--seeds", "1",
                  "--results", str(res), "--workers", "1", "--threads", "1"])
    record = json.loads((tmp_path / "res" / "x_run.json").read_text())
    assert record["failed"] == [] and isinstance(record["code"], dict) and "commit" in record["code"]
    assert (tmp_path / "res" / "x_table4.md").exists() == (shots == 4)
    assert (tmp_path / "res" / "x_curves.json").exists() and (tmp_path / "res" / "x_curves.png").exists()
